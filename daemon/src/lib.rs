//! otpatchd
