//! CMS SignedData (RFC 5652) as otpatch and RAUC bundles carry it: parsed strictly, then checked in the order that
//! gives the most precise error: one signer, signed attributes present, content type and message digest, the
//! signature over the DER SET of the signed attributes, the chain to the site's anchors, codeSigning, the signer's
//! name.

use jiff::Timestamp;
use rustls_pki_types::{CertificateDer, SignatureVerificationAlgorithm, UnixTime};
use webpki::{ring as algs, EndEntityCert, KeyUsage, RevocationCheckDepth, UnknownStatusPolicy};

use super::der::{oid_to_string, tag, Reader, Tlv};
use super::trust::TrustStore;
use super::x509::{parse_time, Cert};
use super::BundleError;

const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_ATTR_CONTENT_TYPE: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x03];
const OID_ATTR_MESSAGE_DIGEST: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x04];
const OID_ATTR_SIGNING_TIME: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x05];
const OID_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const OID_SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const OID_SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
const OID_SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const OID_MD5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x05];
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_RSA_MD5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04];
const OID_RSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
const OID_RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const OID_RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const OID_RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
const OID_ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const OID_ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const OID_ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];

/// The digest algorithms a signer may use for the content and the signed attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlg {
    Sha256,
    Sha384,
    Sha512,
}

impl DigestAlg {
    pub(crate) fn ring(self) -> &'static ring::digest::Algorithm {
        match self {
            DigestAlg::Sha256 => &ring::digest::SHA256,
            DigestAlg::Sha384 => &ring::digest::SHA384,
            DigestAlg::Sha512 => &ring::digest::SHA512,
        }
    }

    pub(crate) fn oid(self) -> &'static [u8] {
        match self {
            DigestAlg::Sha256 => OID_SHA256,
            DigestAlg::Sha384 => OID_SHA384,
            DigestAlg::Sha512 => OID_SHA512,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DigestAlg::Sha256 => "SHA-256",
            DigestAlg::Sha384 => "SHA-384",
            DigestAlg::Sha512 => "SHA-512",
        }
    }

    fn from_oid(oid: &[u8]) -> Result<Self, BundleError> {
        match oid {
            OID_SHA256 => Ok(DigestAlg::Sha256),
            OID_SHA384 => Ok(DigestAlg::Sha384),
            OID_SHA512 => Ok(DigestAlg::Sha512),
            OID_SHA1 => Err(BundleError::WeakAlgorithm { algorithm: "SHA-1".into() }),
            OID_MD5 => Err(BundleError::WeakAlgorithm { algorithm: "MD5".into() }),
            other => Err(BundleError::UnsupportedAlgorithm { oid: oid_to_string(other) }),
        }
    }
}

/// How a SignerInfo names its certificate.
#[derive(Debug, Clone)]
enum SignerId<'a> {
    IssuerSerial { issuer: &'a [u8], serial: &'a [u8] },
    KeyId(&'a [u8]),
}

/// One SignerInfo, borrowing from the CMS bytes.
#[derive(Debug, Clone)]
pub(crate) struct SignerInfo<'a> {
    sid: SignerId<'a>,
    pub digest: DigestAlg,
    signed_attrs: Tlv<'a>,
    sig_alg: &'a [u8],
    signature: &'a [u8],
}

/// A parsed SignedData.
#[derive(Debug, Clone)]
pub(crate) struct SignedData<'a> {
    pub econtent_type: &'a [u8],
    pub econtent: Option<&'a [u8]>,
    pub certs: Vec<&'a [u8]>,
    signers: Vec<Tlv<'a>>,
}

/// What a successful check established.
#[derive(Debug, Clone)]
pub(crate) struct SignerOutcome {
    pub signer: Cert,
    /// Signer first, then the intermediates, then the anchor (when it could be matched to a PEM certificate).
    pub chain: Vec<Cert>,
    pub signing_time: Option<Timestamp>,
}

