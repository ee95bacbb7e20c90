//! RAUC bundles made by Debian's `rauc bundle` (plain and verity), verified by us and, on the same files, by
//! `rauc info` (keyring = our anchor, `check-purpose=codesign`) and `openssl cms -verify`; the verdicts must agree.
#![cfg(feature = "bundle")]
#![allow(clippy::unwrap_used)]

#[path = "bundle_pki.rs"]
mod pki;

use std::path::{Path, PathBuf};
use std::process::Command;

use jiff::Timestamp;
use otpatch_common::bundle::{self, BundleError, BundleFormat, Expectations, TrustStore, Verdict};
use pki::{run, Pki};
use sha2::{Digest, Sha256};

fn trust() -> TrustStore {
    TrustStore::from_pem_files(&[Pki::get().path("root.pem")], &[], None).unwrap()
}

fn exp() -> Expectations {
    Expectations {
        compatible: "acme-gw-x86".into(),
        last_committed: std::collections::BTreeMap::from([("rauc".to_string(), "2.0.0".to_string())]),
        allow_downgrade: false,
        now: Timestamp::now(),
        kernel_release: None,
    }
}

fn image() -> Vec<u8> {
    // Not very compressible, several squashfs blocks plus a tail in a fragment.
    (0u32..90_000).flat_map(|i| i.wrapping_mul(2_654_435_761).to_le_bytes()).collect()
}

