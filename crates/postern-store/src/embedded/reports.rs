//! Received DMARC aggregate and TLS-RPT reports in the embedded store (see
//! `ReportStore`): one row per report in `reports`.

use async_trait::async_trait;
use rusqlite::{params, Connection, Row};

use super::EmbeddedStore;
use crate::*;

/// Whether a report is visible to the filter's caller: `?1` the account
/// name (NULL: the operator, who sees all), `?2` with its subusers; the
/// owner is whoever holds the policy domain verified now (only
/// verification proves ownership), resolved by account id so a name
/// deleted and taken again reaches nothing of the old one's.
const VISIBLE: &str = "(?1 IS NULL OR policy_domain IN (
        SELECT domain FROM domains WHERE verified_at IS NOT NULL AND account_id IN
            (SELECT id FROM accounts WHERE name = ?1 OR (?2 AND parent = ?1))))";

const COLUMNS: &str =
    "id, kind, org, report_id, policy_domain, begin_at, end_at, received_at, summary";

fn record(r: &Row<'_>) -> rusqlite::Result<ReportRecord> {
    Ok(ReportRecord {
        id: r.get(0)?,
        report: NewReport {
            kind: r.get(1)?,
            org: r.get(2)?,
            report_id: r.get(3)?,
            policy_domain: r.get(4)?,
            begin: r.get(5)?,
            end: r.get(6)?,
            received_at: r.get(7)?,
            summary: r.get(8)?,
        },
    })
}

fn select(conn: &Connection, f: &ReportFilter, id: Option<i64>) -> Result<Vec<ReportRecord>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM reports
         WHERE {VISIBLE}
           AND (?3 IS NULL OR kind = ?3)
           AND (?4 IS NULL OR policy_domain = lower(?4))
           AND (?5 IS NULL OR id = ?5)
         ORDER BY received_at DESC, id DESC LIMIT ?6"
    ))?;
    let limit = f.limit.map(|n| n as i64).unwrap_or(-1);
    let rows = stmt.query_map(
        params![f.account, f.with_subusers, f.kind, f.domain, id, limit],
        record,
    )?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

#[async_trait]
impl ReportStore for EmbeddedStore {
    async fn store_report(&self, r: NewReport) -> Result<Option<i64>> {
        self.write(move |conn| {
            // The UNIQUE (kind, org, report_id) constraint decides: a
            // report sent again is ignored, in the same statement.
            let n = conn
                .prepare_cached(
                    "INSERT OR IGNORE INTO reports
                     (kind, org, report_id, policy_domain, begin_at, end_at, received_at, summary)
                     VALUES (?1, ?2, ?3, lower(?4), ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    r.kind,
                    r.org,
                    r.report_id,
                    r.policy_domain,
                    r.begin,
                    r.end,
                    r.received_at,
                    r.summary
                ])?;
            Ok((n == 1).then(|| conn.last_insert_rowid()))
        })
        .await
    }

    async fn reports(&self, f: ReportFilter) -> Result<Vec<ReportRecord>> {
        self.read(move |conn| select(conn, &f, None)).await
    }

    async fn report(&self, id: i64, f: ReportFilter) -> Result<Option<ReportRecord>> {
        self.read(move |conn| Ok(select(conn, &f, Some(id))?.into_iter().next()))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(kind: &str, org: &str, id: &str, domain: &str) -> NewReport {
        NewReport {
            kind: kind.into(),
            org: org.into(),
            report_id: id.into(),
            policy_domain: domain.into(),
            begin: 1_700_000_000,
            end: 1_700_086_399,
            received_at: 1_700_100_000_000,
            summary: "{\"messages\":3}".into(),
        }
    }

    /// Duplicates (same kind, org, report id) are stored once; filters by
    /// kind and domain; the reports survive a reopen.
    #[tokio::test]
    async fn reports_are_stored_once_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let a = s
            .store_report(report("dmarc", "google.com", "r1", "Corp.Test"))
            .await
            .unwrap();
        assert!(a.is_some());
        assert_eq!(
            s.store_report(report("dmarc", "google.com", "r1", "corp.test"))
                .await
                .unwrap(),
            None
        );
        // The same id from another org, or of the other kind, is another report.
        assert!(s
            .store_report(report("dmarc", "outlook.com", "r1", "corp.test"))
            .await
            .unwrap()
            .is_some());
        assert!(s
            .store_report(report("tlsrpt", "google.com", "r1", "other.test"))
            .await
            .unwrap()
            .is_some());
        drop(s);
        let s = EmbeddedStore::open(dir.path()).unwrap();
        assert_eq!(s.reports(ReportFilter::default()).await.unwrap().len(), 3);
        let dmarc = s
            .reports(ReportFilter {
                kind: Some("dmarc".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(dmarc.len(), 2);
        assert!(dmarc.iter().all(|r| r.report.policy_domain == "corp.test"));
        let other = s
            .reports(ReportFilter {
                domain: Some("OTHER.test".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(other.len(), 1);
        assert_eq!(other[0].report.kind, "tlsrpt");
        let one = s
            .report(a.unwrap(), ReportFilter::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(one.report.org, "google.com");
        assert_eq!(one.report.summary, "{\"messages\":3}");
    }
}
