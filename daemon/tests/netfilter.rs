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

use otpatch_common::policy::{Direction, Flow, Protocol};
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
            sh(&["ip", "-n", &gw, "addr", "add", &format!("fd00:18:{}::1/64", i + 1), "dev", &a, "nodad"]);
            sh(&["ip", "-n", &ns, "addr", "add", &format!("fd00:18:{}::2/64", i + 1), "dev", &b, "nodad"]);
            sh(&["ip", "-n", &gw, "link", "set", &a, "up"]);
            sh(&["ip", "-n", &ns, "link", "set", &b, "up"]);
            // The gateway routes between its peers (forwarding is switched on only by the tests that need it).
            sh(&["ip", "-n", &ns, "route", "add", "default", "via", &format!("198.18.{}.1", i + 1)]);
        }
        t
    }

    /// Lets the gateway forward IPv4 between its peers (a gateway between two OT networks).
    fn forwarding(&self) {
        sh(&["ip", "netns", "exec", &self.gw, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    }

    /// Forgets the gateway's and the peers' IPv6 neighbours, so the next packet needs neighbour discovery.
    fn flush_neighbours(&self) {
        for peer in ["gw", "srv", "plc", "oth"] {
            sh(&["ip", "-n", &self.ns(peer), "-6", "neigh", "flush", "all"]);
        }
    }

    /// Like [`Topology::reaches`], but the connection leaves from `from` (address and source port), as a peer whose
    /// packets look like replies of an allowed flow would send them.
    fn reaches_from(&self, which: &str, from: &str, to: &str) -> bool {
        let (from, to): (SocketAddr, SocketAddr) = (from.parse().unwrap(), to.parse().unwrap());
        self.run_in(which, move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let sock = tokio::net::TcpSocket::new_v4().unwrap();
                sock.set_reuseaddr(true).unwrap();
                sock.bind(from).unwrap();
                let conn = tokio::time::timeout(Duration::from_millis(2000), sock.connect(to)).await;
                let Ok(Ok(mut c)) = conn else { return false };
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 4];
                let echoed = async { c.write_all(b"ping").await.is_ok() && c.read_exact(&mut buf).await.is_ok() };
                tokio::time::timeout(Duration::from_millis(2000), echoed).await.unwrap_or(false) && &buf == b"ping"
            })
        })
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

/// A session opened before the window (a remote-access connection, say) that the test asks to exchange one round
/// trip at a time; the answer says whether it went through within 2 s.
struct Session {
    ask: std::sync::mpsc::Sender<()>,
    answer: std::sync::mpsc::Receiver<bool>,
}

impl Session {
    fn open(t: &Topology, which: &str, to: &str) -> Session {
        let to: SocketAddr = to.parse().unwrap();
        let (ask, asked) = std::sync::mpsc::channel::<()>();
        let (tell, answer) = std::sync::mpsc::channel();
        t.spawn(which, move || {
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2)).unwrap();
            c.set_read_timeout(Some(Duration::from_millis(2000))).unwrap();
            // Bounded: at most 10 round trips, and the thread ends when the test drops the session.
            for _ in 0..10 {
                if asked.recv().is_err() {
                    return;
                }
                let mut buf = [0u8; 4];
                let ok = c.write_all(b"ping").is_ok() && c.read_exact(&mut buf).is_ok() && &buf == b"ping";
                if tell.send(ok).is_err() || !ok {
                    return;
                }
            }
        });
        Session { ask, answer }
    }

    fn round_trip(&self) -> bool {
        self.ask.send(()).is_ok() && self.answer.recv_timeout(Duration::from_secs(5)).unwrap_or(false)
    }
}

