//! Shared helpers for the process-level tests: a private system-like dbus-daemon, a temporary gateway root
//! with a policy, `otpatchd` with the fake backends, and `otpatchctl`.
//!
//! The binaries are taken from the cargo target directory; `tests/run.sh` builds them with the
//! `fake-backends,failpoints` features first. Every process started here is killed when its guard drops, and
//! every wait is bounded.

#![allow(clippy::unwrap_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A binary of the workspace, from the same target directory as this test.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = exe.parent().unwrap().parent().unwrap().join(name);
    assert!(
        path.exists(),
        "{} not built: run the tests with tests/run.sh (it builds otpatchd with the fake-backends feature)",
        path.display()
    );
    path
}

/// Which bus policy the private bus enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusPolicy {
    /// Like a system bus, with the shipped `io.otpatch.Daemon1.conf` included.
    Shipped,
    /// Anyone may send anything: only the daemon's own uid check stands.
    Permissive,
}

/// A private dbus-daemon.
#[derive(Debug)]
pub struct Bus {
    child: Child,
    pub address: String,
    _dir: TempDir,
}

impl Bus {
    pub fn start(policy: BusPolicy) -> Bus {
        let dir = tempfile::tempdir().unwrap();
        // Unprivileged test clients must reach the socket.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let socket = dir.path().join("system_bus_socket");
        let shipped = repo_root().join("daemon/dist/io.otpatch.Daemon1.conf");
        let default_policy = match policy {
            BusPolicy::Shipped => {
                r#"<allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>"#
            }
            BusPolicy::Permissive => {
                r#"<allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>"#
            }
        };
        let include = match policy {
            BusPolicy::Shipped => format!("<include>{}</include>", shipped.display()),
            BusPolicy::Permissive => String::new(),
        };
        let config = format!(
            r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    {default_policy}
  </policy>
  {include}
</busconfig>
"#,
            socket.display()
        );
        let conf = dir.path().join("bus.conf");
        fs::write(&conf, config).unwrap();
        let child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", conf.display()))
            .arg("--nofork")
            .arg("--nopidfile")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dbus-daemon must be installed (package dbus-daemon)");
        wait_for(Duration::from_secs(10), "the private bus socket", || socket.exists());
        Bus { child, address: format!("unix:path={}", socket.display()), _dir: dir }
    }
}

