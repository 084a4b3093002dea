//! DMARC aggregate (RFC 7489 §7.2) and TLS-RPT (RFC 8460) reports sent to
//! the company's own domains: parsed with `mail-auth` (XML or JSON, plain,
//! gzip or zip attachments), summarised, stored once, and counted. The
//! `mx` listener hands mail for `[reports]` addresses here through the
//! intake's `ReportReceiver`, before anything is queued.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use mail_auth::report::tlsrpt::TlsReport;
use mail_auth::report::{ActionDisposition, DmarcResult, Report};
use postern_core::config::ReportsConfig;
use postern_queue::ReportReceiver;
use postern_store::NewReport;
use serde_json::json;

/// The most a report may hold once decompressed: a gzip or zip attachment
/// of a few kilobytes can otherwise unpack to gigabytes. The largest
/// aggregate reports of big senders are a few megabytes.
pub const MAX_REPORT_SIZE: usize = 32 << 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    #[error("not a readable {kind} report: {reason}")]
    Unparsable { kind: &'static str, reason: String },
    #[error("the {kind} report has no {field}")]
    Incomplete {
        kind: &'static str,
        field: &'static str,
    },
}

/// Failing source addresses kept in a DMARC report's summary (the most
/// failing first; how many more there were is kept too).
pub const MAX_FAILING_SOURCES: usize = 100;

/// The longest parser message repeated to the reporter.
const MAX_REASON: usize = 200;

/// A parser's message as it may be repeated: control characters escaped,
/// at most `MAX_REASON` characters.
fn shown(reason: &str) -> String {
    let escaped = postern_core::printable::printable(reason);
    let mut out: String = escaped.chars().take(MAX_REASON).collect();
    if escaped.chars().count() > MAX_REASON {
        out.push('…');
    }
    out
}

fn unparsable(kind: &'static str, e: mail_auth::report::Error) -> ReportError {
    use mail_auth::report::Error as E;
    let reason = match e {
        E::MailParseError => "the message does not parse".to_owned(),
        // The parser's words quote the report (tag names, JSON text): they
        // go into the SMTP reply and the log, so shown escaped and short.
        E::ReportParseError(r) => shown(&r),
        E::UncompressError(r) => format!("the attachment does not decompress: {r}"),
        E::ReportTooLarge => format!("larger than {MAX_REPORT_SIZE} bytes decompressed"),
        E::NoReportsFound => "no report attachment found".to_owned(),
    };
    ReportError::Unparsable { kind, reason }
}

fn required(kind: &'static str, field: &'static str, value: &str) -> Result<String, ReportError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(ReportError::Incomplete { kind, field });
    }
    Ok(v.to_owned())
}

/// A DMARC aggregate report: message counts by DMARC result (pass when
/// the DKIM or the SPF identifier passed aligned, RFC 7489 §3.1) and by
/// the disposition applied, and the sources whose mail failed.
pub fn summarise_dmarc(message: &[u8], received_at: i64) -> Result<NewReport, ReportError> {
    const KIND: &str = "dmarc";
    let r = Report::parse_rfc5322(message, MAX_REPORT_SIZE).map_err(|e| unparsable(KIND, e))?;
    let (mut messages, mut pass, mut fail) = (0u64, 0u64, 0u64);
    let mut disposition: BTreeMap<&str, u64> = ["none", "quarantine", "reject"]
        .into_iter()
        .map(|d| (d, 0))
        .collect();
    let mut failing: BTreeMap<String, u64> = BTreeMap::new();
    for record in r.records() {
        let n = u64::from(record.count());
        messages += n;
        let passed = record.dmarc_dkim_result() == DmarcResult::Pass
            || record.dmarc_spf_result() == DmarcResult::Pass;
        if passed {
            pass += n;
        } else {
            fail += n;
            let ip = record
                .source_ip()
                .map(|ip| ip.to_string())
                .unwrap_or_else(|| "unknown".into());
            *failing.entry(ip).or_default() += n;
        }
        let d = match record.action_disposition() {
            ActionDisposition::Quarantine => "quarantine",
            ActionDisposition::Reject => "reject",
            // "pass" appears in some reporters' output for none.
            _ => "none",
        };
        *disposition.entry(d).or_default() += n;
    }
    let mut sources: Vec<(String, u64)> = failing.into_iter().collect();
    sources.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    // The sources that failed most; a report listing a million (anyone
    // may send one) keeps its summary small.
    let listed = sources.len().min(MAX_FAILING_SOURCES);
    let summary = json!({
        "messages": messages,
        "dmarc": { "pass": pass, "fail": fail },
        "disposition": disposition,
        "failing_sources": sources[..listed]
            .iter()
            .map(|(ip, n)| json!({ "ip": ip, "messages": n }))
            .collect::<Vec<_>>(),
        "failing_sources_not_listed": sources.len() - listed,
        "policy": {
            "p": format!("{:?}", r.p()).to_lowercase(),
        },
    });
    Ok(NewReport {
        kind: KIND.into(),
        org: required(KIND, "org_name", r.org_name())?,
        report_id: required(KIND, "report_id", r.report_id())?,
        policy_domain: required(KIND, "policy_published domain", r.domain())?.to_lowercase(),
        begin: i64::try_from(r.date_range_begin()).unwrap_or(i64::MAX),
        end: i64::try_from(r.date_range_end()).unwrap_or(i64::MAX),
        received_at,
        summary: summary.to_string(),
    })
}

