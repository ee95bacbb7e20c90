SUMMARY = "Example kernel livepatch, delivered as a signed otpatch bundle"
DESCRIPTION = "A minimal livepatch that replaces the kernel function behind /proc/version, to show how a \
               BSP team turns a kernel fix into an otpatch bundle with kernel-livepatch.bbclass. Copy this \
               recipe for a real fix."
HOMEPAGE = "https://example.invalid/otpatch"
SECTION = "kernel"
# GPL because livepatch modules link against GPL-only kernel symbols (klp_enable_patch).
LICENSE = "GPL-2.0-only"
LIC_FILES_CHKSUM = "file://livepatch_otpatch_example.c;beginline=1;endline=1;md5=fcab174c20ea2e2bc0be64b493708266"

SRC_URI = "file://Makefile \
           file://livepatch_otpatch_example.c \
"

S = "${UNPACKDIR}"

inherit kernel-livepatch

LIVEPATCH_MODULE = "livepatch_otpatch_example"
# The bundle's version, compared by otpatchd with the installed one (no downgrades by default).
OTPATCH_BUNDLE_VERSION = "${PV}"

# Needs signing keys from the site configuration; never part of a `bitbake world`.
EXCLUDE_FROM_WORLD = "1"
