//! Reboots through systemd-logind on the system bus (`org.freedesktop.login1.Manager.Reboot`, the D-Bus
//! equivalent of `systemctl reboot`): systemd stops the services in order, otpatchd among them, so the journal and
//! the audit log are closed cleanly before the machine goes down.

use async_trait::async_trait;

use crate::backend::{BackendError, BackendResult, Rebooter};
use crate::sysroot::Sysroot;

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
pub trait Login1Manager {
    /// `interactive = false`: no polkit prompt (otpatchd runs as root with the right to reboot).
    fn reboot(&self, interactive: bool) -> zbus::Result<()>;
}

/// The real rebooter: logind for the reboot, `/proc/sys/kernel/random/boot_id` for the boot.
#[derive(Debug, Clone)]
pub struct SystemdRebooter {
    pub root: Sysroot,
}

#[async_trait]
impl Rebooter for SystemdRebooter {
    async fn reboot(&self, why: &str) -> BackendResult<()> {
        tracing::warn!(reason = %why, "asking systemd for a reboot");
        let call = async {
            let conn = zbus::Connection::system().await?;
            Login1ManagerProxy::new(&conn).await?.reboot(false).await
        };
        match tokio::time::timeout(std::time::Duration::from_secs(30), call).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(BackendError::new(format!("systemd-logind refused the reboot: {e}"))),
            Err(_) => Err(BackendError::new("systemd-logind did not answer the reboot request within 30 s")),
        }
    }

    fn boot_id(&self) -> BackendResult<String> {
        self.root.boot_id().map_err(BackendError::new)
    }
}
