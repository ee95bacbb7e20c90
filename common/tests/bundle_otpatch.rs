//! otpatch bundles against real peers: bundles signed by `openssl cms -sign` and assembled here byte by byte (no
//! code of the library), the shell recipe of FORMAT.md run as written, a table of bad inputs each refused with its
//! own error, agreement with `openssl cms -verify`, and `create`/`inspect` round trips.
#![cfg(feature = "bundle")]
#![allow(clippy::unwrap_used)]

#[path = "bundle_pki.rs"]
mod pki;

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use otpatch_common::bundle::{self, BundleError, BundleFormat, CreateRequest, Expectations, TrustStore, Verdict};
use pki::{run, Pki};
use sha2::{Digest, Sha256};

fn trust() -> TrustStore {
    TrustStore::from_pem_files(&[Pki::get().path("root.pem")], &[], None).unwrap()
}

fn now() -> Timestamp {
    Timestamp::now()
}

fn exp() -> Expectations {
    Expectations {
        compatible: "acme-gw-x86".into(),
        last_committed: std::collections::BTreeMap::from([("livepatch".to_string(), "1.2.0".to_string())]),
        allow_downgrade: false,
        now: now(),
        kernel_release: Some("6.1.0-25-amd64".into()),
    }
}

struct Spec {
    kind: &'static str,
    compatible: &'static str,
    version: &'static str,
    expires: String,
    payloads: Vec<(&'static str, Vec<u8>)>,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            kind: "livepatch",
            compatible: "acme-gw-x86",
            version: "1.3.0",
            expires: "2099-01-01T00:00:00Z".into(),
            payloads: vec![
                ("livepatch-cve.ko", b"\x7fELF fake module bytes".repeat(100)),
                ("notes.txt", b"second payload".to_vec()),
            ],
        }
    }
}

fn manifest_text(s: &Spec) -> String {
    let mut m = format!(
        "format = 1\nkind = \"{}\"\ncompatible = \"{}\"\nversion = \"{}\"\nexpires = \"{}\"\n\
         kernel_releases = [\"6.1.0-25-amd64\"]\n",
        s.kind, s.compatible, s.version, s.expires
    );
    for (name, data) in &s.payloads {
        m.push_str(&format!(
            "\n[[payloads]]\nname = \"{name}\"\nsize = {}\nsha256 = \"{}\"\n",
            data.len(),
            hex::encode(Sha256::digest(data))
        ));
    }
    m
}

/// payloads | manifest | cms | be64(manifest) | be64(cms) | magic, assembled without the library.
fn assemble(payloads: &[(&str, Vec<u8>)], manifest: &[u8], cms: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for (_, p) in payloads {
        out.extend_from_slice(p);
    }
    out.extend_from_slice(manifest);
    out.extend_from_slice(cms);
    out.extend_from_slice(&(manifest.len() as u64).to_be_bytes());
    out.extend_from_slice(&(cms.len() as u64).to_be_bytes());
    out.extend_from_slice(b"OTPBNDL1");
    out
}

struct Built {
    dir: tempfile::TempDir,
    manifest: Vec<u8>,
    cms: Vec<u8>,
    bundle: Vec<u8>,
}

impl Built {
    fn path(&self) -> PathBuf {
        self.dir.path().join("bundle.otp")
    }
    fn write(&self, bytes: &[u8]) -> PathBuf {
        std::fs::write(self.path(), bytes).unwrap();
        self.path()
    }
}

fn build(spec: &Spec, signers: &[&str], extra: &[&str]) -> Built {
    let dir = tempfile::tempdir().unwrap();
    let manifest = manifest_text(spec).into_bytes();
    let mpath = dir.path().join("manifest.toml");
    std::fs::write(&mpath, &manifest).unwrap();
    let cms = Pki::get().sign(&mpath, signers, extra);
    let bundle = assemble(&spec.payloads, &manifest, &cms);
    let b = Built { dir, manifest, cms, bundle };
    b.write(&b.bundle);
    b
}

