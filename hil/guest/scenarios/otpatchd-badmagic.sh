# otpatchd-badmagic: a correctly signed bundle for the running kernel's release whose module carries a
# forged vermagic (Debian's PREEMPT_RT flavour, made by build.sh): the signature and the manifest pass,
# so only otpatchd's own .modinfo check before finit_module can refuse it. Nothing is loaded.
. /hil/otpatchd.sh

otp_setup
otp_start
otp_window
otp_evidence
otp_refused_checks
check refused-for-vermagic otp_status_has 'vermagic'
otp_stop
