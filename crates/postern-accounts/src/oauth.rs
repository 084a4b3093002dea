//! OAuth 2.0 bearer tokens for XOAUTH2 and OAUTHBEARER (RFC 7628): JWT
//! access tokens (RFC 7519) signed RS256 or ES256 by a configured issuer,
//! whose public keys come from a JWKS document (RFC 7517).
//!
//! Verified with ring directly rather than a JWT crate: the two algorithms
//! are a few lines each with ring (the project's one crypto provider), and
//! refusing everything else (`none`, HMAC, other curves) is then explicit.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use aws_lc_rs::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use postern_core::config::OAuthIssuerConfig;
use serde_json::Value;
use thiserror::Error;

/// Clock skew tolerated for `exp` and `nbf` (seconds).
const LEEWAY_SECONDS: i64 = 60;
/// Longer tokens are refused before any parsing.
const MAX_TOKEN_LEN: usize = 8192;

#[derive(Debug, Error, PartialEq, Eq, Clone, Copy)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("unsupported algorithm")]
    Algorithm,
    #[error("unknown signing key")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not yet valid")]
    NotYetValid,
    #[error("unknown issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("no account claim")]
    NoAccount,
}

#[derive(Debug, Error)]
pub enum JwksError {
    #[error("{path}: {reason}")]
    Load { path: String, reason: String },
}

impl TokenError {
    /// The reason recorded in the audit log.
    pub fn reason(self) -> &'static str {
        match self {
            TokenError::Malformed => "token_malformed",
            TokenError::Algorithm => "token_algorithm",
            TokenError::UnknownKey => "token_unknown_key",
            TokenError::Signature => "token_signature",
            TokenError::Expired => "token_expired",
            TokenError::NotYetValid => "token_not_yet_valid",
            TokenError::Issuer => "token_issuer",
            TokenError::Audience => "token_audience",
            TokenError::NoAccount => "token_no_account",
        }
    }
}

