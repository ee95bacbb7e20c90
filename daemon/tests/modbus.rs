//! The Modbus health monitor against a PLC nobody here wrote: pymodbus (pinned in tests/requirements.txt, run
//! from the venv named by `OTPATCH_PYTHON`) over loopback TCP, and over a serial line made of a `socat` pty
//! pair (Debian package socat). Probes are written as a plant engineer writes them in the policy.
//!
//! Only 127.0.0.1 is used. Every wait is bounded; every process is killed when its guard drops.

#![allow(clippy::unwrap_used)]

mod support;

use std::future::Future;
use std::time::Duration;

use otpatchd::backend::{HealthMonitor, Verdict};
use otpatchd::health::ModbusHealth;
use support::{free_port, probes, wait_for, Peer, SerialPair};

/// The bound on any one test: generous, only there so a bug hangs nothing.
const TEST_LIMIT: Duration = Duration::from_secs(90);

async fn bounded<T>(test: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_LIMIT, test).await.expect("test took longer than its bound")
}

/// Starts an observation in its own task, as the orchestrator runs it.
fn observe(h: &ModbusHealth, period: Duration) -> tokio::task::JoinHandle<Verdict> {
    let h = h.clone();
    tokio::spawn(async move { h.observe(period).await })
}

fn row(h: &ModbusHealth, name: &str) -> otpatch_common::api::ProbeReport {
    h.probes().into_iter().find(|r| r.name == name).unwrap()
}

/// A plant with a probe of every kind, all within their checks.
async fn plant(port: u16) -> Peer {
    let mut plc = Peer::tcp(port).await;
    plc.cmd("set h 100 f32 72.5").await;
    plc.cmd("set i 20 i16 -5").await;
    plc.cmd("set h 30 u16 1234").await;
    plc.cmd("set h 31 u16 1").await;
    plc.cmd("set c 3 1").await;
    plc.cmd("set d 4 0").await;
    plc.cmd("set h 40 u16 2500").await;
    plc.cmd("heartbeat h 10 100").await;
    plc
}

fn plant_probes(port: u16) -> String {
    format!(
        r#"
[probe.boiler-temp]
tcp = "127.0.0.1:{port}"
address = 100
type = "f32"
min = 50.0
max = 90.0
interval = "100ms"
timeout = "500ms"

[probe.plc-heartbeat]
tcp = "127.0.0.1:{port}"
address = 10
heartbeat = "1s"
interval = "100ms"
timeout = "500ms"

[probe.return-temp]
tcp = "127.0.0.1:{port}"
function = "input"
address = 20
type = "i16"
min = -10
max = 0
interval = "100ms"

[probe.totalizer]
tcp = "127.0.0.1:{port}"
address = 30
type = "u32"
word_order = "little"
deviation_percent = 50.0
interval = "100ms"

[probe.pump-running]
tcp = "127.0.0.1:{port}"
function = "coils"
address = 3
equals = 1
interval = "100ms"

[probe.alarm]
tcp = "127.0.0.1:{port}"
function = "discrete"
address = 4
equals = 0
critical = false
interval = "100ms"

[probe.pressure]
tcp = "127.0.0.1:{port}"
address = 40
scale = 0.01
offset = -1.0
max = 30.0
deviation = 2.0
max_response = "2s"
interval = "100ms"
"#
    )
}

#[tokio::test]
async fn a_healthy_plant_is_healthy() {
    bounded(async {
        let port = free_port();
        let _plc = plant(port).await;
        let h = ModbusHealth::new(probes(&plant_probes(port)));
        h.baseline().await.unwrap();
        assert_eq!(h.observe(Duration::from_secs(2)).await, Verdict::Healthy);
        let table = h.probes();
        let values: Vec<(&str, &str)> = table.iter().map(|r| (r.name.as_str(), r.last_value.as_str())).collect();
        assert_eq!(
            values.iter().filter(|(name, _)| *name != "plc-heartbeat").copied().collect::<Vec<_>>(),
            [
                ("alarm", "0"),
                ("boiler-temp", "72.5"),
                ("pressure", "24"),
                ("pump-running", "1"),
                ("return-temp", "-5"),
                // 1234 in the low word, 1 in the high word.
                ("totalizer", "66770"),
            ]
        );
        for r in &table {
            assert_eq!((r.failures, r.tripped, r.last_error.as_str()), (0, false, ""), "{r:?}");
            assert!(r.reads >= 5, "{r:?}");
        }
        assert_eq!(row(&h, "boiler-temp").target, format!("tcp 127.0.0.1:{port} unit 1 holding 100 (f32)"));
    })
    .await;
}

