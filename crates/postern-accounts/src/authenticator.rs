//! Turns presented credentials into a `Principal`, or a rejection that the
//! caller reports without saying which part was wrong. Every outcome is
//! counted, audited, and fed to the brute-force defence.

use postern_core::printable::{has_control, Printable};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use postern_core::config::AuthConfig;
use postern_core::principal::SCOPE_MAIL_SEND;
use postern_core::Principal;
use postern_store::{AccountRecord, AuditEntry, AuthStore, StoreError};
use thiserror::Error;

use crate::api_key::ApiKeys;
use crate::defense::{Defense, Verdict};
use crate::login_cache::{LoginCache, Lookups};
use crate::oauth::OAuthVerifier;
use crate::password::{HashError, PasswordHasher};
use crate::sasl::Credentials;

/// SendGrid's convention: the user name is the literal `apikey` and the
/// password is the key.
pub const API_KEY_USERNAME: &str = "apikey";
/// The `key_id` of a principal that logged in with a password.
pub const PASSWORD_KEY_ID: &str = "password";
/// The `key_id` of a principal that logged in with an OAuth token.
pub const OAUTH_KEY_ID: &str = "oauth";

/// One login attempt, whatever the door.
pub struct LoginAttempt<'a> {
    pub creds: &'a Credentials,
    pub ip: IpAddr,
    /// `PLAIN`, `LOGIN`, … for the audit log.
    pub mechanism: &'static str,
    /// What `creds.secret` is.
    pub proof: Proof<'a>,
}

/// What kind of secret a login presents.
#[derive(Debug, Clone, Copy)]
pub enum Proof<'a> {
    /// An API key (user `apikey`) or a password.
    Secret,
    /// CRAM-MD5: `creds.secret` is the client's hex digest of this challenge.
    CramMd5 { challenge: &'a str },
    /// XOAUTH2 / OAUTHBEARER: `creds.secret` is a JWT access token and
    /// `creds.username` the user it claims to be (may be empty).
    BearerToken,
}

#[derive(Debug, Error)]
pub enum Rejection {
    /// Wrong, unknown, revoked, expired, disabled, not from an allowed
    /// network, or password auth switched off: deliberately one variant so
    /// no caller can leak which. The reason is for logs and the audit only.
    /// `delay` is the slow-down the defence asks for before answering.
    #[error("invalid credentials ({reason})")]
    Invalid {
        reason: &'static str,
        delay: Duration,
    },
    /// The source (or network) is blocked for now; disconnect it.
    #[error("blocked ({reason})")]
    Blocked { reason: &'static str },
    /// Try again later (store or hashing pool unavailable).
    #[error("temporary failure: {0}")]
    Temporary(String),
}

/// Why an `On-Behalf-Of` was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnBehalfRefusal {
    /// Not a subuser of the caller, disabled, or not from an allowed
    /// address (the reason, as in the audit log).
    NotPermitted(&'static str),
    /// The store could not answer.
    Temporary(String),
}

enum CheckFailure {
    Invalid(&'static str),
    Temporary(String),
}

impl From<StoreError> for CheckFailure {
    fn from(e: StoreError) -> Self {
        CheckFailure::Temporary(e.to_string())
    }
}

#[derive(Clone)]
pub struct Authenticator {
    store: Arc<dyn AuthStore>,
    keys: ApiKeys,
    hasher: PasswordHasher,
    defense: Arc<Defense>,
    oauth: Option<Arc<OAuthVerifier>>,
    lookups: Arc<LoginCache>,
}

impl Authenticator {
    pub async fn new(store: Arc<dyn AuthStore>, config: &AuthConfig) -> Result<Self, StoreError> {
        let keys = ApiKeys::new(store.as_ref()).await?;
        let hasher = PasswordHasher::new(config.password_hash_parallelism)
            .map_err(|e| StoreError::Backend(e.to_string()))?;
        Ok(Authenticator {
            store,
            keys,
            hasher,
            defense: Arc::new(Defense::new(config.clone())),
            oauth: None,
            lookups: Arc::new(LoginCache::default()),
        })
    }

    /// The OAuth verifier, for refreshing its key sets.
    pub fn oauth(&self) -> Option<Arc<OAuthVerifier>> {
        self.oauth.clone()
    }

