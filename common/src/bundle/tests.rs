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
        ("1.é", "1.0é", Equal),
        ("1.2é", "1.2ü", Less),
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
        last_committed: std::collections::BTreeMap::from([("livepatch".to_string(), "0.9".to_string())]),
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
    assert!(matches!(
        e(&|x| x.last_committed = std::collections::BTreeMap::from([("livepatch".to_string(), "1.0.0".to_string())])),
        BundleError::AlreadyCommitted { .. }
    ));
    assert!(matches!(
        e(&|x| x.last_committed = std::collections::BTreeMap::from([("livepatch".to_string(), "1.1".to_string())])),
        BundleError::Downgrade { .. }
    ));
    // Another kind's series is not this one's: a committed image 3.0 does not make livepatch 1.0.0 a downgrade.
    let mut x = exp.clone();
    x.last_committed = std::collections::BTreeMap::from([("rauc".to_string(), "3.0".to_string())]);
    check_expectations(&m, &x).unwrap();
    assert!(matches!(e(&|x| x.kernel_release = Some("6.2".into())), BundleError::KernelMismatch { .. }));
    assert!(matches!(e(&|x| x.now = "2099-01-01T00:00:00Z".parse().unwrap()), BundleError::ManifestExpired { .. }));
}

/// A UTCTime or GeneralizedTime of the right byte length whose text has a multi-byte UTF-8 character: refused at
/// its offset, never a panic (slicing the text by byte offset used to cut the character in two).
#[test]
fn times_with_multibyte_text_are_refused_not_panicking() {
    use super::der::{element, tag, Reader};
    let cases: [(u8, &str); 6] = [
        (tag::UTC_TIME, "2é010112000Z"),
        (tag::UTC_TIME, "26é01120000Z"),
        (tag::UTC_TIME, "260101120é0Z"),
        (tag::GENERALIZED_TIME, "202é010112000Z"),
        (tag::GENERALIZED_TIME, "2026é01120000Z"),
        (tag::GENERALIZED_TIME, "2026010112000é"),
    ];
    for (t, text) in cases {
        let expected = if t == tag::UTC_TIME { 13 } else { 15 };
        assert_eq!(text.len(), expected, "{text:?} must have the length that passes the first check");
        let der = element(t, text.as_bytes());
        // As if seven bytes into a larger buffer, to see the offset named is the element's.
        let tlv = super::der::Tlv { offset: 7, ..Reader::new(&der, "test").any().unwrap() };
        let err = super::x509::parse_time(&tlv, "test").unwrap_err();
        assert!(matches!(err, BundleError::Der { offset: 7, .. }), "{text:?}: {err}");
    }
    // A well-formed pair still parses.
    let der = element(tag::UTC_TIME, b"260101120000Z");
    let tlv = Reader::new(&der, "test").any().unwrap();
    assert_eq!(super::x509::parse_time(&tlv, "test").unwrap().to_string(), "2026-01-01T12:00:00Z");
    let der = element(tag::GENERALIZED_TIME, b"20500101120000Z");
    let tlv = Reader::new(&der, "test").any().unwrap();
    assert_eq!(super::x509::parse_time(&tlv, "test").unwrap().to_string(), "2050-01-01T12:00:00Z");
}