#[test]
fn openssl_signed_bundles_verify_for_every_key_type() {
    for signer in ["rsa2048", "rsa3072", "p256", "p384"] {
        for md in ["sha256", "sha384", "sha512"] {
            if signer.starts_with('p') && md == "sha512" {
                continue;
            }
            let b = build(&Spec::default(), &[signer], &["-md", md]);
            let v = bundle::verify(&b.path(), &trust(), &exp()).unwrap_or_else(|e| panic!("{signer}/{md}: {e}"));
            assert_eq!(v.format, BundleFormat::Otpatch);
            assert_eq!(v.version, "1.3.0");
            assert_eq!(v.kind, "livepatch");
            assert!(v.signer.contains(&format!("CN=vendor-signer-{signer}")), "{}", v.signer);
            assert_eq!(v.digest, hex::encode(Sha256::digest(&b.manifest)));
            assert_eq!(v.payloads.len(), 2);
            assert_eq!(v.payload_offsets, vec![0, 2200]);
            assert!(v.signing_time.is_some());
            assert_eq!(v.chain.len(), 3, "signer, intermediate, root");
        }
    }
}

#[test]
fn the_format_md_recipe_builds_a_bundle_we_accept() {
    let doc = include_str!("../src/bundle/FORMAT.md");
    let start = doc.find("<!-- recipe:begin -->\n```sh\n").unwrap() + "<!-- recipe:begin -->\n```sh\n".len();
    let end = doc.find("```\n<!-- recipe:end -->").unwrap();
    let recipe = &doc[start..end];
    let pki = Pki::get();
    let dir = tempfile::tempdir().unwrap();
    let p1 = dir.path().join("fix.ko");
    let p2 = dir.path().join("data.bin");
    std::fs::write(&p1, vec![0x55u8; 70_000]).unwrap();
    std::fs::write(&p2, b"").unwrap();
    let out = dir.path().join("recipe.otp");
    for (signer, md) in [("p384", "sha384"), ("rsa2048", "sha256")] {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(recipe)
            .arg("recipe")
            .arg(&p1)
            .arg(&p2)
            .env("KIND", "livepatch")
            .env("COMPATIBLE", "acme-gw-x86")
            .env("VERSION", "1.10")
            .env("EXPIRES", "2099-01-01T00:00:00Z")
            .env("KERNEL_RELEASE", "6.1.0-25-amd64")
            .env("SIGNER_CERT", pki.path(&format!("{signer}.pem")))
            .env("SIGNER_KEY", pki.path(&format!("{signer}.key")))
            .env("CHAIN", pki.path("inter.pem"))
            .env("MD", md)
            .env("OUT", &out)
            .status()
            .unwrap();
        assert!(status.success());
        let v = bundle::verify(&out, &trust(), &exp()).unwrap();
        assert_eq!(v.version, "1.10");
        assert_eq!(v.payloads[0].size, 70_000);
        assert_eq!(v.payloads[1].size, 0);
    }
}

/// Flips one byte at `at` (negative: from the end).
fn flip(bytes: &[u8], at: isize) -> Vec<u8> {
    let mut b = bytes.to_vec();
    let i = if at < 0 { (b.len() as isize + at) as usize } else { at as usize };
    b[i] ^= 0x01;
    b
}

fn with_trailer(payload_manifest_cms: &[u8], manifest_len: u64, cms_len: u64) -> Vec<u8> {
    let mut b = payload_manifest_cms.to_vec();
    b.extend_from_slice(&manifest_len.to_be_bytes());
    b.extend_from_slice(&cms_len.to_be_bytes());
    b.extend_from_slice(b"OTPBNDL1");
    b
}

type Check = fn(&BundleError) -> bool;
type Tweak = Box<dyn Fn(&mut Expectations)>;

