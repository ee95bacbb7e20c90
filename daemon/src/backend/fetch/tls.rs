//! TLS for the patch channel: the server is verified against the policy's CA only (never the system store),
//! and the gateway presents the policy's client certificate (mutual TLS). rustls with the ring provider.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::backend::BackendError;

fn read_certs(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, BackendError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| BackendError::new(format!("{what} {}: {e}", path.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| BackendError::new(format!("{what} {}: not PEM certificates: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(BackendError::new(format!("{what} {}: no certificate in the file", path.display())));
    }
    Ok(certs)
}

/// The client configuration: roots = the CA file, client auth = cert chain + key.
pub fn client_config(ca: &Path, client_cert: &Path, client_key: &Path) -> Result<Arc<ClientConfig>, BackendError> {
    let mut roots = RootCertStore::empty();
    for c in read_certs(ca, "server CA")? {
        roots.add(c).map_err(|e| BackendError::new(format!("server CA {}: unusable: {e}", ca.display())))?;
    }
    let chain = read_certs(client_cert, "client certificate")?;
    // The key's contents never reach a message: only its path.
    let key = PrivateKeyDer::from_pem_file(client_key)
        .map_err(|e| BackendError::new(format!("client key {}: not a PEM private key ({e})", client_key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BackendError::new(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| {
            BackendError::new(format!(
                "client certificate {} and key {} do not go together: {e}",
                client_cert.display(),
                client_key.display()
            ))
        })?;
    Ok(Arc::new(config))
}
