//! Modbus health probes and the rollback verdict: the real [`HealthMonitor`].
//!
//! Each `[probe.<name>]` of the policy reads one value from a PLC, over Modbus TCP or Modbus RTU (RS-485), and
//! checks it (range, equals, heartbeat, deviation from the baseline, response time). When the window arms,
//! [`ModbusHealth::baseline`] reads every probe once and keeps the values; after the change is applied,
//! [`ModbusHealth::observe`] runs every probe at its interval, one task each, for the observation period:
//!
//! - `Failed(reason)` as soon as a critical probe trips (`trip_after` consecutive failed reads or checks),
//! - otherwise `Degraded(reason)` at the end when advisory probes tripped,
//! - otherwise `Healthy`.
//!
//! Reasons name the probe, the value, the check and the count: `boiler-temp: 95.2 above max 90 (3 consecutive)`.
//! Probes on the same endpoint share one connection ([`link`]); every read is bounded by the probe's timeout,
//! so a hung PLC never holds up the probes of other PLCs or the verdict. [`ModbusHealth::probe_table`] is the
//! live per-probe table.

mod check;
mod decode;
mod link;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use otpatch_common::api::ProbeReport;
use otpatch_common::policy::{Probe, ProbeTarget, RegisterKind};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::backend::{BackendError, BackendResult, HealthMonitor, Verdict};
use check::{Outcome, ProbeState, Reading};
use link::{Connector, Link, Request, RtuConnector, TcpConnector};

/// At most one "failing" / "recovered" log line per probe in this time; trips are always logged.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// The Modbus health monitor, built from the policy's probes.
#[derive(Clone)]
pub struct ModbusHealth {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ModbusHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusHealth").field("probes", &self.inner.slots.len()).finish()
    }
}

struct Inner {
    slots: Vec<Slot>,
    /// The probe tasks of `start_watch`, running outside observations.
    watch: Mutex<Option<JoinSet<()>>>,
}

/// One probe, its link and its state.
struct Slot {
    probe: Probe,
    link: Arc<Link>,
    /// What it reads, for reasons and the table: `tcp 10.0.5.10:502 unit 1 holding 100 (f32)`.
    target: String,
    /// Locked only briefly, never across an await.
    state: Mutex<ProbeState>,
    log: Mutex<LogLimit>,
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, ProbeState> {
        // A poisoned lock only means a panic elsewhere while holding it; the counters are still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the probe's value once.
    async fn read(&self) -> Reading {
        let probe = &self.probe;
        let req = Request { unit: probe.unit_id, kind: probe.function, address: probe.address, count: probe.count };
        match self.link.read(req, probe.timeout).await {
            Ok((data, elapsed)) => match decode::value(probe, &data) {
                Ok(value) => Ok((value, elapsed)),
                Err(why) => Err(format!("malformed response: {why}")),
            },
            Err(e) => Err(e.to_string()),
        }
    }
}

impl ModbusHealth {
    /// A monitor for these probes (the validated `[probe.*]` of the policy). Nothing is opened until
    /// [`baseline`](HealthMonitor::baseline) or [`observe`](HealthMonitor::observe).
    pub fn new(probes: Vec<Probe>) -> Self {
        Self::with_connectors(probes, |target| match target {
            ProbeTarget::Tcp { addr } => Box::new(TcpConnector(*addr)),
            ProbeTarget::Rtu { device, baud, parity, stop_bits, data_bits } => Box::new(RtuConnector {
                device: device.clone(),
                baud: *baud,
                parity: *parity,
                stop_bits: *stop_bits,
                data_bits: *data_bits,
            }),
        })
    }

    fn with_connectors(probes: Vec<Probe>, connector: impl Fn(&ProbeTarget) -> Box<dyn Connector>) -> Self {
        // One link per endpoint: a TCP address, or a serial device (whatever its line settings: it can be
        // opened only once, so the first probe's settings are used and a mismatch is reported).
        let mut links: Vec<(ProbeTarget, Arc<Link>)> = Vec::new();
        let mut slots = Vec::with_capacity(probes.len());
        for probe in probes {
            let found = links.iter().find(|(t, _)| same_endpoint(t, &probe.target));
            let link = match found {
                Some((first, link)) => {
                    if *first != probe.target {
                        warn!(
                            probe = %probe.name,
                            link = %link.name,
                            "probe sets other serial line settings than an earlier probe on the same device; \
                             the earlier probe's settings are used"
                        );
                    }
                    link.clone()
                }
                None => {
                    let link = Arc::new(Link::new(endpoint_name(&probe.target), connector(&probe.target)));
                    links.push((probe.target.clone(), link.clone()));
                    link
                }
            };
            let target = describe(&probe, &link.name);
            slots.push(Slot {
                probe,
                link,
                target,
                state: Mutex::new(ProbeState::default()),
                log: Mutex::new(LogLimit::default()),
            });
        }
        ModbusHealth { inner: Arc::new(Inner { slots, watch: Mutex::new(None) }) }
    }