#[test]
fn bad_inputs_are_refused_each_with_its_own_error() {
    let good = build(&Spec::default(), &["p256"], &[]);
    let body_len = good.bundle.len() - 24;
    let body = &good.bundle[..body_len];
    let (m_len, c_len) = (good.manifest.len() as u64, good.cms.len() as u64);
    let manifest_at = body_len - good.cms.len() - good.manifest.len();
    let cms_at = body_len - good.cms.len();
    let trust_v = trust();

    // Each case: name, bundle bytes (or None to build one with openssl), expectations tweak, expected error.
    let signed = |spec: Spec, signers: &[&str], extra: &[&str]| build(&spec, signers, extra).bundle;
    let resign_other_manifest = {
        // A signature over a different manifest, put next to ours: the messageDigest does not match.
        let other = build(&Spec { version: "9.9.9", ..Spec::default() }, &["p256"], &[]);
        assemble(&Spec::default().payloads, &good.manifest, &other.cms)
    };
    let enveloped = {
        let dir = &good.dir;
        let m = dir.path().join("m.toml");
        std::fs::write(&m, &good.manifest).unwrap();
        let out = dir.path().join("env.der");
        run(
            dir.path(),
            "openssl",
            &[
                "cms",
                "-encrypt",
                "-binary",
                "-outform",
                "DER",
                "-in",
                m.to_str().unwrap(),
                "-out",
                out.to_str().unwrap(),
                Pki::get().path("rsa2048.pem").to_str().unwrap(),
            ],
        );
        assemble(&Spec::default().payloads, &good.manifest, &std::fs::read(out).unwrap())
    };
    let expired_manifest = Spec { expires: "2021-01-01T00:00:00Z".into(), ..Spec::default() };
    let cases: Vec<(&str, Vec<u8>, Tweak, Check)> = vec![
        (
            "tampered payload",
            flip(&good.bundle, 5),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::PayloadDigestMismatch { name, offset: 0, end: 2200, .. } if name == "livepatch-cve.ko"),
        ),
        (
            "tampered second payload",
            flip(&good.bundle, 2201),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::PayloadDigestMismatch { name, offset: 2200, .. } if name == "notes.txt"),
        ),
        ("tampered manifest", flip(&good.bundle, manifest_at as isize + 20), Box::new(|_| {}), |e| {
            matches!(e, BundleError::MessageDigestMismatch { algorithm: "SHA-256", .. })
        }),
        (
            "tampered signature",
            flip(&good.bundle, cms_at as isize + good.cms.len() as isize - 2),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::BadSignature { .. }),
        ),
        ("tampered trailer magic", flip(&good.bundle, -1), Box::new(|_| {}), |e| {
            matches!(e, BundleError::NotABundle { .. })
        }),
        ("manifest length off by one", with_trailer(body, m_len + 1, c_len), Box::new(|_| {}), |e| {
            matches!(e, BundleError::MessageDigestMismatch { .. })
        }),
        ("CMS length off by one", with_trailer(body, m_len, c_len - 1), Box::new(|_| {}), |e| {
            matches!(e, BundleError::NotCms { .. } | BundleError::Der { .. })
        }),
        ("truncated file", good.bundle[40..].to_vec(), Box::new(|_| {}), |e| {
            matches!(e, BundleError::PayloadAreaMismatch { declared: 2214, actual: 2174 })
        }),
        ("declared sizes larger than the file", with_trailer(&body[..100], m_len, c_len), Box::new(|_| {}), |e| {
            matches!(e, BundleError::Truncated { available: 124, .. })
        }),
        (
            "absurd manifest length",
            with_trailer(body, u64::MAX - 5, c_len),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::SizeTooLarge { what: "manifest", declared, .. } if *declared == u64::MAX - 5),
        ),
        ("absurd CMS length", with_trailer(body, m_len, 1 << 40), Box::new(|_| {}), |e| {
            matches!(e, BundleError::SizeTooLarge { what: "CMS signature", .. })
        }),
        ("only a trailer", with_trailer(&[], 0, 0), Box::new(|_| {}), |e| matches!(e, BundleError::BadTrailer { .. })),
        (
            "not CMS",
            assemble(&Spec::default().payloads, &good.manifest, b"this is no signature"),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::NotCms { .. }),
        ),
        (
            "EnvelopedData instead of SignedData",
            enveloped,
            Box::new(|_| {}),
            |e| matches!(e, BundleError::NotSignedData { content_type } if content_type == "1.2.840.113549.1.7.3"),
        ),
        (
            "wrong content type",
            signed(Spec::default(), &["p256"], &["-econtent_type", "1.2.3.4"]),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::WrongContentType { content_type } if content_type == "1.2.3.4"),
        ),
        ("two signers", signed(Spec::default(), &["p256", "rsa2048"], &[]), Box::new(|_| {}), |e| {
            matches!(e, BundleError::SignerCount { count: 2 })
        }),
        ("no signed attributes", signed(Spec::default(), &["p256"], &["-noattr"]), Box::new(|_| {}), |e| {
            matches!(e, BundleError::NoSignedAttributes)
        }),
        ("encapsulated content", signed(Spec::default(), &["p256"], &["-nodetach"]), Box::new(|_| {}), |e| {
            matches!(e, BundleError::NotCms { .. })
        }),
        ("messageDigest mismatch", resign_other_manifest, Box::new(|_| {}), |e| {
            matches!(e, BundleError::MessageDigestMismatch { .. })
        }),
        (
            "expired signer",
            signed(Spec::default(), &["expired"], &[]),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::CertificateExpired { signer, .. } if signer.contains("vendor-signer-expired")),
        ),
        ("not yet valid signer", signed(Spec::default(), &["future"], &[]), Box::new(|_| {}), |e| {
            matches!(e, BundleError::CertificateNotYetValid { .. })
        }),
        (
            "unknown CA",
            signed(Spec::default(), &["other"], &[]),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::UnknownIssuer { signer } if signer.contains("vendor-signer-other")),
        ),
        ("CA used as the signer", signed(Spec::default(), &["inter"], &[]), Box::new(|_| {}), |e| {
            matches!(e, BundleError::CaAsSigner { .. })
        }),
        (
            "signer without codeSigning",
            signed(Spec::default(), &["noeku"], &[]),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::NotCodeSigning { signer } if signer.contains("vendor-tls-server")),
        ),
        (
            "SHA-1 signature",
            signed(Spec::default(), &["rsa2048"], &["-md", "sha1"]),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::WeakAlgorithm { algorithm } if algorithm == "SHA-1"),
        ),
        (
            "downgrade",
            signed(Spec { version: "1.1.9", ..Spec::default() }, &["p256"], &[]),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::Downgrade { offered, committed } if offered == "1.1.9" && committed == "1.2.0"),
        ),
        (
            "same version again",
            signed(Spec { version: "1.2", ..Spec::default() }, &["p256"], &[]),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::AlreadyCommitted { version } if version == "1.2"),
        ),
        (
            "wrong compatible",
            signed(Spec { compatible: "other-gw", ..Spec::default() }, &["p256"], &[]),
            Box::new(|_| {}),
            |e| matches!(e, BundleError::WrongCompatible { found, .. } if found == "other-gw"),
        ),
        ("expired manifest", signed(expired_manifest, &["p256"], &[]), Box::new(|_| {}), |e| {
            matches!(e, BundleError::ManifestExpired { .. })
        }),
        (
            "livepatch for another kernel",
            good.bundle.clone(),
            Box::new(|x: &mut Expectations| x.kernel_release = Some("6.12.0-1-amd64".into())),
            |e| matches!(e, BundleError::KernelMismatch { running, .. } if running == "6.12.0-1-amd64"),
        ),
        (
            "clock before the signer's validity",
            good.bundle.clone(),
            Box::new(|x: &mut Expectations| x.now = "2001-01-01T00:00:00Z".parse().unwrap()),
            |e| matches!(e, BundleError::CertificateNotYetValid { .. }),
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, (name, bytes, tweak, check)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.otp"));
        std::fs::write(&path, bytes).unwrap();
        let mut e = exp();
        tweak(&mut e);
        match bundle::verify(&path, &trust_v, &e) {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(err) if check(&err) => {
                assert!(!err.to_string().is_empty());
            }
            Err(err) => failures.push(format!("{name}: wrong error {err:?} ({err})")),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // The unmodified bundle passes, so each refusal above is due to its own defect.
    bundle::verify(&good.path(), &trust_v, &exp()).unwrap();
}

#[test]
fn allow_downgrade_permits_older_and_equal_versions() {
    for v in ["1.1.9", "1.2.0"] {
        let b = build(&Spec { version: v, ..Spec::default() }, &["p256"], &[]);
        let mut e = exp();
        e.allow_downgrade = true;
        assert_eq!(bundle::verify(&b.path(), &trust(), &e).unwrap().version, v);
    }
}

#[test]
fn allowed_signers_and_crl() {
    let pki = Pki::get();
    let b = build(&Spec::default(), &["p256"], &[]);
    let only_rsa =
        TrustStore::from_pem_files(&[pki.path("root.pem")], &["vendor-signer-rsa2048".into()], None).unwrap();
    let err = bundle::verify(&b.path(), &only_rsa, &exp()).unwrap_err();
    assert!(
        matches!(&err, BundleError::SignerNotAllowed { common_name, .. } if common_name == "vendor-signer-p256"),
        "{err}"
    );
    let with_p256 = TrustStore::from_pem_files(&[pki.path("root.pem")], &["vendor-signer-p256".into()], None).unwrap();
    bundle::verify(&b.path(), &with_p256, &exp()).unwrap();

    let crl = pki.path("inter.crl");
    let with_crl =
        TrustStore::from_trust_files(&[pki.path("root.pem")], &[], Some(&crl), Some(&pki.path("inter.pem"))).unwrap();
    bundle::verify(&b.path(), &with_crl, &exp()).unwrap();
    let revoked = build(&Spec::default(), &["revoked"], &[]);
    let err = bundle::verify(&revoked.path(), &with_crl, &exp()).unwrap_err();
    assert!(matches!(err, BundleError::Revoked { .. }), "{err}");
    // Without the CRL the same bundle is accepted: the refusal above is the CRL's.
    bundle::verify(&revoked.path(), &trust(), &exp()).unwrap();
}

#[test]
fn crls_must_be_current_and_issued_by_a_ca_of_the_chain() {
    let pki = Pki::get();
    let root = [pki.path("root.pem")];
    let b = build(&Spec::default(), &["p256"], &[]);

    // A CRL valid for one day: accepted now, refused two days later with a message to renew it.
    let inter = pki.path("inter.pem");
    let short = TrustStore::from_trust_files(&root, &[], Some(&pki.path("inter-1day.crl")), Some(&inter)).unwrap();
    bundle::verify(&b.path(), &short, &exp()).unwrap();
    let later = Expectations { now: now() + jiff::SignedDuration::from_hours(48), ..exp() };
    let err = bundle::verify(&b.path(), &short, &later).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("expired") && msg.contains("renew"), "{msg}");

    // The anchor's own CRL loads (its signature is checked against the anchor) and revokes nothing here.
    let root_crl = TrustStore::from_pem_files(&root, &[], Some(&pki.path("root.crl"))).unwrap();
    bundle::verify(&b.path(), &root_crl, &exp()).unwrap();
    // The same CRL with its signature broken is refused when the trust store is built.
    let der = run(&pki.root, "openssl", &["crl", "-in", "root.crl", "-outform", "DER"]).stdout;
    let broken = pki.path("root-broken.crl");
    std::fs::write(&broken, flip(&der, -2)).unwrap();
    let err = TrustStore::from_pem_files(&root, &[], Some(&broken)).unwrap_err().to_string();
    assert!(err.contains("signature"), "{err}");

    // Who issued a CRL is settled when the trust store is built (policy load), not at the first window:
    // an intermediate's CRL without its issuer named, with another CA named, or a CRL of a CA no anchor vouches for.
    let load = |crl: &str, issuer: Option<&str>| {
        let issuer = issuer.map(|i| pki.path(i));
        TrustStore::from_trust_files(&root, &[], Some(&pki.path(crl)), issuer.as_deref()).unwrap_err().to_string()
    };
    let e = load("inter-1day.crl", None);
    assert!(e.contains("otpatch Test Intermediate CA, which is not a trust anchor") && e.contains("crl_issuer"), "{e}");
    let e = load("inter-1day.crl", Some("nocertsign.pem"));
    assert!(e.contains("but the policy's crl_issuer") && e.contains("without keyCertSign"), "{e}");
    let e = load("other.crl", None);
    assert!(e.contains("Unknown Vendor CA, which is not a trust anchor"), "{e}");
    let e = load("other.crl", Some("otherroot.pem"));
    assert!(e.contains("which is not a trust anchor") && e.contains("otherroot.pem"), "{e}");
    // A signer certificate named as the issuer is not a CA.
    let e = load("inter-1day.crl", Some("p256.pem"));
    assert!(e.contains("but the policy's crl_issuer"), "{e}");
}

