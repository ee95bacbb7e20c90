//! The few facts about an X.509 certificate that the verifier and `otpatchctl bundle inspect` need: who it names,
//! who issued it, its serial (to find the signer a SignerInfo points at), its validity, whether it is a CA, its key
//! usages and extended key usages. Certificates are decoded with `x509-parser`; chain building and signature
//! checking are left to rustls-webpki. The strict reader in `der.rs` stays for the CMS envelope, whose exact bytes
//! the signature covers, and [`parse_time`] for the signingTime attribute.
//!
//! Names are kept two ways: a rendering for display (`CN=..., O=...`, lossy where a string is malformed) and the
//! subject's common name decoded exactly, or the reason it cannot be, for the allowed-signers rule.

use jiff::Timestamp;
use serde::Serialize;
use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::asn1_rs::{Any, Class, Tag};
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::FromDer;
use x509_parser::x509::X509Name;

use super::der::{element, oid_to_string, tag, Tlv};
use super::BundleError;

const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
/// id-kp-codeSigning, 1.3.6.1.5.5.7.3.3.
pub(crate) const OID_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// The keyUsage bits the verifier asks for (RFC 5280 4.2.1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct KeyUsageBits {
    pub digital_signature: bool,
    pub key_cert_sign: bool,
}

/// A parsed certificate, owning its DER.
#[derive(Debug, Clone)]
pub(crate) struct Cert {
    pub der: Vec<u8>,
    pub serial: Vec<u8>,
    pub issuer_raw: Vec<u8>,
    pub subject_raw: Vec<u8>,
    /// For display only: a malformed string is rendered lossily here.
    pub subject: String,
    pub issuer: String,
    /// The last commonName of the subject decoded exactly; `Err` says why it cannot be (odd BMPString, invalid
    /// UTF-8, not a string type, ...). `Ok(None)`: the subject has no commonName.
    pub common_name: Result<Option<String>, String>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub is_ca: bool,
    /// `None`: no extendedKeyUsage extension at all; else whether it lists codeSigning.
    pub eku_code_signing: Option<bool>,
    /// `None`: no keyUsage extension, which permits every use.
    pub key_usage: Option<KeyUsageBits>,
    pub ski: Option<Vec<u8>>,
}

/// What `inspect` shows about one certificate of the chain.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub serial: String,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub is_ca: bool,
    pub code_signing: bool,
}

impl Cert {
    pub fn parse(der: &[u8]) -> Result<Cert, BundleError> {
        let bad = |offset: usize, reason: String| BundleError::Der { part: "certificate", offset, reason };
        let (rest, x) = X509Certificate::from_der(der).map_err(|e| bad(0, format!("not an X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(bad(der.len() - rest.len(), "unexpected data after the certificate".into()));
        }
        let time =
            |t: i64, what: &str| Timestamp::from_second(t).map_err(|_| bad(0, format!("{what} {t} is out of range")));
        let ext_err = |what: &str, e: x509_parser::error::X509Error| bad(0, format!("{what}: {e}"));
        let is_ca = x.basic_constraints().map_err(|e| ext_err("basicConstraints", e))?.is_some_and(|b| b.value.ca);
        let eku_code_signing =
            x.extended_key_usage().map_err(|e| ext_err("extendedKeyUsage", e))?.map(|e| e.value.code_signing);
        let key_usage = x.key_usage().map_err(|e| ext_err("keyUsage", e))?.map(|k| KeyUsageBits {
            digital_signature: k.value.digital_signature(),
            key_cert_sign: k.value.key_cert_sign(),
        });
        let mut ski = None;
        for ext in x.extensions() {
            if let ParsedExtension::SubjectKeyIdentifier(id) = ext.parsed_extension() {
                if ski.replace(id.0.to_vec()).is_some() {
                    return Err(bad(0, "subjectKeyIdentifier appears twice".into()));
                }
            }
        }
        let validity = x.validity();
        Ok(Cert {
            der: der.to_vec(),
            serial: x.raw_serial().to_vec(),
            issuer_raw: x.issuer().as_raw().to_vec(),
            subject_raw: x.subject().as_raw().to_vec(),
            subject: render_name(x.subject()),
            issuer: render_name(x.issuer()),
            common_name: common_name(x.subject()),
            not_before: time(validity.not_before.timestamp(), "notBefore")?,
            not_after: time(validity.not_after.timestamp(), "notAfter")?,
            is_ca,
            eku_code_signing,
            key_usage,
            ski,
        })
    }

    pub fn has_code_signing(&self) -> bool {
        self.eku_code_signing == Some(true)
    }

    /// Whether keyUsage, when present, permits signing data (the signer's use).
    pub fn permits_digital_signature(&self) -> bool {
        self.key_usage.is_none_or(|k| k.digital_signature)
    }

    /// Whether keyUsage, when present, permits signing certificates (a CA's use).
    pub fn permits_key_cert_sign(&self) -> bool {
        self.key_usage.is_none_or(|k| k.key_cert_sign)
    }

    pub fn summary(&self) -> CertSummary {
        CertSummary {
            subject: self.subject.clone(),
            issuer: self.issuer.clone(),
            serial: hex::encode(&self.serial),
            not_before: self.not_before,
            not_after: self.not_after,
            is_ca: self.is_ca,
            code_signing: self.has_code_signing(),
        }
    }
}

/// UTCTime or GeneralizedTime, both only in the `Z` form DER requires. Read byte by byte: the value is untrusted
/// and may hold any bytes, multi-byte UTF-8 included, so nothing here slices text.
pub(crate) fn parse_time(t: &Tlv<'_>, part: &'static str) -> Result<Timestamp, BundleError> {
    let shown = String::from_utf8_lossy(t.value);
    let bad = |why: &str| BundleError::Der { part, offset: t.offset, reason: format!("bad time: {why}") };
    let digits = match t.tag {
        tag::UTC_TIME => 12,
        tag::GENERALIZED_TIME => 14,
        other => return Err(bad(&format!("tag 0x{other:02x} with {shown:?}"))),
    };
    let v = t.value;
    if v.len() != digits + 1 || v.last() != Some(&b'Z') || !v[..digits].iter().all(u8::is_ascii_digit) {
        return Err(bad(&format!("{shown:?} is not {digits} ASCII digits and Z")));
    }
    // All ASCII digits from here: each pair is two decimal digits.
    let num = |i: usize, n: usize| v[i..i + n].iter().fold(0i16, |acc, d| acc * 10 + i16::from(d - b'0'));
    let (year, rest) = if digits == 12 {
        let yy = num(0, 2);
        (if yy >= 50 { 1900 + yy } else { 2000 + yy }, 2)
    } else {
        (num(0, 4), 4)
    };
    // Each of month, day, hour, minute, second is below 100, so it fits an i8.
    let pair = |k: usize| i8::try_from(num(rest + 2 * k, 2)).map_err(|_| bad(&shown));
    let dt = jiff::civil::DateTime::new(year, pair(0)?, pair(1)?, pair(2)?, pair(3)?, pair(4)?, 0)
        .map_err(|_| bad(&shown))?;
    dt.to_zoned(jiff::tz::TimeZone::UTC).map(|z| z.timestamp()).map_err(|_| bad(&shown))
}

fn attr_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x05] => "serialNumber".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress".into(),
        other => oid_to_string(other),
    }
}

