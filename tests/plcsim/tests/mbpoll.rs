//! The simulator checked by a Modbus master nobody here wrote: Debian's `mbpoll` reads what `otpatch-plcsim`
//! serves on 127.0.0.1, and its printed values must be the ones set. Then the daemon's probe engine watches the
//! simulator while the control port makes a value drift out of range.
//!
//! Every process is killed when its guard drops (and the simulator exits when its stdin closes); every wait is
//! bounded.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use otpatchd::backend::{HealthMonitor, Verdict};
use otpatchd::health::ModbusHealth;

/// A running simulator: commands on its stdin, replies from its stdout.
struct Sim {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
    addr: SocketAddr,
    control: SocketAddr,
}

impl Sim {
    fn start(exec: &[&str]) -> Sim {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_otpatch-plcsim"));
        cmd.args(["--listen", "127.0.0.1:0", "--control", "127.0.0.1:0", "--exit-on-eof"]);
        for e in exec {
            cmd.args(["-e", e]);
        }
        let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let next = |what: &str| {
            let line = lines.recv_timeout(Duration::from_secs(20)).unwrap_or_else(|_| panic!("no {what} line"));
            line.strip_prefix(&format!("{what} "))
                .unwrap_or_else(|| panic!("expected {what}, got {line:?}"))
                .to_string()
        };
        let addr = next("listening").parse().unwrap();
        let control = next("control").parse().unwrap();
        Sim { child, stdin, lines, addr, control }
    }

    /// A command on stdin; returns the reply line.
    fn cmd(&mut self, line: &str) -> String {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        self.lines.recv_timeout(Duration::from_secs(20)).expect("the simulator did not reply")
    }

