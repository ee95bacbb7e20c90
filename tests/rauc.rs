//! The A/B path against the real RAUC service: Debian's `rauc service` on a private dbus-daemon with two
//! file-backed slots and a `bootloader=custom` back-end (`tests/rauc/bootloader.sh`, boot state in a file), bundles
//! made by `rauc bundle` at test time and verified by otpatchd's real verifier, installed by otpatchd's RAUC updater.
//!
//! The rest of otpatchd runs on its fake backends (fetch hands over the bundle file, health is scripted) and so
//! does the reboot: the test plays systemd and the bootloader. It stops otpatchd (as the shutdown would), stops
//! RAUC, lets the bootloader script pick the slot, gives the pretend machine a new boot id, and starts RAUC
//! (`--override-boot-slot`) and otpatchd again. What RAUC did is read back with `rauc status` (RAUC's own client).
//! Needs root, rauc, squashfs-tools, dbus-daemon and openssl.

#![allow(clippy::unwrap_used)]

#[path = "../common/tests/bundle_pki.rs"]
mod pki;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use otpatch_tests::*;
use pki::{run, Pki};

const COMPATIBLE: &str = "acme-gw-x86";

/// The RAUC side of a pretend gateway: slots, system.conf, boot state, and the service when it runs.
struct Rauc {
    dir: TempDir,
    service: Option<Child>,
    bus: String,
}