pub(crate) fn parse(cms: &[u8]) -> Result<SignedData<'_>, BundleError> {
    let part = "CMS";
    let mut top = Reader::new(cms, part);
    let ci = top.expect(tag::SEQUENCE, "ContentInfo").map_err(|e| BundleError::NotCms { reason: e.to_string() })?;
    top.finish("the ContentInfo")?;
    let mut ci = ci.contents(part);
    let ct = ci.expect(tag::OID, "contentType").map_err(|e| BundleError::NotCms { reason: e.to_string() })?;
    if ct.value != OID_SIGNED_DATA {
        return Err(BundleError::NotSignedData { content_type: oid_to_string(ct.value) });
    }
    let content = ci.expect(tag::CTX0, "[0] content")?;
    ci.finish("the content")?;
    let mut c = content.contents(part);
    let sd = c.expect(tag::SEQUENCE, "SignedData")?;
    c.finish("SignedData")?;
    let mut s = sd.contents(part);
    s.expect(tag::INTEGER, "version")?;
    s.expect(tag::SET, "digestAlgorithms")?;
    let eci = s.expect(tag::SEQUENCE, "encapContentInfo")?;
    let mut e = eci.contents(part);
    let econtent_type = e.expect(tag::OID, "eContentType")?.value;
    let econtent = match e.optional(tag::CTX0)? {
        Some(wrapper) => {
            let mut w = wrapper.contents(part);
            let octets = w.expect(tag::OCTET_STRING, "eContent (primitive OCTET STRING)")?;
            w.finish("eContent")?;
            Some(octets.value)
        }
        None => None,
    };
    e.finish("encapContentInfo")?;
    let mut certs = Vec::new();
    if let Some(set) = s.optional(tag::CTX0)? {
        let mut r = set.contents(part);
        while !r.is_empty() {
            let el = r.any()?;
            // Other certificate formats (attribute certificates, ...) are tagged and play no part here.
            if el.tag == tag::SEQUENCE {
                if certs.len() >= 32 {
                    return Err(r.err(el.offset, "more than 32 certificates"));
                }
                certs.push(el.raw);
            }
        }
    }
    s.optional(tag::CTX1)?;
    let infos = s.expect(tag::SET, "signerInfos")?;
    s.finish("signerInfos")?;
    let mut signers = Vec::new();
    let mut r = infos.contents(part);
    while !r.is_empty() {
        if signers.len() >= 16 {
            return Err(r.err(r.offset(), "more than 16 signers"));
        }
        signers.push(r.expect(tag::SEQUENCE, "SignerInfo")?);
    }
    Ok(SignedData { econtent_type, econtent, certs, signers })
}

impl<'a> SignedData<'a> {
    /// The one signer, parsed. Exactly one is allowed: a second signature could only widen who can publish.
    pub fn single_signer(&self) -> Result<SignerInfo<'a>, BundleError> {
        if self.econtent_type != OID_DATA {
            return Err(BundleError::WrongContentType { content_type: oid_to_string(self.econtent_type) });
        }
        let [one] = self.signers.as_slice() else {
            return Err(BundleError::SignerCount { count: self.signers.len() });
        };
        let part = "CMS SignerInfo";
        let mut r = one.contents(part);
        r.expect(tag::INTEGER, "version")?;
        let sid = match r.peek_tag() {
            Some(tag::SEQUENCE) => {
                let mut ias = r.any()?.contents(part);
                let issuer = ias.expect(tag::SEQUENCE, "issuer")?.raw;
                let serial = ias.expect(tag::INTEGER, "serialNumber")?.value;
                SignerId::IssuerSerial { issuer, serial }
            }
            Some(tag::CTX0_PRIM) => SignerId::KeyId(r.any()?.value),
            _ => return Err(r.err(r.offset(), "expected a SignerIdentifier")),
        };
        let mut dalg = r.expect(tag::SEQUENCE, "digestAlgorithm")?.contents(part);
        let digest = DigestAlg::from_oid(dalg.expect(tag::OID, "digest algorithm")?.value)?;
        let signed_attrs = r.optional(tag::CTX0)?.ok_or(BundleError::NoSignedAttributes)?;
        let mut salg = r.expect(tag::SEQUENCE, "signatureAlgorithm")?.contents(part);
        let sig_alg = salg.expect(tag::OID, "signature algorithm")?.value;
        let signature = r.expect(tag::OCTET_STRING, "signature")?.value;
        r.optional(tag::CTX1)?;
        r.finish("SignerInfo")?;
        Ok(SignerInfo { sid, digest, signed_attrs, sig_alg, signature })
    }
}

/// The signed attributes that matter here.
struct Attrs<'a> {
    content_type: &'a [u8],
    message_digest: &'a [u8],
    signing_time: Option<Timestamp>,
}

