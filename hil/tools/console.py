#!/usr/bin/env python3
"""The host's side of the guest's serial console, standard library only.

  run --log LOG --timeout SECS [--inject REGEX ADDR COMMAND] -- QEMU ARGV...
      Starts QEMU, writes its serial console to LOG with each line prefixed by
      the host's arrival time ("h=MS " in ms since QEMU was started), and stops
      it after SECS (exit 124, like timeout(1)). With --inject, the first line
      matching REGEX makes the host send COMMAND (one line) to ADDR (host:port,
      the PLC simulator's control port) and log
          HIL-HOST event=inject cmd="COMMAND" reply="..." ms=N
      with its round trip. Host arrival times put the host's fault and the
      guest's reaction on one clock (the guest's own clock differs by up to a
      second: it is set from the emulated RTC).
      With --modbus ADDR (the guest's Modbus port forwarded to the host), a
      guest line "HIL-ASK modbus tag=T start=S count=N [write=R:V]" makes the
      host read N holding registers from S over Modbus TCP (function 3), then
      write V to register R (function 6) when asked, and log
          HIL-HOST event=modbus tag=T values=V0,V1,... ok=1|0 rtt_ms=N
      With --cut REGEX, the first line matching REGEX makes the host kill QEMU
      at once (SIGKILL: no shutdown, the guest's unwritten data is lost, as in a
      power cut), log "HIL-HOST event=power-cut line=..." and exit 3.
      Exit status: QEMU's, 3 after a power cut, or 124 on timeout.

  timeline LOG
      Prints the window's timeline from the HIL-WATCH / HIL-STATE / HIL-HOST
      lines of an otpatchd scenario (host ms relative to the window opening)
      and the figures derived from it.
"""
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import time


def die(msg):
    sys.stderr.write("console: %s\n" % msg)
    sys.exit(2)


def inject(addr, command):
    host, port = addr.rsplit(":", 1)
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(command.encode() + b"\n")
            s.settimeout(5)
            reply = b""
            while not reply.endswith(b"\n") and len(reply) < 4096:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
        reply = reply.decode(errors="replace").strip()
    except OSError as e:
        reply = "error: %s" % e
    return reply, int((time.monotonic() - t0) * 1000)


ASK_MODBUS = re.compile(r"HIL-ASK modbus tag=(\S+) start=(\d+) count=(\d+)(?: write=(\d+):(\d+))?")


def modbus_exchange(sock, tid, pdu):
    """One Modbus TCP request (unit 1); the response's PDU, or an exception."""
    sock.sendall(struct.pack(">HHHB", tid, 0, len(pdu) + 1, 1) + pdu)
    head = b""
    while len(head) < 7:
        chunk = sock.recv(7 - len(head))
        if not chunk:
            raise OSError("connection closed")
        head += chunk
    rtid, _, length, _ = struct.unpack(">HHHB", head)
    body = b""
    while len(body) < length - 1:
        chunk = sock.recv(length - 1 - len(body))
        if not chunk:
            raise OSError("connection closed")
        body += chunk
    if rtid != tid or not body or body[0] & 0x80:
        raise OSError("modbus exception or mismatched reply: %r" % body)
    return body


def ask_modbus(addr, m):
    """Answers a guest's HIL-ASK modbus line: reads (and maybe writes) the guest's holding registers."""
    tag, start, count = m.group(1), int(m.group(2)), int(m.group(3))
    host, port = addr.rsplit(":", 1)
    t0 = time.monotonic()
    try:
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.settimeout(5)
            body = modbus_exchange(s, 1, struct.pack(">BHH", 3, start, count))
            values = list(struct.unpack(">%dH" % count, body[2:2 + 2 * count]))
            if m.group(4) is not None:
                modbus_exchange(s, 2, struct.pack(">BHH", 6, int(m.group(4)), int(m.group(5))))
        text = "values=%s ok=1" % ",".join(str(v) for v in values)
    except (OSError, struct.error) as e:
        text = 'values= ok=0 error="%s"' % e
    return 'HIL-HOST event=modbus tag=%s %s rtt_ms=%d' % (tag, text, int((time.monotonic() - t0) * 1000))


