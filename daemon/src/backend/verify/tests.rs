use super::*;
use crate::backend::TokioClock;
use otpatch_common::policy::{parse_sources, LoadOptions};

fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A root CA and a codeSigning signer it issued, as a vendor would have them.
fn pki(dir: &Path) {
    openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "ca.key"]);
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "3",
            "-subj",
            "/CN=site root",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(dir, &["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "signer.key"]);
    openssl(dir, &["req", "-new", "-key", "signer.key", "-out", "signer.csr", "-subj", "/CN=vendor signing"]);
    std::fs::write(
        dir.join("signer.ext"),
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "signer.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "signer.pem",
            "-days",
            "2",
            "-extfile",
            "signer.ext",
        ],
    );
}

struct Setup {
    dir: tempfile::TempDir,
    verifier: BundleVerifier,
}

fn setup(floor: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    std::fs::create_dir_all(r.join("etc/otpatch/trust")).unwrap();
    std::fs::create_dir_all(r.join("pki")).unwrap();
    pki(&r.join("pki"));
    std::fs::copy(r.join("pki/ca.pem"), r.join("etc/otpatch/trust/ca.pem")).unwrap();
    std::fs::create_dir_all(r.join("proc/sys/kernel")).unwrap();
    std::fs::write(r.join("proc/sys/kernel/osrelease"), "6.1.0-28-amd64\n").unwrap();
    let ts = if floor { "system-with-floor" } else { "system" };
    let text = format!(
        "[gateway]\nid = \"gw\"\ncompatible = \"acme-gw\"\n[trust]\nanchors = [\"/etc/otpatch/trust/ca.pem\"]\ntime_source = \"{ts}\"\n"
    );
    let settings = parse_sources(&[("p.toml".into(), text)], &LoadOptions::default()).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(Timestamp::now()));
    let verifier = BundleVerifier::new(&settings, &Sysroot::new(r), clock);
    Setup { dir, verifier }
}

/// A relocatable ELF with a livepatch `.modinfo` for `vermagic_release`, as kbuild would make a `.ko`.
fn module(dir: &Path, vermagic_release: &str) -> PathBuf {
    let c = dir.join("fix.c");
    std::fs::write(
        &c,
        format!(
            "const char modinfo[] __attribute__((section(\".modinfo\"), used)) = \"name=fix\\0livepatch=Y\\0vermagic={vermagic_release} SMP preempt mod_unload \";\n"
        ),
    )
    .unwrap();
    let ko = dir.join("fix.ko");
    assert!(std::process::Command::new("cc").arg("-c").arg(&c).arg("-o").arg(&ko).status().unwrap().success());
    ko
}

fn make_bundle(s: &Setup, version: &str, release: &str) -> PathBuf {
    make_bundle_with(s, version, release, release)
}

fn make_bundle_with(s: &Setup, version: &str, release: &str, vermagic_release: &str) -> PathBuf {
    let r = s.dir.path();
    let ko = module(&r.join("pki"), vermagic_release);
    let out = r.join(format!("lp-{version}.otb"));
    bundle::create(
        &bundle::CreateRequest {
            kind: "livepatch".into(),
            compatible: "acme-gw".into(),
            version: version.into(),
            expires: None,
            kernel_releases: vec![release.into()],
            build_id: None,
            payloads: vec![ko],
            signer_cert: r.join("pki/signer.pem"),
            signer_key: r.join("pki/signer.key"),
            chain: vec![],
        },
        &out,
    )
    .unwrap();
    out
}