/// `rauc bundle` with the given format and signer into `dir/name`.
fn rauc_bundle(dir: &Path, name: &str, format: &str, signer: &str, version: &str) -> PathBuf {
    let pki = Pki::get();
    let content = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(content.join("rootfs.img"), image()).unwrap();
    std::fs::write(content.join("appfs.img"), b"small image in a fragment").unwrap();
    std::fs::write(
        content.join("manifest.raucm"),
        format!(
            "[update]\ncompatible=acme-gw-x86\nversion={version}\n\n[bundle]\nformat={format}\n\n\
             [image.rootfs]\nfilename=rootfs.img\n\n[image.appfs]\nfilename=appfs.img\n"
        ),
    )
    .unwrap();
    let out = dir.join(name);
    let cert = pki.path(&format!("{signer}.pem"));
    let key = pki.path(&format!("{signer}.key"));
    run(
        dir,
        "rauc",
        &[
            "bundle",
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
            "--intermediate",
            pki.path("inter.pem").to_str().unwrap(),
            content.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    out
}

/// `rauc info` with a system.conf whose keyring is our anchor; true when it accepts the bundle.
fn rauc_accepts(dir: &Path, bundle: &Path) -> bool {
    let conf = dir.join("system.conf");
    std::fs::write(
        &conf,
        format!(
            "[system]\ncompatible=acme-gw-x86\nbootloader=noop\n\n[keyring]\npath={}\ncheck-purpose=codesign\n",
            Pki::get().path("root.pem").display()
        ),
    )
    .unwrap();
    Command::new("rauc")
        .arg(format!("--conf={}", conf.display()))
        .arg("info")
        .arg(bundle)
        .output()
        .unwrap()
        .status
        .success()
}

/// `openssl cms -verify` over the bundle's CMS: detached over the squashfs (plain) or with its inline manifest.
fn openssl_accepts(dir: &Path, bundle: &Path, plain: bool) -> bool {
    let bytes = std::fs::read(bundle).unwrap();
    let n = bytes.len();
    let cms_len = u64::from_be_bytes(bytes[n - 8..].try_into().unwrap()) as usize;
    let cms = dir.join("sig.der");
    std::fs::write(&cms, &bytes[n - 8 - cms_len..n - 8]).unwrap();
    let mut cmd = Command::new("openssl");
    cmd.args(["cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-out", "/dev/null", "-in"])
        .arg(&cms)
        .arg("-CAfile")
        .arg(Pki::get().path("root.pem"));
    if plain {
        let content = dir.join("squashfs.img");
        std::fs::write(&content, &bytes[..n - 8 - cms_len]).unwrap();
        cmd.arg("-content").arg(content);
    }
    cmd.output().unwrap().status.success()
}

fn flipped(src: &Path, at: usize) -> PathBuf {
    let mut b = std::fs::read(src).unwrap();
    let i = if at < b.len() { at } else { b.len() - (at - b.len()) };
    b[i] ^= 0x40;
    let out = src.with_extension(format!("flip{at}"));
    std::fs::write(&out, b).unwrap();
    out
}

#[test]
fn rauc_bundles_verify_and_agree_with_rauc_info_and_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let plain = rauc_bundle(d, "plain.raucb", "plain", "rsa2048", "2.1.0");
    let verity = rauc_bundle(d, "verity.raucb", "verity", "p256", "2.1.0");
    let other = rauc_bundle(d, "other.raucb", "plain", "other", "2.1.0");
    let len = |p: &Path| std::fs::metadata(p).unwrap().len() as usize;
    let cms_end_plain = len(&plain) - 8;
    let cms_end_verity = len(&verity) - 8;

    for (path, format) in [(&plain, BundleFormat::RaucPlain), (&verity, BundleFormat::RaucVerity)] {
        let v = bundle::verify(path, &trust(), &exp()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(v.format, format);
        assert_eq!(v.compatible, "acme-gw-x86");
        assert_eq!(v.version, "2.1.0");
        let rootfs = v.payloads.iter().find(|p| p.name == "rootfs.img").unwrap();
        assert_eq!(rootfs.size, 360_000);
        assert_eq!(rootfs.sha256, hex::encode(Sha256::digest(image())));
        assert_eq!(rootfs.slot_class.as_deref(), Some("rootfs"));
        let r = bundle::inspect(path, Some(&trust()), Some(&exp())).unwrap();
        assert_eq!(r.verdict, Verdict::Valid);
        assert_eq!(r.manifest.version, "2.1.0");
    }

    // name, file, plain?, expected error (None: accepted), whether `rauc info` checks this defect at all.
    type Check = fn(&BundleError) -> bool;
    let cases: Vec<(&str, PathBuf, bool, Option<Check>, bool)> = vec![
        ("good plain", plain.clone(), true, None, true),
        ("good verity", verity.clone(), false, None, true),
        (
            "plain, tampered squashfs",
            flipped(&plain, 150_000),
            true,
            Some(|e| matches!(e, BundleError::MessageDigestMismatch { .. })),
            true,
        ),
        (
            "plain, tampered signature",
            flipped(&plain, cms_end_plain - 3),
            true,
            Some(|e| matches!(e, BundleError::BadSignature { .. })),
            true,
        ),
        (
            "verity, tampered signature",
            flipped(&verity, cms_end_verity - 3),
            false,
            Some(|e| matches!(e, BundleError::BadSignature { .. })),
            true,
        ),
        ("unknown CA", other.clone(), true, Some(|e| matches!(e, BundleError::UnknownIssuer { .. })), true),
        // `rauc info` checks only the signature of a verity bundle; the payload is checked by dm-verity at mount.
        (
            "verity, tampered squashfs",
            flipped(&verity, 150_000),
            false,
            Some(|e| matches!(e, BundleError::Verity { reason } if reason.contains("data block 36"))),
            false,
        ),
    ];
    let mut failures = Vec::new();
    for (name, path, is_plain, want, rauc_checks) in &cases {
        let ours = bundle::verify(path, &trust(), &exp());
        match (&ours, want) {
            (Ok(_), None) => {}
            (Err(e), Some(check)) if check(e) => {}
            (other, _) => failures.push(format!("{name}: ours gave {other:?}")),
        }
        if *rauc_checks {
            let theirs = rauc_accepts(d, path);
            if theirs != ours.is_ok() {
                failures.push(format!("{name}: rauc info says {theirs}, we say {}", ours.is_ok()));
            }
            let ssl = openssl_accepts(d, path, *is_plain);
            if ssl != ours.is_ok() {
                failures.push(format!("{name}: openssl says {ssl}, we say {}", ours.is_ok()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn rauc_policy_and_structure_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let verity = rauc_bundle(d, "v.raucb", "verity", "p384", "1.9.0");
    let err = bundle::verify(&verity, &trust(), &exp()).unwrap_err();
    assert!(matches!(&err, BundleError::Downgrade { offered, .. } if offered == "1.9.0"), "{err}");
    let mut e = exp();
    e.compatible = "other-gw".into();
    e.allow_downgrade = true;
    let err = bundle::verify(&verity, &trust(), &e).unwrap_err();
    assert!(matches!(err, BundleError::WrongCompatible { .. }), "{err}");
    e.compatible = "acme-gw-x86".into();
    bundle::verify(&verity, &trust(), &e).unwrap();

    // The hash tree itself tampered: the last 4 KiB before the CMS is the tree's level 0.
    let bytes = std::fs::read(&verity).unwrap();
    let n = bytes.len();
    let cms_len = u64::from_be_bytes(bytes[n - 8..].try_into().unwrap()) as usize;
    let tree_byte = n - 8 - cms_len - 4096 + 10;
    let err = bundle::verify(&flipped(&verity, tree_byte), &trust(), &e).unwrap_err();
    assert!(matches!(&err, BundleError::Verity { .. }), "{err}");

    // Truncated: the CMS size now points into the wrong place.
    let cut = d.join("cut.raucb");
    std::fs::write(&cut, &bytes[..n - 1]).unwrap();
    assert!(bundle::verify(&cut, &trust(), &e).is_err());
    // An absurd CMS size.
    let mut absurd = bytes.clone();
    absurd[n - 8..].copy_from_slice(&u64::MAX.to_be_bytes());
    std::fs::write(&cut, &absurd).unwrap();
    let err = bundle::verify(&cut, &trust(), &e).unwrap_err();
    assert!(matches!(err, BundleError::SizeTooLarge { what: "RAUC signature", .. }), "{err}");
    // Not a bundle at all.
    std::fs::write(&cut, b"just some bytes, no squashfs, no trailer").unwrap();
    assert!(matches!(bundle::verify(&cut, &trust(), &e).unwrap_err(), BundleError::NotABundle { .. }));
}