#[tokio::test]
async fn a_register_leaving_its_range_fails_with_the_reason() {
    bounded(async {
        let port = free_port();
        let mut plc = plant(port).await;
        let h = ModbusHealth::new(probes(&plant_probes(port)));
        h.baseline().await.unwrap();
        let observing = observe(&h, Duration::from_secs(60));
        wait_for("a few good reads", Duration::from_secs(10), || row(&h, "boiler-temp").reads >= 4).await;
        plc.cmd("set h 100 f32 95.2").await;
        // Returned when the probe trips, long before the 60 s period ends (bounded by TEST_LIMIT).
        let verdict = observing.await.unwrap();
        assert_eq!(verdict, Verdict::Failed("boiler-temp: 95.2 above max 90 (3 consecutive)".into()));
        assert!(row(&h, "boiler-temp").tripped);
    })
    .await;
}

#[tokio::test]
async fn a_stopped_heartbeat_fails() {
    bounded(async {
        let port = free_port();
        let mut plc = plant(port).await;
        let h = ModbusHealth::new(probes(&plant_probes(port)));
        h.baseline().await.unwrap();
        let observing = observe(&h, Duration::from_secs(60));
        wait_for("a few heartbeats", Duration::from_secs(10), || row(&h, "plc-heartbeat").reads >= 5).await;
        plc.cmd("heartbeat h 10 off").await;
        let Verdict::Failed(reason) = observing.await.unwrap() else { panic!("expected failed") };
        assert!(reason.starts_with("plc-heartbeat: heartbeat stopped: "), "{reason}");
        assert!(reason.ends_with("(max 1s) (3 consecutive)"), "{reason}");
        // Only the heartbeat tripped.
        assert!(!reason.contains("boiler-temp"), "{reason}");
    })
    .await;
}

#[tokio::test]
async fn an_exception_response_is_a_failure_naming_the_exception() {
    bounded(async {
        let port = free_port();
        let mut plc = plant(port).await;
        let h = ModbusHealth::new(probes(&plant_probes(port)));
        h.baseline().await.unwrap();
        let observing = observe(&h, Duration::from_secs(60));
        wait_for("a few good reads", Duration::from_secs(10), || row(&h, "return-temp").reads >= 3).await;
        plc.cmd("exception i 20 4").await;
        assert_eq!(
            observing.await.unwrap(),
            Verdict::Failed("return-temp: Modbus exception 0x04 (server device failure) (3 consecutive)".into())
        );
        // The exception came over a working connection: the other probes kept reading without failing.
        assert_eq!(row(&h, "boiler-temp").failures, 0);

        // A register the PLC does not have, at the baseline: the error names the probe and the exception.
        let missing = probes(&format!("[probe.flow]\ntcp = \"127.0.0.1:{port}\"\naddress = 5000\nmax = 10\n"));
        let err = ModbusHealth::new(missing).baseline().await.unwrap_err();
        assert_eq!(
            err.0,
            format!(
                "cannot read 1 probe for the baseline: probe flow (tcp 127.0.0.1:{port} unit 1 holding 5000 (u16)): \
                 Modbus exception 0x02 (illegal data address)"
            )
        );
    })
    .await;
}

#[tokio::test]
async fn a_plc_that_never_answers_times_out_without_holding_up_the_others() {
    bounded(async {
        let (good_port, silent_port) = (free_port(), free_port());
        let _plc = plant(good_port).await;
        let _silent = Peer::silent(silent_port).await;
        let config = format!(
            "{}\n[probe.silent-plc]\ntcp = \"127.0.0.1:{silent_port}\"\naddress = 0\nmax = 10\n\
             interval = \"100ms\"\ntimeout = \"300ms\"\ncritical = false\n",
            plant_probes(good_port)
        );
        let h = ModbusHealth::new(probes(&config));

        let err = h.baseline().await.unwrap_err();
        assert_eq!(
            err.0,
            format!(
                "cannot read 1 probe for the baseline: probe silent-plc (tcp 127.0.0.1:{silent_port} unit 1 \
                 holding 0 (u16)): no response within 300ms"
            )
        );

        let verdict = h.observe(Duration::from_secs(3)).await;
        let Verdict::Degraded(reason) = verdict else { panic!("expected degraded, got {verdict:?}") };
        assert!(reason.starts_with("silent-plc: "), "{reason}");
        assert!(reason.contains("no response within 300ms"), "{reason}");
        assert!(reason.ends_with("(3 consecutive)"), "{reason}");
        for other in ["boiler-temp", "plc-heartbeat", "return-temp", "totalizer", "pump-running", "alarm", "pressure"] {
            assert!(!reason.contains(other), "only the silent PLC's probe degraded: {reason}");
        }
        let silent = row(&h, "silent-plc");
        assert!(silent.tripped && silent.failures >= 3, "{silent:?}");
        // The probes of the other PLC kept their 100 ms pace: about 30 reads in 3 s, none failed.
        let boiler = row(&h, "boiler-temp");
        assert_eq!(boiler.failures, 0, "{boiler:?}");
        assert!(boiler.reads >= 15, "{boiler:?}");
    })
    .await;
}