enum Key {
    Rsa {
        kid: Option<String>,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// Uncompressed P-256 point.
    Ec { kid: Option<String>, point: Vec<u8> },
}

impl Key {
    fn kid(&self) -> Option<&str> {
        match self {
            Key::Rsa { kid, .. } | Key::Ec { kid, .. } => kid.as_deref(),
        }
    }
}

struct Issuer {
    issuer: String,
    audience: String,
    account_claim: String,
    source: JwksSource,
    /// Replaced whole on refresh; readers never see a half-updated set.
    keys: RwLock<Arc<Vec<Key>>>,
}

enum JwksSource {
    File(PathBuf),
    Url {
        url: String,
        ca_file: Option<PathBuf>,
        refresh: Duration,
    },
}

pub struct OAuthVerifier {
    issuers: Vec<Issuer>,
}

/// The largest JWKS document accepted from a URL.
const MAX_JWKS_BYTES: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// GETs a JWKS over HTTPS (hyper + rustls with ring, like everything else).
async fn fetch_jwks(url: &str, ca_file: Option<&Path>) -> Result<Value, String> {
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::Client;
    use hyper_util::rt::TokioExecutor;
    use rustls_pki_types::pem::PemObject;

    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
            {
                roots
                    .add(cert.map_err(|e| format!("{}: {e}", path.display()))?)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .build();
    let client: Client<_, http_body_util::Empty<bytes::Bytes>> =
        Client::builder(TokioExecutor::new()).build(https);
    let uri: http::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let response = tokio::time::timeout(FETCH_TIMEOUT, client.get(uri))
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("{url}: HTTP {}", response.status()));
    }
    let body = tokio::time::timeout(FETCH_TIMEOUT, response.into_body().collect())
        .await
        .map_err(|_| format!("{url}: timed out"))?
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if body.len() > MAX_JWKS_BYTES {
        return Err(format!("{url}: JWKS larger than {MAX_JWKS_BYTES} bytes"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
}

async fn load_keys(source: &JwksSource) -> Result<Vec<Key>, String> {
    let doc: Value = match source {
        JwksSource::File(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?
        }
        JwksSource::Url { url, ca_file, .. } => fetch_jwks(url, ca_file.as_deref()).await?,
    };
    let keys = parse_jwks(&doc);
    if keys.is_empty() {
        return Err("no usable RS256 or ES256 (P-256) signing key".into());
    }
    Ok(keys)
}

fn b64(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

fn parse_jwks(doc: &Value) -> Vec<Key> {
    let mut keys = Vec::new();
    for k in doc["keys"].as_array().into_iter().flatten() {
        let kid = k["kid"].as_str().map(str::to_owned);
        match (k["kty"].as_str(), k["use"].as_str().unwrap_or("sig")) {
            (_, u) if u != "sig" => {}
            (Some("RSA"), _) => {
                if let (Some(n), Some(e)) =
                    (k["n"].as_str().and_then(b64), k["e"].as_str().and_then(b64))
                {
                    keys.push(Key::Rsa { kid, n, e });
                }
            }
            (Some("EC"), _) if k["crv"].as_str() == Some("P-256") => {
                if let (Some(x), Some(y)) =
                    (k["x"].as_str().and_then(b64), k["y"].as_str().and_then(b64))
                {
                    if x.len() == 32 && y.len() == 32 {
                        let mut point = vec![0x04];
                        point.extend_from_slice(&x);
                        point.extend_from_slice(&y);
                        keys.push(Key::Ec { kid, point });
                    }
                }
            }
            _ => {}
        }
    }
    keys
}

impl OAuthVerifier {
    /// Loads every issuer's keys (reading files, fetching URLs).
    pub async fn load(configs: &[OAuthIssuerConfig]) -> Result<Self, JwksError> {
        let mut issuers = Vec::new();
        for c in configs {
            let source = match (&c.jwks_file, &c.jwks_url) {
                (Some(path), _) => JwksSource::File(path.clone()),
                (None, Some(url)) => JwksSource::Url {
                    url: url.clone(),
                    ca_file: c.jwks_ca_file.clone(),
                    refresh: c.jwks_refresh,
                },
                (None, None) => {
                    return Err(JwksError::Load {
                        path: c.issuer.clone(),
                        reason: "no jwks_file or jwks_url".into(),
                    })
                }
            };
            let keys = load_keys(&source).await.map_err(|reason| JwksError::Load {
                path: c.issuer.clone(),
                reason,
            })?;
            issuers.push(Issuer {
                issuer: c.issuer.clone(),
                audience: c.audience.clone(),
                account_claim: c.account_claim.clone(),
                source,
                keys: RwLock::new(Arc::new(keys)),
            });
        }
        Ok(OAuthVerifier { issuers })
    }

    /// How often URL-based key sets should be fetched again, if any.
    pub fn refresh_interval(&self) -> Option<Duration> {
        self.issuers
            .iter()
            .filter_map(|i| match &i.source {
                JwksSource::Url { refresh, .. } => Some(*refresh),
                JwksSource::File(_) => None,
            })
            .min()
    }

    /// Fetches URL-based key sets again (key rotation at the issuer). A
    /// failed fetch keeps the keys we have and is logged.
    pub async fn refresh(&self) {
        for issuer in &self.issuers {
            if matches!(issuer.source, JwksSource::File(_)) {
                continue;
            }
            match load_keys(&issuer.source).await {
                Ok(keys) => {
                    if let Ok(mut k) = issuer.keys.write() {
                        *k = Arc::new(keys);
                    }
                }
                Err(e) => {
                    tracing::warn!(issuer = %issuer.issuer, error = %e, "JWKS refresh failed; keeping the previous keys")
                }
            }
        }
    }

    /// Verifies a token at `now` (Unix seconds) and returns the account name
    /// from the issuer's account claim.
    pub fn verify_at(&self, token: &str, now: i64) -> Result<String, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: Value = b64(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        let claims: Value = b64(p)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        let sig = b64(s).ok_or(TokenError::Malformed)?;
        let alg = header["alg"].as_str().ok_or(TokenError::Malformed)?;
        if alg != "RS256" && alg != "ES256" {
            return Err(TokenError::Algorithm);
        }
        let iss = claims["iss"].as_str().ok_or(TokenError::Issuer)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.issuer == iss)
            .ok_or(TokenError::Issuer)?;
        let kid = header["kid"].as_str();
        let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
        let mut tried = false;
        let mut verified = false;
        let keys = issuer.keys.read().map(|k| k.clone()).unwrap_or_default();
        for key in keys.iter().filter(|k| kid.is_none() || k.kid() == kid) {
            let ok = match (alg, key) {
                ("RS256", Key::Rsa { n, e, .. }) => {
                    tried = true;
                    RsaPublicKeyComponents { n, e }
                        .verify(&signature::RSA_PKCS1_2048_8192_SHA256, signed, &sig)
                        .is_ok()
                }
                ("ES256", Key::Ec { point, .. }) => {
                    tried = true;
                    UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(signed, &sig)
                        .is_ok()
                }
                _ => false,
            };
            if ok {
                verified = true;
                break;
            }
        }
        if !tried {
            return Err(TokenError::UnknownKey);
        }
        if !verified {
            return Err(TokenError::Signature);
        }
        // RFC 7519 §4.1.4: exp is required here; a token without one never expires.
        let exp = claims["exp"].as_i64().ok_or(TokenError::Expired)?;
        if exp + LEEWAY_SECONDS <= now {
            return Err(TokenError::Expired);
        }
        if claims["nbf"]
            .as_i64()
            .is_some_and(|nbf| nbf - LEEWAY_SECONDS > now)
        {
            return Err(TokenError::NotYetValid);
        }
        let aud_ok = match &claims["aud"] {
            Value::String(a) => *a == issuer.audience,
            Value::Array(list) => list.iter().any(|a| a.as_str() == Some(&issuer.audience)),
            _ => false,
        };
        if !aud_ok {
            return Err(TokenError::Audience);
        }
        claims[issuer.account_claim.as_str()]
            .as_str()
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .ok_or(TokenError::NoAccount)
    }

    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        self.verify_at(token, postern_core::time::now_millis() / 1000)
    }
}

/// The JSON error a server sends before failing an OAuth exchange
/// (RFC 7628 §3.2.2 for OAUTHBEARER; Google's form for XOAUTH2).
pub fn failure_json(xoauth2: bool) -> String {
    if xoauth2 {
        r#"{"status":"401","schemes":"bearer","scope":"mail.send"}"#.to_owned()
    } else {
        r#"{"status":"invalid_token","scope":"mail.send"}"#.to_owned()
    }
}

/// XOAUTH2: `user=<user>\x01auth=Bearer <token>\x01\x01`.
pub fn parse_xoauth2(payload: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(payload).ok()?;
    let mut user = None;
    let mut token = None;
    for field in text.split('\x01') {
        if let Some(u) = field.strip_prefix("user=") {
            user = Some(u.to_owned());
        } else if let Some(t) = field.strip_prefix("auth=Bearer ") {
            token = Some(t.trim().to_owned());
        }
    }
    Some((user?, token?))
}

/// OAUTHBEARER (RFC 7628 §3.1): `n,a=<authzid>,\x01auth=Bearer <token>\x01…\x01\x01`.
/// Returns the authzid (may be empty) and the token.
pub fn parse_oauthbearer(payload: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (gs2, rest) = text.split_once('\x01')?;
    // RFC 5801 gs2-header: "n," or "y,", then "a=authzid" or nothing, then ",".
    let mut gs2_parts = gs2.splitn(3, ',');
    let flag = gs2_parts.next()?;
    if flag != "n" && flag != "y" {
        return None; // channel binding ("p=") is not supported
    }
    let authzid = gs2_parts
        .next()
        .and_then(|a| a.strip_prefix("a="))
        .map(|a| a.replace("=2C", ",").replace("=3D", "="))
        .unwrap_or_default();
    let token = rest
        .split('\x01')
        .find_map(|kv| kv.strip_prefix("auth="))
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })?
        .trim()
        .to_owned();
    Some((authzid, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

    fn enc(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    }

    struct Idp {
        key: EcdsaKeyPair,
        _dir: tempfile::TempDir,
        verifier: OAuthVerifier,
    }

    async fn idp() -> Idp {
        let rng = SystemRandom::new();
        let pk8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pk8.as_ref()).unwrap();
        let public = key.public_key().as_ref();
        let jwks = serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": "k1", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&public[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&public[33..65]),
        }]});
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("jwks.json");
        std::fs::write(&path, jwks.to_string()).unwrap();
        let verifier = OAuthVerifier::load(&[OAuthIssuerConfig {
            issuer: "https://idp.test".into(),
            audience: "postern".into(),
            jwks_file: Some(path),
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh: Duration::from_secs(3600),
            account_claim: "email".into(),
        }])
        .await
        .unwrap();
        Idp {
            key,
            _dir: dir,
            verifier,
        }
    }

    fn token(idp: &Idp, header: Value, claims: Value) -> String {
        let signed = format!("{}.{}", enc(&header), enc(&claims));
        let sig = idp
            .key
            .sign(&SystemRandom::new(), signed.as_bytes())
            .unwrap();
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    #[tokio::test]
    async fn es256_tokens_are_checked_in_full() {
        let idp = idp().await;
        let h = serde_json::json!({"alg": "ES256", "kid": "k1", "typ": "JWT"});
        let now = 1_800_000_000;
        let good = serde_json::json!({"iss": "https://idp.test", "aud": ["other", "postern"], "exp": now + 600, "email": "acme"});
        let t = token(&idp, h.clone(), good.clone());
        assert_eq!(idp.verifier.verify_at(&t, now), Ok("acme".into()));

        let mut bad = good.clone();
        bad["exp"] = (now - 3600).into();
        assert_eq!(
            idp.verifier.verify_at(&token(&idp, h.clone(), bad), now),
            Err(TokenError::Expired)
        );
        let mut bad = good.clone();
        bad["aud"] = "someone-else".into();
        assert_eq!(
            idp.verifier.verify_at(&token(&idp, h.clone(), bad), now),
            Err(TokenError::Audience)
        );
        let mut bad = good.clone();
        bad["iss"] = "https://evil.test".into();
        assert_eq!(
            idp.verifier.verify_at(&token(&idp, h.clone(), bad), now),
            Err(TokenError::Issuer)
        );
        let mut bad = good.clone();
        bad.as_object_mut().unwrap().remove("email");
        assert_eq!(
            idp.verifier.verify_at(&token(&idp, h.clone(), bad), now),
            Err(TokenError::NoAccount)
        );

        // A changed claim breaks the signature.
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        let mut forged = good.clone();
        forged["email"] = "admin".into();
        parts[1] = enc(&forged);
        assert_eq!(
            idp.verifier.verify_at(&parts.join("."), now),
            Err(TokenError::Signature)
        );
        // alg=none and HMAC are refused outright.
        let none = format!(
            "{}.{}.",
            enc(&serde_json::json!({"alg": "none"})),
            enc(&good)
        );
        assert_eq!(
            idp.verifier.verify_at(&none, now),
            Err(TokenError::Algorithm)
        );
        let hs = token(
            &idp,
            serde_json::json!({"alg": "HS256", "kid": "k1"}),
            good.clone(),
        );
        assert_eq!(idp.verifier.verify_at(&hs, now), Err(TokenError::Algorithm));
        let other_kid = token(&idp, serde_json::json!({"alg": "ES256", "kid": "k9"}), good);
        assert_eq!(
            idp.verifier.verify_at(&other_kid, now),
            Err(TokenError::UnknownKey)
        );
        assert_eq!(
            idp.verifier.verify_at("garbage", now),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn sasl_payloads() {
        assert_eq!(
            parse_xoauth2(b"user=acme\x01auth=Bearer abc.def.ghi\x01\x01"),
            Some(("acme".into(), "abc.def.ghi".into()))
        );
        assert_eq!(parse_xoauth2(b"user=acme\x01\x01"), None);
        assert_eq!(
            parse_oauthbearer(b"n,a=acme,\x01host=mx\x01port=587\x01auth=Bearer tok\x01\x01"),
            Some(("acme".into(), "tok".into()))
        );
        assert_eq!(
            parse_oauthbearer(b"n,,\x01auth=Bearer tok\x01\x01"),
            Some(("".into(), "tok".into()))
        );
        assert_eq!(
            parse_oauthbearer(b"p=tls-unique,,\x01auth=Bearer tok\x01\x01"),
            None
        );
    }
}