impl Drop for Bus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` every 50 ms until it holds or `limit` passes (then panics, naming `what`).
pub fn wait_for(limit: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

/// The demo policy, with a short observation, as `/etc/otpatch/policy.toml` of a temporary root.
pub const POLICY: &str = r#"
[gateway]
id = "gw-test"
compatible = "otpatch-demo"

[trust]
anchors = ["/etc/otpatch/trust/demo-ca.pem"]

[limits]
max_window = "1h"

[rollback]
observation = "2s"

[probe.boiler]
tcp = "127.0.0.1:5020"
address = 1
min = 10
max = 90
"#;

/// A temporary gateway root: policy, trust anchor file, users and groups.
#[derive(Debug)]
pub struct Gateway {
    pub root: TempDir,
}

/// uid of a user in the test root's group `otpatch` (gid 977): `daemon` (uid 1), which exists on every Debian
/// host, so the bus can look it up; the gateway root's /etc/passwd gives it primary group `otpatch`.
pub const OPERATOR_UID: u32 = 1;
/// uid of nobody.
pub const NOBODY_UID: u32 = 65534;

impl Gateway {
    pub fn new(policy: &str) -> Gateway {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc/otpatch/trust")).unwrap();
        fs::write(r.join("etc/otpatch/policy.toml"), policy).unwrap();
        fs::write(r.join("etc/otpatch/trust/demo-ca.pem"), "not read by the fake verifier\n").unwrap();
        fs::write(r.join("etc/group"), "root:x:0:\notpatch:x:977:\nnogroup:x:65534:\n").unwrap();
        fs::write(
            r.join("etc/passwd"),
            format!(
                "root:x:0:0::/root:/bin/sh\noperator:x:{OPERATOR_UID}:977::/:/bin/sh\nnobody:x:{NOBODY_UID}:65534::/:/bin/sh\n"
            ),
        )
        .unwrap();
        Gateway { root }
    }

    pub fn path(&self) -> &Path {
        self.root.path()
    }

    /// What the fake backends left on the pretend gateway.
    pub fn world(&self) -> serde_json::Value {
        let p = self.path().join("run/otpatch-fake/world.json");
        match fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).unwrap(),
            Err(_) => serde_json::json!({}),
        }
    }

    pub fn audit_text(&self) -> String {
        fs::read_to_string(self.path().join("var/lib/otpatch/audit.log")).unwrap_or_default()
    }
}

/// A running otpatchd with the fake backends.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts otpatchd and waits (bounded) until it owns its bus name.
    pub fn start(bus: &Bus, gw: &Gateway, script: &str, failpoints: &str) -> Daemon {
        Self::spawn(bus, gw, script, failpoints).on_bus(bus)
    }

    /// Waits (bounded) until the daemon answers on `bus`.
    pub fn on_bus(self, bus: &Bus) -> Daemon {
        wait_for(Duration::from_secs(20), "otpatchd on the bus", || ctl(bus, &["status"], None).status.success());
        self
    }

    /// Starts otpatchd without waiting.
    pub fn spawn(bus: &Bus, gw: &Gateway, script: &str, failpoints: &str) -> Daemon {
        Self::spawn_with_env(bus, gw, script, failpoints, &[])
    }

    /// Starts otpatchd without waiting, with extra environment variables.
    pub fn spawn_with_env(bus: &Bus, gw: &Gateway, script: &str, failpoints: &str, env: &[(&str, &str)]) -> Daemon {
        Self::spawn_full(bus, gw, script, failpoints, env, None)
    }

    /// Starts otpatchd without waiting, optionally inside network namespace `netns` (`ip netns exec`).
    pub fn spawn_full(
        bus: &Bus,
        gw: &Gateway,
        script: &str,
        failpoints: &str,
        env: &[(&str, &str)],
        netns: Option<&str>,
    ) -> Daemon {
        let log = gw.path().join(format!("otpatchd-{}.log", std::process::id()));
        let logf = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("otpatchd"));
                c
            }
            None => Command::new(bin("otpatchd")),
        };
        let child = cmd
            .args(["--root", gw.path().to_str().unwrap(), "--backends", "fake", "--log", "text"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address)
            .env("OTPATCH_FAKE_SCRIPT", script)
            .env("OTPATCH_FAILPOINTS", failpoints)
            .env("OTPATCH_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        Daemon { child: Some(child), log }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits (bounded) for the process to exit by itself; returns whether it was killed by a signal.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().unwrap();
        let start = Instant::now();
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st;
            }
            assert!(start.elapsed() < limit, "otpatchd did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = nix::unistd::Pid::from_raw(self.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        self.wait_exit(Duration::from_secs(20))
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid() as i32), sig).unwrap();
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs otpatchctl against the bus, optionally as another uid (the tests run as root).
pub fn ctl(bus: &Bus, args: &[&str], uid: Option<u32>) -> Output {
    let mut cmd = Command::new(bin("otpatchctl"));
    cmd.args(args).env("DBUS_SYSTEM_BUS_ADDRESS", &bus.address).env("NO_COLOR", "1").stdin(Stdio::null());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(if uid == OPERATOR_UID { 1 } else { 65534 });
    }
    cmd.output().unwrap()
}

/// `otpatchctl --json status`, or `null` when it cannot be read.
pub fn status(bus: &Bus) -> serde_json::Value {
    serde_json::from_slice(&ctl(bus, &["--json", "status"], None).stdout).unwrap_or_default()
}

/// The text of a command's stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// An RFC 3339 UTC start `secs` seconds from now, for `window schedule --start`.
pub fn start_in(secs: u64) -> String {
    let t = std::time::SystemTime::now() + Duration::from_secs(secs);
    // Rounded up to the next whole second, so the start is never less than `secs` away.
    let unix = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 1;
    // Civil time from Unix seconds (UTC), without a date library.
    let days = unix / 86_400;
    let rem = unix % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_788), (2026, 12, 1));
    }
}