    /// Accepts JWT access tokens from these issuers (XOAUTH2, OAUTHBEARER).
    pub fn with_oauth(mut self, verifier: OAuthVerifier) -> Self {
        self.oauth = Some(Arc::new(verifier));
        self
    }

    pub fn api_keys(&self) -> &ApiKeys {
        &self.keys
    }

    pub fn password_hasher(&self) -> &PasswordHasher {
        &self.hasher
    }

    pub async fn authenticate(&self, attempt: &LoginAttempt<'_>) -> Result<Principal, Rejection> {
        let user = attempt.creds.username.as_str();
        if let Verdict::Blocked(reason) = self.defense.check(attempt.ip, user) {
            metrics::counter!("postern_auth_attempts_total", "outcome" => "blocked").increment(1);
            self.audit(
                attempt,
                "auth.blocked",
                None,
                format!("mechanism={} reason={reason}", attempt.mechanism),
            );
            return Err(Rejection::Blocked { reason });
        }
        match self.check(attempt).await {
            Ok(p) => {
                metrics::counter!("postern_auth_attempts_total", "outcome" => "success")
                    .increment(1);
                self.audit(
                    attempt,
                    "auth.success",
                    Some(p.account.clone()),
                    format!("mechanism={} key={}", attempt.mechanism, p.key_id),
                );
                Ok(p)
            }
            Err(CheckFailure::Invalid(reason)) => {
                metrics::counter!("postern_auth_attempts_total", "outcome" => reason).increment(1);
                let outcome = self.defense.record_failure(attempt.ip, user);
                for d in &outcome.detections {
                    metrics::counter!("postern_auth_detections_total", "kind" => d.kind())
                        .increment(1);
                    tracing::warn!(ip = %attempt.ip, user = %Printable(user), detection = ?d, "brute-force defence");
                    self.audit(attempt, d.kind(), None, format!("{d:?}"));
                }
                self.audit(
                    attempt,
                    "auth.failure",
                    None,
                    format!("mechanism={} reason={reason}", attempt.mechanism),
                );
                Err(Rejection::Invalid {
                    reason,
                    delay: outcome.delay,
                })
            }
            Err(CheckFailure::Temporary(e)) => {
                metrics::counter!("postern_auth_attempts_total", "outcome" => "temporary")
                    .increment(1);
                tracing::error!(error = %e, "authentication unavailable");
                Err(Rejection::Temporary(e))
            }
        }
    }

    /// Appends to the audit log without making the login wait for the
    /// commit; a crash in between can lose the entry, never the login's effect.
    fn audit(
        &self,
        attempt: &LoginAttempt<'_>,
        kind: &str,
        account: Option<String>,
        detail: String,
    ) {
        let entry = AuditEntry {
            at: postern_core::time::now_millis(),
            kind: kind.to_owned(),
            // The attempted user name is the peer's text, bounded like the
            // SASL field itself; readers escape it when they show it.
            actor: attempt.creds.username.chars().take(255).collect(),
            account,
            client_ip: Some(attempt.ip.to_string()),
            detail,
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            if let Err(e) = store.append_audit(entry).await {
                tracing::error!(error = %e, "audit append failed");
            }
        });
    }