fn plan() -> SegmentationPlan {
    SegmentationPlan {
        window_id: "w-test".into(),
        server: Some(("198.18.1.2".into(), 8443)),
        server_addrs: vec![],
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

/// What a window lets through is exactly the policy, and the site's own rules still decide:
/// - a flow otpatch allows (forwarded or to the gateway) that a site rule drops stays dropped;
/// - the gateway's own flows (patch server, probe targets) get no forwarding rules;
/// - a packet that looks like a reply of an allowed flow cannot open a connection to the gateway;
/// - a connection opened before the window that no flow allows passes nothing during it;
/// - IPv6 neighbour discovery still works, so allowed IPv6 peers stay reachable.
fn strict_scenario(t: &Topology, fw: &dyn Firewall, site_rules: &[Vec<String>]) {
    t.forwarding();
    t.echo_server("plc", "198.18.2.2:502");
    t.echo_server("plc", "198.18.2.2:503");
    t.echo_server("oth", "198.18.3.2:9000");
    t.echo_server("oth", "[fd00:18:3::2]:9000");
    t.echo_server("gw", "0.0.0.0:22");
    // The site's rules track connections (as any stateful site firewall does), so conntrack knows the sessions
    // opened before the window.
    for rule in site_rules {
        let argv: Vec<&str> = rule.iter().map(String::as_str).collect();
        sh(&argv);
    }
    let flow = |name: &str, address: &str, port: u16, direction: Direction, routed: bool| Flow {
        name: name.into(),
        address: address.parse().unwrap(),
        port,
        protocol: Protocol::Tcp,
        direction,
        routed,
    };
    let plan = SegmentationPlan {
        window_id: "w-strict".into(),
        server: Some(("198.18.1.2".into(), 8443)),
        server_addrs: vec![],
        flows: vec![
            // Routed OT traffic to the PLC: 502 the site allows, 503 the site drops on FORWARD.
            flow("plc-modbus", "198.18.2.2", 502, Direction::Outbound, true),
            flow("plc-isolated", "198.18.2.2", 503, Direction::Outbound, true),
            // The PLC may reach the gateway's port 22: the site drops that on INPUT.
            flow("plc-maint", "198.18.2.2", 22, Direction::Inbound, false),
            // The gateway talks to a historian at oth:4840 (nobody listens: only its reply rule matters here).
            flow("historian", "198.18.3.2", 4840, Direction::Outbound, false),
        ],
        probe_targets: vec!["198.18.3.2:9000".parse().unwrap(), "[fd00:18:3::2]:9000".parse().unwrap()],
        log_drops: false,
    };

    assert!(t.reaches("oth", "198.18.2.2:502"), "before the window oth reaches the PLC through the gateway");
    assert!(!t.reaches("oth", "198.18.2.2:503"), "the site isolates PLC port 503 on FORWARD");
    assert!(!t.reaches("plc", "198.18.2.1:22"), "the site drops the PLC's connections to port 22 on INPUT");
    assert!(t.reaches("plc", "198.18.3.2:9000"), "before the window the PLC reaches oth:9000 through the gateway");
    assert!(t.reaches_from("oth", "198.18.3.2:4840", "198.18.3.1:22"), "before the window oth reaches port 22");
    let remote = Session::open(t, "oth", "198.18.3.1:22");
    assert!(remote.round_trip(), "the remote session works before the window");
    let ot = long_flow(t, "198.18.3.2:9000");
    std::thread::sleep(Duration::from_millis(200));

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(fw.apply(&plan)).unwrap();

    assert!(t.reaches("oth", "198.18.2.2:502"), "a routed flow the policy allows and the site allows passes");
    assert!(!t.reaches("oth", "198.18.2.2:503"), "the site's FORWARD drop still holds for a flow otpatch allows");
    assert!(!t.reaches("plc", "198.18.2.1:22"), "the site's INPUT drop still holds for a flow otpatch allows");
    assert!(
        !t.reaches("plc", "198.18.3.2:9000"),
        "a probe target is the gateway's own flow: no forwarding rule lets others reach it"
    );
    assert!(
        !t.reaches_from("oth", "198.18.3.2:4840", "198.18.3.1:22"),
        "a connection opened from an allowed flow's peer port is not a reply and is refused"
    );
    assert!(!remote.round_trip(), "a session no flow allows passes nothing during the window");
    t.flush_neighbours();
    assert!(t.reaches("gw", "[fd00:18:3::2]:9000"), "IPv6 neighbour discovery works during the window");
    assert!(t.reaches("gw", "198.18.3.2:9000"), "the allowed probe target stays reachable");

    rt.block_on(fw.lift()).unwrap();
    assert!(!rt.block_on(fw.active()).unwrap());
    assert!(t.reaches_from("oth", "198.18.3.2:4840", "198.18.3.1:22"), "after the window oth reaches port 22 again");
    let _ = ot.stop.send(());
    let n = ot.handle.join().unwrap().expect("the allowed OT connection opened before the window never broke");
    assert!(n > 20, "the allowed flow kept exchanging through the window ({n} round trips)");
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

#[test]
fn nftables_window_is_exactly_the_policy_and_site_rules_still_decide() {
    let t = Topology::new();
    let mut argv = netns_prefix(&t);
    argv.push("nft".into());
    let fw = NftFirewall::new(argv.clone());
    let site = "add table inet site\n\
                add chain inet site site_forward { type filter hook forward priority 0; policy accept; }\n\
                add rule inet site site_forward ip daddr 198.18.2.2 tcp dport 503 drop\n\
                add chain inet site site_input { type filter hook input priority 0; policy accept; }\n\
                add rule inet site site_input ip saddr 198.18.2.2 tcp dport 22 drop\n\
                add rule inet site site_input ct state established,related accept\n";
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), site).unwrap();
    let mut load = argv;
    load.extend(["-f".into(), file.path().display().to_string()]);
    strict_scenario(&t, &fw, &[load]);
}

#[test]
fn iptables_window_is_exactly_the_policy_and_site_rules_still_decide() {
    let t = Topology::new();
    let fw = IptablesFirewall::new(netns_prefix(&t), "iptables-legacy", "ip6tables-legacy");
    let rule = |words: &str| {
        let mut v = netns_prefix(&t);
        v.push("iptables-legacy".into());
        v.extend(words.split(' ').map(String::from));
        v
    };
    strict_scenario(
        &t,
        &fw,
        &[
            rule("-A FORWARD -d 198.18.2.2/32 -p tcp --dport 503 -j DROP"),
            rule("-A INPUT -s 198.18.2.2/32 -p tcp --dport 22 -j DROP"),
            rule("-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        ],
    );
}

/// The name the patch server goes by in the DNS tests; only the test's own resolver knows it.
const DNS_NAME: &str = "patch.otpatch.test";

/// A DNS server for one name on UDP `addr` in namespace `which`: A 198.18.1.2 and AAAA fd00:18:1::2 for
/// [`DNS_NAME`], "no such name" for anything else. Counts the queries it answered. Serves until the namespace goes
/// away (bounded: at most 500 queries).
fn dns_server(t: &Topology, which: &str, addr: &str) -> std::sync::Arc<AtomicU32> {
    let addr: SocketAddr = addr.parse().unwrap();
    let count = std::sync::Arc::new(AtomicU32::new(0));
    let seen = count.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    t.spawn(which, move || {
        let sock = std::net::UdpSocket::bind(addr).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..500 {
            let Ok((n, peer)) = sock.recv_from(&mut buf) else { return };
            if let Some(answer) = dns_answer(&buf[..n]) {
                seen.fetch_add(1, Ordering::SeqCst);
                let _ = sock.send_to(&answer, peer);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    count
}

/// The answer to one query (header, one question), or None for what is not one.
fn dns_answer(q: &[u8]) -> Option<Vec<u8>> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*q.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(q.get(at..at + len)?).to_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*q.get(at)?, *q.get(at + 1)?]);
    let question = q.get(12..at + 4)?;
    let known = labels.join(".") == DNS_NAME;
    let rdata: Vec<u8> = match (known, qtype) {
        (true, 1) => vec![198, 18, 1, 2],
        (true, 28) => "fd00:18:1::2".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec(),
        _ => vec![],
    };
    let mut r = Vec::new();
    r.extend_from_slice(q.get(0..2)?);
    // A response, recursion desired and available; rcode 3 (no such name) for a name it does not know.
    r.extend_from_slice(&[0x81, if known { 0x80 } else { 0x83 }]);
    r.extend_from_slice(&[0, 1, 0, u8::from(!rdata.is_empty()), 0, 0, 0, 0]);
    r.extend_from_slice(question);
    if !rdata.is_empty() {
        r.extend_from_slice(&[0xc0, 0x0c]);
        r.extend_from_slice(&qtype.to_be_bytes());
        r.extend_from_slice(&[0, 1, 0, 0, 0, 60]);
        r.extend_from_slice(&u16::try_from(rdata.len()).unwrap().to_be_bytes());
        r.extend_from_slice(&rdata);
    }
    Some(r)
}

/// Resolves the patch server for window `window` with state in `state`, as otpatchd does before it segments
/// ([`otpatchd::firewall::ServerAddresses::for_window`]), in a child process inside the gateway's namespace, whose
/// resolver (`ip netns exec` mounts `/etc/netns/<ns>/`) asks the test's DNS server: a thread cannot have its own
/// resolv.conf. Ok(addresses) or Err(the error's text).
fn resolve_in_gateway(t: &Topology, state: &std::path::Path, window: &str) -> Result<Vec<SocketAddr>, String> {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &t.gw])
        .arg(exe)
        .args(["--exact", "dns_child_resolves_the_patch_server", "--ignored", "--nocapture", "--test-threads=1"])
        .env("OTPATCH_DNS_STATE", state)
        .env("OTPATCH_DNS_WINDOW", window)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let line = text
        .lines()
        .find_map(|l| l.split_once("DNS-RESULT ").map(|(_, r)| r))
        .unwrap_or_else(|| panic!("the child printed no result: {text}\n{}", String::from_utf8_lossy(&out.stderr)));
    serde_json::from_str::<Result<Vec<SocketAddr>, String>>(line).unwrap()
}

/// Not a test of its own: the child that [`resolve_in_gateway`] runs in the gateway's namespace.
#[test]
#[ignore = "run by the DNS tests inside the gateway's namespace"]
fn dns_child_resolves_the_patch_server() {
    let state = std::env::var_os("OTPATCH_DNS_STATE").expect("run by resolve_in_gateway");
    let window = std::env::var("OTPATCH_DNS_WINDOW").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let r = rt
        .block_on(otpatchd::firewall::ServerAddresses::for_window(
            std::path::Path::new(&state),
            &window,
            DNS_NAME,
            8443,
            &[],
        ))
        .map_err(|e| e.to_string());
    println!("\nDNS-RESULT {}", serde_json::to_string(&r).unwrap());
}

/// The gateway's resolver configuration for `ip netns exec` in its namespace; removed on drop.
struct NetnsEtc(std::path::PathBuf);

impl NetnsEtc {
    fn new(t: &Topology, resolver: &str) -> NetnsEtc {
        let dir = std::path::Path::new("/etc/netns").join(&t.gw);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("resolv.conf"), format!("nameserver {resolver}\noptions timeout:1 attempts:1\n"))
            .unwrap();
        std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        NetnsEtc(dir)
    }
}

impl Drop for NetnsEtc {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The patch server's name is resolved once, before the window, and the window allows exactly what it resolved
/// to: both of its addresses (IPv4 and IPv6) stay reachable, another address of the same host is not, DNS itself
/// is blocked during the window, and a restart mid-window (recovery) gets the recorded addresses without asking DNS.
fn dns_scenario(t: &Topology, fw: &dyn Firewall) {
    sh(&["ip", "-n", &t.ns("srv"), "addr", "add", "198.18.1.3/24", "dev", &format!("{}p0", t.tag)]);
    t.echo_server("srv", "198.18.1.2:8443");
    t.echo_server("srv", "[fd00:18:1::2]:8443");
    t.echo_server("srv", "198.18.1.3:8443");
    let queries = dns_server(t, "oth", "198.18.3.2:53");
    let _etc = NetnsEtc::new(t, "198.18.3.2");
    let state = tempfile::tempdir().unwrap();

    let mut addrs = resolve_in_gateway(t, state.path(), "w-dns").expect("the name resolves before the window");
    addrs.sort();
    let want: Vec<SocketAddr> = vec!["198.18.1.2:8443".parse().unwrap(), "[fd00:18:1::2]:8443".parse().unwrap()];
    assert_eq!(addrs, want, "what the test's DNS server answers");
    let asked = queries.load(Ordering::SeqCst);
    assert!(asked > 0, "the resolution went through the test's DNS server");
    assert!(t.reaches("gw", "198.18.1.3:8443"), "before the window the other address is reachable");

    let plan = SegmentationPlan {
        window_id: "w-dns".into(),
        server: Some((DNS_NAME.into(), 8443)),
        server_addrs: addrs.clone(),
        flows: vec![],
        probe_targets: vec![],
        log_drops: false,
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(fw.apply(&plan)).unwrap();
    let view = rt.block_on(fw.inspect()).unwrap().expect("segmentation is in place");

    assert!(t.reaches("gw", "198.18.1.2:8443"), "the patch server's IPv4 address is allowed");
    assert!(t.reaches("gw", "[fd00:18:1::2]:8443"), "the patch server's IPv6 address is allowed");
    assert!(!t.reaches("gw", "198.18.1.3:8443"), "an address the name did not resolve to is not: {}", view.ruleset);
    // Recovery after a restart: the recorded addresses, no DNS needed.
    let again = resolve_in_gateway(t, state.path(), "w-dns").expect("the recorded addresses are reused");
    assert_eq!(again.len(), 2, "{again:?}");
    assert_eq!(queries.load(Ordering::SeqCst), asked, "recovery asked DNS nothing");
    // DNS itself is not part of the window: a fresh resolution cannot reach the DNS server.
    let fresh = tempfile::tempdir().unwrap();
    let e = resolve_in_gateway(t, fresh.path(), "w-other").expect_err("DNS is blocked during the window");
    assert!(e.contains("cannot resolve"), "{e}");
    assert_eq!(queries.load(Ordering::SeqCst), asked, "no DNS query got out of the gateway during the window");

    rt.block_on(fw.lift()).unwrap();
    assert!(resolve_in_gateway(t, fresh.path(), "w-after").is_ok(), "DNS works again after the window");
    assert!(t.reaches("gw", "198.18.1.3:8443"), "after the window the other address is reachable again");
}

#[test]
fn nftables_window_allows_exactly_the_resolved_patch_server_and_needs_no_dns() {
    let t = Topology::new();
    let mut argv = netns_prefix(&t);
    argv.push("nft".into());
    dns_scenario(&t, &NftFirewall::new(argv));
}

#[test]
fn iptables_window_allows_exactly_the_resolved_patch_server_and_needs_no_dns() {
    let t = Topology::new();
    let fw = IptablesFirewall::new(netns_prefix(&t), "iptables-legacy", "ip6tables-legacy");
    dns_scenario(&t, &fw);
}
