//! Benchmark of the daemon's Modbus probe engine against `otpatch-plcsim` (run by `tests/bench/health.sh`).
//!
//! `health_bench MODBUS_ADDR CONTROL_ADDR` prints, on the current-thread runtime the daemon uses:
//! - the probe cost: reads per second and CPU for 50 probes at 10 Hz, and for 50 probes at 100 Hz (saturation);
//! - the latency from a register leaving its range to the `Failed` verdict (interval 100 ms, trip_after 3).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use otpatch_common::policy::{parse_sources, LoadOptions, Probe};
use otpatchd::backend::{HealthMonitor, Verdict};
use otpatchd::health::ModbusHealth;

fn probes(addr: SocketAddr, n: usize, interval: &str, trip_after: u32) -> Vec<Probe> {
    let mut text =
        "[gateway]\nid = \"gw\"\ncompatible = \"t\"\n[trust]\nanchors = [\"/etc/otpatch/ca.pem\"]\n".to_string();
    for i in 0..n {
        text.push_str(&format!(
            "[probe.p{i:02}]\ntcp = \"{addr}\"\naddress = {}\ntype = \"f32\"\nmin = 0\nmax = 90\n\
             interval = \"{interval}\"\ntimeout = \"1s\"\ntrip_after = {trip_after}\n",
            i * 2
        ));
    }
    parse_sources(&[(PathBuf::from("bench.toml"), text)], &LoadOptions::default()).unwrap().probes
}

fn control(addr: SocketAddr, line: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    writeln!(s, "{line}").unwrap();
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).unwrap();
    assert_eq!(reply.trim(), "ok", "{line}");
}

/// CPU time (user + system) of this process, from /proc/self/stat (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `after` starts at field 3.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

async fn cost(addr: SocketAddr, n: usize, interval: &str, secs: u64) {
    let h = ModbusHealth::new(probes(addr, n, interval, 3));
    h.baseline().await.unwrap();
    let before: u64 = h.probes().iter().map(|r| r.reads).sum();
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let verdict = h.observe(Duration::from_secs(secs)).await;
    let (cpu, wall) = (cpu_time() - cpu0, t0.elapsed());
    assert_eq!(verdict, Verdict::Healthy);
    let table = h.probes();
    let reads: u64 = table.iter().map(|r| r.reads).sum::<u64>() - before;
    let failures: u64 = table.iter().map(|r| r.failures).sum();
    let mut resp: Vec<u64> = table.iter().map(|r| r.last_response_us).collect();
    resp.sort_unstable();
    println!(
        "probe cost: {n} probes every {interval} for {secs}s: {reads} reads, {:.0} reads/s, {failures} failures, \
         CPU {:.2}s = {:.1}% of one core, median last response {} us",
        reads as f64 / wall.as_secs_f64(),
        cpu.as_secs_f64(),
        100.0 * cpu.as_secs_f64() / wall.as_secs_f64(),
        resp[resp.len() / 2]
    );
}

async fn latency(addr: SocketAddr, ctl: SocketAddr, runs: usize) {
    let mut lat = Vec::new();
    for _ in 0..runs {
        control(ctl, "set h 0 f32 60");
        let h = ModbusHealth::new(probes(addr, 1, "100ms", 3));
        h.baseline().await.unwrap();
        let observing = tokio::spawn({
            let h = h.clone();
            async move { h.observe(Duration::from_secs(30)).await }
        });
        // Let it settle into its rhythm, then break the plant at a random phase of the probe interval.
        tokio::time::sleep(Duration::from_millis(500 + (lat.len() as u64 * 37) % 100)).await;
        let broke = Instant::now();
        control(ctl, "set h 0 f32 95");
        let verdict = observing.await.unwrap();
        let took = broke.elapsed();
        assert!(matches!(verdict, Verdict::Failed(_)), "{verdict:?}");
        lat.push(took);
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "latency register out of range -> Failed (interval 100ms, trip_after 3), {runs} runs: \
         min {:.1} ms, median {:.1} ms, max {:.1} ms (bound: 3 intervals + a read = ~300 ms)",
        ms(lat[0]),
        ms(lat[lat.len() / 2]),
        ms(lat[lat.len() - 1])
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (addr, ctl): (SocketAddr, SocketAddr) = match args.as_slice() {
        [_, a, c] => (a.parse().unwrap(), c.parse().unwrap()),
        _ => {
            eprintln!("usage: health_bench MODBUS_ADDR CONTROL_ADDR (see tests/bench/health.sh)");
            std::process::exit(2);
        }
    };
    for i in 0..50 {
        control(ctl, &format!("set h {} f32 {}", i * 2, 40 + i));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        cost(addr, 50, "100ms", 10).await;
        cost(addr, 50, "10ms", 10).await;
        latency(addr, ctl, 10).await;
    });
}
