//! Anchoring the audit chain's head outside the database. The hash chain
//! shows an edited or removed entry, but deleting the newest entries (or
//! the whole table) leaves a shorter chain that is still valid. A copy of
//! the head kept elsewhere closes that gap: the chain must still contain
//! the entry the copy names, with the same hash.
//!
//! Two copies: the one the operator takes with `postern audit anchor` and
//! keeps off the machine, and one Postern keeps itself in `audit.head` next
//! to the database, rewritten after every group commit that appended audit
//! entries (one small file write per commit batch, not per entry, and no
//! fsync: a head lost to a crash is merely older, which still anchors
//! everything before it). The file carries an HMAC under a key that is not
//! in the database, so someone who can only change the database (SQL
//! access, a swapped-in copy) cannot make a shorter chain match it.

use std::io::Write;
use std::path::{Path, PathBuf};

use aws_lc_rs::hmac;
use aws_lc_rs::rand::SecureRandom;
use thiserror::Error;

/// Domain separation for the HMAC: these bytes never mean anything else.
const MAC_CONTEXT: &[u8] = b"postern audit head v1\0";
const HEAD_TAG: &str = "postern-audit-head-v1";
/// Shortest key accepted from a key file: 128 bits.
const MIN_KEY_BYTES: usize = 16;

#[derive(Debug, Error)]
pub enum AnchorError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an audit anchor key (hex, at least {MIN_KEY_BYTES} bytes)")]
    BadKey { path: PathBuf },
    #[error("{path}: not an audit head record")]
    Malformed { path: PathBuf },
    #[error("{path}: its HMAC does not match (the file was edited, or the anchor key changed)")]
    BadMac { path: PathBuf },
    #[error("cannot generate a key: no randomness")]
    Random,
    #[error("{0:?}: an anchor is SEQ:HASH (a number, then 64 hex digits)")]
    BadAnchor(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AnchorError + '_ {
    move |source| AnchorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One entry of the chain, named by its sequence number and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditHead {
    pub seq: i64,
    pub hash: Vec<u8>,
}

impl AuditHead {
    /// `SEQ:HASH`, the form `postern audit verify --anchor` takes.
    pub fn to_anchor(&self) -> String {
        format!("{}:{}", self.seq, to_hex(&self.hash))
    }

    pub fn parse_anchor(s: &str) -> Result<Self, AnchorError> {
        let bad = || AnchorError::BadAnchor(s.to_string());
        let (seq, hash) = s.trim().split_once(':').ok_or_else(bad)?;
        let seq: i64 = seq.parse().map_err(|_| bad())?;
        let hash = from_hex(hash).ok_or_else(bad)?;
        if seq < 1 || hash.len() != 32 {
            return Err(bad());
        }
        Ok(AuditHead { seq, hash })
    }
}

/// What the chain says about an anchored entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnchorCheck {
    /// The entry is there with the anchored hash.
    Present,
    /// The chain has no such entry: it ends before it (`chain_len`).
    Missing { chain_len: i64 },
    /// The entry is there with another hash: rewritten.
    Differs { found: Vec<u8> },
}

/// The HMAC key and where the automatic head is kept.
pub struct AuditAnchor {
    key: hmac::Key,
    head_path: PathBuf,
}