    async fn check(&self, attempt: &LoginAttempt<'_>) -> Result<Principal, CheckFailure> {
        let creds = attempt.creds;
        // RFC 4013 §2.3 (SASLprep, which RFC 4616 applies to authcid and
        // authzid): control characters are prohibited. No account or key
        // name has them, so such a name is refused before any lookup.
        if has_control(&creds.username) || has_control(&creds.authzid) {
            return Err(CheckFailure::Invalid("malformed_username"));
        }
        let l = self.lookups.begin(self.store.as_ref()).await?;
        match attempt.proof {
            Proof::CramMd5 { challenge } => {
                return self.check_cram_md5(&l, attempt, challenge).await
            }
            Proof::BearerToken => return self.check_bearer(&l, attempt).await,
            Proof::Secret => {}
        }
        if creds.username == API_KEY_USERNAME {
            return self.check_api_key(&l, attempt).await;
        }
        // Password (basic) auth. The hash is verified whether or not the
        // account exists or allows passwords (against a dummy hash if not),
        // so the time taken says nothing about the account.
        let account = l.account(&creds.username).await?;
        let phc = account
            .as_ref()
            .filter(|a| a.allow_password_auth)
            .and_then(|a| a.password_hash.clone());
        let phc_checked = phc.clone();
        let verified = match self.hasher.verify(phc, creds.secret.clone()).await {
            Ok(v) => v,
            Err(HashError::Busy) => {
                return Err(CheckFailure::Temporary("password hashing busy".into()))
            }
            Err(e) => return Err(CheckFailure::Temporary(e.to_string())),
        };
        let Some(account) = account else {
            return Err(CheckFailure::Invalid("unknown_account"));
        };
        if !account.allow_password_auth {
            return Err(CheckFailure::Invalid("password_auth_disabled"));
        }
        if !verified {
            return Err(CheckFailure::Invalid("wrong_password"));
        }
        // Hashing can take seconds (it may wait for the pool): what the
        // account may do is read again as of now, so a change committed
        // meanwhile (disabled, a new IP rule, a new password) counts.
        let l = self.lookups.begin(self.store.as_ref()).await?;
        let Some(account) = l
            .account(&creds.username)
            .await?
            .filter(|a| a.allow_password_auth && a.password_hash == phc_checked)
        else {
            return Err(CheckFailure::Invalid("account_changed"));
        };
        self.check_account(&l, &account, attempt.ip).await?;
        let (acting_as, account_id) = self
            .acting_for(&l, &account, &creds.authzid, &creds.username, attempt.ip)
            .await?;
        Ok(Principal {
            account: acting_as,
            account_id,
            key_id: PASSWORD_KEY_ID.to_owned(),
            scopes: vec![SCOPE_MAIL_SEND.to_owned()],
        })
    }

    /// CRAM-MD5 works only for accounts that allow password auth and opted
    /// in (they then have a stored HMAC state). Unknown accounts are checked
    /// against a dummy state so the work done is the same.
    async fn check_cram_md5(
        &self,
        l: &Lookups<'_>,
        attempt: &LoginAttempt<'_>,
        challenge: &str,
    ) -> Result<Principal, CheckFailure> {
        let creds = attempt.creds;
        let account = l.account(&creds.username).await?;
        let state = account
            .as_ref()
            .filter(|a| a.allow_password_auth)
            .and_then(|a| a.cram_md5.clone());
        let dummy = [0u8; 32];
        let verified = crate::cram_md5::verify(
            state.as_deref().unwrap_or(&dummy),
            challenge.as_bytes(),
            &creds.secret,
        );
        let Some(account) = account else {
            return Err(CheckFailure::Invalid("unknown_account"));
        };
        if !account.allow_password_auth {
            return Err(CheckFailure::Invalid("password_auth_disabled"));
        }
        if state.is_none() {
            return Err(CheckFailure::Invalid("cram_md5_not_enabled"));
        }
        if !verified {
            return Err(CheckFailure::Invalid("wrong_password"));
        }
        self.check_account(l, &account, attempt.ip).await?;
        Ok(Principal {
            account_id: account.id,
            account: account.name,
            key_id: PASSWORD_KEY_ID.to_owned(),
            scopes: vec![SCOPE_MAIL_SEND.to_owned()],
        })
    }

    /// OAuth: a JWT from a configured issuer names the account.
    async fn check_bearer(
        &self,
        l: &Lookups<'_>,
        attempt: &LoginAttempt<'_>,
    ) -> Result<Principal, CheckFailure> {
        let Some(verifier) = &self.oauth else {
            return Err(CheckFailure::Invalid("oauth_not_configured"));
        };
        let account_name = verifier
            .verify(&attempt.creds.secret)
            .map_err(|e| CheckFailure::Invalid(e.reason()))?;
        let claimed = &attempt.creds.username;
        if !claimed.is_empty() && *claimed != account_name {
            return Err(CheckFailure::Invalid("token_user_mismatch"));
        }
        let Some(account) = l.account(&account_name).await? else {
            return Err(CheckFailure::Invalid("unknown_account"));
        };
        self.check_account(l, &account, attempt.ip).await?;
        Ok(Principal {
            account_id: account.id,
            account: account.name,
            key_id: OAUTH_KEY_ID.to_owned(),
            scopes: vec![SCOPE_MAIL_SEND.to_owned()],
        })
    }