    /// The live per-probe table, in policy order (sorted by name).
    pub fn probe_table(&self) -> Vec<ProbeReport> {
        self.inner.slots.iter().map(|slot| slot.state().report(&slot.probe, &slot.target)).collect()
    }
}

fn same_endpoint(a: &ProbeTarget, b: &ProbeTarget) -> bool {
    match (a, b) {
        (ProbeTarget::Tcp { addr: x }, ProbeTarget::Tcp { addr: y }) => x == y,
        (ProbeTarget::Rtu { device: x, .. }, ProbeTarget::Rtu { device: y, .. }) => x == y,
        _ => false,
    }
}

fn endpoint_name(target: &ProbeTarget) -> String {
    match target {
        ProbeTarget::Tcp { addr } => format!("tcp {addr}"),
        ProbeTarget::Rtu { device, .. } => format!("rtu {}", device.display()),
    }
}

fn describe(probe: &Probe, link: &str) -> String {
    let kind = match probe.function {
        RegisterKind::Holding => "holding",
        RegisterKind::Input => "input",
        RegisterKind::Coils => "coil",
        RegisterKind::Discrete => "discrete",
    };
    format!("{link} unit {} {kind} {} ({})", probe.unit_id, probe.address, probe.data_type.name())
}

#[async_trait]
impl HealthMonitor for ModbusHealth {
    async fn baseline(&self) -> BackendResult<()> {
        let mut reads = JoinSet::new();
        for i in 0..self.inner.slots.len() {
            let inner = self.inner.clone();
            reads.spawn(async move { (i, inner.slots[i].read().await) });
        }
        let mut failed = Vec::new();
        while let Some(joined) = reads.join_next().await {
            let (i, reading) = match joined {
                Ok(done) => done,
                Err(e) => return Err(BackendError::new(format!("a baseline read did not finish: {e}"))),
            };
            let slot = &self.inner.slots[i];
            match reading {
                Ok((value, elapsed)) => {
                    slot.state().set_baseline(value, elapsed);
                    info!(probe = %slot.probe.name, value = %decode::fmt_value(value), "health baseline");
                }
                Err(why) => failed.push((i, why)),
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        failed.sort_by_key(|(i, _)| *i);
        let list: Vec<String> = failed
            .iter()
            .map(|(i, why)| {
                let slot = &self.inner.slots[*i];
                format!("probe {} ({}): {why}", slot.probe.name, slot.target)
            })
            .collect();
        Err(BackendError::new(format!("cannot read {} for the baseline: {}", plural(list.len()), list.join("; "))))
    }

    async fn start_watch(&self) {
        let mut watch = self.inner.watch.lock().unwrap_or_else(|e| e.into_inner());
        if watch.is_some() || self.inner.slots.is_empty() {
            return;
        }
        // Trips found while watching are not acted on here: they are in the table, and the observation
        // (started right after the apply) trips again on a value that stays bad.
        let (trips, _ignored) = mpsc::unbounded_channel::<usize>();
        let far = Instant::now() + Duration::from_secs(7 * 86_400);
        let mut tasks = JoinSet::new();
        for i in 0..self.inner.slots.len() {
            tasks.spawn(run_probe(self.inner.clone(), i, far, trips.clone()));
        }
        *watch = Some(tasks);
    }

    async fn stop_watch(&self) {
        let tasks = self.inner.watch.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(mut t) = tasks {
            t.abort_all();
        }
    }

    async fn observe(&self, period: Duration) -> Verdict {
        // One reader per probe at a time: the observation's own tasks replace the watch for its period.
        let was_watching = self.inner.watch.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        self.stop_watch().await;
        let verdict = self.observe_period(period).await;
        if was_watching {
            self.start_watch().await;
        }
        verdict
    }

    fn probes(&self) -> Vec<ProbeReport> {
        self.probe_table()
    }
}

impl ModbusHealth {
    async fn observe_period(&self, period: Duration) -> Verdict {
        let started = Instant::now();
        let deadline = started + period;
        for slot in &self.inner.slots {
            slot.state().start_observation(started);
        }
        let (trips, mut tripped) = mpsc::unbounded_channel::<usize>();
        // Dropping the JoinSet (verdict reached, or observe() itself cancelled) aborts every probe task.
        let mut tasks = JoinSet::new();
        for i in 0..self.inner.slots.len() {
            tasks.spawn(run_probe(self.inner.clone(), i, deadline, trips.clone()));
        }
        drop(trips);
        let sleep = tokio::time::sleep_until(deadline);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => break,
                Some(i) = tripped.recv() => {
                    if self.inner.slots[i].probe.critical {
                        break;
                    }
                }
            }
        }
        tasks.abort_all();
        self.verdict()
    }