/// A committed bundle is put back (at boot, or by a rollback of a later window) when its manifest expiry and
/// its signer's notAfter have passed: it is re-verified as of its commit, not against today's clock.
#[tokio::test]
async fn a_committed_bundle_is_re_verified_as_of_its_commit() {
    let s = setup(false);
    let path = make_bundle(&s, "1.0.0", "6.1.0-28-amd64");
    let committed_at = Timestamp::now();
    s.verifier.verify_path(&path, false).unwrap();
    // 200 days later: past the manifest's default expiry (180 days) and the signer's 3-day certificate.
    let later = committed_at + jiff::SignedDuration::from_hours(200 * 24);
    let text = "[gateway]\nid = \"gw\"\ncompatible = \"acme-gw\"\n[trust]\nanchors = [\"/etc/otpatch/trust/ca.pem\"]\n";
    let settings = parse_sources(&[("p.toml".into(), text.into())], &LoadOptions::default()).unwrap();
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(later));
    let months_later = BundleVerifier::new(&settings, &Sysroot::new(s.dir.path()), clock);
    let e = months_later.verify_path(&path, true).unwrap_err();
    assert!(e.0.contains("expire") || e.0.contains("valid"), "a new verification keeps every check: {e}");
    let v = months_later.verify_path_at(&path, true, Some(committed_at)).unwrap();
    assert_eq!(v.version, "1.0.0");
    // Integrity still counts: a changed file is refused whatever the time.
    let mut bytes = std::fs::read(&path).unwrap();
    let n = bytes.len() / 3;
    bytes[n] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    assert!(months_later.verify_path_at(&path, true, Some(committed_at)).is_err());
}

#[tokio::test]
async fn verifies_maps_and_raises_the_clock_floor() {
    let s = setup(true);
    let b = make_bundle(&s, "1.0.0", "6.1.0-28-amd64");
    let v = Verifier::verify(&s.verifier, &BundleRef { path: b.clone(), size: 0 }).await.unwrap();
    assert_eq!(v.kind, PatchKind::Livepatch);
    assert_eq!(v.version, "1.0.0");
    assert!(v.signer.contains("vendor signing"), "{}", v.signer);
    let c = Committed::load(&s.dir.path().join("var/lib/otpatch/committed.json")).unwrap();
    assert!(c.time_floor.is_some(), "the signing time became the clock floor");
}

#[tokio::test]
async fn a_livepatch_is_compared_with_livepatches_not_with_the_committed_image() {
    // A gateway that committed livepatch 1.1.0, then an A/B image 3.0.0 (a new kernel, its own version
    // series): the next livepatch, 1.2.0, is newer than every livepatch here and must not be refused as a
    // downgrade from 3.0.0; a replayed 1.0.0 still is, and so is 1.1.0 again.
    let s = setup(false);
    let state = s.dir.path().join("var/lib/otpatch/committed.json");
    let lp11 = make_bundle(&s, "1.1.0", "6.1.0-28-amd64");
    let v = Verifier::verify(&s.verifier, &BundleRef { path: lp11.clone(), size: 0 }).await.unwrap();
    Committed::record(&state, &v, Timestamp::now(), None).unwrap();
    let image = VerifiedBundle {
        path: s.dir.path().join("var/lib/otpatch/bundles/os-3.0.0.raucb"),
        kind: PatchKind::Ab,
        compatible: "acme-gw".into(),
        version: "3.0.0".into(),
        digest: "d".repeat(64),
        signer: "CN=vendor".into(),
        verified_at: None,
    };
    Committed::record(&state, &image, Timestamp::now(), None).unwrap();
    let lp12 = make_bundle(&s, "1.2.0", "6.1.0-28-amd64");
    let v = Verifier::verify(&s.verifier, &BundleRef { path: lp12, size: 0 }).await;
    assert_eq!(v.map(|v| v.version).map_err(|e| e.0), Ok("1.2.0".to_string()));
    let lp10 = make_bundle(&s, "1.0.0", "6.1.0-28-amd64");
    let e = Verifier::verify(&s.verifier, &BundleRef { path: lp10, size: 0 }).await.unwrap_err();
    assert!(e.0.contains("1.1.0"), "refused against the committed livepatch: {e}");
    let e = Verifier::verify(&s.verifier, &BundleRef { path: lp11, size: 0 }).await.unwrap_err();
    assert!(e.0.contains("1.1.0"), "{e}");
}

