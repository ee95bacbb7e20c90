# otpatchd-tampered: the host serves a bundle with one payload byte flipped after signing (the signed
# index names the tampered file's own SHA-256, so the download succeeds): otpatchd refuses it at
# verification, nothing is loaded, segmentation is lifted, watch exits 10.
. /hil/otpatchd.sh

otp_setup
otp_start
otp_window
otp_evidence
otp_refused_checks
otp_stop
