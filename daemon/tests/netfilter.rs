//! Segmentation against the real kernel: network namespaces for the gateway, the patch server, a PLC and an
//! unrelated host, joined to the gateway by veth pairs. The same scenario runs with the nftables backend and the
//! iptables (legacy, i.e. a gateway without nft) backend. Needs root, iproute2, nft and iptables.
//!
//! All traffic stays inside namespaces this test creates; they are deleted when the test ends, failed or not.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use otpatchd::backend::{Firewall, SegmentationPlan};
use otpatchd::firewall::iptables::IptablesFirewall;
use otpatchd::firewall::nft::NftFirewall;

static NEXT: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Four namespaces: gw, srv (patch server), plc, oth (unrelated), each peer on its own /24 with the gateway.
struct Topology {
    tag: String,
    gw: String,
}

impl Topology {
    fn new() -> Topology {
        let tag = format!("ot{}x{}", std::process::id() % 100_000, NEXT.fetch_add(1, Ordering::SeqCst));
        let gw = format!("{tag}gw");
        let t = Topology { tag: tag.clone(), gw: gw.clone() };
        sh(&["ip", "netns", "add", &gw]);
        sh(&["ip", "-n", &gw, "link", "set", "lo", "up"]);
        // Like a gateway whose conntrack has not seen a connection: no mid-stream pick-up as "established", so
        // only the rules by address and port can keep an OT connection opened before the window alive.
        sh(&["ip", "netns", "exec", &gw, "sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_loose=0"]);
        for (i, peer) in ["srv", "plc", "oth"].iter().enumerate() {
            let ns = format!("{tag}{peer}");
            let (a, b) = (format!("{tag}g{i}"), format!("{tag}p{i}"));
            sh(&["ip", "netns", "add", &ns]);
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
            sh(&["ip", "link", "add", &a, "netns", &gw, "type", "veth", "peer", "name", &b, "netns", &ns]);
            sh(&["ip", "-n", &gw, "addr", "add", &format!("198.18.{}.1/24", i + 1), "dev", &a]);
            sh(&["ip", "-n", &ns, "addr", "add", &format!("198.18.{}.2/24", i + 1), "dev", &b]);
            sh(&["ip", "-n", &gw, "link", "set", &a, "up"]);
            sh(&["ip", "-n", &ns, "link", "set", &b, "up"]);
        }
        t
    }

    fn ns(&self, which: &str) -> String {
        if which == "gw" {
            self.gw.clone()
        } else {
            format!("{}{which}", self.tag)
        }
    }

    /// Runs `f` on a thread that has entered namespace `which`; sockets it makes live there.
    fn spawn<T: Send + 'static>(&self, which: &str, f: impl FnOnce() -> T + Send + 'static) -> JoinHandle<T> {
        let path = format!("/run/netns/{}", self.ns(which));
        std::thread::spawn(move || {
            let fd = File::open(&path).unwrap();
            nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
    }

    fn run_in<T: Send + 'static>(&self, which: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(which, f).join().unwrap()
    }

    /// An echo server in `which`, on `addr`; serves until the namespace goes away (bounded per connection).
    fn echo_server(&self, which: &str, addr: &str) {
        let addr: SocketAddr = addr.parse().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        self.spawn(which, move || {
            let l = TcpListener::bind(addr).unwrap();
            tx.send(()).unwrap();
            for conn in l.incoming().take(200) {
                let Ok(mut c) = conn else { continue };
                std::thread::spawn(move || {
                    let mut buf = [0u8; 64];
                    for _ in 0..1000 {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if c.write_all(&buf[..n]).is_err() {
                                    break;
                                }
                            }
                        }
                    }
                });
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).unwrap();
    }

    /// Whether a TCP connection from `which` to `to` gets through and echoes (2 s bounds: a blocked attempt waits
    /// them out, an allowed one on a loaded CI machine must not be mistaken for a blocked one).
    fn reaches(&self, which: &str, to: &str) -> bool {
        let to: SocketAddr = to.parse().unwrap();
        self.run_in(which, move || {
            let Ok(mut c) = TcpStream::connect_timeout(&to, Duration::from_millis(2000)) else { return false };
            c.set_read_timeout(Some(Duration::from_millis(2000))).unwrap();
            let mut buf = [0u8; 4];
            c.write_all(b"ping").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"ping"
        })
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for peer in ["gw", "srv", "plc", "oth"] {
            let _ = Command::new("ip").args(["netns", "del", &self.ns(peer)]).output();
        }
    }
}

/// A connection opened before the window that keeps exchanging (Modbus-like) requests through it.
struct LongFlow {
    stop: std::sync::mpsc::Sender<()>,
    handle: JoinHandle<Result<u32, String>>,
}

