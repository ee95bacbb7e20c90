//! Errors and the stable exit codes of otpatchctl.
//!
//! D-Bus errors are mapped by name, so that the daemon's replies (and the bus's own refusals) land on the same
//! exit code whichever way they reach us.

use std::fmt;
use std::time::Duration;

use otpatch_common::api::{DaemonError, BUS_NAME};
use otpatch_common::units::format_duration;
use zbus::DBusError;

/// The exit codes. They are part of the interface: scripts and SCADA integrations test them.
/// (Defined once, with their meanings, in [`otpatch_common::exit::ExitCode`]; these are its values.)
pub mod exit {
    use otpatch_common::exit::ExitCode;
    pub const OK: u8 = ExitCode::Ok.code();
    pub const FAILURE: u8 = ExitCode::Failure.code();
    pub const UNREACHABLE: u8 = ExitCode::Unreachable.code();
    pub const DENIED: u8 = ExitCode::Denied.code();
    pub const POLICY_INVALID: u8 = ExitCode::PolicyInvalid.code();
    pub const CHAIN_BROKEN: u8 = ExitCode::ChainBroken.code();
    pub const WAIT_TIMEOUT: u8 = ExitCode::WaitTimeout.code();
    pub const BUNDLE_REFUSED: u8 = ExitCode::BundleRefused.code();
    pub const INTERRUPTED: u8 = ExitCode::Interrupted.code();
}

/// Error names of the failures otpatchctl finds itself (the `name` of `{"error": ...}` in `--json` mode).
pub mod names {
    pub const NO_BUS: &str = "otpatchctl.NoBus";
    pub const TIMEOUT: &str = "otpatchctl.Timeout";
    pub const FAILED: &str = "otpatchctl.Failed";
    pub const BAD_REPLY: &str = "otpatchctl.BadReply";
    pub const POLICY_INVALID: &str = "otpatchctl.PolicyInvalid";
    pub const CHAIN_BROKEN: &str = "otpatchctl.AuditChainBroken";
    pub const WAIT_TIMEOUT: &str = "otpatchctl.WaitTimeout";
    pub const BUS_LOST: &str = "otpatchctl.BusLost";
    pub const BUNDLE_REFUSED: &str = "otpatchctl.BundleRefused";
}

const SERVICE_UNKNOWN: &str = "org.freedesktop.DBus.Error.ServiceUnknown";
const NAME_HAS_NO_OWNER: &str = "org.freedesktop.DBus.Error.NameHasNoOwner";

/// A failure with its exit code, a name (the D-Bus error name when the bus or the daemon answered with one) and a
/// message for people.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlError {
    pub code: u8,
    pub name: String,
    pub message: String,
}

impl CtlError {
    pub fn new(code: u8, name: impl Into<String>, message: impl Into<String>) -> Self {
        CtlError { code, name: name.into(), message: message.into() }
    }

    /// Exit 1, for anything without a more specific code.
    pub fn failed(message: impl Into<String>) -> Self {
        CtlError::new(exit::FAILURE, names::FAILED, message)
    }

    /// `{"error": {"name": ..., "message": ...}}`
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"name": self.name, "message": self.message}})
    }
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CtlError {}

/// The exit code for a D-Bus error name.
pub fn code_for_error_name(name: &str) -> u8 {
    if let Some(e) = DaemonError::from_name(name) {
        return e.exit_code().code();
    }
    match name {
        "org.freedesktop.DBus.Error.AuthFailed" | "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired" => {
            exit::DENIED
        }
        SERVICE_UNKNOWN
        | NAME_HAS_NO_OWNER
        | "org.freedesktop.DBus.Error.NoReply"
        | "org.freedesktop.DBus.Error.NoServer"
        | "org.freedesktop.DBus.Error.Disconnected"
        | "org.freedesktop.DBus.Error.Timeout"
        | "org.freedesktop.DBus.Error.TimedOut" => exit::UNREACHABLE,
        _ => exit::FAILURE,
    }
}

/// Which system bus we use, for messages about it.
pub fn bus_note() -> String {
    match std::env::var("DBUS_SYSTEM_BUS_ADDRESS") {
        Ok(a) if !a.is_empty() => format!("DBUS_SYSTEM_BUS_ADDRESS={a}"),
        _ => "the default system bus; DBUS_SYSTEM_BUS_ADDRESS is not set".to_string(),
    }
}

/// The error for a D-Bus error reply `name` with the text `message`.
pub fn from_dbus_error(name: &str, message: &str) -> CtlError {
    let code = code_for_error_name(name);
    let detail = if message.is_empty() { String::new() } else { format!(" ({message})") };
    let text = match code {
        // The daemon says which group its policy names; the bus's own refusals do not.
        exit::DENIED if message.contains("must be root") => format!("access denied: {message}"),
        exit::DENIED => format!("access denied: must be root or in group otpatch{detail}"),
        exit::UNREACHABLE if name == SERVICE_UNKNOWN || name == NAME_HAS_NO_OWNER => {
            format!("otpatchd is not running: the name {BUS_NAME} is not on the system bus ({})", bus_note())
        }
        exit::UNREACHABLE => format!("otpatchd did not answer: {name}{detail} ({})", bus_note()),
        exit::FAILURE
            if name == "org.freedesktop.DBus.Error.UnknownMethod"
                || name == "org.freedesktop.DBus.Error.UnknownInterface"
                || name == "org.freedesktop.DBus.Error.UnknownObject" =>
        {
            format!("otpatchd does not offer this call; is it an older version?{detail}")
        }
        _ if message.is_empty() => name.to_string(),
        _ => message.to_string(),
    };
    CtlError::new(code, name, text)
}

