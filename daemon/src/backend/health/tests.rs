//! The engine's logic against fake PLCs on tokio's paused clock: verdicts, early failure, isolation of a hung
//! PLC, reconnecting, shared links. The real Modbus path is tested against pymodbus in `tests/modbus.rs`.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use otpatch_common::policy::{Check, ProbeTarget};

use super::decode::Data;
use super::link::{Connector, ReadError, Request, Transport};
use super::testutil::probe;
use super::*;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    /// Accepts the request and never answers.
    Hang,
    Exception(u8),
    /// Connections are refused.
    Down,
}

/// A PLC in memory: holding registers by address.
struct FakePlc {
    regs: Mutex<HashMap<u16, u16>>,
    mode: Mutex<Mode>,
    connects: AtomicU32,
    /// Connection attempts, refused ones included.
    attempts: AtomicU32,
    /// Bumped by a restart: connections made before it are closed.
    generation: AtomicU32,
}

impl FakePlc {
    fn new() -> Arc<Self> {
        Arc::new(FakePlc {
            regs: Mutex::new(HashMap::new()),
            mode: Mutex::new(Mode::Normal),
            connects: AtomicU32::new(0),
            attempts: AtomicU32::new(0),
            generation: AtomicU32::new(0),
        })
    }
    fn set(&self, addr: u16, v: u16) {
        self.regs.lock().unwrap().insert(addr, v);
    }
    fn mode(&self, m: Mode) {
        *self.mode.lock().unwrap() = m;
    }
}

struct FakeConnector(Arc<FakePlc>);

#[async_trait]
impl Connector for FakeConnector {
    async fn connect(&self) -> io::Result<Box<dyn Transport>> {
        self.0.attempts.fetch_add(1, Ordering::SeqCst);
        if *self.0.mode.lock().unwrap() == Mode::Down {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, "Connection refused"));
        }
        self.0.connects.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(FakeConn(self.0.clone(), self.0.generation.load(Ordering::SeqCst))))
    }
}

struct FakeConn(Arc<FakePlc>, u32);

#[async_trait]
impl Transport for FakeConn {
    async fn read(&mut self, req: Request) -> Result<Data, ReadError> {
        // Tokio's timers are the only clock here; yield once so a read takes part in scheduling like a real one.
        tokio::task::yield_now().await;
        if self.1 != self.0.generation.load(Ordering::SeqCst) {
            return Err(ReadError::Io("Connection reset by peer".into()));
        }
        let mode = *self.0.mode.lock().unwrap();
        match mode {
            Mode::Hang => std::future::pending().await,
            Mode::Exception(code) => Err(ReadError::Exception(code)),
            Mode::Down => Err(ReadError::Io("Connection reset by peer".into())),
            Mode::Normal => {
                let regs = self.0.regs.lock().unwrap();
                Ok(Data::Registers(
                    (0..req.count).map(|i| regs.get(&(req.address + i)).copied().unwrap_or(0)).collect(),
                ))
            }
        }
    }
}

fn at(port: u16) -> ProbeTarget {
    ProbeTarget::Tcp { addr: SocketAddr::from(([127, 0, 0, 1], port)) }
}

/// A monitor whose endpoint `127.0.0.1:<port>` is `plcs[port]`.
fn monitor(probes: Vec<Probe>, plcs: &HashMap<u16, Arc<FakePlc>>) -> ModbusHealth {
    let plcs = plcs.clone();
    ModbusHealth::with_connectors(probes, move |target| {
        let ProbeTarget::Tcp { addr } = target else { panic!("only TCP targets in these tests") };
        Box::new(FakeConnector(plcs[&addr.port()].clone()))
    })
}

fn range_probe(name: &str, port: u16, addr: u16, max: f64) -> Probe {
    let mut p = probe(name);
    p.target = at(port);
    p.address = addr;
    p.checks = vec![Check::Range { min: Some(10.0), max: Some(max) }];
    p
}