/// A TLS-RPT report: per policy, its type and domain, the successful and
/// failed session counts, and the failed sessions by result type.
pub fn summarise_tlsrpt(message: &[u8], received_at: i64) -> Result<NewReport, ReportError> {
    const KIND: &str = "tlsrpt";
    let r = TlsReport::parse_rfc5322(message, MAX_REPORT_SIZE).map_err(|e| unparsable(KIND, e))?;
    let mut policies = Vec::new();
    for p in &r.policies {
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        for f in &p.failure_details {
            let name = serde_json::to_value(f.result_type)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_else(|| "other".into());
            *failures.entry(name).or_default() += u64::from(f.failed_session_count);
        }
        let policy_type = serde_json::to_value(p.policy.policy_type)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| "other".into());
        policies.push(json!({
            "policy_type": policy_type,
            "policy_domain": p.policy.policy_domain.to_lowercase(),
            "successful": p.summary.total_success,
            "failed": p.summary.total_failure,
            "failures": failures,
        }));
    }
    // RFC 8460 §4.4: a report is about one policy domain (the one whose
    // rua it was sent to); its first policy names it.
    let domain = r
        .policies
        .first()
        .map(|p| p.policy.policy_domain.as_str())
        .unwrap_or("");
    Ok(NewReport {
        kind: KIND.into(),
        org: required(
            KIND,
            "organization-name",
            r.organization_name.as_deref().unwrap_or(""),
        )?,
        report_id: required(KIND, "report-id", &r.report_id)?,
        policy_domain: required(KIND, "policy-domain", domain)?.to_lowercase(),
        begin: r.date_range.start_datetime.to_timestamp(),
        end: r.date_range.end_datetime.to_timestamp(),
        received_at,
        summary: json!({ "policies": policies }).to_string(),
    })
}

/// Takes mail for the `[reports]` addresses: parses it as the kinds its
/// recipients receive, stores it once, counts it
/// (`postern_reports_received_total{kind,result}`).
pub struct ReportInbox {
    config: ReportsConfig,
    store: Arc<dyn postern_store::ReportStore>,
    /// One report decompressed and parsed at a time, off the runtime's
    /// workers: anyone may send report mail, and a zip of highly
    /// compressible entries costs seconds of CPU (mail-auth caps each
    /// entry at `MAX_REPORT_SIZE`, not their sum).
    parsing: tokio::sync::Semaphore,
}

/// The largest report mail taken (aggregate reports from the largest
/// receivers are well under a megabyte compressed).
pub const MAX_REPORT_MAIL: usize = 10 << 20;

impl ReportInbox {
    pub fn new(config: ReportsConfig, store: Arc<dyn postern_store::ReportStore>) -> Self {
        ReportInbox {
            config,
            store,
            parsing: tokio::sync::Semaphore::new(1),
        }
    }

