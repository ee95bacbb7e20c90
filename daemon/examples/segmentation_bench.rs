//! Benchmark: time to apply and to lift a segmentation ruleset with 50 allowed flows, through the nftables and
//! iptables backends, against `nft -f` of the same ruleset; and how many packets of an established flow are lost
//! while rulesets are applied and lifted. Runs in a network namespace it creates (root, iproute2, nft, iptables).
//!
//!     cargo run --release -p otpatchd --example segmentation_bench [-- --rounds 30]
//!
//! Prints figures; asserts nothing.

#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use otpatch_common::policy::{Direction, Flow, Protocol};
use otpatchd::backend::{Firewall, SegmentationPlan};
use otpatchd::firewall::iptables::IptablesFirewall;
use otpatchd::firewall::nft::NftFirewall;
use otpatchd::firewall::Ruleset;

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn plan() -> SegmentationPlan {
    SegmentationPlan {
        window_id: "bench".into(),
        server: Some(("198.18.9.1".into(), 8443)),
        server_addrs: vec![],
        flows: (0..49)
            .map(|i| Flow {
                name: format!("flow{i}"),
                address: format!("198.18.{}.{}", 10 + i / 200, 1 + i % 200).parse().unwrap(),
                port: 502 + i as u16,
                protocol: Protocol::Tcp,
                direction: Direction::Outbound,
                routed: false,
            })
            .collect(),
        probe_targets: vec![],
        log_drops: false,
    }
}

fn stats(name: &str, v: &mut [Duration]) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "  {name:<34} median {:7.2} ms   p90 {:7.2} ms   min {:7.2} ms",
        ms(v[v.len() / 2]),
        ms(v[v.len() * 9 / 10]),
        ms(v[0])
    );
}

fn main() {
    let rounds: usize =
        std::env::args().skip_while(|a| a != "--rounds").nth(1).and_then(|r| r.parse().ok()).unwrap_or(30);
    let ns = format!("otbench{}", std::process::id());
    sh(&["ip", "netns", "add", &ns]);
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
        }
    }
    let _cleanup = Cleanup(ns.clone());
    sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
    // A PLC in its own namespace at the address of the first allowed flow (198.18.10.1:502).
    let plc = format!("{ns}p");
    sh(&["ip", "netns", "add", &plc]);
    let _cleanup_plc = Cleanup(plc.clone());
    sh(&["ip", "link", "add", "otbg", "netns", &ns, "type", "veth", "peer", "name", "otbp", "netns", &plc]);
    sh(&["ip", "-n", &ns, "addr", "add", "198.18.10.254/24", "dev", "otbg"]);
    sh(&["ip", "-n", &plc, "addr", "add", "198.18.10.1/24", "dev", "otbp"]);
    sh(&["ip", "-n", &ns, "link", "set", "otbg", "up"]);
    sh(&["ip", "-n", &plc, "link", "set", "otbp", "up"]);
    sh(&["ip", "netns", "exec", &ns, "sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_loose=0"]);
    let plc_path = format!("/run/netns/{plc}");
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&plc_path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let l = TcpListener::bind("198.18.10.1:502").unwrap();
        ready_tx.send(()).unwrap();
        if let Ok((mut c, _)) = l.accept() {
            let mut b = [0u8; 8];
            while c.read_exact(&mut b).is_ok() && c.write_all(&b).is_ok() {}
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let prefix = vec!["ip".to_string(), "netns".into(), "exec".into(), ns.clone()];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();

    // An OT connection opened before any ruleset keeps exchanging messages while rulesets come and go; count
    // lost round trips.
    let path = format!("/run/netns/{ns}");
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let flow = std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap();
        nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let mut c = TcpStream::connect("198.18.10.1:502").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let (mut ok, mut lost) = (0u64, 0u64);
        for i in 0u64..1_000_000 {
            if stop_rx.try_recv().is_ok() {
                break;
            }
            let m = i.to_be_bytes();
            let mut b = [0u8; 8];
            if c.write_all(&m).is_ok() && c.read_exact(&mut b).is_ok() && b == m {
                ok += 1;
            } else {
                lost += 1;
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (ok, lost)
    });

    let plan = plan();
    let rs = rt.block_on(Ruleset::resolve(&plan)).unwrap();
    let script = NftFirewall::script(&rs);
    println!("segmentation benchmark: {} allowed flows, {rounds} rounds each", rs.rules.len());

    let nft = NftFirewall::new([prefix.clone(), vec!["nft".into()]].concat());
    let (mut apply, mut lift) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        rt.block_on(nft.apply(&plan)).unwrap();
        apply.push(t.elapsed());
        let t = Instant::now();
        rt.block_on(nft.lift()).unwrap();
        lift.push(t.elapsed());
    }
    stats("otpatch nftables apply", &mut apply);
    stats("otpatch nftables lift (with counters)", &mut lift);

    let mut raw = Vec::new();
    std::fs::write(format!("/tmp/{ns}.nft"), &script).unwrap();
    for _ in 0..rounds {
        let t = Instant::now();
        sh(&["ip", "netns", "exec", &ns, "nft", "-f", &format!("/tmp/{ns}.nft")]);
        raw.push(t.elapsed());
        sh(&["ip", "netns", "exec", &ns, "nft", "delete", "table", "inet", "otpatch"]);
    }
    let _ = std::fs::remove_file(format!("/tmp/{ns}.nft"));
    stats("nft -f of the same ruleset", &mut raw);

    let ipt = IptablesFirewall::new(prefix, "iptables-legacy", "ip6tables-legacy");
    let (mut apply, mut lift) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let t = Instant::now();
        rt.block_on(ipt.apply(&plan)).unwrap();
        apply.push(t.elapsed());
        let t = Instant::now();
        rt.block_on(ipt.lift()).unwrap();
        lift.push(t.elapsed());
    }
    stats("otpatch iptables(-legacy) apply", &mut apply);
    stats("otpatch iptables(-legacy) lift", &mut lift);

    stop_tx.send(()).unwrap();
    let (ok, lost) = flow.join().unwrap();
    println!("  established flow during all of it: {ok} round trips, {lost} lost");
}
