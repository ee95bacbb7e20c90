//! The otpatch daemon as a library: the pure window [`engine`], the write-ahead [`journal`], the hash-chained
//! [`audit`] log, the [`backend`] traits every capability plugs into, the [`orchestrator`] that runs a window
//! through them, and the D-Bus [`service`].
//!
//! `main.rs` picks the real backends explicitly; the call-recording fakes in [`backend::fake`] exist only with
//! the `fake-backends` feature (demo and process tests) and in unit tests.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod audit;
pub mod backend;
pub mod committed;
pub mod criu;
pub mod engine;
pub mod failpoints;
pub mod fetch;
pub mod firewall;
pub mod fsutil;
pub mod health;
pub mod journal;
pub mod last_good;
pub mod livepatch;
pub mod orchestrator;
pub mod prune;
pub mod rauc;
pub mod reboot;
pub mod rolled_back;
pub mod service;
pub mod sysroot;
pub mod verify;
