//! The site's trust policy for bundles: which CAs may vouch for a signer, which signers (by subject CN) may publish,
//! and which certificates are revoked.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor};
use webpki::{CertRevocationList, OwnedCertRevocationList};

use jiff::Timestamp;
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::x509::{render_name, Cert};
use super::BundleError;

/// Trust anchors (DER certificates), allowed signer names and an optional CRL.
#[derive(Debug)]
pub struct TrustStore {
    pub(crate) anchors: Vec<TrustAnchor<'static>>,
    pub(crate) anchor_certs: Vec<Cert>,
    pub(crate) allowed_signers: Vec<String>,
    pub(crate) crl: Option<CertRevocationList<'static>>,
    pub(crate) crl_info: Option<CrlInfo>,
}

/// What the verifier checks about the CRL itself, beyond what webpki does with it.
#[derive(Debug, Clone)]
pub(crate) struct CrlInfo {
    pub path: PathBuf,
    /// DER Name of the issuer, compared with the CAs of a verified chain.
    pub issuer_raw: Vec<u8>,
    pub issuer: String,
    pub next_update: Timestamp,
}

/// SHA-1 signatures are refused on CRLs as everywhere else.
const SHA1_SIGNATURES: &[&str] = &["1.2.840.113549.1.1.5", "1.3.14.3.2.29", "1.2.840.10045.4.1"];

/// Reads the CRL's issuer and nextUpdate, and checks who issued it, when the trust store is built (policy load):
/// a CRL must be signed either by one of the anchors (checked with its key) or by the CA the policy names as
/// `crl_issuer` — a CA certificate that an anchor issued (its signature checked with the anchor's key) and whose
/// subject is the CRL's issuer. Anything else could never revoke a certificate of a chain the anchors accept, so it
/// is refused here rather than found out at the first window.
fn crl_info(
    path: &Path,
    der: &[u8],
    anchors: &[Cert],
    crl_issuer: Option<(&Path, &Cert)>,
) -> Result<CrlInfo, BundleError> {
    let bad = |reason: String| BundleError::Crl { path: path.to_path_buf(), reason };
    let (rest, crl) = CertificateRevocationList::from_der(der).map_err(|e| bad(format!("not a CRL: {e}")))?;
    if !rest.is_empty() {
        return Err(bad("unexpected data after the CRL".into()));
    }
    let issuer = render_name(crl.issuer());
    let next_update = crl.next_update().ok_or_else(|| {
        bad(format!("the CRL of {issuer} has no nextUpdate, so whether it is current cannot be told"))
    })?;
    let next_update = Timestamp::from_second(next_update.timestamp())
        .map_err(|_| bad(format!("nextUpdate {} is out of range", next_update.timestamp())))?;
    let issuer_raw = crl.issuer().as_raw().to_vec();
    let signing_ca = if let Some(anchor) = anchors.iter().find(|a| a.subject_raw == issuer_raw) {
        anchor
    } else if let Some((ca_path, ca)) = crl_issuer {
        if ca.subject_raw != issuer_raw {
            return Err(bad(format!(
                "it is issued by {issuer}, but the policy's crl_issuer {} is {}",
                ca_path.display(),
                ca.subject
            )));
        }
        if !ca.is_ca {
            return Err(bad(format!("its issuer {} ({}) is not a CA certificate", ca.subject, ca_path.display())));
        }
        let Some(parent) = anchors.iter().find(|a| a.subject_raw == ca.issuer_raw) else {
            return Err(bad(format!(
                "its issuer {} ({}) is issued by {}, which is not a trust anchor",
                ca.subject,
                ca_path.display(),
                ca.issuer
            )));
        };
        let (_, x) = x509_parser::certificate::X509Certificate::from_der(&ca.der)
            .map_err(|e| bad(format!("crl_issuer {}: {e}", ca.subject)))?;
        let (_, p) = x509_parser::certificate::X509Certificate::from_der(&parent.der)
            .map_err(|e| bad(format!("anchor {}: {e}", parent.subject)))?;
        x.verify_signature(Some(p.public_key())).map_err(|e| {
            bad(format!("its issuer {} does not verify with the key of the anchor {}: {e}", ca.subject, parent.subject))
        })?;
        ca
    } else {
        return Err(bad(format!(
            "it is issued by {issuer}, which is not a trust anchor: a CRL of an intermediate CA needs that CA's \
             certificate (issued by an anchor) named as crl_issuer in [trust]"
        )));
    };
    let alg = crl.signature_algorithm.algorithm.to_id_string();
    if SHA1_SIGNATURES.contains(&alg.as_str()) {
        return Err(bad(format!("signed with SHA-1 ({alg}), which is too weak and refused")));
    }
    let (_, x) = x509_parser::certificate::X509Certificate::from_der(&signing_ca.der)
        .map_err(|e| bad(format!("issuer {}: {e}", signing_ca.subject)))?;
    crl.verify_signature(x.public_key())
        .map_err(|e| bad(format!("its signature does not verify with the key of its issuer {issuer}: {e}")))?;
    Ok(CrlInfo { path: path.to_path_buf(), issuer_raw, issuer, next_update })
}

