SUMMARY = "Example OT gateway image that otpatch can patch"
DESCRIPTION = "A minimal systemd image with otpatchd and otpatchctl and the tools behind its backends: \
               nftables (segmentation), CRIU (checkpoints) and RAUC (A/B updates). Kernel livepatches need \
               the \"otpatch\" distro feature (kernel fragment). Start your product image from this one."
HOMEPAGE = "https://example.invalid/otpatch"
SECTION = "images"
LICENSE = "MIT"

inherit core-image otpatch-image features_check

REQUIRED_DISTRO_FEATURES = "systemd otpatch"

IMAGE_FEATURES += "ssh-server-openssh"

# meta-rauc recommends rauc-mark-good, a unit that marks the booted slot good on every boot, the boot into a
# freshly installed slot included: that would keep an update before otpatchd's health observation. otpatchd
# marks ordinary boots good itself (at start, when no update awaits its observation), so the unit stays out.
BAD_RECOMMENDATIONS += "rauc-mark-good"

IMAGE_INSTALL += "\
    otpatch \
    otpatch-bash-completion \
    nftables \
    criu \
    rauc \
    rauc-service \
    kmod \
"

# The layers these packages come from are recommended, not required, by meta-otpatch (layer.conf); say
# which one is missing instead of failing with "Nothing RPROVIDES 'criu'".
# Anonymous python is the only way to skip a recipe at parse time with a message.
# nooelint: oelint.task.noanonpython
python () {
    needed = {
        'networking-layer': 'nftables (meta-openembedded/meta-networking)',
        'virtualization-layer': 'criu (meta-virtualization)',
        'rauc': 'rauc (meta-rauc)',
    }
    have = (d.getVar('BBFILE_COLLECTIONS') or '').split()
    missing = [what for layer, what in needed.items() if layer not in have]
    if missing:
        raise bb.parse.SkipRecipe("otpatch-gateway-image needs the layers providing %s" % ", ".join(missing))
}