    fn kinds_for(&self, recipients: &[String]) -> Vec<&'static str> {
        let has = |list: &[String]| {
            recipients
                .iter()
                .any(|r| list.iter().any(|a| a.eq_ignore_ascii_case(r)))
        };
        let mut kinds = Vec::new();
        if has(&self.config.receive_dmarc) {
            kinds.push("dmarc");
        }
        if has(&self.config.receive_tlsrpt) {
            kinds.push("tlsrpt");
        }
        kinds
    }

    /// Parses `message` as the first of `kinds` it is, and stores it.
    /// Ok(true): stored; Ok(false): a duplicate.
    pub async fn take(&self, kinds: &[&'static str], message: &[u8]) -> Result<bool, String> {
        if message.len() > MAX_REPORT_MAIL {
            return Err(format!(
                "report mail larger than {} MiB",
                MAX_REPORT_MAIL >> 20
            ));
        }
        let now = postern_core::time::now_millis();
        let mut errors = Vec::new();
        for kind in kinds {
            let parsed = {
                let _turn = self
                    .parsing
                    .acquire()
                    .await
                    .map_err(|e| format!("report parsing stopped: {e}"))?;
                let (kind, owned) = (*kind, message.to_vec());
                tokio::task::spawn_blocking(move || match kind {
                    "dmarc" => summarise_dmarc(&owned, now),
                    _ => summarise_tlsrpt(&owned, now),
                })
                .await
                .map_err(|e| format!("report parsing failed: {e}"))?
            };
            let report = match parsed {
                Ok(r) => r,
                Err(e) => {
                    errors.push((kind, e.to_string()));
                    continue;
                }
            };
            let (org, id, domain) = (
                report.org.clone(),
                report.report_id.clone(),
                report.policy_domain.clone(),
            );
            let stored = self
                .store
                .store_report(report)
                .await
                .map_err(|e| format!("the report could not be stored: {e}"))?;
            let result = if stored.is_some() {
                "stored"
            } else {
                "duplicate"
            };
            metrics::counter!("postern_reports_received_total", "kind" => *kind, "result" => result)
                .increment(1);
            tracing::info!(kind, %org, report_id = %id, %domain, result, "report received");
            return Ok(stored.is_some());
        }
        for (kind, _) in &errors {
            metrics::counter!("postern_reports_received_total", "kind" => **kind, "result" => "refused")
                .increment(1);
        }
        let why = errors
            .iter()
            .map(|(_, e)| e.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        tracing::info!(reason = %why, "report refused");
        Err(why)
    }
}

impl ReportReceiver for ReportInbox {
    fn is_report_address(&self, address: &str) -> bool {
        self.config.receives(address)
    }

    fn forwards(&self) -> bool {
        self.config.forward
    }

    fn receive<'a>(
        &'a self,
        recipients: &'a [String],
        message: &'a [u8],
    ) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + 'a>> {
        Box::pin(async move {
            let kinds = self.kinds_for(recipients);
            self.take(&kinds, message).await.map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A sample report from `testdata/reports/` (made by the e2e test's
    /// builders, tests/e2e/test_reports.py, as the big reporters send them).
    fn vector(name: &str) -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/reports/");
        std::fs::read(format!("{path}{name}")).unwrap()
    }

    fn summary(r: &NewReport) -> Value {
        serde_json::from_str(&r.summary).unwrap()
    }

    #[test]
    fn a_zipped_dmarc_report_is_counted_by_result_and_disposition() {
        let r = summarise_dmarc(&vector("dmarc-google-zip.eml"), 5).unwrap();
        assert_eq!(
            (r.kind.as_str(), r.org.as_str(), r.report_id.as_str()),
            ("dmarc", "google.com", "1234567890123456789")
        );
        assert_eq!(r.policy_domain, "corp.test");
        assert_eq!(
            (r.begin, r.end, r.received_at),
            (1_700_006_400, 1_700_092_799, 5)
        );
        let s = summary(&r);
        assert_eq!(s["messages"], 24);
        // 192.0.2.11 failed DKIM but passed SPF aligned: a DMARC pass.
        assert_eq!(s["dmarc"], serde_json::json!({"pass": 16, "fail": 8}));
        assert_eq!(
            s["disposition"],
            serde_json::json!({"none": 16, "quarantine": 8, "reject": 0})
        );
        assert_eq!(
            s["failing_sources"],
            serde_json::json!([
                {"ip": "198.51.100.7", "messages": 5},
                {"ip": "203.0.113.9", "messages": 3}
            ])
        );
    }

    #[test]
    fn a_gzipped_dmarc_report_counts_rejections() {
        let r = summarise_dmarc(&vector("dmarc-outlook-gzip.eml"), 0).unwrap();
        assert_eq!(r.org, "enterprise.protection.outlook.com");
        assert_eq!(r.policy_domain, "rival.test");
        let s = summary(&r);
        assert_eq!(s["disposition"]["reject"], 7);
        assert_eq!(s["dmarc"]["fail"], 7);
    }

    #[test]
    fn a_tlsrpt_report_is_counted_per_policy_and_failure_type() {
        let r = summarise_tlsrpt(&vector("tlsrpt-google-gzip.eml"), 0).unwrap();
        assert_eq!(
            (
                r.org.as_str(),
                r.report_id.as_str(),
                r.policy_domain.as_str()
            ),
            ("Google Inc.", "2023-11-15T00:00:00Z_corp.test", "corp.test")
        );
        assert_eq!((r.begin, r.end), (1_700_006_400, 1_700_092_799));
        assert_eq!(
            summary(&r)["policies"],
            serde_json::json!([{
                "policy_type": "sts", "policy_domain": "corp.test",
                "successful": 120, "failed": 4,
                "failures": {"certificate-expired": 3, "starttls-not-supported": 1}
            }])
        );
        // Not a DMARC report, and the DMARC one is not a TLS report.
        assert!(summarise_dmarc(&vector("tlsrpt-google-gzip.eml"), 0).is_err());
        assert!(summarise_tlsrpt(&vector("dmarc-google-zip.eml"), 0).is_err());
    }

    #[test]
    fn broken_or_incomplete_reports_are_refused_with_the_reason() {
        let e = summarise_dmarc(&vector("dmarc-truncated-xml.eml"), 0).unwrap_err();
        assert!(
            matches!(e, ReportError::Unparsable { kind: "dmarc", .. }),
            "{e}"
        );
        // Without an org name it could not be told from another's report.
        assert_eq!(
            summarise_dmarc(&vector("dmarc-no-org.eml"), 0).unwrap_err(),
            ReportError::Incomplete {
                kind: "dmarc",
                field: "org_name"
            }
        );
        let e = summarise_dmarc(b"Subject: hi\r\n\r\nno attachment\r\n", 0).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not a readable dmarc report: no report attachment found"
        );
    }

    #[test]
    fn parser_messages_are_escaped_and_cut_before_they_are_repeated() {
        assert_eq!(shown("bad tag <x\r\n250 ok>"), "bad tag <x\\r\\n250 ok>");
        let long = format!("unexpected <{}>", "a".repeat(10_000));
        let s = shown(&long);
        assert_eq!(s.chars().count(), MAX_REASON + 1);
        assert!(s.ends_with('…'));
    }

    #[tokio::test]
    async fn report_mail_above_the_limit_is_refused_unparsed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(postern_store::EmbeddedStore::open(dir.path()).unwrap());
        let inbox = ReportInbox::new(ReportsConfig::default(), store);
        let mut big = vector("dmarc-google-zip.eml");
        big.resize(MAX_REPORT_MAIL + 1, b'a');
        let e = inbox.take(&["dmarc"], &big).await.unwrap_err();
        assert_eq!(e, "report mail larger than 10 MiB");
        // The same report within the limit is taken.
        assert!(inbox
            .take(&["dmarc"], &vector("dmarc-google-zip.eml"))
            .await
            .unwrap());
    }

    /// A report listing more failing sources than the summary keeps: the
    /// most failing are listed, and how many more there were.
    #[test]
    fn only_the_most_failing_sources_are_listed() {
        use mail_auth::common::parse::TxtRecordParser;
        use mail_auth::report::{ActionDisposition, PolicyPublished, Record};
        let record = mail_auth::dmarc::Dmarc::parse(b"v=DMARC1; p=none").unwrap();
        let mut report = Report::new()
            .with_version(1.0)
            .with_org_name("Flood Inc")
            .with_email("noreply@flood.test")
            .with_report_id("many")
            .with_date_range_begin(1_700_000_000)
            .with_date_range_end(1_700_086_400)
            .with_policy_published(PolicyPublished::from_record("sender.test", &record));
        let total = MAX_FAILING_SOURCES + 50;
        for i in 0..total {
            report.add_record(
                Record::new()
                    .with_source_ip(format!("10.0.{}.{}", i / 250, i % 250 + 1).parse().unwrap())
                    .with_count(if i == total - 1 { 9 } else { 1 })
                    .with_action_disposition(ActionDisposition::None)
                    .with_header_from("sender.test"),
            );
        }
        let mail = super::super::dmarc::message(
            &report,
            "flood.test",
            "noreply@flood.test",
            "dmarc@corp.test",
        )
        .unwrap();
        let r = summarise_dmarc(&mail, 0).unwrap();
        let s: serde_json::Value = serde_json::from_str(&r.summary).unwrap();
        let listed = s["failing_sources"].as_array().unwrap();
        assert_eq!(listed.len(), MAX_FAILING_SOURCES);
        assert_eq!(s["failing_sources_not_listed"], 50);
        // The most failing first.
        assert_eq!(listed[0]["messages"], 9);
        assert_eq!(s["messages"], (total - 1 + 9) as u64);
    }
}
