# nooelint: oelint.bbclass.underscores
# (The hyphen follows OE-core's own class names, e.g. kernel-yocto, cargo-update-recipe-crates, and
# is the name recipes inherit; renaming it would break them for a style rule.)
# Tells the user once per build that meta-otpatch is in bblayers.conf but inactive: without the "otpatch"
# distro feature the kernel keeps its own configuration, and a gateway without CONFIG_LIVEPATCH or the CRIU
# socket-diag options refuses every update window at preflight. Set SKIP_META_OTPATCH_FEATURE_CHECK = "1"
# in a configuration that includes the layer only for otpatchctl-native (bundle signing hosts).

addhandler otpatch_distro_feature_check
otpatch_distro_feature_check[eventmask] = "bb.event.SanityCheck"
otpatch_distro_feature_check[doc] = "Warns when meta-otpatch is present without the otpatch and systemd distro features"
python otpatch_distro_feature_check() {
    if e.data.getVar('SKIP_META_OTPATCH_FEATURE_CHECK') == "1":
        return
    features = (e.data.getVar('DISTRO_FEATURES') or "").split()
    missing = [f for f in ("otpatch", "systemd") if f not in features]
    if missing:
        bb.warn("meta-otpatch is in your layers but DISTRO_FEATURES lacks %s: the kernel fragment "
                "otpatch.cfg is not applied and otpatchd (a systemd service) is not buildable. "
                "See yocto/README.md of otpatch." % " and ".join(missing))
}