/// The policy loader reads the CRL as the verifier will: a CRL no anchor (or named issuer) signed is a policy
/// error, with the file, line and key, before the daemon runs a window.
#[test]
fn a_crl_the_anchors_cannot_vouch_for_is_a_policy_error() {
    use otpatch_common::policy::{load_files, LoadOptions};
    let pki = Pki::get();
    let dir = tempfile::tempdir().unwrap();
    let policy = |crl: &str, issuer: Option<&str>| {
        let mut text = format!(
            "[gateway]\nid = \"gw-crl\"\ncompatible = \"acme-gw\"\n\n[trust]\nanchors = [{:?}]\ncrl = {:?}\n",
            pki.path("root.pem").display().to_string(),
            pki.path(crl).display().to_string()
        );
        if let Some(i) = issuer {
            text.push_str(&format!("crl_issuer = {:?}\n", pki.path(i).display().to_string()));
        }
        let file = dir.path().join("site.toml");
        std::fs::write(&file, text).unwrap();
        load_files(&[file], &LoadOptions { check_files: true, file_root: PathBuf::new() })
    };
    let e = policy("other.crl", None).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    assert_eq!((e.0[0].line, e.0[0].key.as_str()), (7, "trust.crl"), "{e}");
    assert!(e.0[0].message.contains("Unknown Vendor CA, which is not a trust anchor"), "{e}");
    let e = policy("inter.crl", None).unwrap_err();
    assert!(e.0[0].message.contains("crl_issuer"), "{e}");
    let s = policy("inter.crl", Some("inter.pem")).unwrap();
    assert_eq!(s.trust.crl_issuer, Some(pki.path("inter.pem")));
    policy("root.crl", None).unwrap();
}

