//! The otpatch daemon as a library: the pure window [`engine`], the write-ahead [`journal`], the hash-chained
//! [`audit`] log, the [`backend`] traits every capability plugs into, the [`orchestrator`] that runs a window
//! through them, and the D-Bus [`dbus`] server. Each real backend is in `backend/<name>/` beside the trait it
//! implements (`backend/mod.rs`) and the fakes (`backend/fake.rs`).
//!
//! `main.rs` picks the real backends explicitly; the call-recording fakes in [`backend::fake`] exist only with
//! the `fake-backends` feature (demo and process tests) and in unit tests.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod audit;
pub mod backend;
pub mod committed;
pub mod dbus;
pub mod engine;
pub mod failpoints;
pub mod fsutil;
pub mod journal;
pub mod last_good;
pub mod orchestrator;
pub mod prune;
pub mod rolled_back;
pub mod sysroot;

// The backends live beside their trait, under `backend/`; their old paths stay valid.
pub use backend::{criu, fetch, firewall, health, livepatch, rauc, reboot, verify};
pub use dbus::server as service;
