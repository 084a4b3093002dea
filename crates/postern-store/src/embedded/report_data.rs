//! What the reports Postern sends are made of, in the embedded store (see
//! `ReportDataStore`): `dmarc_observations`, one row per inbound message
//! evaluated under DMARC; `tls_observations`, one per TLS session attempt
//! of an outbound delivery to an MX host.

use async_trait::async_trait;
use rusqlite::params;

use super::EmbeddedStore;
use crate::*;

/// Every distinct row of every From domain with its count, in one
/// statement (one snapshot): the counts, the bounds and the newest policy
/// agree with each other even while observations are being added.
const PENDING: &str = "SELECT o.from_domain, o.row, COUNT(*), MIN(o.at), MAX(o.at), MAX(o.id),
        (SELECT p.policy FROM dmarc_observations p
          WHERE p.from_domain = o.from_domain ORDER BY p.id DESC LIMIT 1)
     FROM dmarc_observations o
     GROUP BY o.from_domain, o.row
     ORDER BY o.from_domain, MIN(o.id)";

/// As `PENDING`, for TLS-RPT.
const TLS_PENDING: &str =
    "SELECT policy_domain, policy, failure, COUNT(*), MIN(at), MAX(at), MAX(id)
     FROM tls_observations
     GROUP BY policy_domain, policy, failure
     ORDER BY policy_domain, MIN(id)";

