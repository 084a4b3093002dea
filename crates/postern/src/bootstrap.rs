//! First start and every start: the data directory, the TLS pair (generated
//! self-signed when none is configured), the store, and the one-time admin key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use postern_accounts::ApiKeys;
use postern_core::Config;
use postern_store::{AuditStore, CredentialStore, EmbeddedStore};

pub const ADMIN_ACCOUNT: &str = "admin";

pub fn open_store(config: &Config) -> Result<Arc<EmbeddedStore>> {
    let dir = &config.server.data_dir;
    create_private_dir(dir)?;
    let store = EmbeddedStore::open(dir)
        .with_context(|| format!("opening the store in {}", dir.display()))?;
    Ok(Arc::new(store))
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    Ok(())
}

/// The default certificate pair: configured paths, or a self-signed pair
/// under `<data_dir>/tls/`, generated once.
pub fn default_tls_pair(config: &Config) -> Result<(PathBuf, PathBuf)> {
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        return Ok((cert.clone(), key.clone()));
    }
    let dir = config.server.data_dir.join("tls");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    if cert.exists() && key.exists() {
        return Ok((cert, key));
    }
    create_private_dir(&dir)?;
    // The embedded default listens on loopback, so loopback names and
    // addresses are in the certificate too.
    let mut names = vec![config.server.hostname.clone()];
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if config.server.hostname != extra {
            names.push(extra.into());
        }
    }
    let pair = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    write_private(&key, pair.signing_key.serialize_pem().as_bytes())?;
    std::fs::write(&cert, pair.cert.pem())
        .with_context(|| format!("writing {}", cert.display()))?;
    tracing::warn!(cert = %cert.display(),
        "generated a self-signed certificate; configure [tls] cert/key for production");
    Ok((cert, key))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// On the very first start (no key exists at all) creates a full-access key
/// for the admin account and returns its secret, to be printed once.
pub async fn first_admin_key(store: &EmbeddedStore, keys: &ApiKeys) -> Result<Option<String>> {
    if !store.list_api_keys(None).await?.is_empty() {
        return Ok(None);
    }
    let issued = keys
        .create(store, ADMIN_ACCOUNT, "first-start admin key", vec![], None)
        .await?;
    store
        .append_audit(postern_store::AuditEntry {
            at: postern_core::time::now_millis(),
            kind: "key.create".into(),
            actor: "first-start".into(),
            account: Some(ADMIN_ACCOUNT.into()),
            client_ip: None,
            detail: format!(
                "id={} name=first-start admin key scopes=full_access",
                issued.record.id
            ),
        })
        .await?;
    Ok(Some(issued.secret))
}
