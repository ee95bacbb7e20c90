//! The connection to otpatchd on the system bus.

use std::time::Duration;

use otpatch_common::api::{Daemon1Proxy, StatusSnapshot};
use zbus::proxy::CacheProperties;

use crate::error::{exit, from_zbus, names, no_bus, CtlError};
use otpatch_common::units::format_duration;

/// A proxy for `io.otpatch.Daemon1` whose calls time out after `timeout`.
#[derive(Debug)]
pub struct Client {
    pub proxy: Daemon1Proxy<'static>,
    pub timeout: Duration,
}

impl Client {
    /// Connects to the system bus (`DBUS_SYSTEM_BUS_ADDRESS` when set).
    pub async fn connect(timeout: Duration) -> Result<Self, CtlError> {
        let build = zbus::connection::Builder::system().method_timeout(timeout).build();
        let conn = match tokio::time::timeout(timeout, build).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(no_bus(&e)),
            Err(_) => {
                return Err(no_bus(&format!("no answer within {} (see --timeout)", format_duration(timeout))));
            }
        };
        // Nothing reads cached properties (`watch` follows PropertiesChanged itself), so none are fetched.
        let proxy = Daemon1Proxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(|e| from_zbus(e, timeout))?;
        Ok(Client { proxy, timeout })
    }

    /// Maps a failed call to its exit code and message.
    pub fn err(&self, e: zbus::Error) -> CtlError {
        from_zbus(e, self.timeout)
    }

    /// `GetStatus` as the daemon sent it (JSON text).
    pub async fn status_text(&self) -> Result<String, CtlError> {
        self.proxy.get_status().await.map_err(|e| self.err(e))
    }
}

/// Reads the JSON text of `GetStatus`.
pub fn parse_status(text: &str) -> Result<StatusSnapshot, CtlError> {
    serde_json::from_str(text).map_err(|e| {
        CtlError::new(exit::FAILURE, names::BAD_REPLY, format!("otpatchd sent a status otpatchctl cannot read: {e}"))
    })
}