#[async_trait]
impl ReportDataStore for EmbeddedStore {
    async fn record_dmarc(&self, o: DmarcObservation) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO dmarc_observations (at, from_domain, policy, row) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![o.at, o.from_domain, o.policy, o.row])?;
            Ok(())
        })
        .await
    }

    async fn dmarc_pending(&self) -> Result<Vec<DmarcPending>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(PENDING)?;
            let mut rows = stmt.query([])?;
            let mut out: Vec<DmarcPending> = Vec::new();
            while let Some(r) = rows.next()? {
                let domain: String = r.get(0)?;
                let row: String = r.get(1)?;
                let count: i64 = r.get(2)?;
                let (first, last, up_to): (i64, i64, i64) = (r.get(3)?, r.get(4)?, r.get(5)?);
                let policy: String = r.get(6)?;
                if out.last().is_none_or(|p| p.from_domain != domain) {
                    out.push(DmarcPending {
                        from_domain: domain,
                        policy,
                        rows: Vec::new(),
                        first_at: first,
                        last_at: last,
                        up_to,
                    });
                }
                if let Some(entry) = out.last_mut() {
                    entry.first_at = entry.first_at.min(first);
                    entry.last_at = entry.last_at.max(last);
                    entry.up_to = entry.up_to.max(up_to);
                    entry.rows.push((row, count.max(0) as u64));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn forget_dmarc(&self, from_domain: String, up_to: i64) -> Result<u64> {
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(
                    "DELETE FROM dmarc_observations WHERE from_domain = ?1 AND id <= ?2",
                )?
                .execute(params![from_domain, up_to])? as u64)
        })
        .await
    }

    async fn expire_dmarc(&self, before: i64) -> Result<u64> {
        self.write(move |conn| {
            Ok(conn
                .prepare_cached("DELETE FROM dmarc_observations WHERE at < ?1")?
                .execute(params![before])? as u64)
        })
        .await
    }

    async fn record_tls(&self, o: TlsObservation) -> Result<()> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO tls_observations (at, policy_domain, policy, failure) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![o.at, o.policy_domain, o.policy, o.failure])?;
            Ok(())
        })
        .await
    }

    async fn tls_pending(&self) -> Result<Vec<TlsPending>> {
        self.read(|conn| {
            let mut stmt = conn.prepare_cached(TLS_PENDING)?;
            let mut rows = stmt.query([])?;
            let mut out: Vec<TlsPending> = Vec::new();
            while let Some(r) = rows.next()? {
                let domain: String = r.get(0)?;
                let policy: String = r.get(1)?;
                let failure: Option<String> = r.get(2)?;
                let count: i64 = r.get(3)?;
                let (first, last, up_to): (i64, i64, i64) = (r.get(4)?, r.get(5)?, r.get(6)?);
                if out.last().is_none_or(|p| p.policy_domain != domain) {
                    out.push(TlsPending {
                        policy_domain: domain,
                        rows: Vec::new(),
                        first_at: first,
                        last_at: last,
                        up_to,
                    });
                }
                if let Some(entry) = out.last_mut() {
                    entry.first_at = entry.first_at.min(first);
                    entry.last_at = entry.last_at.max(last);
                    entry.up_to = entry.up_to.max(up_to);
                    entry.rows.push((policy, failure, count.max(0) as u64));
                }
            }
            Ok(out)
        })
        .await
    }

    async fn forget_tls(&self, policy_domain: String, up_to: i64) -> Result<u64> {
        self.write(move |conn| {
            Ok(conn
                .prepare_cached(
                    "DELETE FROM tls_observations WHERE policy_domain = ?1 AND id <= ?2",
                )?
                .execute(params![policy_domain, up_to])? as u64)
        })
        .await
    }

    async fn expire_tls(&self, before: i64) -> Result<u64> {
        self.write(move |conn| {
            Ok(conn
                .prepare_cached("DELETE FROM tls_observations WHERE at < ?1")?
                .execute(params![before])? as u64)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(at: i64, domain: &str, policy: &str, row: &str) -> DmarcObservation {
        DmarcObservation {
            at,
            from_domain: domain.into(),
            policy: policy.into(),
            row: row.into(),
        }
    }

    #[tokio::test]
    async fn observations_are_counted_per_domain_and_forgotten_once_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        assert!(store.dmarc_pending().await.unwrap().is_empty());
        store
            .record_dmarc(obs(10, "a.test", "p1", "r1"))
            .await
            .unwrap();
        store
            .record_dmarc(obs(20, "b.test", "q", "x"))
            .await
            .unwrap();
        store
            .record_dmarc(obs(30, "a.test", "p1", "r2"))
            .await
            .unwrap();
        store
            .record_dmarc(obs(40, "a.test", "p2", "r1"))
            .await
            .unwrap();
        let pending = store.dmarc_pending().await.unwrap();
        assert_eq!(pending.len(), 2, "{pending:?}");
        let a = &pending[0];
        assert_eq!(a.from_domain, "a.test");
        // The newest policy, equal rows counted, in the order first seen.
        assert_eq!(a.policy, "p2");
        assert_eq!(a.rows, vec![("r1".into(), 2), ("r2".into(), 1)]);
        assert_eq!((a.first_at, a.last_at), (10, 40));
        let b = &pending[1];
        assert_eq!((b.from_domain.as_str(), b.rows.len()), ("b.test", 1));

        // One more arrives after the report was read: it is not forgotten.
        store
            .record_dmarc(obs(50, "a.test", "p2", "r1"))
            .await
            .unwrap();
        assert_eq!(
            store.forget_dmarc("a.test".into(), a.up_to).await.unwrap(),
            3
        );
        let pending = store.dmarc_pending().await.unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[0].rows, vec![("r1".into(), 1)]);
        assert_eq!(pending[0].first_at, 50);

        // The retention drops what was never reported, by age.
        assert_eq!(store.expire_dmarc(45).await.unwrap(), 1);
        let pending = store.dmarc_pending().await.unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].from_domain, "a.test");
    }

    fn tls(at: i64, domain: &str, policy: &str, failure: Option<&str>) -> TlsObservation {
        TlsObservation {
            at,
            policy_domain: domain.into(),
            policy: policy.into(),
            failure: failure.map(str::to_owned),
        }
    }

    #[tokio::test]
    async fn tls_sessions_are_counted_per_policy_and_failure() {
        let dir = tempfile::tempdir().unwrap();
        let store = EmbeddedStore::open(dir.path()).unwrap();
        store
            .record_tls(tls(10, "a.test", "sts", None))
            .await
            .unwrap();
        store
            .record_tls(tls(20, "a.test", "sts", Some("no-starttls")))
            .await
            .unwrap();
        store
            .record_tls(tls(30, "a.test", "sts", None))
            .await
            .unwrap();
        store
            .record_tls(tls(40, "a.test", "none", None))
            .await
            .unwrap();
        store
            .record_tls(tls(50, "b.test", "none", None))
            .await
            .unwrap();
        let pending = store.tls_pending().await.unwrap();
        assert_eq!(pending.len(), 2, "{pending:?}");
        assert_eq!(
            pending[0].rows,
            vec![
                ("sts".into(), None, 2),
                ("sts".into(), Some("no-starttls".into()), 1),
                ("none".into(), None, 1),
            ]
        );
        assert_eq!((pending[0].first_at, pending[0].last_at), (10, 40));
        store
            .record_tls(tls(60, "a.test", "sts", None))
            .await
            .unwrap();
        assert_eq!(
            store
                .forget_tls("a.test".into(), pending[0].up_to)
                .await
                .unwrap(),
            4
        );
        let pending = store.tls_pending().await.unwrap();
        assert_eq!(pending[0].rows, vec![("sts".into(), None, 1)]);
        assert_eq!(store.expire_tls(55).await.unwrap(), 1);
        assert_eq!(store.tls_pending().await.unwrap().len(), 1);
    }
}
