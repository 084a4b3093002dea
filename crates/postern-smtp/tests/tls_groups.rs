//! TLS key exchange: with aws-lc-rs, Postern offers the hybrid
//! post-quantum group X25519MLKEM768 and a client that supports it gets it;
//! a client with classic groups only still connects (X25519).

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
    use std::sync::Arc;
    let server = start(Config::default()).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server.cert.clone()).unwrap();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = groups;
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
    let mut c = harness::Client::new(tls);
    assert!(c.cmd("EHLO client.test").await.starts_with("250"));
    group
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
