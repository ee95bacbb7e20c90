SUMMARY = "otpatch: patch OT gateways inside scheduled update windows"
DESCRIPTION = "otpatchd, the systemd daemon that patches the gateway inside scheduled update windows \
               (segmentation, signed bundles, checkpoints, livepatch or A/B update, health probes with \
               rollback), and otpatchctl, its command-line client."

require otpatch.inc

inherit cargo cargo-update-recipe-crates systemd useradd bash-completion features_check

# otpatchd is a Type=notify systemd service; there is no SysV script.
REQUIRED_DISTRO_FEATURES = "systemd"

# The target's otpatchctl cannot run on the build host when cross-compiling (aarch64 gateway, x86-64 host),
# so the build host's own otpatchctl, built from the same commit, writes the completions and man pages.
DEPENDS += "otpatchctl-native"
OTPATCHCTL_NATIVE = "${STAGING_BINDIR_NATIVE}/otpatchctl"

do_install:append() {
    # cargo_do_install put otpatchd and otpatchctl into ${bindir}. The unit names /usr/bin/otpatchd; keep
    # it true if a distro moves bindir.
    install -d ${D}${systemd_system_unitdir}
    sed -e 's,/usr/bin/otpatchd,${bindir}/otpatchd,g' ${S}/daemon/dist/otpatchd.service \
        > ${D}${systemd_system_unitdir}/otpatchd.service
    chmod 0644 ${D}${systemd_system_unitdir}/otpatchd.service

    install -Dm 0644 ${S}/daemon/dist/io.otpatch.Daemon1.conf ${D}${datadir}/dbus-1/system.d/io.otpatch.Daemon1.conf
    install -Dm 0644 ${S}/daemon/dist/io.otpatch.Daemon1.xml ${D}${datadir}/dbus-1/interfaces/io.otpatch.Daemon1.xml
    install -Dm 0644 ${S}/daemon/dist/otpatch.sysusers.conf ${D}${nonarch_libdir}/sysusers.d/otpatch.conf
    install -Dm 0644 ${S}/daemon/dist/otpatch.tmpfiles.conf ${D}${nonarch_libdir}/tmpfiles.d/otpatch.conf
    # Only for gateways with critical processes (package otpatchd-criu): lifts the unit's sandboxing that CRIU
    # preflight refuses or that restored processes would inherit.
    install -Dm 0644 ${S}/daemon/dist/otpatchd-criu.conf ${D}${systemd_system_unitdir}/otpatchd.service.d/criu.conf

    # Vendor defaults: replaced by every package update, overridden key by key by /etc/otpatch.
    install -Dm 0644 ${S}/policies/vendor/00-defaults.toml ${D}${nonarch_libdir}/otpatch/policy.d/00-defaults.toml
    # The site's drop-in directory (tmpfiles creates it too, but a read-only rootfs needs it in the image).
    install -d ${D}${sysconfdir}/otpatch/policy.d

    install -d ${D}${datadir}/bash-completion/completions ${D}${datadir}/zsh/site-functions \
        ${D}${datadir}/fish/vendor_completions.d
    ${OTPATCHCTL_NATIVE} completions bash > ${D}${datadir}/bash-completion/completions/otpatchctl
    # OE's zsh searches site-functions (Debian's vendor-completions does not exist there).
    ${OTPATCHCTL_NATIVE} completions zsh > ${D}${datadir}/zsh/site-functions/_otpatchctl
    ${OTPATCHCTL_NATIVE} completions fish > ${D}${datadir}/fish/vendor_completions.d/otpatchctl.fish
    ${OTPATCHCTL_NATIVE} man --out ${D}${mandir}/man1 > /dev/null
}

# ${PN} itself stays an empty meta-package, so IMAGE_INSTALL += "otpatch" pulls in both programs.
PACKAGE_BEFORE_PN += "otpatchd-criu otpatchd otpatchctl ${PN}-zsh-completion ${PN}-fish-completion"
ALLOW_EMPTY:${PN} = "1"

FILES:otpatchd += "\
    ${bindir}/otpatchd \
    ${systemd_system_unitdir}/otpatchd.service \
    ${datadir}/dbus-1/system.d/io.otpatch.Daemon1.conf \
    ${nonarch_libdir}/sysusers.d/otpatch.conf \
    ${nonarch_libdir}/tmpfiles.d/otpatch.conf \
    ${nonarch_libdir}/otpatch \
    ${sysconfdir}/otpatch/policy.d \
"
FILES:otpatchctl += "${bindir}/otpatchctl"
FILES:otpatchd-criu += "${systemd_system_unitdir}/otpatchd.service.d/criu.conf"
FILES:${PN}-zsh-completion += "${datadir}/zsh/site-functions"
FILES:${PN}-fish-completion += "${datadir}/fish/vendor_completions.d"
# The D-Bus contract is for people writing SCADA/HMI clients, not needed at run time.
FILES:${PN}-dev += "${datadir}/dbus-1/interfaces"

# otpatchd talks on the system bus; the site policy and trust anchors come from whichever recipe provides
# virtual-otpatch-site-config (a recommendation, so a gateway provisioned at commissioning can do without).
# nftables is the preferred segmentation backend (iptables is the fallback).
RDEPENDS:${PN} = "otpatchctl otpatchd"
RDEPENDS:otpatchd = "dbus"
# Checkpoints of critical processes: CRIU itself and the unit drop-in it needs.
RDEPENDS:otpatchd-criu = "criu otpatchd"
RRECOMMENDS:otpatchd = "otpatchctl virtual-otpatch-site-config nftables"

SYSTEMD_PACKAGES = "otpatchd"
SYSTEMD_SERVICE:otpatchd = "otpatchd.service"

# The bus policy grants group "otpatch". sysusers.d alone is not enough: OE-core's rootfs check wants every
# sysusers.d group defined in the image, and a read-only rootfs cannot have systemd-sysusers add it at boot.
USERADD_PACKAGES = "otpatchd"
GROUPADD_PARAM:otpatchd = "--system otpatch"