fn row<'a>(table: &'a [ProbeReport], name: &str) -> &'a ProbeReport {
    table.iter().find(|r| r.name == name).unwrap()
}

#[tokio::test(start_paused = true)]
async fn healthy_plant_is_healthy_for_the_whole_period() {
    let plc = FakePlc::new();
    plc.set(0, 50);
    let h = monitor(vec![range_probe("temp", 1, 0, 90.0)], &HashMap::from([(1, plc.clone())]));
    h.baseline().await.unwrap();
    let t = Instant::now();
    assert_eq!(h.observe(Duration::from_secs(10)).await, Verdict::Healthy);
    assert_eq!(t.elapsed(), Duration::from_secs(10));
    let table = h.probe_table();
    let r = row(&table, "temp");
    assert_eq!(r.last_value, "50");
    // The baseline read plus one read per second (the first at once).
    assert_eq!(r.reads, 11);
    assert_eq!((r.failures, r.consecutive_failures, r.tripped), (0, 0, false));
    assert_eq!(r.target, "tcp 127.0.0.1:1 unit 1 holding 0 (u16)");
}

#[tokio::test(start_paused = true)]
async fn a_critical_probe_fails_the_verdict_as_soon_as_it_trips() {
    let plc = FakePlc::new();
    plc.set(0, 50);
    plc.set(1, 20);
    let h = monitor(
        vec![range_probe("boiler-temp", 1, 0, 90.0), range_probe("flow", 1, 1, 90.0)],
        &HashMap::from([(1, plc.clone())]),
    );
    h.baseline().await.unwrap();
    let observing = tokio::spawn({
        let h = h.clone();
        async move {
            let t = Instant::now();
            (h.observe(Duration::from_secs(600)).await, t.elapsed())
        }
    });
    tokio::time::sleep(Duration::from_millis(4500)).await;
    plc.set(0, 95);
    let (verdict, elapsed) = observing.await.unwrap();
    assert_eq!(verdict, Verdict::Failed("boiler-temp: 95 above max 90 (3 consecutive)".into()));
    // Reads at 5 s, 6 s, 7 s fail: tripped at 7 s, long before the 600 s period ends.
    assert_eq!(elapsed, Duration::from_secs(7));
    let table = h.probe_table();
    assert!(row(&table, "boiler-temp").tripped);
    assert_eq!(row(&table, "boiler-temp").last_error, "95 above max 90");
    assert!(!row(&table, "flow").tripped);
}

#[tokio::test(start_paused = true)]
async fn advisory_probes_degrade_at_the_end_of_the_period() {
    let plc = FakePlc::new();
    plc.set(0, 50);
    plc.set(1, 5);
    let mut advisory = range_probe("tank-level", 1, 1, 90.0);
    advisory.critical = false;
    let h = monitor(vec![range_probe("temp", 1, 0, 90.0), advisory], &HashMap::from([(1, plc)]));
    h.baseline().await.unwrap();
    let t = Instant::now();
    let verdict = h.observe(Duration::from_secs(30)).await;
    assert_eq!(verdict, Verdict::Degraded("tank-level: 5 below min 10 (3 consecutive)".into()));
    assert_eq!(t.elapsed(), Duration::from_secs(30));
}

#[tokio::test(start_paused = true)]
async fn a_hung_plc_does_not_hold_up_the_others() {
    let (hung, fine) = (FakePlc::new(), FakePlc::new());
    fine.set(0, 50);
    let mut slow = range_probe("slow-plc", 1, 0, 90.0);
    slow.critical = false;
    slow.timeout = Duration::from_millis(500);
    let mut quick = range_probe("quick", 2, 0, 90.0);
    quick.interval = Duration::from_millis(100);
    let h = monitor(vec![slow, quick], &HashMap::from([(1, hung.clone()), (2, fine)]));
    h.baseline().await.unwrap();
    hung.mode(Mode::Hang);
    let verdict = h.observe(Duration::from_secs(10)).await;
    let Verdict::Degraded(reason) = verdict else { panic!("expected degraded, got {verdict:?}") };
    assert!(reason.starts_with("slow-plc: "), "{reason}");
    assert!(reason.contains("no response within 500ms"), "{reason}");
    let table = h.probe_table();
    // The quick probe kept its pace: the baseline and one read per 100 ms.
    assert_eq!(row(&table, "quick").reads, 101);
    assert_eq!(row(&table, "quick").failures, 0);
    assert!(row(&table, "slow-plc").failures >= 3);
}

