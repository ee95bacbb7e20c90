//! The livepatcher against a fake sysfs tree whose fake kernel plays the livepatch state machine: a patch
//! appears enabled and in transition when loaded, finishes (or stalls), disappears after being disabled.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::engine::PatchKind;

const RELEASE: &str = "6.1.0-28-amd64";
const FLAGS: &str = "SMP preempt mod_unload modversions ";

fn make_ko(dir: &Path, name: &str, release: &str, livepatch: bool) -> PathBuf {
    make_ko_version(dir, name, release, livepatch, "")
}

/// A module file with a `srcversion` (empty: none), saved as `<name>-<srcversion>.ko`.
fn make_ko_version(dir: &Path, name: &str, release: &str, livepatch: bool, srcversion: &str) -> PathBuf {
    let c = dir.join(format!("{name}-{srcversion}.c"));
    let lp = if livepatch { "livepatch=Y\\0" } else { "" };
    let src = if srcversion.is_empty() { String::new() } else { format!("srcversion={srcversion}\\0") };
    std::fs::write(
        &c,
        format!(
            "const char modinfo[] __attribute__((section(\".modinfo\"), used)) = \"name={name}\\0{lp}{src}vermagic={release} {FLAGS}\";\n"
        ),
    )
    .unwrap();
    let ko = if srcversion.is_empty() {
        dir.join(format!("{name}.ko"))
    } else {
        dir.join(format!("{name}-{srcversion}.ko"))
    };
    assert!(std::process::Command::new("cc").arg("-c").arg(&c).arg("-o").arg(&ko).status().unwrap().success());
    ko
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    Normal,
    /// The enable transition never finishes on its own (only `force` ends it).
    Stall,
    /// finit_module fails.
    Refuse,
}

/// A fake kernel over a fake sysfs tree, with a background "kernel" thread that moves transitions along.
struct FakeKernel {
    root: PathBuf,
    mode: Mode,
    calls: Mutex<Vec<String>>,
    stop: Arc<AtomicBool>,
    /// Modules loaded (a replaced patch's module stays loaded after its sysfs directory went, until unloaded).
    loaded: Mutex<std::collections::BTreeSet<String>>,
    /// How long finit_module takes.
    load_delay: Mutex<Duration>,
}

