# Template: copy into your board layer as recipes-core/rauc/rauc-conf.bbappend, next to files/system.conf
# (from meta-otpatch's templates/rauc-conf/files) and files/ca.cert.pem (the CA that signs your RAUC
# bundles). It lives outside meta-otpatch's recipes on purpose: appending rauc-conf from meta-otpatch would
# change RAUC's configuration for every build that merely adds the layer.
FILESEXTRAPATHS:prepend := "${THISDIR}/files:"

OTPATCH_COMPATIBLE ??= "${MACHINE}-otpatch-gateway"
# qemux86-64 boots through GRUB (EFI); most ARM boards use U-Boot.
OTPATCH_RAUC_BOOTLOADER ??= "grub"
OTPATCH_RAUC_SLOT_A ??= "/dev/disk/by-partlabel/rootfs-a"
OTPATCH_RAUC_SLOT_B ??= "/dev/disk/by-partlabel/rootfs-b"

do_install:append() {
    sed -i \
        -e 's,@OTPATCH_COMPATIBLE@,${OTPATCH_COMPATIBLE},g' \
        -e 's,@OTPATCH_RAUC_BOOTLOADER@,${OTPATCH_RAUC_BOOTLOADER},g' \
        -e 's,@OTPATCH_RAUC_SLOT_A@,${OTPATCH_RAUC_SLOT_A},g' \
        -e 's,@OTPATCH_RAUC_SLOT_B@,${OTPATCH_RAUC_SLOT_B},g' \
        ${D}${nonarch_libdir}/rauc/system.conf
    if grep -q '@[A-Z_]*@' ${D}${nonarch_libdir}/rauc/system.conf; then
        bbfatal "system.conf still has unset @...@ values"
    fi
}
