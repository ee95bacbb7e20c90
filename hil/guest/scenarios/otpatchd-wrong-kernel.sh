# otpatchd-wrong-kernel: a correctly signed bundle whose manifest names another kernel release (Debian's
# PREEMPT_RT flavour of the same ABI): refused before anything is loaded, watch exits 10.
. /hil/otpatchd.sh

otp_setup
otp_start
otp_window
otp_evidence
otp_refused_checks
otp_stop
