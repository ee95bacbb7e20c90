//! Helpers for the Modbus tests: an independent PLC (pymodbus, from the pinned venv named by `OTPATCH_PYTHON`),
//! a serial line made of a `socat` pty pair, free loopback ports, and probes written as a plant engineer writes
//! them in the policy. Every process is killed when its guard drops; every wait is bounded.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use otpatch_common::policy::{parse_sources, LoadOptions, Probe};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long a peer may take to start or to answer a command (Python start-up on a loaded CI machine).
const PEER_WAIT: Duration = Duration::from_secs(30);

/// The Python of the test venv (with pymodbus pinned in tests/requirements.txt).
pub fn python() -> PathBuf {
    match std::env::var_os("OTPATCH_PYTHON") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "OTPATCH_PYTHON is not set: these tests need the Python venv with pymodbus \
             (tests/run.sh creates it from tests/requirements.txt and sets OTPATCH_PYTHON to its python3)"
        ),
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `tests/health/modbus_peer.py`: pymodbus as a PLC (or a listener that never answers), driven over stdin.
pub struct Peer {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Peer {
    /// pymodbus Modbus TCP server on 127.0.0.1:`port`.
    pub async fn tcp(port: u16) -> Peer {
        Peer::start(&["tcp", "--port", &port.to_string()]).await
    }

    /// Accepts connections on 127.0.0.1:`port` and never answers.
    pub async fn silent(port: u16) -> Peer {
        Peer::start(&["silent", "--port", &port.to_string()]).await
    }

    /// pymodbus Modbus RTU server on a serial device, 19200 8N1. No parity because some kernels (sandboxes such
    /// as the CI machine's) refuse PARENB on a pty with EINVAL; parity settings are passed to the port all the same.
    pub async fn rtu(device: &Path) -> Peer {
        Peer::start(&["rtu", "--device", &device.to_string_lossy(), "--baud", "19200", "--parity", "N"]).await
    }

    async fn start(args: &[&str]) -> Peer {
        let script = repo_root().join("tests/health/modbus_peer.py");
        let mut child = Command::new(python())
            .arg(&script)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {} {}: {e}", python().display(), script.display()));
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut peer = Peer { child, stdin, lines };
        let line = peer.next_line().await;
        assert_eq!(line, "ready", "the Modbus peer did not start ({args:?})");
        peer
    }

    async fn next_line(&mut self) -> String {
        match tokio::time::timeout(PEER_WAIT, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => panic!("the Modbus peer exited"),
            Ok(Err(e)) => panic!("reading from the Modbus peer: {e}"),
            Err(_) => panic!("the Modbus peer did not answer within {PEER_WAIT:?}"),
        }
    }

    /// Sends one command (see modbus_peer.py) and waits until the peer has applied it.
    pub async fn cmd(&mut self, line: &str) {
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
        let reply = self.next_line().await;
        assert_eq!(reply, "ok", "peer command {line:?}");
    }

    /// Kills the peer and waits until it is gone (its port is closed).
    pub async fn kill(mut self) {
        self.child.kill().await.unwrap();
    }
}

/// Two connected pseudo-terminals from `socat`: a serial line without hardware.
pub struct SerialPair {
    child: Child,
    _dir: tempfile::TempDir,
    /// The PLC's end.
    pub plc: PathBuf,
    /// The gateway's end.
    pub gateway: PathBuf,
}

impl SerialPair {
    pub async fn new() -> SerialPair {
        let dir = tempfile::tempdir().unwrap();
        let (plc, gateway) = (dir.path().join("plc"), dir.path().join("gw"));
        let child = Command::new("socat")
            .arg(format!("pty,raw,echo=0,link={}", plc.display()))
            .arg(format!("pty,raw,echo=0,link={}", gateway.display()))
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start socat (Debian package socat): {e}"));
        // socat creates the links once both ptys exist.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !(plc.exists() && gateway.exists()) {
            assert!(tokio::time::Instant::now() < deadline, "socat did not create the pty pair");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        SerialPair { child, _dir: dir, plc, gateway }
    }
}

impl Drop for SerialPair {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The `[probe.*]` of a policy made of the given probe tables (TOML), validated like the daemon's.
pub fn probes(toml: &str) -> Vec<Probe> {
    let text = format!(
        "[gateway]\nid = \"gw-test\"\ncompatible = \"test\"\n[trust]\nanchors = [\"/etc/otpatch/ca.pem\"]\n{toml}"
    );
    match parse_sources(&[(PathBuf::from("test.toml"), text)], &LoadOptions::default()) {
        Ok(settings) => settings.probes,
        Err(e) => panic!("test policy invalid:\n{e}"),
    }
}

/// Polls `cond` every 50 ms until it holds, failing the test after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