fn read_attrs<'a>(attrs: &Tlv<'a>) -> Result<Attrs<'a>, BundleError> {
    let part = "CMS signed attributes";
    let (mut ct, mut md, mut st) = (None, None, None);
    let mut r = attrs.contents(part);
    let mut count = 0;
    while !r.is_empty() {
        count += 1;
        if count > 64 {
            return Err(r.err(r.offset(), "more than 64 signed attributes"));
        }
        let mut a = r.expect(tag::SEQUENCE, "Attribute")?.contents(part);
        let oid = a.expect(tag::OID, "attribute type")?;
        let values = a.expect(tag::SET, "attribute values")?;
        let mut v = values.contents(part);
        let first = v.any()?;
        if !v.is_empty() {
            return Err(v.err(v.offset(), format!("attribute {} has more than one value", oid_to_string(oid.value))));
        }
        let slot = match oid.value {
            OID_ATTR_CONTENT_TYPE => &mut ct,
            OID_ATTR_MESSAGE_DIGEST => &mut md,
            OID_ATTR_SIGNING_TIME => &mut st,
            _ => continue,
        };
        if slot.replace(first).is_some() {
            return Err(r.err(oid.offset, format!("attribute {} appears twice", oid_to_string(oid.value))));
        }
    }
    let ct = ct.ok_or(BundleError::MissingSignedAttribute { name: "contentType" })?;
    let md = md.ok_or(BundleError::MissingSignedAttribute { name: "messageDigest" })?;
    if ct.tag != tag::OID {
        return Err(r.err(ct.offset, "contentType attribute is not an OID"));
    }
    if md.tag != tag::OCTET_STRING {
        return Err(r.err(md.offset, "messageDigest attribute is not an OCTET STRING"));
    }
    let signing_time = st.map(|t| parse_time(&t, part)).transpose()?;
    Ok(Attrs { content_type: ct.value, message_digest: md.value, signing_time })
}

/// The webpki algorithms that may have made this signature; OpenSSL names only `rsaEncryption` in the
/// SignerInfo, so the digest algorithm completes it. ECDSA lists both curves; the signer's key picks one.
fn signature_algs(
    sig_alg: &[u8],
    digest: DigestAlg,
) -> Result<&'static [&'static dyn SignatureVerificationAlgorithm], BundleError> {
    static RSA256: [&dyn SignatureVerificationAlgorithm; 1] = [algs::RSA_PKCS1_2048_8192_SHA256];
    static RSA384: [&dyn SignatureVerificationAlgorithm; 1] = [algs::RSA_PKCS1_2048_8192_SHA384];
    static RSA512: [&dyn SignatureVerificationAlgorithm; 1] = [algs::RSA_PKCS1_2048_8192_SHA512];
    static EC256: [&dyn SignatureVerificationAlgorithm; 2] = [algs::ECDSA_P256_SHA256, algs::ECDSA_P384_SHA256];
    static EC384: [&dyn SignatureVerificationAlgorithm; 2] = [algs::ECDSA_P256_SHA384, algs::ECDSA_P384_SHA384];
    let named = |d: DigestAlg| {
        if d == digest {
            Ok(())
        } else {
            Err(BundleError::UnsupportedAlgorithm {
                oid: format!("{} with digest {}", oid_to_string(sig_alg), digest.name()),
            })
        }
    };
    Ok(match sig_alg {
        OID_RSA => match digest {
            DigestAlg::Sha256 => &RSA256,
            DigestAlg::Sha384 => &RSA384,
            DigestAlg::Sha512 => &RSA512,
        },
        OID_RSA_SHA256 => named(DigestAlg::Sha256).map(|_| &RSA256[..])?,
        OID_RSA_SHA384 => named(DigestAlg::Sha384).map(|_| &RSA384[..])?,
        OID_RSA_SHA512 => named(DigestAlg::Sha512).map(|_| &RSA512[..])?,
        OID_ECDSA_SHA256 => named(DigestAlg::Sha256).map(|_| &EC256[..])?,
        OID_ECDSA_SHA384 => named(DigestAlg::Sha384).map(|_| &EC384[..])?,
        OID_EC_PUBLIC_KEY => match digest {
            DigestAlg::Sha256 => &EC256,
            DigestAlg::Sha384 => &EC384,
            DigestAlg::Sha512 => {
                return Err(BundleError::UnsupportedAlgorithm { oid: "ECDSA with SHA-512".into() });
            }
        },
        OID_ECDSA_SHA512 => return Err(BundleError::UnsupportedAlgorithm { oid: "ECDSA with SHA-512".into() }),
        OID_RSA_SHA1 | OID_ECDSA_SHA1 => return Err(BundleError::WeakAlgorithm { algorithm: "SHA-1".into() }),
        OID_RSA_MD5 => return Err(BundleError::WeakAlgorithm { algorithm: "MD5".into() }),
        other => return Err(BundleError::UnsupportedAlgorithm { oid: oid_to_string(other) }),
    })
}