impl FakeKernel {
    fn new(root: &Path, mode: Mode) -> Arc<FakeKernel> {
        let lp = root.join("sys/kernel/livepatch");
        std::fs::create_dir_all(&lp).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let k = Arc::new(FakeKernel {
            root: root.to_path_buf(),
            mode,
            calls: Mutex::new(vec![]),
            stop: stop.clone(),
            loaded: Mutex::new(Default::default()),
            load_delay: Mutex::new(Duration::ZERO),
        });
        std::thread::spawn(move || {
            // Bounded: at most 60 s of 5 ms ticks, or until the test ends.
            for _ in 0..12_000 {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                for e in std::fs::read_dir(&lp).unwrap().filter_map(Result::ok) {
                    let d = e.path();
                    let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap_or_default().trim().to_string();
                    if read("enabled") == "0" {
                        let _ = std::fs::remove_dir_all(&d);
                    } else if read("force") == "1" || (mode == Mode::Normal && read("transition") == "1") {
                        let _ = std::fs::write(d.join("transition"), "0");
                        // Atomic replace (every patch here sets .replace): the others' patches are released.
                        for other in std::fs::read_dir(&lp).unwrap().filter_map(Result::ok) {
                            if other.path() != d {
                                let _ = std::fs::remove_dir_all(other.path());
                            }
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        k
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

impl Drop for FakeKernel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

impl Kernel for FakeKernel {
    fn load(&self, ko: &Path) -> std::io::Result<()> {
        let info = ModInfo::read(ko).map_err(std::io::Error::other)?;
        self.calls.lock().unwrap().push(format!("load {}", info.name));
        std::thread::sleep(*self.load_delay.lock().unwrap());
        if self.mode == Mode::Refuse {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EPERM));
        }
        if !self.loaded.lock().unwrap().insert(info.name.clone()) {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EEXIST));
        }
        let m = self.root.join("sys/module").join(&info.name);
        std::fs::create_dir_all(&m)?;
        if let Some(v) = &info.srcversion {
            std::fs::write(m.join("srcversion"), format!("{v}\n"))?;
        }
        let d = self.root.join("sys/kernel/livepatch").join(&info.name);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("transition"), "1")?;
        std::fs::write(d.join("enabled"), "1")?;
        Ok(())
    }

    fn unload(&self, name: &str) -> std::io::Result<()> {
        self.calls.lock().unwrap().push(format!("unload {name}"));
        if self.root.join("sys/kernel/livepatch").join(name).exists() {
            // The kernel refuses to unload a patch that is still enabled.
            return Err(std::io::Error::from_raw_os_error(nix::libc::EBUSY));
        }
        if !self.loaded.lock().unwrap().remove(name) {
            return Err(std::io::Error::from_raw_os_error(nix::libc::ENOENT));
        }
        let _ = std::fs::remove_dir_all(self.root.join("sys/module").join(name));
        Ok(())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    root: Sysroot,
    ko: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    std::fs::create_dir_all(r.join("proc/sys/kernel")).unwrap();
    std::fs::write(r.join("proc/sys/kernel/osrelease"), format!("{RELEASE}\n")).unwrap();
    let mods = r.join("lib/modules").join(RELEASE).join("kernel/net");
    std::fs::create_dir_all(&mods).unwrap();
    let build = r.join("build");
    std::fs::create_dir_all(&build).unwrap();
    let reference = make_ko(&build, "veth", RELEASE, false);
    std::fs::copy(&reference, mods.join("veth.ko")).unwrap();
    let ko = make_ko(&build, "otp_lp", RELEASE, true);
    Setup { root: Sysroot::new(r), ko, _dir: dir }
}

fn bundle() -> VerifiedBundle {
    VerifiedBundle {
        path: "/var/lib/otpatch/bundles/lp.otb".into(),
        kind: PatchKind::Livepatch,
        compatible: "gw".into(),
        version: "1.0".into(),
        digest: "d".into(),
        signer: "CN=vendor".into(),
        verified_at: None,
    }
}

fn livepatcher(s: &Setup, kernel: Arc<FakeKernel>, allow_force: bool, ko: PathBuf) -> SysfsLivepatcher {
    let config = LivepatchConfig {
        transition_timeout: Duration::from_millis(400),
        allow_force,
        poll: Duration::from_millis(10),
        pinned_build_id: None,
    };
    SysfsLivepatcher::new(
        s.root.clone(),
        kernel,
        config,
        Arc::new(move |_| Ok(ModuleFile { path: ko.clone(), pinned_build_id: None })),
    )
}

fn progress() -> ProgressFn {
    Arc::new(|_, _| {})
}

#[tokio::test]
async fn applies_commits_and_reverts() {
    let s = setup();
    let k = FakeKernel::new(s.root.root(), Mode::Normal);
    let lp = livepatcher(&s, k.clone(), false, s.ko.clone());
    assert!(!lp.is_applied(&bundle()).await.unwrap());
    lp.apply("w1", &bundle(), progress()).await.unwrap();
    assert_eq!(applied(&s.root), vec![AppliedPatch { name: "otp_lp".into(), enabled: true, in_transition: false }]);
    assert!(lp.is_applied(&bundle()).await.unwrap());
    // Applying what is already in is a no-op, not a second load.
    lp.apply("w1", &bundle(), progress()).await.unwrap();
    lp.commit(&bundle()).await.unwrap();
    lp.revert(&bundle(), None).await.unwrap();
    assert!(applied(&s.root).is_empty());
    assert_eq!(k.calls(), vec!["load otp_lp", "unload otp_lp"]);
    // Reverting again: nothing in place, still fine (rollback is idempotent).
    lp.revert(&bundle(), None).await.unwrap();
    let e = lp.commit(&bundle()).await.unwrap_err();
    assert!(e.0.contains("no longer applied"), "{e}");
}

#[tokio::test]
async fn a_stalled_transition_is_reverted_and_the_stragglers_named() {
    let s = setup();
    let proc_task = s.root.path("/proc/4242");
    std::fs::create_dir_all(&proc_task).unwrap();
    std::fs::write(proc_task.join("patch_state"), "0\n").unwrap();
    std::fs::write(proc_task.join("comm"), "plc-io\n").unwrap();
    let k = FakeKernel::new(s.root.root(), Mode::Stall);
    let lp = livepatcher(&s, k.clone(), false, s.ko.clone());
    let e = lp.apply("w1", &bundle(), progress()).await.unwrap_err();
    assert!(e.0.contains("did not finish its transition"), "{e}");
    assert!(e.0.contains("4242 (plc-io)"), "{e}");
    assert!(e.0.ends_with("reverted"), "{e}");
    assert!(applied(&s.root).is_empty(), "nothing left in place");
    assert_eq!(k.calls(), vec!["load otp_lp", "unload otp_lp"]);
}

#[tokio::test]
async fn force_is_used_only_when_the_policy_allows_it() {
    let s = setup();
    let k = FakeKernel::new(s.root.root(), Mode::Stall);
    let lp = livepatcher(&s, k, true, s.ko.clone());
    lp.apply("w1", &bundle(), progress()).await.unwrap();
    let dir = s.root.path("/sys/kernel/livepatch/otp_lp");
    assert_eq!(std::fs::read_to_string(dir.join("force")).unwrap(), "1");
    assert!(!applied(&s.root)[0].in_transition);
}

#[tokio::test]
async fn modules_for_another_kernel_or_not_livepatches_are_refused_before_loading() {
    let s = setup();
    let k = FakeKernel::new(s.root.root(), Mode::Normal);
    let build = s.root.path("/build");
    let other = make_ko(&build, "otp_other", "6.1.0-30-amd64", true);
    let e = livepatcher(&s, k.clone(), false, other).apply("w1", &bundle(), progress()).await.unwrap_err();
    assert!(e.0.contains("vermagic mismatch") && e.0.contains("6.1.0-30-amd64"), "{e}");
    let plain = make_ko(&build, "otp_plain", RELEASE, false);
    let e = livepatcher(&s, k.clone(), false, plain).apply("w1", &bundle(), progress()).await.unwrap_err();
    assert!(e.0.contains("not a livepatch"), "{e}");
    assert!(k.calls().is_empty(), "nothing was loaded");
}

#[tokio::test]
async fn a_pinned_build_id_must_match_the_running_kernel() {
    let s = setup();
    let k = FakeKernel::new(s.root.root(), Mode::Normal);
    let notes = s.root.path("/sys/kernel/notes");
    let mut n = Vec::new();
    n.extend(4u32.to_ne_bytes());
    n.extend(2u32.to_ne_bytes());
    n.extend(3u32.to_ne_bytes());
    n.extend(b"GNU\0");
    n.extend([0xab, 0xcd, 0, 0]);
    std::fs::write(&notes, n).unwrap();
    let mut lp = livepatcher(&s, k.clone(), false, s.ko.clone());
    lp.config.pinned_build_id = Some("ffff".into());
    let e = lp.apply("w1", &bundle(), progress()).await.unwrap_err();
    assert!(e.0.contains("pins kernel build-id ffff") && e.0.contains("abcd"), "{e}");
    lp.config.pinned_build_id = Some("abcd".into());
    lp.apply("w1", &bundle(), progress()).await.unwrap();
}

#[tokio::test]
async fn a_kernel_refusal_is_reported() {
    let s = setup();
    let k = FakeKernel::new(s.root.root(), Mode::Refuse);
    let e = livepatcher(&s, k, false, s.ko.clone()).apply("w1", &bundle(), progress()).await.unwrap_err();
    assert!(e.0.contains("the kernel refused livepatch module otp_lp"), "{e}");
}

/// A bundle per version, and a livepatcher whose module source maps each version to its own module file.
fn versioned(version: &str) -> VerifiedBundle {
    VerifiedBundle { version: version.into(), digest: format!("d-{version}"), ..bundle() }
}

fn livepatcher_for(s: &Setup, kernel: Arc<FakeKernel>, modules: Vec<(&str, PathBuf)>) -> SysfsLivepatcher {
    let config = LivepatchConfig {
        transition_timeout: Duration::from_millis(400),
        allow_force: false,
        poll: Duration::from_millis(10),
        pinned_build_id: None,
    };
    let modules: Vec<(String, PathBuf)> = modules.into_iter().map(|(v, p)| (v.to_string(), p)).collect();
    SysfsLivepatcher::new(
        s.root.clone(),
        kernel,
        config,
        Arc::new(move |b: &VerifiedBundle| {
            let path = modules.iter().find(|(v, _)| *v == b.version).map(|(_, p)| p.clone());
            path.map(|path| ModuleFile { path, pinned_build_id: None })
                .ok_or_else(|| BackendError::new(format!("no module for {}", b.version)))
        }),
    )
}

#[tokio::test]
async fn rolling_back_a_cumulative_patch_puts_the_committed_one_back() {
    let s = setup();
    let build = s.root.path("/build");
    let v2 = make_ko_version(&build, "otp_lp_v2", RELEASE, true, "B2");
    let k = FakeKernel::new(s.root.root(), Mode::Normal);
    let lp = livepatcher_for(&s, k.clone(), vec![("1.0", s.ko.clone()), ("2.0", v2)]);
    lp.apply("w1", &versioned("1.0"), progress()).await.unwrap();
    lp.commit(&versioned("1.0")).await.unwrap();
    lp.apply("w2", &versioned("2.0"), progress()).await.unwrap();
    assert_eq!(applied(&s.root).iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["otp_lp_v2"]);
    assert!(k.calls().contains(&"unload otp_lp".to_string()), "the replaced module is unloaded: {:?}", k.calls());
    lp.revert(&versioned("2.0"), Some(&versioned("1.0"))).await.unwrap();
    assert_eq!(
        applied(&s.root),
        vec![AppliedPatch { name: "otp_lp".into(), enabled: true, in_transition: false }],
        "the committed v1 is in place again"
    );
    assert!(lp.is_applied(&versioned("1.0")).await.unwrap());
    assert!(!k.loaded.lock().unwrap().contains("otp_lp_v2"), "v2's module is gone: {:?}", k.calls());
}

#[tokio::test]
async fn a_rollback_that_cannot_restore_the_committed_patch_fails() {
    let s = setup();
    let build = s.root.path("/build");
    let v2 = make_ko_version(&build, "otp_lp_v2", RELEASE, true, "B2");
    let k = FakeKernel::new(s.root.root(), Mode::Normal);
    // v1's module cannot be had any more (its bundle is damaged, say).
    let lp = livepatcher_for(&s, k.clone(), vec![("2.0", v2)]);
    lp.apply("w2", &versioned("2.0"), progress()).await.unwrap();
    let e = lp.revert(&versioned("2.0"), Some(&versioned("1.0"))).await.unwrap_err();
    assert!(e.0.contains("1.0") && e.0.contains("no module for 1.0"), "{e}");
}

#[tokio::test]
async fn a_module_of_the_same_name_but_another_build_is_not_ours() {
    let s = setup();
    let build = s.root.path("/build");
    let a = make_ko_version(&build, "otp_lp", RELEASE, true, "AAAA");
    let b = make_ko_version(&build, "otp_lp", RELEASE, true, "BBBB");
    let k = FakeKernel::new(s.root.root(), Mode::Normal);
    let lp = livepatcher_for(&s, k.clone(), vec![("1.0", a), ("1.1", b)]);
    lp.apply("w1", &versioned("1.0"), progress()).await.unwrap();
    assert!(!lp.is_applied(&versioned("1.1")).await.unwrap(), "another build of the same name is not applied");
    let e = lp.apply("w2", &versioned("1.1"), progress()).await.unwrap_err();
    assert!(e.0.contains("srcversion AAAA") && e.0.contains("BBBB"), "{e}");
    lp.revert(&versioned("1.1"), None).await.unwrap();
    assert_eq!(applied(&s.root).len(), 1, "the other build stays in place");
    assert_eq!(k.calls(), vec!["load otp_lp"], "and is never unloaded");
}

#[tokio::test]
async fn a_revert_waits_for_a_load_that_outlived_its_cancelled_apply() {
    let s = setup();
    let k = FakeKernel::new(s.root.root(), Mode::Normal);
    *k.load_delay.lock().unwrap() = Duration::from_millis(300);
    let lp = livepatcher(&s, k.clone(), false, s.ko.clone());
    // The deadline drops the apply while finit_module runs in its blocking task.
    let cut = tokio::time::timeout(Duration::from_millis(50), lp.apply("w1", &bundle(), progress())).await;
    assert!(cut.is_err(), "the apply was cut short");
    lp.revert(&bundle(), None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(applied(&s.root).is_empty(), "nothing finished loading after the revert: {:?}", applied(&s.root));
    assert!(k.loaded.lock().unwrap().is_empty(), "{:?}", k.calls());
}