    /// The verdict from the probes' trips: critical ones fail, advisory ones degrade.
    fn verdict(&self) -> Verdict {
        let (mut critical, mut advisory) = (Vec::new(), Vec::new());
        for slot in &self.inner.slots {
            if let Some(reason) = slot.state().tripped.clone() {
                if slot.probe.critical {
                    critical.push(reason);
                } else {
                    advisory.push(reason);
                }
            }
        }
        if !critical.is_empty() {
            Verdict::Failed(critical.join("; "))
        } else if !advisory.is_empty() {
            Verdict::Degraded(advisory.join("; "))
        } else {
            Verdict::Healthy
        }
    }
}

/// One probe's task: reads at its interval until `deadline`, reports its trip once.
async fn run_probe(inner: Arc<Inner>, i: usize, deadline: Instant, trips: mpsc::UnboundedSender<usize>) {
    let slot = &inner.slots[i];
    let mut ticker = tokio::time::interval(slot.probe.interval);
    // A read slower than the interval (a timeout) delays the next one instead of firing a burst after it.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        if Instant::now() >= deadline {
            return;
        }
        let reading = slot.read().await;
        let now = Instant::now();
        let outcome = slot.state().record(&slot.probe, reading, now);
        let mut log = slot.log.lock().unwrap_or_else(|e| e.into_inner());
        match outcome {
            Outcome::Passed => {
                if log.failing && log.allow(now) {
                    info!(probe = %slot.probe.name, suppressed = log.take_suppressed(), "health probe passing again");
                    log.failing = false;
                }
            }
            Outcome::Failing(why) => {
                if !log.failing && log.allow(now) {
                    warn!(probe = %slot.probe.name, reason = %why, suppressed = log.take_suppressed(), "health probe failing");
                    log.failing = true;
                }
            }
            Outcome::Tripped(reason) => {
                log.failing = true;
                warn!(probe = %slot.probe.name, critical = slot.probe.critical, reason = %reason, "health probe tripped");
                // The receiver is gone only when observe() has finished; nothing left to tell.
                let _ = trips.send(i);
            }
        }
    }
}

/// Rate limit for the logs of one probe's polling loop.
#[derive(Debug, Default)]
struct LogLimit {
    /// Whether the last logged state was "failing".
    failing: bool,
    last: Option<Instant>,
    suppressed: u32,
}

impl LogLimit {
    fn allow(&mut self, now: Instant) -> bool {
        if self.last.is_some_and(|last| now.saturating_duration_since(last) < LOG_EVERY) {
            self.suppressed = self.suppressed.saturating_add(1);
            return false;
        }
        self.last = Some(now);
        true
    }

    fn take_suppressed(&mut self) -> u32 {
        std::mem::take(&mut self.suppressed)
    }
}

fn plural(n: usize) -> String {
    if n == 1 {
        "1 probe".to_string()
    } else {
        format!("{n} probes")
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::net::SocketAddr;
    use std::time::Duration;

    use otpatch_common::policy::{Check, DataType, Probe, ProbeTarget, RegisterKind, WordOrder};

    /// A holding-register u16 probe at 127.0.0.1:502, 1 s interval and timeout, trip after 3, critical.
    pub fn probe(name: &str) -> Probe {
        Probe {
            name: name.to_string(),
            target: ProbeTarget::Tcp { addr: SocketAddr::from(([127, 0, 0, 1], 502)) },
            unit_id: 1,
            function: RegisterKind::Holding,
            address: 0,
            count: 1,
            data_type: DataType::U16,
            word_order: WordOrder::Big,
            scale: 1.0,
            offset: 0.0,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            trip_after: 3,
            critical: true,
            checks: vec![Check::Range { min: Some(0.0), max: Some(100.0) }],
        }
    }
}

#[cfg(test)]
mod tests;