    async fn check_api_key(
        &self,
        l: &Lookups<'_>,
        attempt: &LoginAttempt<'_>,
    ) -> Result<Principal, CheckFailure> {
        let creds = attempt.creds;
        let hash = self.keys.hash(&creds.secret);
        let Some(record) = l.api_key(hash).await? else {
            return Err(CheckFailure::Invalid("unknown_key"));
        };
        if record.revoked_at.is_some() {
            return Err(CheckFailure::Invalid("revoked"));
        }
        if record
            .expires_at
            .is_some_and(|t| t <= postern_core::time::now_millis())
        {
            return Err(CheckFailure::Invalid("expired"));
        }
        let Some(account) = l.account(&record.account).await? else {
            return Err(CheckFailure::Invalid("unknown_account"));
        };
        self.check_account(l, &account, attempt.ip).await?;
        if !record.networks.is_empty()
            && !record
                .networks
                .iter()
                .filter_map(|n| postern_core::network::parse_network(n))
                .any(|n| n.contains(&attempt.ip))
        {
            return Err(CheckFailure::Invalid("key_ip_not_allowed"));
        }
        let (acting_as, account_id) = self
            .acting_for(l, &account, &creds.authzid, &creds.username, attempt.ip)
            .await?;
        self.touch(&record);
        Ok(Principal {
            account: acting_as,
            account_id,
            key_id: record.id,
            scopes: record.scopes,
        })
    }

    /// RFC 4616 §2: an authorization identity other than the authenticated
    /// one is honoured only when the principal may act for it: a parent
    /// account acting for one of its own subusers (as SendGrid's
    /// On-Behalf-Of). Anything else is refused.
    async fn acting_for(
        &self,
        l: &Lookups<'_>,
        account: &AccountRecord,
        authzid: &str,
        username: &str,
        ip: IpAddr,
    ) -> Result<(String, i64), CheckFailure> {
        if authzid.is_empty() || authzid == username || authzid == account.name {
            return Ok((account.name.clone(), account.id));
        }
        match l.account(authzid).await? {
            Some(sub) if sub.parent.as_deref() == Some(account.name.as_str()) => {
                self.check_account(l, &sub, ip).await?;
                Ok((sub.name, sub.id))
            }
            _ => Err(CheckFailure::Invalid("authzid_not_permitted")),
        }
    }

    /// SendGrid's `On-Behalf-Of` over HTTP: the same rule as an SMTP
    /// authzid (`acting_for`): `account` may act only for one of its own
    /// subusers, which must be enabled (and its parent too) and allow the
    /// client's address. Returns the subuser's name, or why not.
    /// `manage_allowlist`: the call edits the subuser's IP allowlist itself,
    /// which its parent must be able to do from anywhere its own key is
    /// allowed (or one mistaken rule would lock the parent out for good);
    /// the subuser must still be enabled.
    pub async fn on_behalf_of(
        &self,
        account: &str,
        subuser: &str,
        ip: IpAddr,
        manage_allowlist: bool,
    ) -> Result<(String, i64), OnBehalfRefusal> {
        let l = self
            .lookups
            .begin(self.store.as_ref())
            .await
            .map_err(|e| OnBehalfRefusal::Temporary(e.to_string()))?;
        let parent = match l.account(account).await {
            Ok(Some(a)) => a,
            Ok(None) => return Err(OnBehalfRefusal::NotPermitted("authzid_not_permitted")),
            Err(e) => return Err(OnBehalfRefusal::Temporary(e.to_string())),
        };
        if subuser == parent.name {
            return Err(OnBehalfRefusal::NotPermitted("authzid_not_permitted"));
        }
        if manage_allowlist {
            return match l.account(subuser).await {
                Ok(Some(sub)) if sub.parent.as_deref() == Some(parent.name.as_str()) => {
                    if sub.disabled || parent.disabled {
                        Err(OnBehalfRefusal::NotPermitted("account_disabled"))
                    } else {
                        Ok((sub.name, sub.id))
                    }
                }
                Ok(_) => Err(OnBehalfRefusal::NotPermitted("authzid_not_permitted")),
                Err(e) => Err(OnBehalfRefusal::Temporary(e.to_string())),
            };
        }
        match self.acting_for(&l, &parent, subuser, "", ip).await {
            Ok(acting) => Ok(acting),
            Err(CheckFailure::Invalid(reason)) => Err(OnBehalfRefusal::NotPermitted(reason)),
            Err(CheckFailure::Temporary(e)) => Err(OnBehalfRefusal::Temporary(e)),
        }
    }