impl Rauc {
    fn new(bus: &Bus) -> Rauc {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for s in ["slotA.img", "slotB.img"] {
            fs::write(d.join(s), vec![0u8; 1 << 20]).unwrap();
        }
        fs::create_dir_all(d.join("mnt")).unwrap();
        fs::create_dir_all(d.join("data")).unwrap();
        let conf = format!(
            "[system]\ncompatible={COMPATIBLE}\nbootloader=custom\nstatusfile={d}/data/status.raucs\nmountprefix={d}/mnt\n\n\
             [handlers]\nbootloader-custom-backend={boot}\n\n\
             [keyring]\npath={root}\ncheck-purpose=codesign\n\n\
             [slot.rootfs.0]\ndevice={d}/slotA.img\ntype=raw\nbootname=A\n\n\
             [slot.rootfs.1]\ndevice={d}/slotB.img\ntype=raw\nbootname=B\n",
            d = d.display(),
            boot = repo_root().join("tests/rauc/bootloader.sh").display(),
            root = Pki::get().path("root.pem").display(),
        );
        fs::write(d.join("system.conf"), conf).unwrap();
        Rauc { dir, service: None, bus: bus.address.clone() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn envs(&self) -> [(&'static str, String); 2] {
        [
            ("DBUS_SYSTEM_BUS_ADDRESS", self.bus.clone()),
            ("OTPATCH_BOOTSTATE", self.path("bootstate").display().to_string()),
        ]
    }

    /// `rauc service` on the private bus, booted from `slot`; waits (bounded) until it answers.
    fn start(&mut self, slot: &str) {
        assert!(self.service.is_none());
        let log = fs::OpenOptions::new().create(true).append(true).open(self.path("service.log")).unwrap();
        let child = Command::new("rauc")
            .arg(format!("--conf={}", self.path("system.conf").display()))
            .args(["service", &format!("--override-boot-slot={slot}")])
            .envs(self.envs())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("rauc must be installed (packages rauc, rauc-service)");
        self.service = Some(child);
        wait_for(Duration::from_secs(20), "RAUC on the bus", || self.status_json().is_some());
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.service.take() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), nix::sys::signal::Signal::SIGTERM);
            let _ = c.wait();
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.service.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// What the bootloader does at power-on; returns the slot booted.
    fn boot(&self, how: &str) -> String {
        let out =
            Command::new(repo_root().join("tests/rauc/bootloader.sh")).arg(how).envs(self.envs()).output().unwrap();
        assert!(out.status.success(), "bootloader {how}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn bootstate(&self) -> String {
        fs::read_to_string(self.path("bootstate")).unwrap_or_default()
    }

    /// `rauc status --output-format=json`, from the running service (RAUC's own client).
    fn status_json(&self) -> Option<serde_json::Value> {
        let out = Command::new("rauc")
            .arg(format!("--conf={}", self.path("system.conf").display()))
            .args(["status", "--detailed", "--output-format=json"])
            .envs(self.envs())
            .stdin(Stdio::null())
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// A slot's entry in `rauc status` (`rootfs.0`, `rootfs.1`).
    fn slot(&self, name: &str) -> serde_json::Value {
        let st = self.status_json().expect("rauc status");
        let slots = st["slots"].as_array().cloned().unwrap_or_default();
        for s in slots {
            if let Some(v) = s.get(name) {
                return v.clone();
            }
        }
        panic!("no slot {name} in {st}");
    }

    fn primary(&self) -> String {
        self.status_json().expect("rauc status")["boot_primary"].as_str().unwrap_or_default().to_string()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("service.log")).unwrap_or_default()
    }
}

impl Drop for Rauc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `rauc bundle` of a 64 KiB image for `compatible` at `version`, optionally with an install-check hook (a shell
/// script body), signed by the PKI's P-256 codeSigning signer through the intermediate.
fn bundle(dir: &Path, name: &str, compatible: &str, version: &str, hook: Option<&str>) -> PathBuf {
    let pki = Pki::get();
    let content = dir.join(format!("{name}.d"));
    fs::create_dir_all(&content).unwrap();
    let image: Vec<u8> = (0u32..16_384).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()).collect();
    fs::write(content.join("rootfs.img"), image).unwrap();
    let mut manifest = format!("[update]\ncompatible={compatible}\nversion={version}\n\n[bundle]\nformat=plain\n\n");
    if let Some(body) = hook {
        fs::write(content.join("hook.sh"), format!("#!/bin/sh\n{body}\n")).unwrap();
        let mut perm = fs::metadata(content.join("hook.sh")).unwrap().permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        fs::set_permissions(content.join("hook.sh"), perm).unwrap();
        manifest.push_str("[hooks]\nfilename=hook.sh\nhooks=install-check\n\n");
    }
    manifest.push_str("[image.rootfs]\nfilename=rootfs.img\n");
    fs::write(content.join("manifest.raucm"), manifest).unwrap();
    let out = dir.join(name);
    run(
        dir,
        "rauc",
        &[
            "bundle",
            "--cert",
            pki.path("p256.pem").to_str().unwrap(),
            "--key",
            pki.path("p256.key").to_str().unwrap(),
            "--intermediate",
            pki.path("inter.pem").to_str().unwrap(),
            content.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    out
}

fn policy(reboot: &str) -> String {
    format!(
        r#"
[gateway]
id = "gw-ab"
compatible = "{COMPATIBLE}"

[trust]
anchors = ["/etc/otpatch/trust/root.pem"]

[limits]
max_window = "1h"

[segmentation]
enabled = false

[rollback]
observation = "2s"

[ab]
reboot = "{reboot}"
reboot_timeout = "2m"

[probe.boiler]
tcp = "127.0.0.1:5020"
address = 1
min = 10
max = 90
"#
    )
}

/// The gateway, the private bus and RAUC (booted from A).
struct Setup {
    bus: Bus,
    gw: Gateway,
    rauc: Rauc,
    bundles: TempDir,
}

fn setup(reboot: &str) -> Setup {
    let bus = Bus::start(BusPolicy::Permissive);
    let gw = Gateway::new(&policy(reboot));
    fs::copy(Pki::get().path("root.pem"), gw.path().join("etc/otpatch/trust/root.pem")).unwrap();
    let mut rauc = Rauc::new(&bus);
    rauc.start("A");
    Setup { bus, gw, rauc, bundles: tempfile::tempdir().unwrap() }
}

impl Setup {
    fn daemon(&self, script: &str) -> Daemon {
        self.spawn(script, "").on_bus(&self.bus)
    }

    /// otpatchd with failpoints, not waited for on the bus (it may crash before it gets there).
    fn spawn(&self, script: &str, failpoints: &str) -> Daemon {
        let env = self.rauc.envs();
        let env: Vec<(&str, &str)> = vec![("OTPATCH_REAL_AB", "1"), ("OTPATCH_BOOTSTATE", env[1].1.as_str())];
        Daemon::spawn_with_env(&self.bus, &self.gw, script, failpoints, &env)
    }

    fn status(&self) -> serde_json::Value {
        status(&self.bus)
    }

    fn wait_state(&self, d: &Daemon, state: &str, limit: Duration) {
        let mut last = serde_json::Value::Null;
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            last = self.status();
            if last["state"] == state {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("otpatchd did not reach {state} within {limit:?}: {last}\n{}", d.log_text());
    }

    /// Waits (bounded) for the window to close; returns its outcome text.
    fn outcome(&self, d: &Daemon, limit: Duration) -> String {
        self.wait_state(d, "closed", limit);
        self.status()["last_outcome"].as_str().unwrap_or_default().to_string()
    }

    fn schedule(&self) {
        let o = ctl(&self.bus, &["window", "schedule", "--start", &start_in(1), "--duration", "20m"], None);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }

    /// The pretend machine's next boot: otpatchd and RAUC stop (as at shutdown), the bootloader picks a slot,
    /// the boot id changes to `boot_id` (`boot-N`: the daemon's (N-1)th reboot request is waited for first).
    /// Returns the slot booted; RAUC runs again from it.
    fn reboot(&mut self, d: Daemon, how: &str, boot_id: &str) -> String {
        // The daemon asks for the reboot once it journaled Rebooting: wait for the request itself.
        let asked = boot_id.trim_start_matches("boot-").parse::<u64>().unwrap() - 1;
        wait_for(Duration::from_secs(20), "the reboot request", || self.reboots() >= asked);
        let st = d.stop();
        assert!(st.success() || st.code().is_some(), "otpatchd stop: {st:?}");
        self.power_cycle(how, boot_id)
    }

    /// The machine goes down (otpatchd is not running) and boots again: RAUC stops, the bootloader picks a slot,
    /// the boot id becomes `boot_id`, RAUC starts from the slot booted. Returns it.
    fn power_cycle(&mut self, how: &str, boot_id: &str) -> String {
        self.rauc.stop();
        let slot = self.rauc.boot(how);
        let world = self.gw.path().join("run/otpatch-fake/world.json");
        let mut w: serde_json::Value = serde_json::from_slice(&fs::read(&world).unwrap()).unwrap();
        w["boot_id"] = serde_json::json!(boot_id);
        fs::write(&world, serde_json::to_vec_pretty(&w).unwrap()).unwrap();
        self.rauc.start(&slot);
        slot
    }

    /// otpatchd with `failpoint` and bundle `b` runs a window until the failpoint kills it (SIGKILL, as a power cut
    /// would); `when` names the moment for the message.
    fn window_until_crash(&self, b: &Path, failpoint: &str, when: &str) {
        let mut d = self.spawn(&format!("bundle={}", b.display()), failpoint);
        wait_for(Duration::from_secs(20), "otpatchd on the bus", || ctl(&self.bus, &["status"], None).status.success());
        self.schedule();
        let st = d.wait_exit(Duration::from_secs(60));
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&st),
            Some(9),
            "otpatchd should have crashed {when}: {}",
            d.log_text()
        );
    }

    fn reboots(&self) -> u64 {
        self.gw.world()["reboots"].as_u64().unwrap_or(0)
    }

    fn install_record(&self) -> bool {
        self.gw.path().join("var/lib/otpatch/ab-install.json").exists()
    }
}

/// `otpatchctl --json watch` in the background, for what it printed.
struct Watch(Child, PathBuf);

impl Watch {
    fn start(s: &Setup) -> Watch {
        let out = s.bundles.path().join("watch.jsonl");
        let f = fs::File::create(&out).unwrap();
        let child = Command::new(bin("otpatchctl"))
            .args(["--json", "watch", "--max-wait", "5m"])
            .env("DBUS_SYSTEM_BUS_ADDRESS", &s.bus.address)
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Watch(child, out)
    }

    fn text(mut self) -> String {
        let _ = self.0.kill();
        let _ = self.0.wait();
        fs::read_to_string(&self.1).unwrap_or_default()
    }
}

/// Install into B with progress, reboot into it, observe, keep: B is marked good and stays primary.
#[test]
fn installs_into_the_other_slot_reboots_and_marks_it_good_after_observation() {
    let mut s = setup("in-window");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", None);
    let d = s.daemon(&format!("bundle={}", b.display()));
    let watch = Watch::start(&s);
    s.schedule();
    s.wait_state(&d, "rebooting", Duration::from_secs(60));
    wait_for(Duration::from_secs(10), "the reboot request", || s.reboots() == 1);
    let seen = watch.text();
    assert!(seen.contains("RAUC: ") && seen.contains("\"progress\""), "no RAUC progress in otpatchctl watch:\n{seen}");
    assert_eq!(s.rauc.primary(), "rootfs.1", "RAUC did not make the installed slot primary");
    assert_eq!(s.rauc.slot("rootfs.1")["slot_status"]["bundle"]["version"], "2.1.0");
    assert!(s.install_record());
    assert!(s.gw.audit_text().contains("reboot-requested"));
    // Nothing is marked good before the observation on the new slot.
    assert!(!s.rauc.log().contains("marked slot rootfs.1 as good"), "{}", s.rauc.log());

    assert_eq!(s.reboot(d, "boot", "boot-2"), "B");
    let d = s.daemon(&format!("bundle={},health=healthy", b.display()));
    let outcome = s.outcome(&d, Duration::from_secs(60));
    assert_eq!(outcome, "committed 2.1.0", "{}", d.log_text());
    assert_eq!(s.status()["booted_slot"], "B", "otpatchctl status must name the slot RAUC booted");
    assert_eq!(s.rauc.slot("rootfs.1")["boot_status"], "good");
    assert_eq!(s.rauc.primary(), "rootfs.1");
    assert!(s.rauc.bootstate().contains("state_B=good"), "{}", s.rauc.bootstate());
    assert_eq!(s.reboots(), 1, "no reboot after the commit");
    assert!(!s.install_record(), "the install record outlived the commit");
    assert!(s.rauc.log().contains("marked slot rootfs.1 as good"), "{}", s.rauc.log());
}

/// Health fails on the new slot: B is marked bad, A active, the gateway reboots into A and the rollback is
/// recorded there.
#[test]
fn health_failure_on_the_new_slot_marks_it_bad_and_boots_the_old_one() {
    let mut s = setup("in-window");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", None);
    let d = s.daemon(&format!("bundle={}", b.display()));
    s.schedule();
    s.wait_state(&d, "rebooting", Duration::from_secs(60));
    assert_eq!(s.reboot(d, "boot", "boot-2"), "B");

    let d = s.daemon(&format!("bundle={},health=fail,health-fail-after=300ms", b.display()));
    let start = std::time::Instant::now();
    while s.reboots() < 2 {
        assert!(start.elapsed() < Duration::from_secs(60), "no reboot request for the rollback:\n{}", d.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.status()["state"], "rolling-back");
    assert_eq!(s.rauc.slot("rootfs.1")["boot_status"], "bad");
    assert_eq!(s.rauc.primary(), "rootfs.0");

    assert_eq!(s.reboot(d, "boot", "boot-3"), "A", "the bootloader must go back to A");
    let d = s.daemon(&format!("bundle={},health=fail", b.display()));
    let outcome = s.outcome(&d, Duration::from_secs(60));
    assert!(outcome.starts_with("rolled-back: health failed"), "{outcome}\n{}", d.log_text());
    assert_eq!(s.status()["booted_slot"], "A", "otpatchctl status must name the slot the rollback runs on");
    assert_eq!(s.rauc.slot("rootfs.1")["boot_status"], "bad");
    assert_eq!(s.rauc.primary(), "rootfs.0");
    assert_eq!(s.reboots(), 2, "no third reboot");
    assert!(!s.install_record());
}

/// The new slot does not come up and the bootloader falls back to A: recognised and recorded as a rollback.
#[test]
fn bootloader_fallback_is_recognised_as_a_rollback() {
    let mut s = setup("in-window");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", None);
    let d = s.daemon(&format!("bundle={}", b.display()));
    s.schedule();
    s.wait_state(&d, "rebooting", Duration::from_secs(60));
    assert_eq!(s.reboot(d, "boot-fail", "boot-2"), "A");
    let d = s.daemon(&format!("bundle={}", b.display()));
    let outcome = s.outcome(&d, Duration::from_secs(60));
    assert_eq!(outcome, "rolled-back: the gateway came back on slot A, not the updated one", "{}", d.log_text());
    assert_eq!(s.rauc.slot("rootfs.1")["boot_status"], "bad");
    assert_eq!(s.rauc.primary(), "rootfs.0");
    assert_eq!(s.reboots(), 1);
}

/// Plain reboots, no window, no update: otpatchd marks the slot it runs good at every start, so a bootloader that
/// gives each boot a limited number of tries (here 3; RAUC's GRUB scheme gives one) stays on it. Without that,
/// the fourth plain boot would fall back to B (issue #18: who marks good on ordinary boots).
#[test]
fn ordinary_boots_mark_the_booted_slot_good_and_stay_on_it() {
    let mut s = setup("never");
    for n in 2..=6 {
        let d = s.daemon("health=healthy");
        let marks = s.rauc.log().matches("marked slot rootfs.0 as good").count();
        assert!(
            marks >= n - 1,
            "boot {}: the booted slot was not marked good\n{}\n{}",
            n - 1,
            s.rauc.log(),
            d.log_text()
        );
        let st = d.stop();
        assert!(st.success() || st.code().is_some(), "otpatchd stop: {st:?}");
        assert_eq!(
            s.power_cycle("boot", &format!("boot-{n}")),
            "A",
            "plain boot {n} left slot A: {}",
            s.rauc.bootstate()
        );
    }
    assert_eq!(s.rauc.slot("rootfs.0")["boot_status"], "good");
    assert_eq!(s.reboots(), 0);
}

/// A power cut in a window before its change (otpatchd killed right after it journaled `checkpointed`): the next
/// boot recovers the window (rolled back, nothing was handed to RAUC) and must still tell the bootloader that the
/// slot it runs came up, or a bootloader that gives each boot one try (RAUC's GRUB scheme) has no slot left on
/// the next plain reboot. Found on the gateway image (`hil/image/run.sh lp-powercut@applying`: slot A `bad` after
/// the recovering boot of a livepatch window); the same start-up path serves both kinds of window.
#[test]
fn a_boot_that_recovers_a_window_still_marks_the_booted_slot_good() {
    let mut s = setup("in-window");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", None);
    s.window_until_crash(&b, "journal:checkpointed=crash", "at checkpointed");
    let marks = s.rauc.log().matches("marked slot rootfs.0 as good").count();
    assert_eq!(s.power_cycle("boot", "boot-2"), "A");
    assert!(s.rauc.bootstate().contains("tries_A=2"), "the boot used one try: {}", s.rauc.bootstate());

    let d = s.daemon(&format!("bundle={}", b.display()));
    let outcome = s.outcome(&d, Duration::from_secs(60));
    assert!(outcome.starts_with("rolled-back: daemon restarted"), "{outcome}\n{}", d.log_text());
    assert!(
        s.rauc.log().matches("marked slot rootfs.0 as good").count() > marks,
        "the recovering boot did not mark the booted slot good\n{}\n{}",
        s.rauc.log(),
        d.log_text()
    );
    assert!(s.rauc.bootstate().contains("tries_A=3"), "{}", s.rauc.bootstate());
    assert_eq!(s.status()["booted_slot"], "A");
    assert_eq!(s.rauc.primary(), "rootfs.0");
}

/// Without reboot permission the update is staged: installed, primary for the next boot, no reboot.
#[test]
fn without_reboot_permission_the_update_is_staged_and_reported_pending() {
    let s = setup("never");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", None);
    let d = s.daemon(&format!("bundle={}", b.display()));
    s.schedule();
    let outcome = s.outcome(&d, Duration::from_secs(60));
    assert_eq!(outcome, "installed 2.1.0 into slot B, reboot pending", "{}", d.log_text());
    assert_eq!(s.rauc.primary(), "rootfs.1");
    assert_eq!(s.reboots(), 0);
    let o = ctl(&s.bus, &["status"], None);
    assert!(text(&o).contains("reboot pending"), "{}", text(&o));
}

/// A window stages 2.1.0 (no reboot allowed); later the operator reboots (not asked for by otpatchd) and the
/// bootloader boots B. otpatchd is not running yet.
fn staged_then_booted_by_hand() -> (Setup, PathBuf) {
    let mut s = setup("never");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", None);
    let d = s.daemon(&format!("bundle={}", b.display()));
    s.schedule();
    assert_eq!(s.outcome(&d, Duration::from_secs(60)), "installed 2.1.0 into slot B, reboot pending");
    let st = d.stop();
    assert!(st.code().is_some() || st.success(), "{st:?}");
    s.rauc.stop();
    assert_eq!(s.rauc.boot("boot"), "B");
    s.rauc.start("B");
    (s, b)
}

/// A staged slot booted later (by hand, outside any window) is observed first, then marked good and recorded as
/// committed; no reboot is asked for.
#[test]
fn a_staged_slot_booted_later_is_observed_then_marked_good() {
    let (s, b) = staged_then_booted_by_hand();
    let d = s.daemon(&format!("bundle={},health=healthy", b.display()));
    let outcome = s.outcome(&d, Duration::from_secs(60));
    assert_eq!(outcome, "committed 2.1.0", "{}", d.log_text());
    assert!(s.rauc.log().contains("marked slot rootfs.1 as good"), "{}", s.rauc.log());
    assert!(s.gw.audit_text().contains("staged-boot"));
    assert_eq!(s.reboots(), 0);
    assert!(!s.install_record());
}

/// A staged slot booted later that the plant does not run well on is given up: marked bad, back to A.
#[test]
fn a_staged_slot_booted_later_with_failing_health_goes_back_to_the_old_slot() {
    let (mut s, b) = staged_then_booted_by_hand();
    let d = s.daemon(&format!("bundle={},health=fail,health-fail-after=300ms", b.display()));
    assert_eq!(s.reboot(d, "boot", "boot-2"), "A", "the bootloader must go back to A");
    let d = s.daemon(&format!("bundle={}", b.display()));
    let outcome = s.outcome(&d, Duration::from_secs(60));
    assert!(outcome.starts_with("rolled-back: health failed"), "{outcome}\n{}", d.log_text());
    assert_eq!(s.rauc.slot("rootfs.1")["boot_status"], "bad");
    assert_eq!(s.rauc.primary(), "rootfs.0");
    assert!(!s.install_record());
}

/// A bundle for another gateway is refused by otpatchd's verifier before RAUC sees it.
#[test]
fn incompatible_bundle_is_refused_before_rauc_sees_it() {
    let s = setup("in-window");
    let b = bundle(s.bundles.path(), "other.raucb", "someone-elses-gw", "2.1.0", None);
    let d = s.daemon(&format!("bundle={}", b.display()));
    s.schedule();
    let outcome = s.outcome(&d, Duration::from_secs(60));
    assert!(outcome.starts_with("failed: bundle rejected"), "{outcome}");
    assert!(outcome.contains("someone-elses-gw"), "{outcome}");
    assert!(!s.rauc.log().contains("other.raucb"), "RAUC saw the bundle:\n{}", s.rauc.log());
    assert_eq!(s.rauc.primary(), "rootfs.0");
    assert!(fs::read(s.rauc.path("slotB.img")).unwrap().iter().all(|b| *b == 0), "slot B was written");
}

/// RAUC itself rejects the bundle (its install-check hook fails): reported with RAUC's LastError, rolled back.
#[test]
fn bundle_rauc_rejects_is_reported_with_raucs_last_error() {
    let s = setup("in-window");
    let hook = "echo 'site check: firmware 2.1.0 needs a newer bootloader' >&2; exit 10";
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", Some(hook));
    let d = s.daemon(&format!("bundle={}", b.display()));
    s.schedule();
    let outcome = s.outcome(&d, Duration::from_secs(60));
    assert!(outcome.starts_with("rolled-back: apply failed: RAUC refused to install 2.1.0"), "{outcome}");
    assert!(outcome.contains("needs a newer bootloader"), "RAUC's LastError missing: {outcome}");
    assert_eq!(s.rauc.primary(), "rootfs.0");
    assert_eq!(s.reboots(), 0);
    assert!(!s.install_record());
}

/// RAUC leaves the bus in the middle of an install: a clean apply failure and rollback, not a hang.
#[test]
fn rauc_disappearing_mid_install_fails_cleanly_and_rolls_back() {
    let mut s = setup("in-window");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", Some("sleep 20"));
    let d = s.daemon(&format!("bundle={}", b.display()));
    s.schedule();
    s.wait_state(&d, "applying", Duration::from_secs(60));
    wait_for(Duration::from_secs(20), "RAUC installing", || s.rauc.log().contains("os-2.1.raucb"));
    std::thread::sleep(Duration::from_millis(500));
    s.rauc.kill();
    // systemd would restart it; the rollback waits (bounded) for it.
    std::thread::sleep(Duration::from_secs(1));
    s.rauc.start("A");
    let outcome = s.outcome(&d, Duration::from_secs(90));
    assert!(
        outcome.starts_with("rolled-back: apply failed: the RAUC service (de.pengutronix.rauc) left the bus"),
        "{outcome}\n{}",
        d.log_text()
    );
    assert_eq!(s.rauc.primary(), "rootfs.0");
    assert_eq!(s.reboots(), 0);
}

/// A bundle of its own, signed like the others, written over `path` (rename, as a local attacker or a confused
/// tool would replace a file).
fn replace_bundle(s: &Setup, path: &Path, version: &str) {
    let other = bundle(s.bundles.path(), "replacement.raucb", COMPATIBLE, version, None);
    fs::rename(other, path).unwrap();
}

/// otpatchd is killed right after RAUC reported the install complete, before it took its next step (a crash or
/// power loss in the gap): it is started again in the same boot.
fn crash_right_after_raucs_completed(s: &Setup, b: &Path) {
    s.window_until_crash(b, "rauc:completed=crash", "after RAUC's Completed");
    // RAUC finished: the new slot is written and is the one to boot next.
    assert_eq!(s.rauc.primary(), "rootfs.1", "{}", s.rauc.log());
    assert_eq!(s.rauc.slot("rootfs.1")["slot_status"]["bundle"]["version"], "2.1.0");
}

/// A crash between RAUC's Completed and otpatchd's next step, restart in the same boot: rolled back, and the slot
/// RAUC installed is marked bad and not primary (it must never activate later), not merely left behind.
#[test]
fn a_crash_right_after_raucs_completed_rolls_back_and_marks_the_installed_slot_bad() {
    let s = setup("in-window");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", None);
    crash_right_after_raucs_completed(&s, &b);
    let d = s.daemon(&format!("bundle={}", b.display()));
    let outcome = s.outcome(&d, Duration::from_secs(90));
    assert_eq!(outcome, "rolled-back: daemon restarted while the change was in place", "{}", d.log_text());
    assert_eq!(s.rauc.primary(), "rootfs.0", "the installed slot is still the one to boot\n{}", d.log_text());
    assert_eq!(s.rauc.slot("rootfs.1")["boot_status"], "bad", "{}\n{}", s.rauc.bootstate(), d.log_text());
    assert!(s.rauc.bootstate().contains("state_B=bad"), "{}", s.rauc.bootstate());
    assert!(d.log_text().contains("never seen to finish"), "the rollback does not say why:\n{}", d.log_text());
    assert!(!s.install_record());
    assert_eq!(s.reboots(), 0);
}

/// The same gap, but it was a power loss: the bootloader boots the slot RAUC made primary. otpatchd finds the
/// install it never saw finish running and goes back (marks it bad, the old slot active, reboots); on the old slot
/// the rollback is finished. Never "rolled back" while the new slot stays active.
#[test]
fn a_power_loss_right_after_raucs_completed_never_leaves_the_installed_slot_active() {
    let mut s = setup("in-window");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", None);
    crash_right_after_raucs_completed(&s, &b);
    assert_eq!(s.power_cycle("boot", "boot-2"), "B", "the bootloader boots the primary slot");
    let d = s.daemon(&format!("bundle={}", b.display()));
    let start = std::time::Instant::now();
    while s.reboots() < 1 {
        let st = s.status();
        assert!(
            start.elapsed() < Duration::from_secs(60) && st["state"] != "closed",
            "no reboot back to A from the slot never seen installed: {st}\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(s.rauc.slot("rootfs.1")["boot_status"], "bad");
    assert_eq!(s.rauc.primary(), "rootfs.0");
    // The reboot asked for (the first otpatchd asked for: the power loss was not one) takes the gateway to A.
    let st = d.stop();
    assert!(st.success() || st.code().is_some(), "otpatchd stop: {st:?}");
    assert_eq!(s.power_cycle("boot", "boot-3"), "A");
    let d = s.daemon(&format!("bundle={}", b.display()));
    let outcome = s.outcome(&d, Duration::from_secs(60));
    assert_eq!(outcome, "rolled-back: daemon restarted while the change was in place", "{}", d.log_text());
    assert_eq!(s.reboots(), 1, "no second reboot");
    assert_eq!(s.rauc.slot("rootfs.1")["boot_status"], "bad");
    assert_eq!(s.rauc.primary(), "rootfs.0");
    assert!(!s.install_record());
}

/// The bundle file is replaced after it was verified (during the checkpoint): the install is refused with the
/// digest mismatch named, and RAUC never gets the file.
#[test]
fn a_bundle_replaced_after_verification_is_refused_before_rauc_gets_it() {
    let s = setup("in-window");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", None);
    // Every fake step (the checkpoint too) takes 2 s: time to replace the file once the bundle was verified.
    let d = s.daemon(&format!("bundle={},delay=2s", b.display()));
    s.schedule();
    s.wait_state(&d, "verified", Duration::from_secs(60));
    replace_bundle(&s, &b, "6.6.6");
    let outcome = s.outcome(&d, Duration::from_secs(60));
    assert!(outcome.starts_with("rolled-back: apply failed: not installing 2.1.0"), "{outcome}\n{}", d.log_text());
    assert!(outcome.contains("digest mismatch"), "{outcome}");
    assert!(!s.rauc.log().contains("os-2.1.raucb"), "RAUC got the bundle:\n{}", s.rauc.log());
    assert!(fs::read(s.rauc.path("slotB.img")).unwrap().iter().all(|b| *b == 0), "slot B was written");
    assert_eq!(s.rauc.primary(), "rootfs.0");
    assert!(!s.install_record());
}

/// `otpatchctl window cancel` while RAUC installs (its install-check hook takes 6 s): otpatchd does not drop the
/// install, it waits for RAUC's Completed, then marks the installed slot bad; the window ends rolled back.
#[test]
fn a_cancel_during_the_install_waits_for_rauc_then_marks_the_slot_bad() {
    let s = setup("in-window");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", Some("sleep 6"));
    let d = s.daemon(&format!("bundle={}", b.display()));
    s.schedule();
    s.wait_state(&d, "applying", Duration::from_secs(60));
    wait_for(Duration::from_secs(20), "RAUC installing", || s.rauc.log().contains("os-2.1.raucb"));
    std::thread::sleep(Duration::from_secs(1));
    let id = s.status()["active_window"].as_str().unwrap().to_string();
    let o = ctl(&s.bus, &["window", "cancel", &id], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let outcome = s.outcome(&d, Duration::from_secs(90));
    assert!(outcome.starts_with("rolled-back: cancelled by uid"), "{outcome}\n{}", d.log_text());
    let log = d.log_text();
    let completed = log.find("RAUC Completed").unwrap_or_else(|| panic!("otpatchd did not wait for RAUC:\n{log}"));
    // The installed slot's mark (the start marked the booted slot good, before the window).
    let marked = log.find("marked slot rootfs.1 as bad").unwrap_or_else(|| panic!("slot B not marked bad:\n{log}"));
    assert!(completed < marked, "the slot was marked before RAUC finished:\n{log}");
    // RAUC did write the slot; it must never boot.
    assert_eq!(s.rauc.slot("rootfs.1")["slot_status"]["bundle"]["version"], "2.1.0");
    assert_eq!(s.rauc.slot("rootfs.1")["boot_status"], "bad", "{}\n{log}", s.rauc.bootstate());
    assert_eq!(s.rauc.primary(), "rootfs.0");
    assert!(!s.install_record());
    assert_eq!(s.reboots(), 0);
}

/// The window's deadline falls inside the install (its install-check hook takes 12 s, the window 8 s): the same as
/// a cancel, RAUC's Completed is waited for, then the installed slot is marked bad.
#[test]
fn a_deadline_during_the_install_waits_for_rauc_then_marks_the_slot_bad() {
    let s = setup("in-window");
    let b = bundle(s.bundles.path(), "os-2.1.raucb", COMPATIBLE, "2.1.0", Some("sleep 12"));
    let d = s.daemon(&format!("bundle={}", b.display()));
    let o = ctl(&s.bus, &["window", "schedule", "--start", &start_in(1), "--duration", "8s"], None);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    s.wait_state(&d, "applying", Duration::from_secs(30));
    let outcome = s.outcome(&d, Duration::from_secs(90));
    assert_eq!(outcome, "rolled-back: window ended before the change was committed", "{}", d.log_text());
    let log = d.log_text();
    let completed = log.find("RAUC Completed").unwrap_or_else(|| panic!("otpatchd did not wait for RAUC:\n{log}"));
    // The installed slot's mark (the start marked the booted slot good, before the window).
    let marked = log.find("marked slot rootfs.1 as bad").unwrap_or_else(|| panic!("slot B not marked bad:\n{log}"));
    assert!(completed < marked, "the slot was marked before RAUC finished:\n{log}");
    assert_eq!(s.rauc.slot("rootfs.1")["slot_status"]["bundle"]["version"], "2.1.0");
    assert_eq!(s.rauc.slot("rootfs.1")["boot_status"], "bad", "{}\n{log}", s.rauc.bootstate());
    assert_eq!(s.rauc.primary(), "rootfs.0");
    assert!(!s.install_record());
}
