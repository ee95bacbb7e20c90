# Applied only with the "otpatch" distro feature: adding meta-otpatch to a build must not change the kernel
# of configurations that do not ask for it (as meta-rauc does with its "rauc" feature).
# The line has no trailing space; oelint-adv reports one after expanding the inline python.
# nooelint: oelint.spaces.lineend
require ${@bb.utils.contains('DISTRO_FEATURES', 'otpatch', 'linux-yocto-otpatch.inc', '', d)}