/// The error for a failed connection to the system bus.
pub fn no_bus(e: &dyn fmt::Display) -> CtlError {
    CtlError::new(
        exit::UNREACHABLE,
        names::NO_BUS,
        format!("cannot connect to the system bus ({}): {e}; is dbus running?", bus_note()),
    )
}

/// The error for a failed D-Bus call; `timeout` is the one the call was given, for the message.
pub fn from_zbus(e: zbus::Error, timeout: Duration) -> CtlError {
    match e {
        zbus::Error::MethodError(name, message, _) => from_dbus_error(name.as_str(), message.as_deref().unwrap_or("")),
        zbus::Error::FDO(fdo) => match *fdo {
            zbus::fdo::Error::ZBus(inner) => from_zbus(inner, timeout),
            other => from_dbus_error(other.name().as_str(), other.description().unwrap_or("")),
        },
        zbus::Error::InputOutput(io) if io.kind() == std::io::ErrorKind::TimedOut => CtlError::new(
            exit::UNREACHABLE,
            names::TIMEOUT,
            format!("otpatchd did not answer within {} (see --timeout)", format_duration(timeout)),
        ),
        e @ (zbus::Error::InputOutput(_)
        | zbus::Error::Connection(..)
        | zbus::Error::Address(_)
        | zbus::Error::Handshake(_)) => no_bus(&e),
        other => CtlError::failed(format!("D-Bus call failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use otpatch_common::api::errors;

    #[test]
    fn error_names_map_to_stable_codes() {
        assert_eq!(code_for_error_name(errors::ACCESS_DENIED), 4);
        assert_eq!(code_for_error_name(errors::INVALID_ARGS), 5);
        assert_eq!(code_for_error_name(errors::WINDOW_REFUSED), 5);
        assert_eq!(code_for_error_name(errors::INVALID_STATE), 5);
        assert_eq!(code_for_error_name(errors::POLICY_REJECTED), 5);
        assert_eq!(code_for_error_name(errors::NOT_FOUND), 8);
        assert_eq!(code_for_error_name(errors::FAILED), 1);
        assert_eq!(code_for_error_name(SERVICE_UNKNOWN), 3);
        assert_eq!(code_for_error_name(NAME_HAS_NO_OWNER), 3);
        assert_eq!(code_for_error_name("org.freedesktop.DBus.Error.NoReply"), 3);
        assert_eq!(code_for_error_name("com.example.Whatever"), 1);
    }

    #[test]
    fn messages_say_what_to_do() {
        let e = from_dbus_error(errors::ACCESS_DENIED, "uid 1000 is not allowed");
        assert_eq!(e.code, exit::DENIED);
        assert!(e.message.contains("must be root or in group otpatch"), "{}", e.message);
        assert!(e.message.contains("uid 1000"), "{}", e.message);
        let daemon_says = "uid 1000 may not call Apply: the caller must be root or a member of group \"plant-ops\"";
        let e = from_dbus_error(errors::ACCESS_DENIED, daemon_says);
        assert_eq!(e.message, format!("access denied: {daemon_says}"));

        let e = from_dbus_error(SERVICE_UNKNOWN, "The name is not activatable");
        assert_eq!(e.code, exit::UNREACHABLE);
        assert!(e.message.contains(BUS_NAME), "{}", e.message);
        assert!(e.message.contains("DBUS_SYSTEM_BUS_ADDRESS"), "{}", e.message);

        let e = from_dbus_error(errors::WINDOW_REFUSED, "window overlaps w-20261201-0200");
        assert_eq!(e, CtlError::new(5, errors::WINDOW_REFUSED, "window overlaps w-20261201-0200"));

        let e = from_dbus_error(errors::NOT_FOUND, "");
        assert_eq!(e.message, errors::NOT_FOUND);
    }

    #[test]
    fn zbus_errors_are_mapped_by_name() {
        let t = Duration::from_secs(25);
        let e = from_zbus(zbus::Error::FDO(Box::new(zbus::fdo::Error::AccessDenied("no".into()))), t);
        assert_eq!((e.code, e.name.as_str()), (4, errors::ACCESS_DENIED));
        let e = from_zbus(zbus::Error::FDO(Box::new(zbus::fdo::Error::InvalidArgs("bad start".into()))), t);
        assert_eq!((e.code, e.name.as_str(), e.message.as_str()), (5, errors::INVALID_ARGS, "bad start"));
        let e = from_zbus(zbus::Error::FDO(Box::new(zbus::fdo::Error::ServiceUnknown("gone".into()))), t);
        assert_eq!(e.code, 3);
        let io = std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out");
        let e = from_zbus(zbus::Error::InputOutput(io.into()), t);
        assert_eq!((e.code, e.name.as_str()), (3, names::TIMEOUT));
        assert!(e.message.contains("25s"), "{}", e.message);
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no socket");
        let e = from_zbus(zbus::Error::InputOutput(io.into()), t);
        assert_eq!((e.code, e.name.as_str()), (3, names::NO_BUS));
        assert!(e.message.contains("DBUS_SYSTEM_BUS_ADDRESS"), "{}", e.message);
    }

    #[test]
    fn json_shape() {
        let e = CtlError::new(8, errors::NOT_FOUND, "no window w-9");
        assert_eq!(
            e.to_json(),
            serde_json::json!({"error": {"name": "io.otpatch.Error.NotFound", "message": "no window w-9"}})
        );
    }
}
