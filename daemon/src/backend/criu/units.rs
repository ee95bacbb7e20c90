//! Who a critical process is, and how it is signalled: a systemd unit's main pid (over the system bus), and a
//! pidfd, which keeps naming the process it was opened on even when that process exits and its pid is reused.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// Finds a systemd unit's main pid.
#[async_trait]
pub trait UnitResolver: Send + Sync {
    /// The unit's `MainPID` (0 when it has none).
    async fn main_pid(&self, unit: &str) -> Result<u32, String>;
}

#[zbus::proxy(
    interface = "org.freedesktop.systemd1.Manager",
    default_service = "org.freedesktop.systemd1",
    default_path = "/org/freedesktop/systemd1"
)]
trait Systemd1Manager {
    fn get_unit(&self, name: &str) -> zbus::Result<zbus::OwnedObjectPath>;
}

#[zbus::proxy(interface = "org.freedesktop.systemd1.Service", default_service = "org.freedesktop.systemd1")]
trait Systemd1Service {
    #[zbus(property, name = "MainPID")]
    fn main_pid(&self) -> zbus::Result<u32>;
}

/// systemd on the system bus: `Manager.GetUnit`, then the unit's `Service.MainPID`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemdUnits;

#[async_trait]
impl UnitResolver for SystemdUnits {
    async fn main_pid(&self, unit: &str) -> Result<u32, String> {
        let ask = async {
            let conn = zbus::Connection::system().await?;
            let path = Systemd1ManagerProxy::new(&conn).await?.get_unit(unit).await?;
            Systemd1ServiceProxy::builder(&conn).path(path).build().await?.main_pid().await
        };
        match tokio::time::timeout(Duration::from_secs(10), ask).await {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(_) => Err("systemd did not answer within 10 s".into()),
        }
    }
}

/// A process opened for signalling: a pidfd, which keeps naming the process it was opened on even when
/// that process exits and its pid is reused.
pub trait Pidfd: Send {
    /// SIGKILL to the process (`pidfd_send_signal`); `ESRCH` once it has exited.
    fn kill(&self) -> io::Result<()>;
}

/// Opens a pid for signalling (`pidfd_open`); `ESRCH` when no process has it.
pub type OpenFn = Arc<dyn Fn(i32) -> io::Result<Box<dyn Pidfd>> + Send + Sync>;

/// A kernel pidfd.
struct KernelPidfd(std::os::fd::OwnedFd);

impl Pidfd for KernelPidfd {
    fn kill(&self) -> io::Result<()> {
        use rustix::process::{pidfd_send_signal, Signal};
        pidfd_send_signal(&self.0, Signal::KILL).map_err(io::Error::from)
    }
}

/// `pidfd_open(2)` (Linux 5.3).
pub(super) fn open_pidfd(pid: i32) -> io::Result<Box<dyn Pidfd>> {
    use rustix::process::{pidfd_open, Pid, PidfdFlags};
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(Box::new(KernelPidfd(pidfd_open(pid, PidfdFlags::empty()).map_err(io::Error::from)?)))
}