/// `openssl cms -verify` over the same manifest and signature, with the same anchor, at the same time.
fn openssl_accepts(dir: &Path, manifest: &[u8], cms: &[u8], at: Timestamp) -> bool {
    let m = dir.join("agree.toml");
    let c = dir.join("agree.cms");
    std::fs::write(&m, manifest).unwrap();
    std::fs::write(&c, cms).unwrap();
    let out = std::process::Command::new("openssl")
        .args(["cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any", "-out", "/dev/null"])
        .arg("-in")
        .arg(&c)
        .arg("-content")
        .arg(&m)
        .arg("-CAfile")
        .arg(Pki::get().path("root.pem"))
        .arg("-attime")
        .arg(at.as_second().to_string())
        .output()
        .unwrap();
    out.status.success()
}

#[test]
fn verdicts_agree_with_openssl_cms_verify() {
    let dir = tempfile::tempdir().unwrap();
    let good_rsa = build(&Spec::default(), &["rsa3072"], &["-md", "sha384"]);
    let good_ec = build(&Spec::default(), &["p384"], &[]);
    let unknown = build(&Spec::default(), &["other"], &[]);
    let expired = build(&Spec::default(), &["expired"], &[]);
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, bool)> = vec![
        ("good RSA", good_rsa.manifest.clone(), good_rsa.cms.clone(), true),
        ("good ECDSA", good_ec.manifest.clone(), good_ec.cms.clone(), true),
        ("tampered manifest", flip(&good_ec.manifest, 3), good_ec.cms.clone(), false),
        ("tampered signature", good_rsa.manifest.clone(), flip(&good_rsa.cms, -3), false),
        ("unknown CA", unknown.manifest.clone(), unknown.cms.clone(), false),
        ("expired signer", expired.manifest.clone(), expired.cms.clone(), false),
    ];
    let at = now();
    for (name, manifest, cms, expect_ok) in cases {
        let ours = {
            let path = dir.path().join("agree.otp");
            std::fs::write(&path, assemble(&Spec::default().payloads, &manifest, &cms)).unwrap();
            bundle::verify(&path, &trust(), &Expectations { now: at, ..exp() }).is_ok()
        };
        let theirs = openssl_accepts(dir.path(), &manifest, &cms, at);
        assert_eq!(ours, expect_ok, "{name}: our verdict");
        assert_eq!(theirs, expect_ok, "{name}: openssl's verdict");
    }
}

