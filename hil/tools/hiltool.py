#!/usr/bin/env python3
"""Small build helpers for the QEMU gateway (hil/), standard library only.

The host has neither kmod nor cpio nor a kernel build tree, so the few things
those tools would do for us are done here:

  vmlinux VMLINUZ OUT          unpack the uncompressed kernel ELF from a bzImage
                               (QEMU boots it directly through PVH, which is
                               about twice as fast under TCG as the bzImage)
  modinfo KO [KEY]             print a module's .modinfo (all, or one key)
  resolve MODROOT NAME...      the modules NAME... need, from each module's
                               .modinfo depends=, dependencies first, as paths
                               relative to MODROOT
  forge-modinfo IN OUT KEY VAL copy a module with one .modinfo value replaced
                               (objcopy does the section rewrite)
"""
import lzma
import os
import struct
import subprocess
import sys
import tempfile

XZ_MAGIC = b"\xfd7zXZ\x00"


def die(msg):
    sys.stderr.write("hiltool: %s\n" % msg)
    sys.exit(1)


def cmd_vmlinux(src, out):
    data = open(src, "rb").read()
    pos = 0
    # The setup code may contain the magic by chance: try each hit until one
    # decodes to an ELF image.
    while True:
        pos = data.find(XZ_MAGIC, pos)
        if pos < 0:
            die("%s: no xz stream that unpacks to an ELF kernel" % src)
        try:
            dec = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
            img = dec.decompress(data[pos:])
            if img[:4] == b"\x7fELF":
                break
        except lzma.LZMAError:
            pass
        pos += 1
    tmp = out + ".tmp"
    with open(tmp, "wb") as f:
        f.write(img)
    os.replace(tmp, out)
    print("vmlinux: %d bytes from xz stream at offset %d" % (len(img), pos))


def elf_section(path, wanted):
    """Return (offset, size) of section `wanted` in a 64-bit little-endian ELF."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        die("%s: not a 64-bit little-endian ELF file" % path)
    shoff = struct.unpack_from("<Q", data, 0x28)[0]
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    def sh(i):
        # name, type, flags, addr, offset, size
        return struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize)
    stroff = sh(shstrndx)[4]
    for i in range(shnum):
        name_off, _, _, _, off, size = sh(i)
        end = data.index(b"\0", stroff + name_off)
        if data[stroff + name_off:end].decode() == wanted:
            return data, off, size
    return data, None, None


def modinfo(path):
    data, off, size = elf_section(path, ".modinfo")
    if off is None:
        die("%s: no .modinfo section" % path)
    out = []
    for entry in data[off:off + size].split(b"\0"):
        if b"=" in entry:
            k, v = entry.decode(errors="replace").split("=", 1)
            out.append((k, v))
    return out


def cmd_modinfo(path, key=None):
    for k, v in modinfo(path):
        if key is None:
            print("%s=%s" % (k, v))
        elif k == key:
            print(v)


def modname(filename):
    base = os.path.basename(filename)
    for ext in (".ko", ".ko.xz", ".ko.zst", ".ko.gz"):
        if base.endswith(ext):
            base = base[: -len(ext)]
    return base.replace("-", "_")


def cmd_resolve(root, names):
    index = {}
    for d, _, files in os.walk(root):
        for fn in files:
            if fn.endswith(".ko"):
                index[modname(fn)] = os.path.join(d, fn)
    order, seen = [], set()
    def visit(name, chain):
        name = name.replace("-", "_")
        if name in seen:
            return
        if name in chain:
            die("dependency cycle: %s" % " -> ".join(chain + [name]))
        if name not in index:
            die("module %s not found under %s (built in? check the config)" % (name, root))
        for k, v in modinfo(index[name]):
            if k == "depends":
                for dep in filter(None, v.split(",")):
                    visit(dep, chain + [name])
        seen.add(name)
        order.append(os.path.relpath(index[name], root))
    for n in names:
        visit(n, [])
    print("\n".join(order))


def cmd_forge(src, out, key, value):
    entries = modinfo(src)
    if not any(k == key for k, _ in entries):
        die("%s: no %s= in .modinfo" % (src, key))
    blob = b"".join(("%s=%s" % (k, value if k == key else v)).encode() + b"\0"
                    for k, v in entries)
    with tempfile.NamedTemporaryFile(suffix=".modinfo") as t:
        t.write(blob)
        t.flush()
        subprocess.run(["objcopy", "--update-section", ".modinfo=" + t.name, src, out],
                       check=True)
    got = [v for k, v in modinfo(out) if k == key]
    if got != [value]:
        die("%s: forging %s failed (got %r)" % (out, key, got))


def main(argv):
    if len(argv) >= 3 and argv[0] == "vmlinux":
        cmd_vmlinux(argv[1], argv[2])
    elif len(argv) in (2, 3) and argv[0] == "modinfo":
        cmd_modinfo(*argv[1:])
    elif len(argv) >= 3 and argv[0] == "resolve":
        cmd_resolve(argv[1], argv[2:])
    elif len(argv) == 5 and argv[0] == "forge-modinfo":
        cmd_forge(*argv[1:])
    else:
        die(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