#[tokio::test]
async fn refuses_downgrades_other_kernels_and_missing_anchors() {
    let s = setup(false);
    let old = make_bundle(&s, "1.0.0", "6.1.0-28-amd64");
    let newer = make_bundle(&s, "1.1.0", "6.1.0-28-amd64");
    let v = Verifier::verify(&s.verifier, &BundleRef { path: newer.clone(), size: 0 }).await.unwrap();
    Committed::record(&s.dir.path().join("var/lib/otpatch/committed.json"), &v, Timestamp::now(), None).unwrap();
    let e = Verifier::verify(&s.verifier, &BundleRef { path: old, size: 0 }).await.unwrap_err();
    assert!(e.0.to_lowercase().contains("older") || e.0.to_lowercase().contains("downgrade"), "{e}");
    // The same bundle again is fine when re-verifying one already accepted (boot re-apply, rollback).
    s.verifier.verify_path(&newer, true).unwrap();
    let other_kernel = make_bundle(&s, "1.2.0", "6.1.0-99-amd64");
    let e = Verifier::verify(&s.verifier, &BundleRef { path: other_kernel, size: 0 }).await.unwrap_err();
    assert!(e.0.contains("6.1.0-28-amd64"), "{e}");
    std::fs::remove_file(s.dir.path().join("etc/otpatch/trust/ca.pem")).unwrap();
    let s2 = BundleVerifier::new(
        &parse_sources(
            &[("p.toml".into(), "[gateway]\nid = \"gw\"\ncompatible = \"acme-gw\"\n[trust]\nanchors = [\"/etc/otpatch/trust/ca.pem\"]\n".into())],
            &LoadOptions::default(),
        )
        .unwrap(),
        &Sysroot::new(s.dir.path()),
        Arc::new(TokioClock::starting_at(Timestamp::now())),
    );
    let e = s2.verify_path(&newer, false).unwrap_err();
    assert!(e.0.contains("trust anchors cannot be used"), "{e}");
}

#[tokio::test]
async fn payloads_are_extracted_only_as_signed() {
    let s = setup(false);
    let b = make_bundle(&s, "1.0.0", "6.1.0-28-amd64");
    let v = s.verifier.verify_path(&b, false).unwrap();
    let dest = s.dir.path().join("var/lib/otpatch/livepatch");
    let ko = s.verifier.extract_payload(&v, &b, ".ko", &dest).unwrap();
    assert_eq!(std::fs::read(&ko).unwrap(), std::fs::read(s.dir.path().join("pki/fix.ko")).unwrap());
    // The bundle changes on disk after it was verified: the copy no longer matches what was signed.
    std::fs::remove_file(&ko).unwrap();
    let mut bytes = std::fs::read(&b).unwrap();
    bytes[2] ^= 0xff;
    std::fs::write(&b, &bytes).unwrap();
    let e = s.verifier.extract_payload(&v, &b, ".ko", &dest).unwrap_err();
    assert!(e.0.contains("changed since it was verified"), "{e}");
    assert!(std::fs::read_dir(&dest).unwrap().next().is_none(), "nothing left behind");
    let e = s.verifier.extract_payload(&v, &b, ".bin", &dest).unwrap_err();
    assert!(e.0.contains("no payload named *.bin"), "{e}");
}

#[tokio::test]
async fn a_module_built_for_another_kernel_fails_verification_before_any_apply() {
    let s = setup(false);
    // The manifest says the running release, the module inside was built for another one.
    let b = make_bundle_with(&s, "1.0.0", "6.1.0-28-amd64", "6.1.0-28-rt-amd64");
    let e = Verifier::verify(&s.verifier, &BundleRef { path: b, size: 0 }).await.unwrap_err();
    assert!(e.0.contains("vermagic mismatch"), "{e}");
    assert!(e.is_kernel_mismatch(), "a kernel mismatch is told apart (for the A/B fallback): {e}");
    // So is a manifest naming another kernel release.
    let b = make_bundle_with(&s, "1.0.1", "6.1.0-99-amd64", "6.1.0-99-amd64");
    let e = Verifier::verify(&s.verifier, &BundleRef { path: b, size: 0 }).await.unwrap_err();
    assert!(e.is_kernel_mismatch(), "{e}");
    // A bad signature is not one.
    let b = make_bundle_with(&s, "1.0.2", "6.1.0-28-amd64", "6.1.0-28-amd64");
    let mut bytes = std::fs::read(&b).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0x01;
    std::fs::write(&b, &bytes).unwrap();
    let e = Verifier::verify(&s.verifier, &BundleRef { path: b, size: 0 }).await.unwrap_err();
    assert!(!e.is_kernel_mismatch(), "{e}");
}