fn create_request(dir: &Path, signer: &str) -> CreateRequest {
    let pki = Pki::get();
    let p1 = dir.join("fix.ko");
    std::fs::write(&p1, vec![7u8; 200_000]).unwrap();
    let p2 = dir.join("README");
    std::fs::write(&p2, b"hello").unwrap();
    CreateRequest {
        kind: "livepatch".into(),
        compatible: "acme-gw-x86".into(),
        version: "1.3.1".into(),
        expires: Some("2099-06-01T00:00:00Z".parse().unwrap()),
        kernel_releases: vec!["6.1.0-25-amd64".into()],
        build_id: Some("4f1c0d2e".into()),
        payloads: vec![p1, p2],
        signer_cert: pki.path(&format!("{signer}.pem")),
        signer_key: pki.path(&format!("{signer}.key")),
        chain: vec![pki.path("inter.pem")],
    }
}

#[test]
fn create_then_verify_and_inspect() {
    for signer in ["rsa2048", "p256", "p384"] {
        let dir = tempfile::tempdir().unwrap();
        let req = create_request(dir.path(), signer);
        let out = dir.path().join("out.otp");
        bundle::create(&req, &out).unwrap();
        let v = bundle::verify(&out, &trust(), &exp()).unwrap();
        assert_eq!(v.version, "1.3.1");
        assert_eq!(v.manifest.build_id.as_deref(), Some("4f1c0d2e"));
        assert_eq!(v.payloads[0].name, "fix.ko");
        assert_eq!(v.payload_offsets, vec![0, 200_000]);

        let r = bundle::inspect(&out, None, None).unwrap();
        assert_eq!(r.verdict, Verdict::Unchecked);
        assert_eq!(r.manifest.version, "1.3.1");
        assert_eq!(r.chain.len(), 2, "signer and intermediate as carried");
        let r = bundle::inspect(&out, Some(&trust()), Some(&exp())).unwrap();
        assert_eq!(r.verdict, Verdict::Valid);
        assert_eq!(r.chain.len(), 3);
        assert!(serde_json::to_string(&r).unwrap().contains("\"status\":\"valid\""));
        let mut old = exp();
        old.last_committed = std::collections::BTreeMap::from([("livepatch".to_string(), "2.0".to_string())]);
        let r = bundle::inspect(&out, Some(&trust()), Some(&old)).unwrap();
        assert!(matches!(&r.verdict, Verdict::Invalid { error } if error.contains("downgrade")), "{:?}", r.verdict);

        // openssl accepts our CMS as well.
        let bytes = std::fs::read(&out).unwrap();
        let n = bytes.len();
        let m_len = u64::from_be_bytes(bytes[n - 24..n - 16].try_into().unwrap()) as usize;
        let c_len = u64::from_be_bytes(bytes[n - 16..n - 8].try_into().unwrap()) as usize;
        let manifest = &bytes[n - 24 - c_len - m_len..n - 24 - c_len];
        let cms = &bytes[n - 24 - c_len..n - 24];
        assert!(openssl_accepts(dir.path(), manifest, cms, now()), "{signer}");
    }
}

