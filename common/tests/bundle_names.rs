//! What the verifier reads from certificates beyond the chain: the signer's common name, compared exactly with the
//! allowed signers (a name that cannot be decoded exactly is refused, never compared in a lossy rendering), and
//! keyUsage (RFC 5280 4.2.1.3): digitalSignature on the signer, keyCertSign on every CA of the chain. The odd
//! names are forged onto certificates of the test PKI and re-signed by its intermediate, so they still chain.
#![cfg(feature = "bundle")]
#![allow(clippy::unwrap_used)]

#[path = "bundle_pki.rs"]
mod pki;

use std::path::{Path, PathBuf};

use jiff::Timestamp;
use otpatch_common::bundle::{self, BundleError, CreateRequest, Expectations, TrustStore};
use pki::{der_tlv, Pki};

const OID_O: &[u8] = &[0x55, 0x04, 0x0a];
const OID_CN: &[u8] = &[0x55, 0x04, 0x03];

fn exp() -> Expectations {
    Expectations {
        compatible: "acme-gw-x86".into(),
        last_committed: Default::default(),
        allow_downgrade: false,
        now: Timestamp::now(),
        kernel_release: None,
    }
}

fn trust(allowed: &[&str]) -> TrustStore {
    let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
    TrustStore::from_pem_files(&[Pki::get().path("root.pem")], &allowed, None).unwrap()
}

/// `O=otpatch tests, CN=<cn_tag cn_value>` as a DER Name.
fn name(cn_tag: u8, cn_value: &[u8]) -> Vec<u8> {
    let atv = |oid: &[u8], tag: u8, v: &[u8]| der_tlv(0x30, &[der_tlv(0x06, oid), der_tlv(tag, v)].concat());
    let rdn = |atv: Vec<u8>| der_tlv(0x31, &atv);
    der_tlv(0x30, &[rdn(atv(OID_O, 0x0c, b"otpatch tests")), rdn(atv(OID_CN, cn_tag, cn_value))].concat())
}

fn bmp(s: &str) -> Vec<u8> {
    s.encode_utf16().flat_map(u16::to_be_bytes).collect()
}

/// A bundle made by `create`, signed with `key` (a key of the PKI) and `cert`, carrying `chain`.
fn bundle_signed(dir: &Path, cert: PathBuf, key: &str, chain: &str) -> PathBuf {
    let pki = Pki::get();
    let payload = dir.join("app.bin");
    std::fs::write(&payload, b"payload").unwrap();
    let req = CreateRequest {
        kind: "app".into(),
        compatible: "acme-gw-x86".into(),
        version: "1.0.0".into(),
        expires: Some("2099-06-01T00:00:00Z".parse().unwrap()),
        kernel_releases: vec![],
        build_id: None,
        payloads: vec![payload],
        signer_cert: cert,
        signer_key: pki.path(&format!("{key}.key")),
        chain: vec![pki.path(&format!("{chain}.pem"))],
    };
    let out = dir.join("out.otp");
    bundle::create(&req, &out).unwrap();
    out
}

fn forged_bundle(dir: &Path, label: &str, cn_tag: u8, cn_value: &[u8]) -> PathBuf {
    let cert = Pki::get().forge(label, "p256", "inter", &name(cn_tag, cn_value));
    bundle_signed(dir, cert, "p256", "inter")
}

#[test]
fn an_exactly_decoded_common_name_is_compared() {
    let dir = tempfile::tempdir().unwrap();
    // A BMPString of even length decodes exactly and matches.
    let b = forged_bundle(dir.path(), "bmp-even", 0x1e, &bmp("vendor-signer-p256"));
    let v = bundle::verify(&b, &trust(&["vendor-signer-p256"]), &exp()).unwrap();
    assert_eq!(v.signer, "O=otpatch tests, CN=vendor-signer-p256");
    let err = bundle::verify(&b, &trust(&["vendor-signer-p25"]), &exp()).unwrap_err();
    assert!(matches!(&err, BundleError::SignerNotAllowed { common_name, .. } if common_name == "vendor-signer-p256"));
    // Without allowed signers the name plays no part.
    bundle::verify(&b, &trust(&[]), &exp()).unwrap();
}

#[test]
fn malformed_common_names_are_refused_not_compared_lossily() {
    let dir = tempfile::tempdir().unwrap();
    let odd_bmp = [bmp("vendor-signer-p256"), vec![0x41]].concat();
    let cases: [(&str, u8, Vec<u8>, &str); 4] = [
        // The odd trailing byte was dropped, and the rest compared equal to the allowed name.
        ("bmp-odd", 0x1e, odd_bmp, "vendor-signer-p256"),
        // Invalid UTF-8 rendered with U+FFFD, which an allowed name may contain.
        ("utf8-invalid", 0x0c, b"vendor-signer-p256\xff".to_vec(), "vendor-signer-p256\u{fffd}"),
        // An OCTET STRING is no string at all; it used to be compared as its hex rendering.
        ("octets", 0x04, b"vendor-signer-p256".to_vec(), "#041276656e646f722d7369676e65722d70323536"),
        // A PrintableString holding a byte above 0x7f.
        ("printable-8bit", 0x13, b"vendor-signer-p256\xe9".to_vec(), "vendor-signer-p256\u{e9}"),
    ];
    for (label, tag, value, lossy) in cases {
        let b = forged_bundle(dir.path(), label, tag, &value);
        // Structure and chain are sound: without allowed signers the bundle verifies.
        bundle::verify(&b, &trust(&[]), &exp()).unwrap_or_else(|e| panic!("{label}: {e}"));
        let err = bundle::verify(&b, &trust(&[lossy, "vendor-signer-p256"]), &exp())
            .err()
            .unwrap_or_else(|| panic!("{label}: a malformed CN passed as the allowed name {lossy:?}"));
        let msg = err.to_string();
        assert!(msg.contains("commonName") && msg.contains("O=otpatch tests"), "{label}: {msg}");
    }
}
#[test]
fn key_usage_must_permit_what_each_certificate_does() {
    let pki = Pki::get();
    let dir = tempfile::tempdir().unwrap();
    // A normal chain (signer: digitalSignature; CAs: keyCertSign) verifies.
    let good = bundle_signed(dir.path(), pki.path("p256.pem"), "p256", "inter");
    bundle::verify(&good, &trust(&[]), &exp()).unwrap();

    let keyenc = bundle_signed(dir.path(), pki.path("keyenc.pem"), "keyenc", "inter");
    let err = bundle::verify(&keyenc, &trust(&[]), &exp()).unwrap_err().to_string();
    assert!(err.contains("digitalSignature") && err.contains("vendor-signer-keyenc"), "{err}");

    let under = bundle_signed(dir.path(), pki.path("undernocertsign.pem"), "undernocertsign", "nocertsign");
    let err = bundle::verify(&under, &trust(&[]), &exp()).unwrap_err().to_string();
    assert!(err.contains("keyCertSign") && err.contains("otpatch Test CA without keyCertSign"), "{err}");

    // The same CA as the site's anchor: its certificate is known, so its keyUsage is checked too.
    let anchored = TrustStore::from_pem_files(&[pki.path("nocertsign.pem")], &[], None).unwrap();
    let err = bundle::verify(&under, &anchored, &exp()).unwrap_err().to_string();
    assert!(err.contains("keyCertSign") && err.contains("otpatch Test CA without keyCertSign"), "{err}");
}