impl AuditAnchor {
    /// Reads the key from `key_file`, creating it (0600, 256 random bits,
    /// hex) if it does not exist; the head is kept in `head_path`.
    pub fn open(key_file: &Path, head_path: PathBuf) -> Result<Self, AnchorError> {
        let key = match std::fs::read_to_string(key_file) {
            Ok(text) => from_hex(text.trim())
                .filter(|k| k.len() >= MIN_KEY_BYTES)
                .ok_or_else(|| AnchorError::BadKey {
                    path: key_file.to_path_buf(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key(key_file)?,
            Err(e) => return Err(io(key_file)(e)),
        };
        Ok(AuditAnchor {
            key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            head_path,
        })
    }

    pub fn head_path(&self) -> &Path {
        &self.head_path
    }

    fn mac_input(head: &AuditHead) -> Vec<u8> {
        let mut m = MAC_CONTEXT.to_vec();
        m.extend_from_slice(&head.seq.to_be_bytes());
        m.extend_from_slice(&head.hash);
        m
    }

    /// The HMAC of a head under the anchor key, in hex.
    pub fn mac(&self, head: &AuditHead) -> String {
        to_hex(hmac::sign(&self.key, &Self::mac_input(head)).as_ref())
    }

    /// Records `head` as the latest: written to a temporary file and renamed
    /// over the old one, so a reader sees the old record or the new one.
    pub fn record(&self, head: &AuditHead) -> Result<(), AnchorError> {
        let line = format!(
            "{HEAD_TAG} {} {} {}\n",
            head.seq,
            to_hex(&head.hash),
            self.mac(head)
        );
        let tmp = self
            .head_path
            .with_extension(format!("tmp.{}", std::process::id()));
        write_private(&tmp, line.as_bytes(), false)?;
        std::fs::rename(&tmp, &self.head_path).map_err(io(&self.head_path))
    }

    /// The recorded head, its HMAC checked; None when none was recorded yet.
    pub fn recorded(&self) -> Result<Option<AuditHead>, AnchorError> {
        let path = &self.head_path;
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(path)(e)),
        };
        let malformed = || AnchorError::Malformed { path: path.clone() };
        let parts: Vec<&str> = text.split_ascii_whitespace().collect();
        let [tag, seq, hash, mac] = parts[..] else {
            return Err(malformed());
        };
        if tag != HEAD_TAG {
            return Err(malformed());
        }
        let head = AuditHead {
            seq: seq.parse().map_err(|_| malformed())?,
            hash: from_hex(hash).ok_or_else(malformed)?,
        };
        let mac = from_hex(mac).ok_or_else(malformed)?;
        hmac::verify(&self.key, &Self::mac_input(&head), &mac)
            .map_err(|_| AnchorError::BadMac { path: path.clone() })?;
        Ok(Some(head))
    }
}

/// Creates a new key file without ever replacing one: the key is written to
/// a private temporary file, then hard-linked into place (which fails if
/// another process got there first; its key is then used).
fn create_key(path: &Path) -> Result<Vec<u8>, AnchorError> {
    let mut key = vec![0u8; 32];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| AnchorError::Random)?;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    write_private(&tmp, format!("{}\n", to_hex(&key)).as_bytes(), true)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(key),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path).map_err(io(path))?;
            from_hex(text.trim())
                .filter(|k| k.len() >= MIN_KEY_BYTES)
                .ok_or_else(|| AnchorError::BadKey {
                    path: path.to_path_buf(),
                })
        }
        Err(e) => Err(io(path)(e)),
    }
}

/// Writes a file only its owner can read (0600 at creation, whatever the
/// umask). `durable` fsyncs it: the key must survive a crash, the head
/// need not (see the module comment).
fn write_private(path: &Path, bytes: &[u8], durable: bool) -> Result<(), AnchorError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    if durable {
        f.sync_all().map_err(io(path))?;
    }
    Ok(())
}

pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Who holds an anchor: the operator (`--anchor`), or Postern's own record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnchorSource {
    Operator,
    Recorded,
}

/// The outcome of verifying the chain and every anchor against it.
#[derive(Debug)]
pub enum AnchoredVerdict {
    /// The chain verifies and holds every anchor. `recorded` is Postern's
    /// own record (None: none kept yet, e.g. no entry since an upgrade).
    Intact {
        entries: u64,
        recorded: Option<AuditHead>,
    },
    /// The hash chain itself breaks: an entry was changed or removed.
    Broken { seq: i64 },
    /// The chain ends before an anchored entry: its tail was removed.
    Truncated {
        anchor: AuditHead,
        source: AnchorSource,
        chain_len: i64,
    },
    /// The anchored entry has another hash: the chain was rewritten.
    Rewritten {
        anchor: AuditHead,
        source: AnchorSource,
        found: Vec<u8>,
    },
    /// Postern's own record cannot be trusted (edited, wrong key, garbled).
    BadRecord(AnchorError),
}