/// An application bundle, validly signed, is refused at verification: no backend applies one yet (before,
/// it went down the livepatch path).
#[tokio::test]
async fn app_bundles_are_refused_at_verification() {
    let s = setup(false);
    let r = s.dir.path();
    std::fs::write(r.join("pki/app.tar"), b"an application payload").unwrap();
    let out = r.join("app-1.0.0.otb");
    bundle::create(
        &bundle::CreateRequest {
            kind: "app".into(),
            compatible: "acme-gw".into(),
            version: "1.0.0".into(),
            expires: None,
            kernel_releases: vec![],
            build_id: None,
            payloads: vec![r.join("pki/app.tar")],
            signer_cert: r.join("pki/signer.pem"),
            signer_key: r.join("pki/signer.key"),
            chain: vec![],
        },
        &out,
    )
    .unwrap();
    // The signature itself is fine: the refusal is about the kind.
    s.verifier.verify_path(&out, false).unwrap();
    let e = Verifier::verify(&s.verifier, &BundleRef { path: out, size: 0 }).await.unwrap_err();
    assert!(e.0.contains("app bundles are not supported yet: no backend applies them"), "{e}");
    assert!(!e.is_kernel_mismatch(), "not a kernel mismatch (no A/B fallback for it): {e}");
}

#[test]
fn the_index_signature_is_checked_against_the_anchors() {
    let s = setup(false);
    let r = s.dir.path();
    std::fs::write(r.join("index.json"), b"{\"format\":1}").unwrap();
    openssl(
        &r.join("pki"),
        &[
            "cms",
            "-sign",
            "-binary",
            "-outform",
            "DER",
            "-in",
            "../index.json",
            "-signer",
            "signer.pem",
            "-inkey",
            "signer.key",
            "-out",
            "../index.json.sig",
        ],
    );
    let content = std::fs::read(r.join("index.json")).unwrap();
    let sig = std::fs::read(r.join("index.json.sig")).unwrap();
    let who = IndexVerifier::verify(&s.verifier, &content, &sig, Timestamp::now()).unwrap();
    assert!(who.contains("vendor signing"), "{who}");
    let e = IndexVerifier::verify(&s.verifier, b"{\"format\":2}", &sig, Timestamp::now()).unwrap_err();
    assert!(e.to_lowercase().contains("digest"), "{e}");
}

/// The index's `expires` is checked at the time its signature is: with `system-with-floor`, never before the
/// clock floor, so a gateway whose clock restarted in 1970 refuses an index that expired before the floor.
#[test]
fn the_index_expiry_is_checked_against_the_clock_floor() {
    let at_1970 = Timestamp::UNIX_EPOCH;
    let floor: Timestamp = "2026-12-01T00:00:00Z".parse().unwrap();
    let index = br#"{"format":1,"issued":"2026-10-01T00:00:00Z","expires":"2026-11-01T00:00:00Z","bundles":[]}"#;
    for with_floor in [true, false] {
        let s = setup(with_floor);
        let mut committed = Committed::default();
        committed.time_floor = Some(floor);
        let path = s.dir.path().join("var/lib/otpatch/committed.json");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, serde_json::to_vec(&committed).unwrap()).unwrap();
        let t = IndexVerifier::check_time(&s.verifier, at_1970);
        if with_floor {
            assert_eq!(t, floor, "the floor, as for the signature");
            let e = crate::fetch::Index::check(index, t, None).unwrap_err();
            assert!(e.0.contains("expired"), "{e}");
        } else {
            assert_eq!(t, at_1970, "time_source = system: the clock as it is");
        }
    }
}
