//! Server TLS: one shared rustls configuration per certificate, TLS 1.2 and
//! 1.3 only, with session resumption (tickets and a session cache) so that
//! clients reconnecting for every message skip the full handshake.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    Pem { path: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Sessions remembered for resumption by session id (TLS 1.2 clients).
const SESSION_CACHE_SIZE: usize = 4096;

pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let pem_err = |path: &Path, e: &dyn std::fmt::Display| TlsError::Pem {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| pem_err(cert, &e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_err(cert, &e))?;
    if certs.is_empty() {
        return Err(pem_err(cert, &"no certificate found"));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, &e))?;
    server_config_from_der(certs, key)
}

pub fn server_config_from_der(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = preferred_suites(provider.cipher_suites);
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    // Our order, not the client's: most clients (OpenSSL's and rustls'
    // defaults) list AES-256-GCM-SHA384 first.
    config.ignore_client_order = true;
    config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE);
    config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new()?;
    Ok(Arc::new(config))
}

/// The provider's suites, AES-128-GCM first within each protocol version
/// and otherwise in the provider's order. AES-128 gives the 128-bit
/// strength that the key exchange (X25519, P-256) gives anyway; its TLS 1.3
/// suite derives keys with SHA-256, which CPUs run in hardware (the SHA
/// extensions) where SHA-384 is software: the SHA-384 key schedule was a
/// tenth of Postern's CPU when every message came on a new connection. A
/// client that offers only AES-256 or ChaCha20 still gets it.
fn preferred_suites(
    mut suites: Vec<rustls::SupportedCipherSuite>,
) -> Vec<rustls::SupportedCipherSuite> {
    use rustls::CipherSuite as S;
    let aes_128 = |s: &rustls::SupportedCipherSuite| {
        matches!(
            s.suite(),
            S::TLS13_AES_128_GCM_SHA256
                | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        )
    };
    // Stable: the provider's order stays within each group, and TLS 1.3
    // suites stay before TLS 1.2 ones.
    suites.sort_by_key(|s| (s.version() == &rustls::version::TLS12, !aes_128(s)));
    suites
}

/// "TLSv1.3 TLS13_AES_256_GCM_SHA384", for logs and `Received:` headers.
pub fn describe(conn: &rustls::ServerConnection) -> String {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
        _ => "TLS",
    };
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| format!("{:?}", s.suite()))
        .unwrap_or_default();
    format!("{version} {suite}")
}

/// The key exchange group a handshake agreed on ("X25519MLKEM768", the
/// hybrid post-quantum group aws-lc-rs prefers; "X25519"; …), for logs and
/// the per-group counter. "none" for a resumed TLS 1.2 session.
pub fn key_exchange_group(conn: &rustls::CommonState) -> String {
    conn.negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
        .unwrap_or_else(|| "none".into())
}