#[tokio::test(start_paused = true)]
async fn a_connection_the_plc_closed_between_windows_is_replaced_without_a_failure() {
    let plc = FakePlc::new();
    plc.set(0, 50);
    let h = monitor(vec![range_probe("temp", 1, 0, 90.0)], &HashMap::from([(1, plc.clone())]));
    h.baseline().await.unwrap();
    // The PLC restarts (or is restored from a checkpoint) while the link sits idle: its connection is gone.
    plc.generation.fetch_add(1, Ordering::SeqCst);
    h.baseline().await.unwrap();
    assert_eq!(plc.connects.load(Ordering::SeqCst), 2);
    let table = h.probe_table();
    assert_eq!(row(&table, "temp").failures, 0);
    // A fresh connection that fails is a failure: no second try.
    plc.mode(Mode::Down);
    assert!(h.baseline().await.is_err());
}

#[tokio::test(start_paused = true)]
async fn a_lost_plc_is_reconnected_with_backoff_and_recovers() {
    let plc = FakePlc::new();
    plc.set(0, 50);
    let mut p = range_probe("temp", 1, 0, 90.0);
    p.interval = Duration::from_millis(100);
    p.trip_after = 1000;
    let h = monitor(vec![p], &HashMap::from([(1, plc.clone())]));
    h.baseline().await.unwrap();
    assert_eq!(plc.connects.load(Ordering::SeqCst), 1);
    let observing = tokio::spawn({
        let h = h.clone();
        async move { h.observe(Duration::from_secs(20)).await }
    });
    tokio::time::sleep(Duration::from_millis(1050)).await;
    plc.mode(Mode::Down);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let failing = h.probe_table()[0].clone();
    assert!(failing.consecutive_failures > 3, "{failing:?}");
    assert!(failing.last_error.contains("Connection refused") || failing.last_error.contains("reconnecting in"));
    plc.mode(Mode::Normal);
    assert_eq!(observing.await.unwrap(), Verdict::Healthy);
    let r = &h.probe_table()[0];
    assert_eq!((r.consecutive_failures, r.last_error.as_str()), (0, ""));
    assert_eq!(plc.connects.load(Ordering::SeqCst), 2, "one successful reconnect after the outage");
    // 50 reads fail during the 5 s outage, and more until the backed-off retry, yet the PLC saw only a few
    // attempts (100 ms, 200 ms, 400 ms ... apart), not one per read.
    assert!(r.failures >= 50, "{r:?}");
    let attempts = plc.attempts.load(Ordering::SeqCst);
    assert!((6..=9).contains(&attempts), "{attempts} connection attempts");
}

