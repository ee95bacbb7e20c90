//! The D-Bus side of the daemon: [`server`] serves `io.otpatch.Daemon1` (the contract is
//! `daemon/dist/io.otpatch.Daemon1.xml` and `otpatch_common::api`) and authorizes every mutating call.

pub mod server;
