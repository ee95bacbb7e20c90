//! The site's trust policy for bundles: which CAs may vouch for a signer, which signers (by subject CN) may publish,
//! and which certificates are revoked.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, TrustAnchor};
use webpki::{CertRevocationList, OwnedCertRevocationList};

use super::x509::Cert;
use super::BundleError;

/// Trust anchors (DER certificates), allowed signer names and an optional CRL.
#[derive(Debug)]
pub struct TrustStore {
    pub(crate) anchors: Vec<TrustAnchor<'static>>,
    pub(crate) anchor_certs: Vec<Cert>,
    pub(crate) allowed_signers: Vec<String>,
    pub(crate) crl: Option<CertRevocationList<'static>>,
}

impl TrustStore {
    /// Reads every certificate of each PEM file as an anchor. `allowed_signers` empty means any signer the
    /// anchors vouch for; otherwise the signer's subject CN must be one of them. The CRL may be PEM or DER.
    pub fn from_pem_files(
        anchors: &[PathBuf],
        allowed_signers: &[String],
        crl: Option<&Path>,
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
                Some(CertRevocationList::Owned(owned))
            }
            None => None,
        };
        Self::from_der(&ders, allowed_signers, crl, anchors.first().map(PathBuf::as_path))
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
        Ok(TrustStore { anchors, anchor_certs, allowed_signers: allowed_signers.to_vec(), crl })
    }

    /// Subjects of the anchors, for `inspect`.
    pub fn anchor_subjects(&self) -> Vec<String> {
        self.anchor_certs.iter().map(|c| c.subject.clone()).collect()
    }
}
