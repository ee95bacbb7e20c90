# nooelint: oelint.bbclass.underscores
# (The hyphen follows OE-core's own class names, e.g. kernel-yocto, cargo-update-recipe-crates, and
# is the name recipes inherit; renaming it would break them for a style rule.)
# For images that carry otpatchd: checks the finished rootfs before it is packed.
#
# - The sample site policy or trust anchor of otpatch-site-config (marker OTPATCH-SAMPLE-DO-NOT-DEPLOY) in
#   /etc/otpatch is a warning, because such a gateway trusts no bundle signer; set
#   OTPATCH_SAMPLE_CONFIG_FATAL = "1" in release builds to make it an error.
# - The layered policy (vendor defaults, /etc/otpatch/policy.toml, policy.d drop-ins) is validated with the
#   build host's otpatchctl the way otpatchd will load it, so a typo fails the build instead of the gateway.

OTPATCH_SAMPLE_MARKER ??= "OTPATCH-SAMPLE-DO-NOT-DEPLOY"
OTPATCH_SAMPLE_CONFIG_FATAL ??= "0"
# Set to "0" for images whose policy is written at commissioning (no /etc/otpatch/policy.toml in the image).
OTPATCH_POLICY_CHECK ??= "1"

do_rootfs[depends] += "${@'otpatchctl-native:do_populate_sysroot' if d.getVar('OTPATCH_POLICY_CHECK') == '1' else ''}"

ROOTFS_POSTPROCESS_COMMAND += "otpatch_rootfs_check"
otpatch_rootfs_check[doc] = "Warns about sample otpatch configuration in the rootfs and validates its policy"

python otpatch_rootfs_check() {
    import subprocess

    rootfs = d.getVar('IMAGE_ROOTFS')
    confdir = rootfs + d.getVar('sysconfdir') + '/otpatch'
    marker = d.getVar('OTPATCH_SAMPLE_MARKER').encode()
    samples = []
    for dirpath, _, files in os.walk(confdir):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path):
                with open(path, 'rb') as f:
                    if marker in f.read():
                        samples.append(os.path.relpath(path, rootfs))
    if samples:
        msg = ("%s: sample otpatch configuration left in the image (%s): otpatchd will trust no bundle "
               "signer. Provide your own policy and trust anchors (see meta-otpatch's README)."
               % (d.getVar('PN'), ", ".join('/' + s for s in sorted(samples))))
        if d.getVar('OTPATCH_SAMPLE_CONFIG_FATAL') == '1':
            bb.fatal(msg)
        bb.warn(msg)

    if d.getVar('OTPATCH_POLICY_CHECK') != '1':
        return
    if not os.path.exists(confdir + '/policy.toml'):
        bb.note("no %s/otpatch/policy.toml in the image; policy check skipped" % d.getVar('sysconfdir'))
        return
    otpatchctl = os.path.join(d.getVar('STAGING_BINDIR_NATIVE'), 'otpatchctl')
    cmd = [otpatchctl, 'policy', 'check', '--root', rootfs]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if res.returncode != 0:
        bb.fatal("otpatch policy of the image is invalid (%s):\n%s" % (" ".join(cmd), res.stdout))
}