impl TrustStore {
    /// Reads every certificate of each PEM file as an anchor. `allowed_signers` empty means any signer the
    /// anchors vouch for; otherwise the signer's subject CN must be one of them. The CRL may be PEM or DER.
    pub fn from_pem_files(
        anchors: &[PathBuf],
        allowed_signers: &[String],
        crl: Option<&Path>,
    ) -> Result<Self, BundleError> {
        Self::from_trust_files(anchors, allowed_signers, crl, None)
    }

    /// As [`TrustStore::from_pem_files`], with the certificate (PEM) of the CA that issued the CRL when that is
    /// not one of the anchors (`[trust] crl_issuer`: an intermediate CA an anchor issued).
    pub fn from_trust_files(
        anchors: &[PathBuf],
        allowed_signers: &[String],
        crl: Option<&Path>,
        crl_issuer: Option<&Path>,
    ) -> Result<Self, BundleError> {
        let mut ders = Vec::new();
        for path in anchors {
            let bad = |reason: String| BundleError::TrustAnchor { path: path.clone(), reason };
            let iter = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
            let before = ders.len();
            for cert in iter {
                ders.push(cert.map_err(|e| bad(e.to_string()))?.to_vec());
                if ders.len() > 256 {
                    return Err(bad("more than 256 anchors".into()));
                }
            }
            if ders.len() == before {
                return Err(bad("no PEM certificate in the file".into()));
            }
        }
        let crl = match crl {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| BundleError::Io { path: path.to_path_buf(), source: e })?;
                let der = if bytes.starts_with(b"-----BEGIN") {
                    CertificateRevocationListDer::from_pem_slice(&bytes)
                        .map_err(|e| BundleError::Crl { path: path.to_path_buf(), reason: e.to_string() })?
                        .to_vec()
                } else {
                    bytes
                };
                let owned = OwnedCertRevocationList::from_der(&der)
                    .map_err(|e| BundleError::Crl { path: path.to_path_buf(), reason: format!("{e:?}") })?;
                Some((CertRevocationList::Owned(owned), der, path))
            }
            None => None,
        };
        let mut store = Self::from_der(&ders, allowed_signers, None, anchors.first().map(PathBuf::as_path))?;
        let issuer = match crl_issuer {
            Some(path) => {
                let bad = |reason: String| BundleError::Crl { path: path.to_path_buf(), reason };
                let mut certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(format!("crl_issuer: {e}")))?;
                let der = certs
                    .next()
                    .ok_or_else(|| bad("crl_issuer: no PEM certificate in the file".into()))?
                    .map_err(|e| bad(format!("crl_issuer: {e}")))?;
                Some((path, Cert::parse(&der)?))
            }
            None => None,
        };
        if let Some((crl, der, path)) = crl {
            let issuer = issuer.as_ref().map(|(p, c)| (*p, c));
            store.crl_info = Some(crl_info(path, &der, &store.anchor_certs, issuer)?);
            store.crl = Some(crl);
        }
        Ok(store)
    }

    /// From DER certificates already in memory (the daemon may keep them in its policy).
    pub fn from_der_anchors(anchors: &[Vec<u8>], allowed_signers: &[String]) -> Result<Self, BundleError> {
        Self::from_der(anchors, allowed_signers, None, None)
    }

    fn from_der(
        ders: &[Vec<u8>],
        allowed_signers: &[String],
        crl: Option<CertRevocationList<'static>>,
        origin: Option<&Path>,
    ) -> Result<Self, BundleError> {
        let mut anchors = Vec::new();
        let mut anchor_certs = Vec::new();
        for der in ders {
            let bad = |reason: String| BundleError::TrustAnchor {
                path: origin.map(Path::to_path_buf).unwrap_or_default(),
                reason,
            };
            let cert_der = CertificateDer::from(der.as_slice());
            let anchor = webpki::anchor_from_trusted_cert(&cert_der).map_err(|e| bad(format!("{e:?}")))?;
            anchors.push(anchor.to_owned());
            anchor_certs.push(Cert::parse(der)?);
        }
        if anchors.is_empty() {
            return Err(BundleError::TrustAnchor {
                path: origin.map(Path::to_path_buf).unwrap_or_default(),
                reason: "no trust anchor given".into(),
            });
        }
        Ok(TrustStore { anchors, anchor_certs, allowed_signers: allowed_signers.to_vec(), crl, crl_info: None })
    }

    /// Subjects of the anchors, for `inspect`.
    pub fn anchor_subjects(&self) -> Vec<String> {
        self.anchor_certs.iter().map(|c| c.subject.clone()).collect()
    }
}
