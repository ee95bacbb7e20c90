SUMMARY = "otpatch site policy and trust anchors (sample: replace in your board layer)"
DESCRIPTION = "Installs the site policy and the bundle-signing trust anchors of otpatchd. The files shipped \
               here are samples that make otpatchd refuse every bundle; a board layer replaces them with a \
               bbappend or with its own recipe that RPROVIDES virtual-otpatch-site-config."
HOMEPAGE = "https://example.invalid/otpatch"
SECTION = "admin"
LICENSE = "Apache-2.0"
# The samples carry no licence header on purpose: board layers swap them for their own files, which would
# break a checksum taken from them.
# nooelint: oelint.var.licenseremotefile
LIC_FILES_CHKSUM = "file://${COMMON_LICENSE_DIR}/Apache-2.0;md5=89aea4e17d99a7cacdbeed46a0096b10"

# The policy is a template: @OTPATCH_GATEWAY_ID@ and @OTPATCH_COMPATIBLE@ are filled in at build time.
# OTPATCH_COMPATIBLE names the hardware/software family; the RAUC system.conf template and
# kernel-livepatch.bbclass use the same variable, so bundles, RAUC and the policy can never disagree.
# The gateway id is per device: commissioning usually overrides it in /etc/otpatch/policy.d/.
OTPATCH_COMPATIBLE ??= "${MACHINE}-otpatch-gateway"
OTPATCH_GATEWAY_ID ??= "${MACHINE}"
OTPATCH_POLICY_FILE ??= "policy.toml"
# Space-separated file names (looked up in FILESPATH) installed into /etc/otpatch/trust/.
OTPATCH_TRUST_ANCHORS ??= "site-ca.pem"

SRC_URI = "file://${OTPATCH_POLICY_FILE} ${@' '.join('file://' + f for f in d.getVar('OTPATCH_TRUST_ANCHORS').split())}"

S = "${UNPACKDIR}"

INHIBIT_DEFAULT_DEPS = "1"
do_configure[noexec] = "1"
do_compile[noexec] = "1"

# Every sample file carries this marker; otpatch-image.bbclass looks for it in the finished rootfs too.
OTPATCH_SAMPLE_MARKER = "OTPATCH-SAMPLE-DO-NOT-DEPLOY"

otpatch_warn_samples[doc] = "Warns when the sample policy or trust anchor of meta-otpatch is packaged"
python otpatch_warn_samples() {
    marker = d.getVar('OTPATCH_SAMPLE_MARKER')
    unpackdir = d.getVar('UNPACKDIR')
    names = [d.getVar('OTPATCH_POLICY_FILE')] + d.getVar('OTPATCH_TRUST_ANCHORS').split()
    for name in names:
        with open(os.path.join(unpackdir, name), encoding='utf-8', errors='replace') as f:
            if marker in f.read():
                bb.warn("%s: %s is the sample from meta-otpatch; an image with it trusts no bundle signer. "
                        "Replace it in your board layer (see yocto/README.md of otpatch)." % (d.getVar('PN'), name))
}
do_install[prefuncs] += "otpatch_warn_samples"

do_install() {
    install -d ${D}${sysconfdir}/otpatch/trust
    sed -e 's,@OTPATCH_GATEWAY_ID@,${OTPATCH_GATEWAY_ID},g' \
        -e 's,@OTPATCH_COMPATIBLE@,${OTPATCH_COMPATIBLE},g' \
        ${UNPACKDIR}/${OTPATCH_POLICY_FILE} > ${D}${sysconfdir}/otpatch/policy.toml
    chmod 0644 ${D}${sysconfdir}/otpatch/policy.toml
    for anchor in ${OTPATCH_TRUST_ANCHORS}; do
        install -m 0644 ${UNPACKDIR}/$anchor ${D}${sysconfdir}/otpatch/trust/
    done
}

# The defaults of OTPATCH_COMPATIBLE and OTPATCH_GATEWAY_ID name the machine.
PACKAGE_ARCH = "${MACHINE_ARCH}"
# ${PN} already owns ${sysconfdir}; the policy is a conffile so package updates keep local edits.
CONFFILES:${PN} = "${sysconfdir}/otpatch/policy.toml"
RPROVIDES:${PN} += "virtual-otpatch-site-config"