/// The DER of an attribute value as it was encoded, for showing a value that is no string.
fn raw_value(v: &Any<'_>) -> Vec<u8> {
    let mut out = element(0, v.data);
    let tag_bytes = match v.header.raw_tag() {
        Some(raw) => raw.to_vec(),
        None => {
            let class = (v.class() as u8) << 6;
            let constructed = if v.header.is_constructed() { 0x20 } else { 0 };
            vec![class | constructed | u8::try_from(v.tag().0).unwrap_or(0x1f)]
        }
    };
    out.splice(0..1, tag_bytes);
    out
}

/// An attribute value for display, as OpenSSL shows it: strings decoded (lossily where malformed), anything else
/// as `#` and the hex of its DER.
fn display_value(v: &Any<'_>) -> String {
    if v.class() != Class::Universal {
        return format!("#{}", hex::encode(raw_value(v)));
    }
    match v.tag() {
        Tag::BmpString => {
            let units: Vec<u16> =
                v.data.chunks(2).map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])).collect();
            String::from_utf16_lossy(&units)
        }
        // T61 is treated as Latin-1, as OpenSSL displays it.
        Tag::T61String => v.data.iter().map(|b| char::from(*b)).collect(),
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString | Tag::VisibleString => {
            String::from_utf8_lossy(v.data).into_owned()
        }
        _ => format!("#{}", hex::encode(raw_value(v))),
    }
}

/// An attribute value decoded exactly, or why it cannot be: what a name is compared by.
fn exact_value(v: &Any<'_>) -> Result<String, String> {
    let n = v.data.len();
    if v.class() != Class::Universal || v.header.is_constructed() {
        return Err(format!("is not a string (tag {:?} {})", v.class(), v.tag().0));
    }
    match v.tag() {
        Tag::Utf8String => String::from_utf8(v.data.to_vec()).map_err(|e| format!("UTF8String is not UTF-8: {e}")),
        Tag::PrintableString | Tag::Ia5String | Tag::NumericString | Tag::VisibleString => {
            match v.data.iter().position(|b| !b.is_ascii()) {
                Some(i) => Err(format!("{:?} holds the non-ASCII byte 0x{:02x} at {i}", v.tag(), v.data[i])),
                None => Ok(v.data.iter().map(|b| char::from(*b)).collect()),
            }
        }
        Tag::BmpString if !n.is_multiple_of(2) => Err(format!("BMPString has an odd number of bytes ({n})")),
        Tag::BmpString => {
            let units: Vec<u16> = v.data.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16(&units).map_err(|_| "BMPString is not valid UTF-16".into())
        }
        Tag::UniversalString if !n.is_multiple_of(4) => {
            Err(format!("UniversalString has {n} bytes, not a multiple of 4"))
        }
        Tag::UniversalString => v
            .data
            .chunks_exact(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect::<Option<String>>()
            .ok_or_else(|| "UniversalString holds a value that is no character".into()),
        // T61 (Teletex) has no single decoding; only its ASCII subset is unambiguous.
        Tag::T61String if v.data.is_ascii() => Ok(v.data.iter().map(|b| char::from(*b)).collect()),
        Tag::T61String => Err("T61String holds bytes outside ASCII, whose meaning is ambiguous".into()),
        other => Err(format!("is not a string (tag {})", other.0)),
    }
}

pub(crate) fn render_name(name: &X509Name<'_>) -> String {
    name.iter_attributes()
        .map(|a| format!("{}={}", attr_name(a.attr_type().as_bytes()), display_value(a.attr_value())))
        .collect::<Vec<_>>()
        .join(", ")
}

fn common_name(name: &X509Name<'_>) -> Result<Option<String>, String> {
    // The last CN is the most specific one, as OpenSSL and webpki read it.
    let last = name.iter_attributes().filter(|a| a.attr_type().as_bytes() == OID_CN).last();
    last.map(|a| exact_value(a.attr_value()).map_err(|e| format!("commonName {e}"))).transpose()
}
