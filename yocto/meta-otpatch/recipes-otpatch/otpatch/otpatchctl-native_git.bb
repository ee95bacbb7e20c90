SUMMARY = "otpatchctl for the build host"
DESCRIPTION = "The otpatch command-line client built for the build host: it writes otpatchctl's shell \
               completions and man pages for the target packages and creates signed otpatch bundles \
               (kernel-livepatch.bbclass)."

require otpatch.inc

# No daemon on the build host, and nothing else is needed there.
OTPATCH_CARGO_PACKAGES = "-p otpatchctl"

inherit cargo
inherit_defer native