    /// Records when a key was last used, at most once a minute per key so a
    /// busy key does not cost a write per login.
    fn touch(&self, record: &postern_store::ApiKeyRecord) {
        const EVERY_MILLIS: i64 = 60_000;
        let now = postern_core::time::now_millis();
        if record.last_used_at.is_some_and(|t| now - t < EVERY_MILLIS) {
            return;
        }
        let (store, id) = (self.store.clone(), record.id.clone());
        tokio::spawn(async move {
            if let Err(e) = store.touch_api_key(id, now).await {
                tracing::warn!(error = %e, "could not record key use");
            }
        });
    }

    /// The account (and its parent, for a subuser) must be enabled, and the
    /// client must be inside their IP allowlists where they have one.
    async fn check_account(
        &self,
        l: &Lookups<'_>,
        account: &AccountRecord,
        ip: IpAddr,
    ) -> Result<(), CheckFailure> {
        if account.disabled {
            return Err(CheckFailure::Invalid("account_disabled"));
        }
        let mut chain = vec![account.name.clone()];
        if let Some(parent_name) = &account.parent {
            match l.account(parent_name).await? {
                Some(parent) if !parent.disabled => chain.push(parent.name),
                _ => return Err(CheckFailure::Invalid("account_disabled")),
            }
        }
        for name in chain {
            let rules = l.ip_rules(&name).await?;
            if !rules.is_empty()
                && !rules
                    .iter()
                    .filter_map(|r| postern_core::network::parse_network(&r.cidr))
                    .any(|n| n.contains(&ip))
            {
                return Err(CheckFailure::Invalid("ip_not_allowed"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_store::{
        AccountStore, AccountUpdate, AuditFilter, AuditStore, CredentialStore, EmbeddedStore,
    };

    fn creds(user: &str, secret: &str) -> Credentials {
        Credentials {
            authzid: String::new(),
            username: user.into(),
            secret: secret.into(),
        }
    }

    async fn login(
        auth: &Authenticator,
        c: &Credentials,
        ip: &str,
    ) -> Result<Principal, Rejection> {
        auth.authenticate(&LoginAttempt {
            creds: c,
            ip: ip.parse().unwrap(),
            mechanism: "PLAIN",
            proof: Proof::Secret,
        })
        .await
    }

    async fn setup() -> (tempfile::TempDir, Arc<EmbeddedStore>, Authenticator) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let auth = Authenticator::new(store.clone(), &AuthConfig::default())
            .await
            .unwrap();
        (dir, store, auth)
    }

    async fn set_disabled(store: &EmbeddedStore, name: String, disabled: bool) {
        let update = AccountUpdate {
            disabled: Some(disabled),
            ..Default::default()
        };
        store.update_account(name, update).await.unwrap();
    }

    fn is_invalid(r: &Result<Principal, Rejection>, why: &str) -> bool {
        matches!(r, Err(Rejection::Invalid { reason, .. }) if *reason == why)
    }

    #[tokio::test]
    async fn keys_authenticate_until_revoked_expired_or_disabled() {
        let (_d, store, auth) = setup().await;
        let issued = auth
            .api_keys()
            .create(store.as_ref(), "admin", "k", vec!["mail.send".into()], None)
            .await
            .unwrap();
        let p = login(&auth, &creds("apikey", &issued.secret), "127.0.0.1")
            .await
            .unwrap();
        assert_eq!(p.account, "admin");
        assert!(p.has_scope("mail.send"));

        assert!(login(&auth, &creds("apikey", "pst_wrong"), "127.0.0.1")
            .await
            .is_err());
        let mut other = creds("apikey", &issued.secret);
        other.authzid = "someone-else".into();
        assert!(is_invalid(
            &login(&auth, &other, "127.0.0.1").await,
            "authzid_not_permitted"
        ));

        set_disabled(&store, "admin".into(), true).await;
        assert!(is_invalid(
            &login(&auth, &creds("apikey", &issued.secret), "127.0.0.1").await,
            "account_disabled"
        ));
        set_disabled(&store, "admin".into(), false).await;

        store
            .revoke_api_key(issued.record.id.clone(), 1)
            .await
            .unwrap();
        assert!(is_invalid(
            &login(&auth, &creds("apikey", &issued.secret), "127.0.0.1").await,
            "revoked"
        ));

        let expired = auth
            .api_keys()
            .create(store.as_ref(), "admin", "old", vec![], Some(1))
            .await
            .unwrap();
        assert!(is_invalid(
            &login(&auth, &creds("apikey", &expired.secret), "127.0.0.1").await,
            "expired"
        ));
    }

    /// Logins are answered from memory while the store's auth version
    /// stands, and a change made by another process (the CLI) counts at the
    /// very next login.
    #[tokio::test]
    async fn logins_are_cached_until_anything_they_read_changes() {
        let (d, store, auth) = setup().await;
        let issued = auth
            .api_keys()
            .create(store.as_ref(), "admin", "k", vec!["mail.send".into()], None)
            .await
            .unwrap();
        let key = || creds("apikey", &issued.secret);
        assert!(login(&auth, &key(), "127.0.0.1").await.is_ok());
        let version = store.auth_version().await.unwrap();

        // That the cache answers: the key revoked in the file with the
        // version wound back by hand to the one the cache holds (no real
        // change can do that), and the stale record still logs in...
        let db = rusqlite::Connection::open(d.path().join("postern.db")).unwrap();
        db.execute_batch(&format!(
            "UPDATE api_keys SET revoked_at = 5; UPDATE auth_config_version SET version = {version}"
        ))
        .unwrap();
        assert!(login(&auth, &key(), "127.0.0.1").await.is_ok());
        // ...until the version moves.
        db.execute_batch("UPDATE auth_config_version SET version = version + 1")
            .unwrap();
        assert!(is_invalid(
            &login(&auth, &key(), "127.0.0.1").await,
            "revoked"
        ));
        db.execute_batch("UPDATE api_keys SET revoked_at = NULL")
            .unwrap();
        assert!(login(&auth, &key(), "127.0.0.1").await.is_ok());

        // Real changes from another handle on the same files, as the CLI
        // makes them, each refuse the next login.
        let cli = EmbeddedStore::open(d.path()).unwrap();
        cli.add_ip_rule("admin".into(), "192.0.2.0/24".into())
            .await
            .unwrap();
        assert!(is_invalid(
            &login(&auth, &key(), "127.0.0.1").await,
            "ip_not_allowed"
        ));
        cli.remove_ip_rule("admin".into(), "192.0.2.0/24".into())
            .await
            .unwrap();
        assert!(login(&auth, &key(), "127.0.0.1").await.is_ok());
        set_disabled(&cli, "admin".into(), true).await;
        assert!(is_invalid(
            &login(&auth, &key(), "127.0.0.1").await,
            "account_disabled"
        ));
        set_disabled(&cli, "admin".into(), false).await;
        assert!(login(&auth, &key(), "127.0.0.1").await.is_ok());
        cli.revoke_api_key(issued.record.id.clone(), 9)
            .await
            .unwrap();
        assert!(is_invalid(
            &login(&auth, &key(), "127.0.0.1").await,
            "revoked"
        ));
    }

    #[tokio::test]
    async fn subusers_ip_allowlists_and_passwords() {
        let (_d, store, auth) = setup().await;
        let acct = |name: &str, parent: Option<&str>| AccountRecord {
            id: 0,
            name: name.into(),
            parent: parent.map(Into::into),
            disabled: false,
            allow_password_auth: false,
            password_hash: None,
            created_at: 0,
            email: None,
            cram_md5: None,
            max_messages_per_hour: None,
            ip_pool: None,
            sender_alignment: None,
            require_2fa_for_credentials: false,
        };
        store.create_account(acct("acme", None)).await.unwrap();
        store
            .create_account(acct("marketing", Some("acme")))
            .await
            .unwrap();
        let key = auth
            .api_keys()
            .create(store.as_ref(), "marketing", "m", vec![], None)
            .await
            .unwrap();
        assert_eq!(
            login(&auth, &creds("apikey", &key.secret), "127.0.0.1")
                .await
                .unwrap()
                .account,
            "marketing"
        );

        // Disabling the parent stops the subuser's credentials at once.
        set_disabled(&store, "acme".into(), true).await;
        assert!(is_invalid(
            &login(&auth, &creds("apikey", &key.secret), "127.0.0.1").await,
            "account_disabled"
        ));
        set_disabled(&store, "acme".into(), false).await;

        store
            .add_ip_rule("acme".into(), "192.0.2.0/24".into())
            .await
            .unwrap();
        assert!(is_invalid(
            &login(&auth, &creds("apikey", &key.secret), "198.51.100.1").await,
            "ip_not_allowed"
        ));
        assert!(login(&auth, &creds("apikey", &key.secret), "192.0.2.9")
            .await
            .is_ok());

        // Passwords: refused while the account does not allow them, even if right.
        let phc = auth
            .password_hasher()
            .hash("violet-anchor-tundra-42".into())
            .await
            .unwrap();
        store
            .update_account(
                "acme".into(),
                AccountUpdate {
                    password_hash: Some(Some(phc)),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let good = creds("acme", "violet-anchor-tundra-42");
        assert!(is_invalid(
            &login(&auth, &good, "192.0.2.9").await,
            "password_auth_disabled"
        ));
        store
            .update_account(
                "acme".into(),
                AccountUpdate {
                    allow_password_auth: Some(true),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let p = login(&auth, &good, "192.0.2.9").await.unwrap();
        assert_eq!(
            (p.account.as_str(), p.key_id.as_str()),
            ("acme", "password")
        );
        assert!(is_invalid(
            &login(&auth, &creds("acme", "wrong-password-123"), "192.0.2.9").await,
            "wrong_password"
        ));
        assert!(is_invalid(
            &login(&auth, &creds("nobody", "whatever-it-is-1"), "192.0.2.10").await,
            "unknown_account"
        ));

        // Every outcome is audited (the writes are asynchronous).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let audit = store
            .audit(AuditFilter {
                kind: Some("auth.".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(audit
            .iter()
            .any(|r| r.entry.kind == "auth.success" && r.entry.account.as_deref() == Some("acme")));
        assert!(audit.iter().any(|r| r.entry.kind == "auth.failure"
            && r.entry.actor == "nobody"
            && r.entry.detail.contains("unknown_account")));
    }

    /// README, Security defaults: SASL user names (and authorization
    /// identities) with control characters are refused at input (RFC 4013
    /// §2.3 prohibits them), even with a valid key, before any lookup:
    /// the reason is `malformed_username`, not what a lookup would say.
    #[tokio::test]
    async fn names_with_control_characters_are_refused_before_any_lookup() {
        let (_d, store, auth) = setup().await;
        let key = auth
            .api_keys()
            .create(store.as_ref(), "admin", "k", vec![], None)
            .await
            .unwrap();
        // The key itself is good. (Checked first: the failures below, five
        // names from one address, are password spraying to the defence,
        // which then blocks the address.)
        assert!(login(&auth, &creds("apikey", &key.secret), "127.0.0.1")
            .await
            .is_ok());
        for name in [
            "apikey\r\n",
            "api\u{1b}[2Jkey",
            "apikey\u{9b}",
            "apikey\u{7f}",
        ] {
            let r = login(&auth, &creds(name, &key.secret), "127.0.0.1").await;
            assert!(is_invalid(&r, "malformed_username"), "{name:?}: {r:?}");
        }
        let mut with_authzid = creds("apikey", &key.secret);
        with_authzid.authzid = "admin\r\nX".into();
        let r = login(&auth, &with_authzid, "127.0.0.1").await;
        assert!(is_invalid(&r, "malformed_username"), "{r:?}");
    }

    #[tokio::test]
    async fn a_blocked_source_is_refused_before_checking() {
        let (_d, store, auth) = setup().await;
        let key = auth
            .api_keys()
            .create(store.as_ref(), "admin", "k", vec![], None)
            .await
            .unwrap();
        for _ in 0..20 {
            let _ = login(&auth, &creds("apikey", "pst_guess"), "198.51.100.7").await;
        }
        // Even the right key is refused from the blocked address...
        assert!(matches!(
            login(&auth, &creds("apikey", &key.secret), "198.51.100.7").await,
            Err(Rejection::Blocked { reason: "ip" })
        ));
        // ...and accepted from another network.
        assert!(login(&auth, &creds("apikey", &key.secret), "203.0.113.1")
            .await
            .is_ok());
    }
}