/// Checks one signer over content whose digest (with `signer.digest`) the caller computed.
pub(crate) fn verify_signer(
    sd: &SignedData<'_>,
    signer: &SignerInfo<'_>,
    content_digest: &[u8],
    trust: &TrustStore,
    now: Timestamp,
) -> Result<SignerOutcome, BundleError> {
    let attrs = read_attrs(&signer.signed_attrs)?;
    if attrs.content_type != sd.econtent_type {
        return Err(BundleError::ContentTypeMismatch {
            attribute: oid_to_string(attrs.content_type),
            encapsulated: oid_to_string(sd.econtent_type),
        });
    }
    if attrs.message_digest != content_digest {
        return Err(BundleError::MessageDigestMismatch {
            algorithm: signer.digest.name(),
            signed: hex::encode(attrs.message_digest),
            actual: hex::encode(content_digest),
        });
    }
    let mut parsed = Vec::with_capacity(sd.certs.len());
    for der in &sd.certs {
        parsed.push(Cert::parse(der)?);
    }
    let idx = parsed
        .iter()
        .position(|c| match &signer.sid {
            SignerId::IssuerSerial { issuer, serial } => c.issuer_raw == *issuer && c.serial == *serial,
            SignerId::KeyId(id) => c.ski.as_deref() == Some(*id),
        })
        .ok_or(BundleError::SignerCertificateMissing)?;
    let signer_cert = parsed.swap_remove(idx);
    let cert_der = CertificateDer::from(signer_cert.der.as_slice());
    let ee = EndEntityCert::try_from(&cert_der)
        .map_err(|e| BundleError::Chain { signer: signer_cert.subject.clone(), reason: format!("{e:?}") })?;

    // The signature covers the signed attributes as a DER SET: same bytes, universal SET tag instead of [0].
    let mut signed = signer.signed_attrs.raw.to_vec();
    signed[0] = tag::SET;
    let mut result = Ok(());
    for alg in signature_algs(signer.sig_alg, signer.digest)? {
        result = ee.verify_signature(*alg, &signed, signer.signature);
        let wrong_key = matches!(result, Err(webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_)));
        if !wrong_key {
            break;
        }
    }
    result.map_err(|e| match e {
        webpki::Error::InvalidSignatureForPublicKey => {
            BundleError::BadSignature { signer: signer_cert.subject.clone() }
        }
        other => {
            BundleError::UnsupportedSignerKey { signer: signer_cert.subject.clone(), reason: format!("{other:?}") }
        }
    })?;

    let intermediates: Vec<CertificateDer<'_>> =
        parsed.iter().map(|c| CertificateDer::from(c.der.as_slice())).collect();
    let secs = u64::try_from(now.as_second()).unwrap_or(0);
    let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs));
    let crls = trust.crl.iter().collect::<Vec<_>>();
    let revocation = if crls.is_empty() {
        None
    } else {
        webpki::RevocationOptionsBuilder::new(&crls)
            .ok()
            .map(|b| b.with_depth(RevocationCheckDepth::Chain).with_status_policy(UnknownStatusPolicy::Allow).build())
    };
    let subject = signer_cert.subject.clone();
    // A CA certificate never signs bundles, whatever its key usages say (webpki would say the same, later).
    if signer_cert.is_ca {
        return Err(BundleError::CaAsSigner { signer: subject });
    }
    if !signer_cert.has_code_signing() {
        return Err(BundleError::NotCodeSigning { signer: subject });
    }
    if !signer_cert.permits_digital_signature() {
        return Err(BundleError::KeyUsageForbids { subject, usage: "digitalSignature", role: "the signer" });
    }
    // An expired CRL says nothing about what was revoked since: refused, whatever webpki would make of it.
    if let Some(crl) = &trust.crl_info {
        if crl.next_update <= now {
            return Err(BundleError::CrlExpired {
                path: crl.path.clone(),
                issuer: crl.issuer.clone(),
                next_update: crl.next_update,
                now,
            });
        }
    }
    let path = ee
        .verify_for_usage(
            CHAIN_ALGS,
            &trust.anchors,
            &intermediates,
            time,
            // A required EKU would be demanded of the intermediates too; codeSigning is checked below, on the signer.
            KeyUsage::required_if_present(super::x509::OID_CODE_SIGNING),
            revocation,
            None,
        )
        .map_err(|e| chain_error(e, &subject))?;
    let mut chain = Vec::new();
    for c in path.intermediate_certificates() {
        chain.push(Cert::parse(c.der().as_ref())?);
    }
    let anchor_subject = path.anchor().subject.as_ref().to_vec();
    if let Some(anchor) = trust.anchor_certs.iter().find(|c| c.subject_raw.ends_with(&anchor_subject)) {
        chain.push(anchor.clone());
    }
    // webpki consults a CRL only for certificates its issuer issued; one of no CA of the chain would silently
    // revoke nothing, so it is refused.
    if let Some(crl) = &trust.crl_info {
        if !chain.iter().any(|c| c.subject_raw == crl.issuer_raw) {
            return Err(BundleError::CrlIssuerNotInChain {
                path: crl.path.clone(),
                issuer: crl.issuer.clone(),
                signer: subject,
            });
        }
    }
    // webpki does not read keyUsage; every CA of the path (the anchor too, when its certificate is known) must be
    // allowed to sign certificates when it restricts its key's use.
    if let Some(ca) = chain.iter().find(|c| !c.permits_key_cert_sign()) {
        return Err(BundleError::KeyUsageForbids {
            subject: ca.subject.clone(),
            usage: "keyCertSign",
            role: "a CA of the chain",
        });
    }
    if !trust.allowed_signers.is_empty() {
        // Compared exactly as encoded: a name that cannot be decoded exactly is refused, never rendered lossily.
        let cn = match &signer_cert.common_name {
            Ok(Some(cn)) => cn.clone(),
            Ok(None) => {
                return Err(BundleError::SignerNameMalformed {
                    signer: subject,
                    reason: "the subject has no commonName".into(),
                })
            }
            Err(reason) => return Err(BundleError::SignerNameMalformed { signer: subject, reason: reason.clone() }),
        };
        if !trust.allowed_signers.contains(&cn) {
            return Err(BundleError::SignerNotAllowed { common_name: cn, allowed: trust.allowed_signers.clone() });
        }
    }
    chain.insert(0, signer_cert.clone());
    Ok(SignerOutcome { signer: signer_cert, chain, signing_time: attrs.signing_time })
}

