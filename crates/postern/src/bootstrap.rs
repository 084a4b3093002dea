//! First start and every start: the data directory, the TLS pair (generated
//! self-signed when none is configured), the store, and the one-time admin key.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use postern_accounts::ApiKeys;
use postern_core::Config;
use postern_store::audit_anchor::AuditAnchor;
use postern_store::{AuditStore, CredentialStore, EmbeddedStore};

pub const ADMIN_ACCOUNT: &str = "admin";

pub fn open_store(config: &Config) -> Result<Arc<EmbeddedStore>> {
    let dir = &config.server.data_dir;
    create_private_dir(dir)?;
    // Before the store opens: SQLite gives the -wal and -shm files the
    // mode of postern.db, so a database left 0644 by an older version
    // would spread that mode to the files it creates now.
    restrict_data_dir(dir)?;
    let key_file = config
        .audit
        .anchor_key_file
        .clone()
        .unwrap_or_else(|| dir.join("audit-anchor.key"));
    let anchor = AuditAnchor::open(&key_file, dir.join("audit.head"))
        .context("the audit anchor key (audit.anchor_key_file)")?;
    let store = EmbeddedStore::open_configured(dir, Some(anchor), config.store.synchronous)
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
    // The certificate is public, but the data directory holds only files
    // for this user: one rule, nothing to reason about per file.
    write_private(&cert, pair.cert.pem().as_bytes())?;
    tracing::warn!(cert = %cert.display(),
        "generated a self-signed certificate; configure [tls] cert/key for production");
    Ok((cert, key))
}

/// Files in the data directory are 0600 and directories 0700. An older
/// version (or a umask of 022) may have left group or other bits on what it
/// created: they are removed here, at every start of every command, with a
/// warning naming each path. Symbolic links are not followed (their target
/// may be anything, anywhere), and the owner's own bits are left alone.
pub fn restrict_data_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut pending = vec![dir.to_path_buf()];
        while let Some(path) = pending.pop() {
            let meta = std::fs::symlink_metadata(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let kind = meta.file_type();
            if kind.is_symlink() {
                continue;
            }
            let mode = meta.permissions().mode() & 0o7777;
            let wanted = if kind.is_dir() {
                mode & 0o700 | 0o700
            } else {
                mode & 0o700
            };
            if mode != wanted {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(wanted))
                    .with_context(|| format!("restricting {}", path.display()))?;
                let shown = postern_core::printable::Printable(&path.to_string_lossy()).to_string();
                let msg = format!(
                    "{shown} was mode {mode:04o}; set to {wanted:04o} (the data directory is for the postern user only)"
                );
                // The CLI has no log subscriber: tell its user on stderr.
                if tracing::dispatcher::has_been_set() {
                    tracing::warn!("{msg}");
                } else {
                    eprintln!("postern: warning: {msg}");
                }
            }
            if kind.is_dir() {
                for entry in std::fs::read_dir(&path)
                    .with_context(|| format!("listing {}", path.display()))?
                {
                    let entry = entry.with_context(|| format!("listing {}", path.display()))?;
                    pending.push(entry.path());
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
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
