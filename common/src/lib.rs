//! Types shared by `otpatchd` and `otpatchctl`.
//!
//! This crate is deliberately light: it must not pull in TLS, Modbus or CRIU, because the command-line tool links
//! it. It holds what both sides of the D-Bus contract need to agree on:
//!
//! - [`policy`]: the layered TOML site policy, turned into validated [`policy::Settings`];
//! - [`schedule`]: one-off and recurring update windows, correct across daylight-saving changes;
//! - [`api`]: the D-Bus names, method/property types and error names of `io.otpatch.Daemon1`;
//! - [`audit`]: the hash-chained audit record, so `otpatchctl log --verify` checks the chain independently;
//! - [`units`]: durations (`90m`, `1h30m`, `500ms`) and sizes (`512MiB`) as written in policies and on the CLI.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod api;
pub mod audit;
#[cfg(feature = "bundle")]
pub mod bundle;
pub mod exit;
pub mod policy;
pub mod schedule;
pub mod units;