/// Algorithms accepted on certificates of the chain (SHA-1 and MD5 are not among them).
static CHAIN_ALGS: &[&dyn SignatureVerificationAlgorithm] = &[
    algs::RSA_PKCS1_2048_8192_SHA256,
    algs::RSA_PKCS1_2048_8192_SHA384,
    algs::RSA_PKCS1_2048_8192_SHA512,
    algs::RSA_PKCS1_3072_8192_SHA384,
    algs::ECDSA_P256_SHA256,
    algs::ECDSA_P256_SHA384,
    algs::ECDSA_P384_SHA256,
    algs::ECDSA_P384_SHA384,
];

fn chain_error(e: webpki::Error, signer: &str) -> BundleError {
    let signer = signer.to_string();
    let ts = |t: UnixTime| {
        i64::try_from(t.as_secs()).ok().and_then(|s| Timestamp::from_second(s).ok()).unwrap_or(Timestamp::UNIX_EPOCH)
    };
    match e {
        webpki::Error::CertExpired { time, not_after } => {
            BundleError::CertificateExpired { signer, not_after: ts(not_after), now: ts(time) }
        }
        webpki::Error::CertNotValidYet { time, not_before } => {
            BundleError::CertificateNotYetValid { signer, not_before: ts(not_before), now: ts(time) }
        }
        webpki::Error::UnknownIssuer => BundleError::UnknownIssuer { signer },
        webpki::Error::CaUsedAsEndEntity => BundleError::CaAsSigner { signer },
        webpki::Error::CertRevoked => BundleError::Revoked { signer },
        // The signer's own codeSigning is checked before; so this is an intermediate's.
        webpki::Error::RequiredEkuNotFoundContext(_) => BundleError::Chain {
            signer,
            reason: "an intermediate CA restricts extendedKeyUsage without including codeSigning".into(),
        },
        other => BundleError::Chain { signer, reason: format!("{other:?}") },
    }
}