    /// A command over the control port; returns the reply line.
    fn control(&self, line: &str) -> String {
        let mut stream = TcpStream::connect_timeout(&self.control, Duration::from_secs(5)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        writeln!(stream, "{line}").unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        reply.trim_end().to_string()
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `mbpoll` once against the simulator (PDU addressing, 1 s timeout) and returns (success, stdout+stderr).
fn mbpoll(sim: &Sim, args: &[&str]) -> (bool, String) {
    let port = sim.addr.port().to_string();
    let out = Command::new("mbpoll")
        .args(["-1", "-0", "-o", "1", "-p", &port])
        .args(args)
        .arg("127.0.0.1")
        .output()
        .unwrap_or_else(|e| panic!("cannot run mbpoll (Debian package mbpoll): {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// The `[ref]: value` lines mbpoll prints.
fn values(text: &str) -> Vec<(u32, String)> {
    text.lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix('[')?;
            let (reference, value) = rest.split_once("]:")?;
            Some((reference.parse().ok()?, value.trim().to_string()))
        })
        .collect()
}

fn owned(v: &[(u32, &str)]) -> Vec<(u32, String)> {
    v.iter().map(|(r, s)| (*r, s.to_string())).collect()
}

#[test]
fn mbpoll_reads_what_the_simulator_serves() {
    let mut sim = Sim::start(&["set h 100 f32 72.5", "set h 5 u16 42", "set h 6 u16 65535"]);
    assert_eq!(sim.cmd("set input 20 i16 -5"), "ok");
    assert_eq!(sim.cmd("set coil 3 1"), "ok");
    assert_eq!(sim.cmd("set discrete 9 1"), "ok");
    assert_eq!(sim.cmd("set h 200 i32 -100000"), "ok");

    let (ok, out) = mbpoll(&sim, &["-t", "4", "-r", "5", "-c", "3"]);
    assert!(ok, "{out}");
    // mbpoll shows a 16-bit register unsigned, with the signed reading in brackets when they differ.
    assert_eq!(values(&out), owned(&[(5, "42"), (6, "65535 (-1)"), (7, "0")]));

    let (ok, out) = mbpoll(&sim, &["-t", "4:float", "-B", "-r", "100"]);
    assert!(ok, "{out}");
    assert_eq!(values(&out), owned(&[(100, "72.5")]));

    let (ok, out) = mbpoll(&sim, &["-t", "4:int", "-B", "-r", "200"]);
    assert!(ok, "{out}");
    assert_eq!(values(&out), owned(&[(200, "-100000")]));

    let (ok, out) = mbpoll(&sim, &["-t", "3", "-r", "20"]);
    assert!(ok, "{out}");
    assert_eq!(values(&out), owned(&[(20, "65531 (-5)")]));

    let (ok, out) = mbpoll(&sim, &["-t", "0", "-r", "2", "-c", "3"]);
    assert!(ok, "{out}");
    assert_eq!(values(&out), owned(&[(2, "0"), (3, "1"), (4, "0")]));

    let (ok, out) = mbpoll(&sim, &["-t", "1", "-r", "9"]);
    assert!(ok, "{out}");
    assert_eq!(values(&out), owned(&[(9, "1")]));

    // A change over the control port is what the next read sees.
    assert_eq!(sim.control("set h 5 u16 7"), "ok");
    let (_, out) = mbpoll(&sim, &["-t", "4", "-r", "5"]);
    assert_eq!(values(&out), owned(&[(5, "7")]));
    assert_eq!(sim.control("get h 5"), "7");
}

#[test]
fn mbpoll_sees_exceptions_and_silence() {
    let mut sim = Sim::start(&["exception h 50 4"]);
    let (ok, out) = mbpoll(&sim, &["-t", "4", "-r", "50"]);
    assert!(!ok, "{out}");
    assert!(out.contains("Slave device or server failure"), "{out}");
    assert_eq!(sim.cmd("exception h 50 off"), "ok");
    let (ok, out) = mbpoll(&sim, &["-t", "4", "-r", "50"]);
    assert!(ok, "{out}");

    assert_eq!(sim.cmd("silence on"), "ok");
    let (ok, out) = mbpoll(&sim, &["-t", "4", "-r", "50"]);
    assert!(!ok, "{out}");
    assert!(out.contains("timed out"), "{out}");
    assert_eq!(sim.cmd("silence off"), "ok");
    let (ok, out) = mbpoll(&sim, &["-t", "4", "-r", "50"]);
    assert!(ok, "{out}");
}

#[test]
fn heartbeats_run_and_stop() {
    let mut sim = Sim::start(&["heartbeat h 1 20"]);
    let read = |sim: &Sim| -> u32 {
        let (ok, out) = mbpoll(sim, &["-t", "4", "-r", "1"]);
        assert!(ok, "{out}");
        values(&out)[0].1.parse().unwrap()
    };
    let first = read(&sim);
    let mut moved = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(50));
        if read(&sim) != first {
            moved = true;
            break;
        }
    }
    assert!(moved, "the heartbeat never changed");
    assert_eq!(sim.cmd("heartbeat h 1 off"), "ok");
    let stopped = read(&sim);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(read(&sim), stopped);
}

/// The daemon's probe engine on the simulator: a value drifting out of range fails the verdict.
#[tokio::test]
async fn the_probe_engine_sees_a_drift_out_of_range() {
    let sim = Sim::start(&["set h 0 f32 60"]);
    let text = format!(
        "[gateway]\nid = \"gw\"\ncompatible = \"t\"\n[trust]\nanchors = [\"/etc/otpatch/ca.pem\"]\n\
         [probe.boiler-temp]\ntcp = \"{}\"\naddress = 0\ntype = \"f32\"\nmax = 90\ninterval = \"50ms\"\n",
        sim.addr
    );
    let settings = otpatch_common::policy::parse_sources(
        &[(std::path::PathBuf::from("t.toml"), text)],
        &otpatch_common::policy::LoadOptions::default(),
    )
    .unwrap();
    let h = ModbusHealth::new(settings.probes);
    h.baseline().await.unwrap();
    assert_eq!(sim.control("drift h 0 f32 5 50"), "ok");
    let verdict = tokio::time::timeout(Duration::from_secs(60), h.observe(Duration::from_secs(50))).await.unwrap();
    let Verdict::Failed(reason) = verdict else { panic!("expected failed, got {verdict:?}") };
    assert!(reason.starts_with("boiler-temp: ") && reason.ends_with(" (3 consecutive)"), "{reason}");
    assert!(reason.contains("above max 90"), "{reason}");
}
