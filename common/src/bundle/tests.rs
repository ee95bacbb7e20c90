//! Unit tests of the pure parts: version order, trailer limits, manifest rules.

use super::*;
use std::cmp::Ordering::{Equal, Greater, Less};

#[test]
fn versions_compare_component_by_component() {
    let cases = [
        ("1.10", "1.9", Greater),
        ("1.2", "1.2.0", Equal),
        ("2.0.1", "2.0", Greater),
        ("1.2-rc1", "1.2-rc2", Less),
        ("01.2", "1.2", Equal),
        ("1.2.3", "1.2.10", Less),
        ("99999999999999999999999.1", "99999999999999999999998.9", Greater),
        ("2026.11.2", "2026.11.2", Equal),
    ];
    for (a, b, want) in cases {
        assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
        assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
    }
}

#[test]
fn trailer_sizes_are_checked_before_use() {
    let t = |m: u64, c: u64, magic: &[u8; 8]| [&m.to_be_bytes()[..], &c.to_be_bytes(), magic].concat();
    assert_eq!(
        Trailer::parse(&t(10, 20, MAGIC), 100).unwrap(),
        Trailer { manifest_len: 10, cms_len: 20, payload_len: 46 }
    );
    assert!(matches!(Trailer::parse(&t(10, 20, b"OTPBNDL2"), 100), Err(BundleError::BadTrailer { .. })));
    assert!(matches!(Trailer::parse(&t(0, 20, MAGIC), 100), Err(BundleError::BadTrailer { .. })));
    assert!(matches!(
        Trailer::parse(&t(MAX_MANIFEST_LEN + 1, 20, MAGIC), u64::MAX),
        Err(BundleError::SizeTooLarge { what: "manifest", .. })
    ));
    assert!(matches!(
        Trailer::parse(&t(10, MAX_CMS_LEN + 1, MAGIC), u64::MAX),
        Err(BundleError::SizeTooLarge { what: "CMS signature", .. })
    ));
    assert!(matches!(
        Trailer::parse(&t(10, 20, MAGIC), 53),
        Err(BundleError::Truncated { needed: 54, available: 53, .. })
    ));
    assert!(matches!(Trailer::parse(&[0; 23], 100), Err(BundleError::BadTrailer { .. })));
}

fn manifest(extra: &str) -> String {
    format!(
        "format = 1\nkind = \"livepatch\"\ncompatible = \"gw\"\nversion = \"1.0\"\nexpires = \"2099-01-01T00:00:00Z\"\n\
         kernel_releases = [\"6.1.0\"]\n{extra}\n[[payloads]]\nname = \"a.ko\"\nsize = 1\nsha256 = \"{}\"\n",
        "ab".repeat(32)
    )
}

#[test]
fn manifest_rules() {
    Manifest::parse_otpatch(manifest("").as_bytes()).unwrap();
    let bad = [
        (manifest("").replace("format = 1", "format = 2"), "format"),
        (manifest("").replace("livepatch", "kernel"), "kind"),
        (manifest("").replace("version = \"1.0\"", "version = \"1.0 beta\""), "version"),
        (manifest("").replace("expires = \"2099-01-01T00:00:00Z\"\n", ""), "expires"),
        (manifest("").replace("kernel_releases = [\"6.1.0\"]\n", ""), "kernel_releases"),
        (manifest("build_id = \"xyz\""), "build_id"),
        (manifest("").replace("a.ko", "../a.ko"), "payloads[0].name"),
        (manifest("").replace(&"ab".repeat(32), &"AB".repeat(32)), "payloads[0].sha256"),
        (manifest("surprise = true"), "surprise"),
        (manifest("").replace("size = 1", "size = -1"), "size"),
    ];
    for (text, field) in bad {
        let err = Manifest::parse_otpatch(text.as_bytes()).unwrap_err();
        assert!(matches!(&err, BundleError::Manifest { reason } if reason.contains(field)), "{field}: {err}");
    }
    assert!(matches!(Manifest::parse_otpatch(b"\xff\xfe"), Err(BundleError::Manifest { .. })));
}

#[test]
fn expectations() {
    let m = Manifest::parse_otpatch(manifest("").as_bytes()).unwrap();
    let now: Timestamp = "2030-01-01T00:00:00Z".parse().unwrap();
    let exp = Expectations {
        compatible: "gw".into(),
        last_committed: Some("0.9".into()),
        allow_downgrade: false,
        now,
        kernel_release: Some("6.1.0".into()),
    };
    check_expectations(&m, &exp).unwrap();
    let e = |f: &dyn Fn(&mut Expectations)| {
        let mut x = exp.clone();
        f(&mut x);
        check_expectations(&m, &x).unwrap_err()
    };
    assert!(matches!(e(&|x| x.compatible = "other".into()), BundleError::WrongCompatible { .. }));
    assert!(matches!(e(&|x| x.last_committed = Some("1.0.0".into())), BundleError::AlreadyCommitted { .. }));
    assert!(matches!(e(&|x| x.last_committed = Some("1.1".into())), BundleError::Downgrade { .. }));
    assert!(matches!(e(&|x| x.kernel_release = Some("6.2".into())), BundleError::KernelMismatch { .. }));
    assert!(matches!(e(&|x| x.now = "2099-01-01T00:00:00Z".parse().unwrap()), BundleError::ManifestExpired { .. }));
}