#[tokio::test(start_paused = true)]
async fn an_exception_is_a_failure_with_the_exception_named() {
    let plc = FakePlc::new();
    plc.set(0, 50);
    let mut p = range_probe("flow", 1, 0, 90.0);
    p.trip_after = 2;
    let h = monitor(vec![p], &HashMap::from([(1, plc.clone())]));
    h.baseline().await.unwrap();
    plc.mode(Mode::Exception(4));
    assert_eq!(
        h.observe(Duration::from_secs(60)).await,
        Verdict::Failed("flow: Modbus exception 0x04 (server device failure) (2 consecutive)".into())
    );
    // An exception is an answer: the connection stays.
    assert_eq!(plc.connects.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_probe_that_cannot_be_read_at_baseline_is_named() {
    let (good, bad) = (FakePlc::new(), FakePlc::new());
    bad.mode(Mode::Exception(2));
    let h = monitor(
        vec![range_probe("boiler-temp", 1, 0, 90.0), range_probe("flow", 2, 7, 90.0)],
        &HashMap::from([(1, good), (2, bad)]),
    );
    let err = h.baseline().await.unwrap_err();
    assert_eq!(
        err.0,
        "cannot read 1 probe for the baseline: probe flow (tcp 127.0.0.1:2 unit 1 holding 7 (u16)): \
         Modbus exception 0x02 (illegal data address)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hung_plc_at_baseline_times_out() {
    let plc = FakePlc::new();
    plc.mode(Mode::Hang);
    let mut p = range_probe("temp", 1, 0, 90.0);
    p.timeout = Duration::from_millis(300);
    let h = monitor(vec![p], &HashMap::from([(1, plc)]));
    let err = h.baseline().await.unwrap_err();
    assert!(err.0.ends_with("probe temp (tcp 127.0.0.1:1 unit 1 holding 0 (u16)): no response within 300ms"), "{err}");
}

#[tokio::test(start_paused = true)]
async fn probes_on_one_endpoint_share_a_connection() {
    let plc = FakePlc::new();
    plc.set(0, 50);
    plc.set(1, 60);
    let h =
        monitor(vec![range_probe("a", 1, 0, 90.0), range_probe("b", 1, 1, 90.0)], &HashMap::from([(1, plc.clone())]));
    h.baseline().await.unwrap();
    assert_eq!(h.observe(Duration::from_secs(5)).await, Verdict::Healthy);
    assert_eq!(plc.connects.load(Ordering::SeqCst), 1);
    assert_eq!(h.probe_table().iter().map(|r| r.last_value.as_str()).collect::<Vec<_>>(), ["50", "60"]);
}

#[tokio::test(start_paused = true)]
async fn deviation_compares_with_the_baseline_from_arming() {
    let plc = FakePlc::new();
    plc.set(0, 100);
    let mut p = probe("pressure");
    p.target = at(1);
    p.checks = vec![Check::Deviation { abs: None, percent: Some(5.0) }];
    p.trip_after = 1;
    let h = monitor(vec![p], &HashMap::from([(1, plc.clone())]));
    h.baseline().await.unwrap();
    plc.set(0, 104);
    assert_eq!(h.observe(Duration::from_secs(3)).await, Verdict::Healthy);
    plc.set(0, 106);
    assert_eq!(
        h.observe(Duration::from_secs(3)).await,
        Verdict::Failed("pressure: 106 deviates 6% from baseline 100 (max 5%) (1 consecutive)".into())
    );
}

#[tokio::test(start_paused = true)]
async fn no_probes_observe_the_period_and_are_healthy() {
    let h = ModbusHealth::new(Vec::new());
    h.baseline().await.unwrap();
    let t = Instant::now();
    assert_eq!(h.observe(Duration::from_secs(5)).await, Verdict::Healthy);
    assert_eq!(t.elapsed(), Duration::from_secs(5));
    assert!(h.probes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn the_watch_keeps_reading_outside_observations_and_pauses_for_them() {
    let plc = FakePlc::new();
    plc.set(0, 50);
    let h = monitor(vec![range_probe("temp", 1, 0, 90.0)], &HashMap::from([(1, plc.clone())]));
    h.baseline().await.unwrap();
    let reads = |h: &ModbusHealth| row(&h.probe_table(), "temp").reads;
    assert_eq!(reads(&h), 1);
    // While the change goes in: read every second (the first at once).
    h.start_watch().await;
    h.start_watch().await; // idempotent: still one reader
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(reads(&h), 1 + 5);
    // The observation takes over (no second reader), then the watch resumes.
    assert_eq!(h.observe(Duration::from_secs(3)).await, Verdict::Healthy);
    let after_observe = reads(&h);
    assert_eq!(after_observe, 6 + 3, "three reads in the observation, no doubled reader");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(reads(&h) >= after_observe + 2, "watch resumed after the observation");
    h.stop_watch().await;
    let stopped = reads(&h);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(reads(&h), stopped, "no reads after stop_watch");
}