def cmd_run(argv):
    log = timeout = modbus = cut = None
    injects = []
    while argv and argv[0] != "--":
        a = argv.pop(0)
        if a == "--log":
            log = argv.pop(0)
        elif a == "--timeout":
            timeout = float(argv.pop(0))
        elif a == "--modbus":
            modbus = argv.pop(0)
        elif a == "--cut":
            cut = re.compile(argv.pop(0))
        elif a == "--inject":
            injects.append([re.compile(argv.pop(0)), argv.pop(0), argv.pop(0)])
        else:
            die("unknown option %s" % a)
    if not argv or log is None or timeout is None:
        die("usage: run --log LOG --timeout SECS [--inject REGEX ADDR CMD] [--modbus ADDR] [--cut REGEX] -- ARGV...")
    argv.pop(0)

    t0 = time.monotonic()
    out = open(log, "w", buffering=1, errors="replace")
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)

    def stop(*_):
        # Interrupted (run.sh's trap): QEMU goes with us.
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sys.exit(130)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def ms():
        return int((time.monotonic() - t0) * 1000)

    def emit(text):
        out.write("h=%d %s\n" % (ms(), text))

    buf = b""
    timed_out = cut_off = False
    fd = proc.stdout.fileno()
    while True:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            timed_out = True
            break
        ready, _, _ = select.select([fd], [], [], min(left, 1.0))
        if not ready:
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            raw, buf = buf.split(b"\n", 1)
            line = raw.decode(errors="replace").rstrip("\r")
            emit(line)
            if cut is not None and cut.search(line):
                proc.kill()
                cut_off = True
                emit('HIL-HOST event=power-cut line="%s"' % line.replace('"', "'")[-120:])
                break
            for inj in injects:
                if inj[0] is not None and inj[0].search(line):
                    inj[0] = None  # once
                    reply, rtt = inject(inj[1], inj[2])
                    emit('HIL-HOST event=inject cmd="%s" reply="%s" rtt_ms=%d' % (inj[2], reply, rtt))
            ask = ASK_MODBUS.search(line) if modbus else None
            if ask:
                emit(ask_modbus(modbus, ask))
        if cut_off:
            # What QEMU wrote after the line that cut it is not the machine's: it was already gone.
            buf = b""
            break
    if buf:
        emit(buf.decode(errors="replace").rstrip("\r"))
    if timed_out:
        emit("HIL-HOST event=timeout after=%ds" % timeout)
        proc.kill()
    rc = proc.wait()
    emit("HIL-HOST event=qemu-exit rc=%d" % rc)
    out.close()
    sys.exit(124 if timed_out else 3 if cut_off else rc)


LINE = re.compile(r"^h=(\d+) .*?(HIL-[A-Z]+) (.*)$")
TRANSITION = re.compile(r"(\S+): (\S+) -> (\S+) \(([^)]*)\)")


def cmd_timeline(path):
    events = []  # (host ms, kind, text)
    for raw in open(path, errors="replace"):
        m = LINE.match(raw.rstrip("\n"))
        if m and m.group(2) in ("HIL-WATCH", "HIL-STATE", "HIL-HOST"):
            text = re.sub(r"^ms=\d+ ", "", m.group(3))
            events.append((int(m.group(1)), m.group(2)[4:].lower(), text))
    if not events:
        return
    opened = None
    marks = {}
    for t, kind, text in events:
        tr = TRANSITION.search(text) if kind == "watch" else None
        if tr:
            marks.setdefault("-> " + tr.group(3), t)
            if opened is None and tr.group(3) == "arming":
                opened = t  # the window opens: scheduled -> arming
        elif kind == "watch" and "window closed" in text:
            marks.setdefault("closed", t)
        elif kind == "watch" and "loading livepatch" in text:
            marks.setdefault("loading", t)
        elif kind == "watch" and "waiting for the transition" in text:
            marks.setdefault("transition", t)
        elif kind == "host" and "event=inject" in text:
            marks.setdefault("inject", t)
        elif kind == "state":
            # "seg=1 lp=1 marker=1": when each first came, and when it went again.
            for kv in text.split():
                k, _, v = kv.partition("=")
                if v == "1":
                    marks.setdefault(k + "=1", t)
                elif v == "0" and k + "=1" in marks:
                    marks.setdefault(k + "=0-after", t)
    base = opened if opened is not None else events[0][0]
    if opened is not None:
        print("    timeline (host arrival ms, 0 = the window opened: -> arming):")
    else:
        print("    timeline (host arrival ms, no window: 0 = the first line):")
    for t, kind, text in events:
        print("    %+8d  %-5s %s" % (t - base, kind, text))

    def span(a, b):
        if a in marks and b in marks and marks[b] >= marks[a]:
            return "%d ms" % (marks[b] - marks[a])
        return None

    figures = [
        ("window open -> patched (applying -> observing)", span_from(opened, marks.get("-> observing"))),
        ("module load (loading -> waiting for the transition)", span("loading", "transition")),
        ("livepatch transition (waiting -> observing)", span("transition", "-> observing")),
        ("observing -> committed", span("-> observing", "-> committed")),
        ("window open -> closed", span_from(opened, marks.get("closed"))),
        ("fault injected -> rolling-back", span("inject", "-> rolling-back")),
        ("fault injected -> livepatch gone from sysfs", span("inject", "lp=0-after")),
        ("fault injected -> rolled-back", span("inject", "-> rolled-back")),
    ]
    shown = [(k, v) for k, v in figures if v]
    if shown:
        print("    figures:")
        for k, v in shown:
            print("      %-52s %s" % (k, v))


def span_from(a, b):
    if a is not None and b is not None and b >= a:
        return "%d ms" % (b - a)
    return None


def main():
    if len(sys.argv) < 2:
        die("usage: console.py run|timeline ...")
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "run":
        cmd_run(args)
    elif cmd == "timeline" and len(args) == 1:
        cmd_timeline(args[0])
    else:
        die("unknown command %s" % cmd)


if __name__ == "__main__":
    main()
