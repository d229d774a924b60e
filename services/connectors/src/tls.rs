//! TLS on the MLLP listener (`connectors.mllp_tls_cert` and `connectors.mllp_tls_key`, PEM
//! files): rustls with the ring provider (already in the build for the Kubernetes client), TLS
//! 1.2 and 1.3, server authentication only.

use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The acceptor for the certificate chain at `cert` and the private key at `key`; the error
/// names the setting and what is wrong with it.
pub fn acceptor(cert: &str, key: &str) -> Result<TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("connectors.mllp_tls_cert: {cert}: {e}"))?;
    if chain.is_empty() {
        return Err(format!("connectors.mllp_tls_cert: {cert} holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("connectors.mllp_tls_key: {key}: {e}"))?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("connectors.mllp_tls_key: does not match the certificate: {e}"))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