#[test]
fn create_refuses_a_key_that_is_not_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = create_request(dir.path(), "p256");
    req.signer_key = Pki::get().path("p384.key");
    let out = dir.path().join("out.otp");
    let err = bundle::create(&req, &out).unwrap_err();
    assert!(matches!(err, BundleError::Key { .. }), "{err}");
    assert!(!out.exists());
    assert!(!dir.path().join("out.partial").exists());
    req.signer_key = Pki::get().path("p256.key");
    req.kind = "kernel".into();
    assert!(matches!(bundle::create(&req, &out).unwrap_err(), BundleError::Manifest { .. }));
}

#[test]
fn a_detached_signature_over_any_content_verifies_like_a_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let index = dir.path().join("index.json");
    std::fs::write(&index, br#"{"format":1}"#).unwrap();
    let sig = Pki::get().sign(&index, &["p256"], &[]);
    let content = std::fs::read(&index).unwrap();
    let signer = bundle::verify_detached(&content, &sig, &trust(), now()).unwrap();
    assert!(signer.contains("CN="), "{signer}");
    let mut tampered = content.clone();
    tampered[2] ^= 1;
    assert!(matches!(
        bundle::verify_detached(&tampered, &sig, &trust(), now()),
        Err(BundleError::MessageDigestMismatch { .. })
    ));
    let other = TrustStore::from_pem_files(&[Pki::get().path("otherroot.pem")], &[], None).unwrap();
    assert!(bundle::verify_detached(&content, &sig, &other, now()).is_err(), "an unknown CA is refused");
}
