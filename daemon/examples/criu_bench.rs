//! Benchmark: freeze time and dump time of otpatchd's CRIU checkpointer against the same dump done with the
//! criu command line directly, for one running process, without and with pre-dump. Runs where CRIU works (the
//! QEMU guest of `hil/`, scenario `criu-bench`, which starts processes of 10, 100 and 300 MiB resident and runs
//! this for each):
//!
//!     cargo build --release -p otpatchd --example criu_bench
//!     criu_bench --pidfile /run/bench.pid --images /tmp/bench [--runs 3]
//!
//! Each run and mode: the criu CLI (`criu [pre-dump, then] dump --leave-running ...`, the command lines the
//! backend runs), then the backend's `checkpoint()` (resolve and inspect the process, free-space check, the
//! same criu commands, hashing of the metadata images, manifest). Freeze times are CRIU's own (`stats-dump`,
//! `frozen_time`: how long the process was stopped). Prints `HIL-BENCH` lines and medians with ratios; asserts
//! nothing.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use otpatch_common::policy::{CriticalProcess, ProcessSelector};
use otpatchd::backend::Checkpointer;
use otpatchd::criu::images::{parse_stats_dump, Manifest};
use otpatchd::criu::{CriuCheckpointer, CriuConfig};
use otpatchd::engine::WindowCtx;
use otpatchd::sysroot::Sysroot;

#[derive(Debug, Default, Clone, Copy)]
struct Sample {
    total_ms: f64,
    frozen_ms: f64,
}

fn criu(args: &[&str]) {
    let out = Command::new("criu").args(args).output().unwrap();
    assert!(out.status.success(), "criu {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn frozen_ms(dir: &Path) -> f64 {
    let s = parse_stats_dump(&std::fs::read(dir.join("stats-dump")).unwrap()).unwrap();
    s.frozen_us as f64 / 1000.0
}

/// The CLI: the same command lines the backend runs, typed by hand.
fn cli(pid: i32, dir: &Path, pre: bool) -> Sample {
    let (pid, d, p) = (pid.to_string(), dir.display().to_string(), dir.join("pre").display().to_string());
    std::fs::create_dir_all(dir.join("pre")).unwrap();
    let mut args = vec!["dump", "-t", &pid, "--leave-running", "-o", "dump.log", "-v4", "-D", &d, "--tcp-close"];
    let t = Instant::now();
    if pre {
        criu(&["pre-dump", "-t", &pid, "--track-mem", "-o", "pre-dump.log", "-v4", "-D", &p]);
        // The final dump of a pre-dumped process: only the pages dirtied since.
        args.extend(["--track-mem", "--prev-images-dir", "pre"]);
    }
    criu(&args);
    let s = Sample { total_ms: t.elapsed().as_secs_f64() * 1000.0, frozen_ms: frozen_ms(dir) };
    std::fs::remove_dir_all(dir).unwrap();
    s
}

async fn backend(pidfile: &Path, images: &Path, pre: bool, run: usize) -> (Sample, Manifest) {
    let p = CriticalProcess {
        name: "bench".into(),
        selector: ProcessSelector::Pidfile(pidfile.to_path_buf()),
        tcp_established: false,
        pre_dump: pre,
        user: None,
    };
    let root = Sysroot::host();
    let cfg = CriuConfig { images: images.to_path_buf(), ..CriuConfig::new(&root) };
    let c = CriuCheckpointer::new(root, vec![p], cfg);
    let w = WindowCtx {
        id: format!("bench-{run}"),
        start: jiff::Timestamp::now(),
        end: jiff::Timestamp::now(),
        auto_start: true,
    };
    let t = Instant::now();
    let cp = c.checkpoint(&w).await.unwrap();
    let total_ms = t.elapsed().as_secs_f64() * 1000.0;
    let m = Manifest::load(&c.set_dir(&cp.id).join("bench")).unwrap();
    c.discard(&cp).await.unwrap();
    let frozen_ms = m.stats.map_or(0.0, |s| s.frozen_us as f64 / 1000.0);
    (Sample { total_ms, frozen_ms }, m)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).map(|i| args[i + 1].clone());
    let pidfile = PathBuf::from(arg("--pidfile").expect("--pidfile FILE"));
    let images = PathBuf::from(arg("--images").expect("--images DIR"));
    let runs: usize = arg("--runs").map_or(3, |r| r.parse().unwrap());
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();

    for pre in [false, true] {
        let mode = if pre { "pre-dump" } else { "plain" };
        let (mut b, mut c) = (Vec::new(), Vec::new());
        let mut rss_mib = 0;
        for run in 1..=runs {
            let s = cli(pid, &images.join("cli"), pre);
            println!(
                "HIL-BENCH side=cli mode={mode} run={run} total_ms={:.0} frozen_ms={:.1}",
                s.total_ms, s.frozen_ms
            );
            c.push(s);
            let (s, m) = backend(&pidfile, &images, pre, run).await;
            rss_mib = m.rss >> 20;
            println!(
                "HIL-BENCH side=backend mode={mode} run={run} total_ms={:.0} frozen_ms={:.1} pre_dump_ms={} dump_ms={} \
                 rss_mib={rss_mib}",
                s.total_ms, s.frozen_ms, m.pre_dump_ms, m.dump_ms
            );
            b.push(s);
        }
        let bt = median(b.iter().map(|s| s.total_ms).collect());
        let ct = median(c.iter().map(|s| s.total_ms).collect());
        let bf = median(b.iter().map(|s| s.frozen_ms).collect());
        let cf = median(c.iter().map(|s| s.frozen_ms).collect());
        println!(
            "HIL-INFO criu-bench rss_mib={rss_mib} mode={mode} runs={runs} median: dump backend {bt:.0} ms / cli {ct:.0} \
             ms = {:.2}; frozen backend {bf:.1} ms / cli {cf:.1} ms = {:.2}",
            bt / ct,
            bf / cf
        );
    }
}
