//! The few facts about an X.509 certificate that the verifier and `otpatchctl bundle inspect` need: who it names,
//! who issued it, its serial (to find the signer a SignerInfo points at), its validity, whether it is a CA, and
//! its extended key usages. Chain building and signature checking are left to rustls-webpki; this only reads.

use jiff::Timestamp;
use serde::Serialize;

use super::der::{oid_to_string, tag, Reader, Tlv};
use super::BundleError;

pub(crate) const OID_CN: &[u8] = &[0x55, 0x04, 0x03];
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
const OID_EKU: &[u8] = &[0x55, 0x1d, 0x25];
const OID_SKI: &[u8] = &[0x55, 0x1d, 0x0e];
/// id-kp-codeSigning, 1.3.6.1.5.5.7.3.3.
pub(crate) const OID_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// A parsed certificate, owning its DER.
#[derive(Debug, Clone)]
pub(crate) struct Cert {
    pub der: Vec<u8>,
    pub serial: Vec<u8>,
    pub issuer_raw: Vec<u8>,
    pub subject_raw: Vec<u8>,
    pub subject: String,
    pub issuer: String,
    pub common_name: Option<String>,
    pub not_before: Timestamp,
    pub not_after: Timestamp,
    pub is_ca: bool,
    /// `None`: no extendedKeyUsage extension at all.
    pub eku: Option<Vec<Vec<u8>>>,
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
        let part = "certificate";
        let mut outer = Reader::new(der, part);
        let cert = outer.expect(tag::SEQUENCE, "Certificate")?;
        outer.finish("the certificate")?;
        let mut c = cert.contents(part);
        let tbs = c.expect(tag::SEQUENCE, "TBSCertificate")?;
        let mut t = tbs.contents(part);
        t.optional(tag::CTX0)?;
        let serial = t.expect(tag::INTEGER, "serialNumber")?;
        t.expect(tag::SEQUENCE, "signature algorithm")?;
        let issuer = t.expect(tag::SEQUENCE, "issuer")?;
        let validity = t.expect(tag::SEQUENCE, "validity")?;
        let subject = t.expect(tag::SEQUENCE, "subject")?;
        t.expect(tag::SEQUENCE, "subjectPublicKeyInfo")?;
        let mut v = validity.contents(part);
        let not_before = parse_time(&v.any()?, part)?;
        let not_after = parse_time(&v.any()?, part)?;
        let mut is_ca = false;
        let mut eku = None;
        let mut ski = None;
        while let Some(t_tag) = t.peek_tag() {
            let el = t.any()?;
            if t_tag != tag::CTX3 {
                continue;
            }
            let mut exts = el.contents(part).expect(tag::SEQUENCE, "extensions")?.contents(part);
            while !exts.is_empty() {
                let ext = exts.expect(tag::SEQUENCE, "extension")?;
                let mut e = ext.contents(part);
                let oid = e.expect(tag::OID, "extension id")?;
                e.optional(tag::BOOLEAN)?;
                let value = e.expect(tag::OCTET_STRING, "extension value")?;
                let mut inner = Reader::new(value.value, part);
                match oid.value {
                    OID_BASIC_CONSTRAINTS => {
                        let bc = inner.expect(tag::SEQUENCE, "basicConstraints")?;
                        if let Some(b) = bc.contents(part).optional(tag::BOOLEAN)? {
                            is_ca = b.value.first().copied().unwrap_or(0) != 0;
                        }
                    }
                    OID_EKU => {
                        let seq = inner.expect(tag::SEQUENCE, "extKeyUsage")?;
                        let mut s = seq.contents(part);
                        let mut list = Vec::new();
                        while !s.is_empty() {
                            list.push(s.expect(tag::OID, "key purpose")?.value.to_vec());
                        }
                        eku = Some(list);
                    }
                    OID_SKI => ski = Some(inner.expect(tag::OCTET_STRING, "subjectKeyIdentifier")?.value.to_vec()),
                    _ => {}
                }
            }
        }
        Ok(Cert {
            der: der.to_vec(),
            serial: serial.value.to_vec(),
            issuer_raw: issuer.raw.to_vec(),
            subject_raw: subject.raw.to_vec(),
            subject: render_name(&subject)?,
            issuer: render_name(&issuer)?,
            common_name: common_name(&subject)?,
            not_before,
            not_after,
            is_ca,
            eku,
            ski,
        })
    }

    pub fn has_code_signing(&self) -> bool {
        self.eku.as_ref().is_some_and(|l| l.iter().any(|o| o == OID_CODE_SIGNING))
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

fn string_value(v: &Tlv<'_>) -> String {
    match v.tag {
        tag::BMP_STRING => {
            let units: Vec<u16> = v.value.chunks_exact(2).map(|c| u16::from_be_bytes([c[0], c[1]])).collect();
            String::from_utf16_lossy(&units)
        }
        // T61 is treated as Latin-1, as OpenSSL displays it.
        tag::T61_STRING => v.value.iter().map(|b| char::from(*b)).collect(),
        tag::UTF8_STRING | tag::PRINTABLE_STRING | tag::IA5_STRING => String::from_utf8_lossy(v.value).into_owned(),
        _ => format!("#{}", hex::encode(v.raw)),
    }
}

/// Visits every (type, value) pair of a Name, in the order it is encoded.
fn name_pairs<'a>(name: &Tlv<'a>) -> Result<Vec<(&'a [u8], Tlv<'a>)>, BundleError> {
    let part = "certificate name";
    let mut out = Vec::new();
    let mut rdns = name.contents(part);
    while !rdns.is_empty() {
        let mut set = rdns.expect(tag::SET, "RelativeDistinguishedName")?.contents(part);
        while !set.is_empty() {
            let mut atv = set.expect(tag::SEQUENCE, "AttributeTypeAndValue")?.contents(part);
            let oid = atv.expect(tag::OID, "attribute type")?;
            out.push((oid.value, atv.any()?));
        }
    }
    Ok(out)
}

fn render_name(name: &Tlv<'_>) -> Result<String, BundleError> {
    Ok(name_pairs(name)?
        .iter()
        .map(|(oid, v)| format!("{}={}", attr_name(oid), string_value(v)))
        .collect::<Vec<_>>()
        .join(", "))
}

fn common_name(name: &Tlv<'_>) -> Result<Option<String>, BundleError> {
    // The last CN is the most specific one, as OpenSSL and webpki read it.
    Ok(name_pairs(name)?.iter().rev().find(|(oid, _)| *oid == OID_CN).map(|(_, v)| string_value(v)))
}