fn long_flow(t: &Topology, to: &str) -> LongFlow {
    let to: SocketAddr = to.parse().unwrap();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = t.spawn("gw", move || {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = ready_tx.send(());
        let mut n = 0u32;
        // Bounded: at most 10 000 round trips, one every 20 ms, until told to stop.
        for i in 0..10_000u32 {
            if stopped.try_recv().is_ok() {
                return Ok(n);
            }
            let msg = i.to_be_bytes();
            c.write_all(&msg).map_err(|e| format!("write {i}: {e}"))?;
            let mut back = [0u8; 4];
            c.read_exact(&mut back).map_err(|e| format!("read {i}: {e}"))?;
            if back != msg {
                return Err(format!("round trip {i} corrupted"));
            }
            n += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(n)
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    LongFlow { stop, handle }
}

fn plan() -> SegmentationPlan {
    SegmentationPlan {
        window_id: "w-test".into(),
        server: Some(("198.18.1.2".into(), 8443)),
        flows: vec![],
        probe_targets: vec!["198.18.2.2:502".parse().unwrap()],
        log_drops: true,
    }
}

fn scenario(t: &Topology, fw: &dyn Firewall, site_rule: &[&str], site_check: &dyn Fn() -> bool) {
    t.echo_server("srv", "198.18.1.2:8443");
    t.echo_server("srv", "198.18.1.2:2222");
    t.echo_server("plc", "198.18.2.2:502");
    t.echo_server("oth", "198.18.3.2:9000");
    t.echo_server("gw", "0.0.0.0:22");
    sh(site_rule);

    let before = [
        ("gw", "198.18.1.2:8443"),
        ("gw", "198.18.2.2:502"),
        ("gw", "198.18.3.2:9000"),
        ("gw", "198.18.1.2:2222"),
        ("oth", "198.18.3.1:22"),
        ("srv", "198.18.1.1:22"),
        ("plc", "198.18.2.1:22"),
    ];
    for (from, to) in before {
        assert!(t.reaches(from, to), "before the window {from} reaches {to}");
    }
    let flow = long_flow(t, "198.18.2.2:502");
    std::thread::sleep(Duration::from_millis(200));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    assert!(!rt.block_on(fw.active()).unwrap());
    rt.block_on(fw.apply(&plan())).unwrap();
    assert!(rt.block_on(fw.active()).unwrap());
    // Applying again (recovery after a restart) replaces, never duplicates.
    rt.block_on(fw.apply(&plan())).unwrap();

    assert!(t.reaches("gw", "198.18.1.2:8443"), "the patch server port stays reachable");
    assert!(t.reaches("gw", "198.18.2.2:502"), "the PLC port stays reachable");
    assert!(!t.reaches("gw", "198.18.3.2:9000"), "the unrelated host is not reachable");
    assert!(!t.reaches("gw", "198.18.1.2:2222"), "other ports of the patch server are not reachable");
    assert!(!t.reaches("oth", "198.18.3.1:22"), "the unrelated host cannot reach the gateway");
    assert!(!t.reaches("srv", "198.18.1.1:22"), "the patch server cannot open connections to the gateway");
    std::thread::sleep(Duration::from_millis(300));
    let view = rt.block_on(fw.inspect()).unwrap().expect("segmentation is in place");
    assert!(view.ruleset.contains("198.18.2.2"), "the ruleset names the PLC: {}", view.ruleset);
    assert!(view.dropped_packets > 0, "{view:?}");

    let report = rt.block_on(fw.lift()).unwrap();
    assert!(report.was_active);
    assert!(report.dropped_packets > 0, "drops were counted: {report:?}");
    assert!(!rt.block_on(fw.active()).unwrap());
    assert_eq!(rt.block_on(fw.inspect()).unwrap(), None);
    // Lifting again is a no-op.
    let again = rt.block_on(fw.lift()).unwrap();
    assert!(!again.was_active);

    for (from, to) in before {
        assert!(t.reaches(from, to), "after the window {from} reaches {to} again");
    }
    assert!(site_check(), "the site's own rules are untouched");
    let _ = flow.stop.send(());
    let n = flow.handle.join().unwrap().expect("the OT connection opened before the window never broke");
    assert!(n > 20, "the long flow kept exchanging through the window ({n} round trips)");
}

fn netns_prefix(t: &Topology) -> Vec<String> {
    vec!["ip".into(), "netns".into(), "exec".into(), t.gw.clone()]
}

#[test]
fn nftables_segmentation_in_namespaces() {
    let t = Topology::new();
    let mut argv = netns_prefix(&t);
    argv.push("nft".into());
    let fw = NftFirewall::new(argv);
    let gw = t.gw.clone();
    let site = "add table inet site; add chain inet site c { type filter hook input priority 0; policy accept; }; \
                add rule inet site c counter";
    let check = move || {
        let out = Command::new("ip").args(["netns", "exec", &gw, "nft", "list", "tables"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("table inet site") && !text.contains("table inet otpatch")
    };
    let gw2 = t.gw.clone();
    scenario(&t, &fw, &["ip", "netns", "exec", &gw2, "nft", site], &check);
}

#[test]
fn iptables_segmentation_in_namespaces() {
    let t = Topology::new();
    let fw = IptablesFirewall::new(netns_prefix(&t), "iptables-legacy", "ip6tables-legacy");
    let gw = t.gw.clone();
    let check = move || {
        let out = Command::new("ip").args(["netns", "exec", &gw, "iptables-legacy", "-S"]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.contains("-A INPUT -p tcp -m tcp --dport 9999 -j ACCEPT") && !text.contains("OTPATCH")
    };
    let gw2 = t.gw.clone();
    scenario(
        &t,
        &fw,
        &[
            "ip",
            "netns",
            "exec",
            &gw2,
            "iptables-legacy",
            "-A",
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            "9999",
            "-j",
            "ACCEPT",
        ],
        &check,
    );
}
