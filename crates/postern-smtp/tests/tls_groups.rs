//! TLS key exchange: with aws-lc-rs, Postern offers the hybrid
//! post-quantum group X25519MLKEM768 and a client that supports it gets it;
//! a client with classic groups only still connects (X25519). Cipher
//! suites: Postern's order decides, AES-128-GCM with SHA-256 first.

mod harness;

use harness::{connect, start, starttls};
use postern_core::Config;

#[tokio::test]
async fn a_post_quantum_client_gets_x25519mlkem768() {
    let server = start(Config::default()).await;
    let mut c = connect(server.submission).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    let tls = starttls(&server, c).await;
    let group = tls
        .stream
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .map(|g| g.name());
    assert_eq!(group, Some(rustls::NamedGroup::X25519MLKEM768));
}

/// The group Postern agrees on over STARTTLS with a client offering only
/// `groups`; the session then works.
async fn group_agreed_with(
    groups: Vec<&'static dyn rustls::crypto::SupportedKxGroup>,
) -> rustls::NamedGroup {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = groups;
    agreed_with(provider).await.0
}

/// The group and cipher suite Postern agrees on over STARTTLS with a
/// client using `provider`; the session then works.
async fn agreed_with(
    provider: rustls::crypto::CryptoProvider,
) -> (rustls::NamedGroup, rustls::CipherSuite) {
    use std::sync::Arc;
    let server = start(Config::default()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut c = connect(server.submission).await;
    c.reply().await;
    c.cmd("EHLO client.test").await;
    assert!(c.cmd("STARTTLS").await.starts_with("220"));
    let (stream, _) = c.into_inner();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            stream,
        )
        .await
        .unwrap();
    let group = tls
        .get_ref()
        .1
        .negotiated_key_exchange_group()
        .map(|g| g.name())
        .expect("a key exchange group");
    let suite = tls
        .get_ref()
        .1
        .negotiated_cipher_suite()
        .expect("a cipher suite")
        .suite();
    let mut c = harness::Client::new(tls);
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    (group, suite)
}

#[tokio::test]
async fn a_classic_client_still_connects_with_x25519() {
    use rustls::crypto::aws_lc_rs::kx_group;
    assert_eq!(
        group_agreed_with(vec![kx_group::X25519]).await,
        rustls::NamedGroup::X25519
    );
}

/// A client with neither the hybrid group nor X25519 gets a NIST curve
/// (RFC 8446 §4.2.7: P-256 and P-384).
#[tokio::test]
async fn a_client_with_nist_curves_only_still_connects() {
    use rustls::crypto::aws_lc_rs::kx_group;
    for (offered, agreed) in [
        (kx_group::SECP256R1, rustls::NamedGroup::secp256r1),
        (kx_group::SECP384R1, rustls::NamedGroup::secp384r1),
    ] {
        assert_eq!(group_agreed_with(vec![offered]).await, agreed);
    }
}

/// rustls (like OpenSSL) lists AES-256-GCM-SHA384 first; Postern picks
/// AES-128-GCM-SHA256 all the same, for TLS 1.3 and 1.2 alike.
#[tokio::test]
async fn aes_128_gcm_is_chosen_over_the_clients_first_choice() {
    use rustls::crypto::aws_lc_rs::{default_provider, DEFAULT_CIPHER_SUITES};
    assert_eq!(
        DEFAULT_CIPHER_SUITES[0].suite(),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
        "the client's own first choice"
    );
    let (_, suite) = agreed_with(default_provider()).await;
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);

    let mut tls12 = default_provider();
    tls12
        .cipher_suites
        .retain(|s| s.version() == &rustls::version::TLS12);
    let (_, suite) = agreed_with(tls12).await;
    // The harness's certificate is ECDSA (rcgen's default).
    assert_eq!(
        suite,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
    );
}

/// A client that offers only AES-256 (or ChaCha20) still gets it.
#[tokio::test]
async fn a_client_limited_to_another_suite_gets_it() {
    use rustls::crypto::aws_lc_rs::{cipher_suite, default_provider};
    for only in [
        cipher_suite::TLS13_AES_256_GCM_SHA384,
        cipher_suite::TLS13_CHACHA20_POLY1305_SHA256,
    ] {
        let mut provider = default_provider();
        provider.cipher_suites = vec![only];
        assert_eq!(agreed_with(provider).await.1, only.suite());
    }
}
