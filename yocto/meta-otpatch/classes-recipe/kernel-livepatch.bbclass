# nooelint: oelint.bbclass.underscores
# (The hyphen follows OE-core's own class names, e.g. kernel-yocto, cargo-update-recipe-crates, and
# is the name recipes inherit; renaming it would break them for a style rule.)
# Builds a kernel livepatch module for the image's kernel, out of tree, and wraps it into a signed otpatch
# bundle that otpatchd can apply inside an update window. The recipe supplies the module's sources and a
# kbuild Makefile (as for any `inherit module` recipe); this class adds the bundle.
#
#   inherit kernel-livepatch
#   LIVEPATCH_MODULE = "livepatch_fix_cve_x"       # the .ko's name, without .ko
#
# Site or distro configuration (never in a recipe: these are your signing keys):
#   OTPATCH_COMPATIBLE    = "acme-gw-x86"           # equals gateway.compatible of the gateways' policy
#   OTPATCH_SIGNING_CERT  = "/secure/otpatch-signer.pem"
#   OTPATCH_SIGNING_KEY   = "/secure/otpatch-signer.key"  # or a PKCS#11 URI if otpatchctl accepts one
#   OTPATCH_SIGNING_CHAIN = "/secure/otpatch-intermediate.pem"   # optional
#
# Output: ${DEPLOY_DIR_IMAGE}/${OTPATCH_BUNDLE_NAME}, to upload to the patch server. The .ko is also
# packaged (kernel-module-*) like any module, but do not install it into images: otpatchd loads it from the
# bundle and removes it again on rollback.

inherit module deploy

# The build host's otpatchctl creates and signs the bundle (`otpatchctl bundle create`).
DEPENDS += "otpatchctl-native"

LIVEPATCH_MODULE ??= "${@d.getVar('BPN').replace('-', '_')}"
OTPATCH_COMPATIBLE ??= ""
OTPATCH_BUNDLE_VERSION ??= "${PV}"
OTPATCH_SIGNING_CERT ??= ""
OTPATCH_SIGNING_KEY ??= ""
OTPATCH_SIGNING_CHAIN ??= ""
OTPATCH_BUNDLE_NAME ??= "${LIVEPATCH_MODULE}-${OTPATCH_BUNDLE_VERSION}-${MACHINE}.otb"

# A livepatch module only loads into the very kernel it was built against; refuse early when that kernel
# cannot take livepatches at all (the fragment otpatch.cfg of this layer turns them on).
python otpatch_livepatch_kernel_check() {
    config = os.path.join(d.getVar('STAGING_KERNEL_BUILDDIR'), '.config')
    try:
        with open(config) as f:
            enabled = 'CONFIG_LIVEPATCH=y\n' in f.read()
    except OSError:
        return  # kernels that do not stage their .config: the module build will tell
    if not enabled:
        bb.fatal("%s: the kernel has no CONFIG_LIVEPATCH; add the \"otpatch\" distro feature (linux-yocto) or "
                 "meta-otpatch's otpatch.cfg to your kernel's configuration" % d.getVar('PN'))
}
otpatch_livepatch_kernel_check[doc] = "Stops the build when the kernel was built without CONFIG_LIVEPATCH"
do_configure[prefuncs] += "otpatch_livepatch_kernel_check"

# Checked when the bundle is made, not at parse time, so that `bitbake world` without keys still parses.
python otpatch_bundle_inputs_check() {
    missing = [v for v in ('OTPATCH_COMPATIBLE', 'OTPATCH_SIGNING_CERT', 'OTPATCH_SIGNING_KEY') if not d.getVar(v)]
    if missing:
        bb.fatal("%s: set %s in your site/distro configuration to build a signed otpatch bundle"
                 % (d.getVar('PN'), ", ".join(missing)))
    for v in ('OTPATCH_SIGNING_CERT', 'OTPATCH_SIGNING_KEY', 'OTPATCH_SIGNING_CHAIN'):
        path = d.getVar(v)
        if path and not path.startswith('pkcs11:') and not os.path.isfile(path):
            bb.fatal("%s: %s = %s: no such file" % (d.getVar('PN'), v, path))
}

do_otpatch_bundle() {
    ko=$(find ${D}${nonarch_base_libdir}/modules/${KERNEL_VERSION} -name '${LIVEPATCH_MODULE}${KERNEL_OBJECT_SUFFIX}' | head -n 1)
    if [ -z "$ko" ]; then
        bbfatal "${LIVEPATCH_MODULE}${KERNEL_OBJECT_SUFFIX} was not installed by do_install; check LIVEPATCH_MODULE"
    fi
    # The kernel refuses to treat a module as a livepatch without this modinfo tag (MODULE_INFO(livepatch, "Y")).
    if ! grep -aq 'livepatch=Y' "$ko"; then
        bbfatal "$ko has no MODULE_INFO(livepatch, \"Y\"): it is not a livepatch module"
    fi
    chain=""
    if [ -n "${OTPATCH_SIGNING_CHAIN}" ]; then
        chain="--chain ${OTPATCH_SIGNING_CHAIN}"
    fi
    rm -f ${B}/${OTPATCH_BUNDLE_NAME}
    # The payload is the module as modules_install left it: signed by the kernel's module key if the kernel
    # signs modules, which is what a kernel with CONFIG_MODULE_SIG_FORCE needs.
    otpatchctl bundle create \
        --kind livepatch \
        --compatible "${OTPATCH_COMPATIBLE}" \
        --version "${OTPATCH_BUNDLE_VERSION}" \
        --kernel-release "${KERNEL_VERSION}" \
        --payload "$ko" \
        --signer-cert "${OTPATCH_SIGNING_CERT}" \
        --signer-key "${OTPATCH_SIGNING_KEY}" \
        $chain \
        --out ${B}/${OTPATCH_BUNDLE_NAME}
}
otpatch_bundle_inputs_check[doc] = "Stops the build when the compatible string or the signing certificate or key is missing"
do_otpatch_bundle[doc] = "Wraps the livepatch module into a signed otpatch bundle with otpatchctl-native"
do_otpatch_bundle[prefuncs] += "otpatch_bundle_inputs_check"
# Re-sign when the certificates change, but keep machine-local key paths out of the task signature so that
# sstate can be shared between build hosts that keep the keys in different places.
do_otpatch_bundle[vardepsexclude] += "OTPATCH_SIGNING_CERT OTPATCH_SIGNING_KEY OTPATCH_SIGNING_CHAIN"
do_otpatch_bundle[file-checksums] += "${@' '.join('%s:True' % p for p in (d.getVar('OTPATCH_SIGNING_CERT'), d.getVar('OTPATCH_SIGNING_CHAIN')) if p and not p.startswith('pkcs11:'))}"
addtask otpatch_bundle after do_install before do_deploy

do_deploy() {
    install -m 0644 ${B}/${OTPATCH_BUNDLE_NAME} ${DEPLOYDIR}/
}
addtask deploy after do_otpatch_bundle before do_build
