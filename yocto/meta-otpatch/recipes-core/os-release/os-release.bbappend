# os-release(5)'s IMAGE_VERSION, with the "otpatch" distro feature only: adding meta-otpatch must not change
# the os-release of configurations that do not ask for it (as the kernel's bbappend).
# The line has no trailing space; oelint-adv reports one after expanding the inline python.
# nooelint: oelint.spaces.lineend
require ${@bb.utils.contains('DISTRO_FEATURES', 'otpatch', 'os-release-otpatch.inc', '', d)}