#[tokio::test]
async fn a_plc_that_disappears_and_comes_back_is_reconnected() {
    bounded(async {
        let port = free_port();
        let plc = plant(port).await;
        let config = format!(
            "[probe.boiler-temp]\ntcp = \"127.0.0.1:{port}\"\naddress = 100\ntype = \"f32\"\nmin = 50.0\n\
             max = 90.0\ninterval = \"100ms\"\ntimeout = \"500ms\"\ntrip_after = 100000\n"
        );
        let h = ModbusHealth::new(probes(&config));
        h.baseline().await.unwrap();
        let observing = observe(&h, Duration::from_secs(80));
        wait_for("a few good reads", Duration::from_secs(10), || row(&h, "boiler-temp").reads >= 3).await;

        plc.kill().await;
        wait_for("reads to fail", Duration::from_secs(10), || row(&h, "boiler-temp").consecutive_failures >= 3).await;
        let down = row(&h, "boiler-temp");
        assert!(
            ["connection lost", "cannot connect", "not connected"].iter().any(|s| down.last_error.contains(s)),
            "{down:?}"
        );

        let mut plc = Peer::tcp(port).await;
        plc.cmd("set h 100 f32 61.5").await;
        // Backoff is capped at 5 s: the next attempt finds the PLC back.
        wait_for("the probe to recover", Duration::from_secs(20), || {
            let r = row(&h, "boiler-temp");
            r.consecutive_failures == 0 && r.last_value == "61.5"
        })
        .await;
        let up = row(&h, "boiler-temp");
        assert_eq!((up.last_error.as_str(), up.tripped), ("", false));
        observing.abort();
    })
    .await;
}

#[tokio::test]
async fn rtu_over_a_serial_line() {
    bounded(async {
        let line = SerialPair::new().await;
        let mut plc = Peer::rtu(&line.plc).await;
        plc.cmd("set h 100 f32 72.5").await;
        plc.cmd("set i 7 u16 300").await;
        plc.cmd("heartbeat h 10 100").await;
        let dev = line.gateway.display();
        let config = format!(
            r#"
[probe.boiler-temp]
rtu = "{dev}"
baud = 19200
parity = "none"
unit_id = 3
address = 100
type = "f32"
min = 50.0
max = 90.0
interval = "100ms"
timeout = "500ms"

[probe.flow]
rtu = "{dev}"
baud = 19200
parity = "none"
unit_id = 3
function = "input"
address = 7
scale = 0.1
min = 20
max = 40
interval = "100ms"
timeout = "500ms"

[probe.plc-heartbeat]
rtu = "{dev}"
baud = 19200
parity = "none"
unit_id = 3
address = 10
heartbeat = "1s"
interval = "200ms"
timeout = "500ms"
"#
        );
        let h = ModbusHealth::new(probes(&config));
        h.baseline().await.unwrap();
        assert_eq!(h.observe(Duration::from_secs(2)).await, Verdict::Healthy);
        assert_eq!(row(&h, "boiler-temp").last_value, "72.5");
        assert_eq!(row(&h, "flow").last_value, "30");
        assert_eq!(row(&h, "flow").target, format!("rtu {dev} unit 3 input 7 (u16)"));
        for r in h.probes() {
            assert_eq!((r.failures, r.last_error.as_str()), (0, ""), "{r:?}");
        }

        let observing = observe(&h, Duration::from_secs(60));
        let before = row(&h, "flow").reads;
        wait_for("a few good reads", Duration::from_secs(10), || row(&h, "flow").reads >= before + 3).await;
        plc.cmd("set i 7 u16 450").await;
        assert_eq!(observing.await.unwrap(), Verdict::Failed("flow: 45 above max 40 (3 consecutive)".into()));
    })
    .await;
}
