//! TLS-RPT reports (RFC 8460) about Postern's own deliveries: where a
//! recipient domain wants them (`_smtp._tls` TXT, §3), and the report of
//! its recorded sessions in mail-auth's `TlsReport` (§4), sent gzipped by
//! mail (§5.3) or HTTPS POST (§5.4).

use mail_auth::common::cache::NoCache;
use mail_auth::mta_sts::{ReportUri, TlsRpt};
use mail_auth::report::tlsrpt::{
    DateRange, FailureDetails, Policy, PolicyDetails, Summary, TlsReport,
};
use mail_auth::{DnsError, Error, MessageAuthenticator, Txt};
use postern_store::TlsPending;

use super::ReportError;

/// The `rua` of `domain`'s TLS-RPT record (RFC 8460 §3): None when it
/// publishes none.
pub async fn destinations(
    dns: &MessageAuthenticator,
    domain: &str,
) -> Result<Option<Vec<ReportUri>>, ReportError> {
    match dns
        .txt_lookup::<TlsRpt>(
            format!("_smtp._tls.{domain}."),
            None::<&NoCache<Box<str>, Txt>>,
        )
        .await
    {
        // A record may list any number of destinations: the first few
        // are served, so one domain cannot make a pass send hundreds.
        Ok(record) => Ok(Some(
            record
                .rua
                .iter()
                .take(super::MAX_DESTINATIONS)
                .cloned()
                .collect(),
        )),
        Err(Error::Dns(DnsError::RecordNotFound(_)))
        | Err(Error::Dns(DnsError::InvalidRecordType)) => Ok(None),
        Err(e) => Err(ReportError::Dns(format!("_smtp._tls.{domain}: {e}"))),
    }
}

/// The report of one domain's recorded sessions for the period up to
/// `end` (unix ms): one policy entry per policy applied, its successes
/// and failures summed, each distinct failure with its session count.
pub fn build(
    pending: &TlsPending,
    org_name: &str,
    contact: &str,
    report_id: &str,
    end: i64,
) -> Result<TlsReport, ReportError> {
    let mut policies: Vec<Policy> = Vec::new();
    for (policy, failure, count) in &pending.rows {
        let details: PolicyDetails = serde_json::from_str(policy)
            .map_err(|e| ReportError::Data(format!("stored TLS policy: {e}")))?;
        let count = u32::try_from(*count).unwrap_or(u32::MAX);
        let at = match policies.iter().position(|p| p.policy == details) {
            Some(i) => i,
            None => {
                policies.push(Policy {
                    policy: details,
                    summary: Summary {
                        total_success: 0,
                        total_failure: 0,
                    },
                    failure_details: Vec::new(),
                });
                policies.len() - 1
            }
        };
        let entry = &mut policies[at];
        match failure {
            None => entry.summary.total_success = entry.summary.total_success.saturating_add(count),
            Some(f) => {
                let mut details: FailureDetails = serde_json::from_str(f)
                    .map_err(|e| ReportError::Data(format!("stored TLS failure: {e}")))?;
                details.failed_session_count = count;
                entry.summary.total_failure = entry.summary.total_failure.saturating_add(count);
                entry.failure_details.push(details);
            }
        }
    }
    Ok(TlsReport {
        organization_name: Some(org_name.to_owned()),
        date_range: DateRange {
            start_datetime: mail_parser::DateTime::from_timestamp(pending.first_at / 1000),
            end_datetime: mail_parser::DateTime::from_timestamp(end / 1000),
        },
        contact_info: Some(contact.to_owned()),
        report_id: report_id.to_owned(),
        policies,
    })
}

/// The report as JSON, gzipped (RFC 8460 §5.1: `application/tlsrpt+gzip`).
pub fn gzipped(report: &TlsReport) -> Result<Vec<u8>, ReportError> {
    use std::io::Write;
    let mut e = mail_auth::flate2::write::GzEncoder::new(
        Vec::new(),
        mail_auth::flate2::Compression::default(),
    );
    e.write_all(report.to_json().as_bytes())
        .and_then(|_| e.finish())
        .map_err(|e| ReportError::Data(format!("compressing the report: {e}")))
}

/// The report as a mail to `to` (RFC 8460 §5.3: TLS-Report-Domain and
/// TLS-Report-Submitter fields, `multipart/report; report-type="tlsrpt"`,
/// the subject naming the domain, the submitter and the report id).
pub fn message(
    report: &TlsReport,
    domain: &str,
    submitter: &str,
    from: &str,
    to: &str,
    gzipped: &[u8],
) -> Result<Vec<u8>, ReportError> {
    let mut out = Vec::new();
    report
        .write_rfc5322_from_bytes(
            domain,
            submitter,
            from,
            std::iter::once(to),
            gzipped,
            &mut out,
        )
        .map_err(|e| ReportError::Data(format!("writing the report: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_become_policies_with_summaries_and_failures() {
        let sts = r#"{"policy-type":"sts","policy-string":["version: STSv1","mode: enforce","mx: mx.a.test","max_age: 86400"],"policy-domain":"a.test","mx-host":["mx.a.test"]}"#;
        let none = r#"{"policy-type":"no-policy-found","policy-string":[],"policy-domain":"a.test","mx-host":[]}"#;
        let fail = r#"{"result-type":"starttls-not-supported","sending-mta-ip":"127.0.0.1","receiving-mx-hostname":"mx.a.test","receiving-ip":"127.0.0.2","failure-reason-code":"STARTTLS not offered"}"#;
        let pending = TlsPending {
            policy_domain: "a.test".into(),
            rows: vec![
                (sts.into(), None, 3),
                (sts.into(), Some(fail.into()), 2),
                (none.into(), None, 1),
            ],
            first_at: 1_700_000_000_000,
            last_at: 1_700_000_100_000,
            up_to: 6,
        };
        let report = build(
            &pending,
            "Postern",
            "postmaster@p.test",
            "id-1",
            1_700_086_400_000,
        )
        .unwrap();
        assert_eq!(report.policies.len(), 2);
        let p = &report.policies[0];
        assert_eq!(p.policy.policy_domain, "a.test");
        assert_eq!((p.summary.total_success, p.summary.total_failure), (3, 2));
        assert_eq!(p.failure_details.len(), 1);
        assert_eq!(p.failure_details[0].failed_session_count, 2);
        assert_eq!(
            p.failure_details[0].receiving_ip,
            Some("127.0.0.2".parse().unwrap())
        );
        assert_eq!(
            (
                report.policies[1].summary.total_success,
                report.policies[1].summary.total_failure
            ),
            (1, 0)
        );
        // Mailed and parsed back by mail-auth: the same report.
        let gz = gzipped(&report).unwrap();
        let mail = message(
            &report,
            "a.test",
            "p.test",
            "postmaster@p.test",
            "tls@a.test",
            &gz,
        )
        .unwrap();
        let text = String::from_utf8_lossy(&mail);
        assert!(text.contains("TLS-Report-Domain: a.test"), "{text}");
        assert!(text.contains("TLS-Report-Submitter: p.test"), "{text}");
        let parsed = TlsReport::parse_rfc5322(&mail, 1 << 20).unwrap();
        assert_eq!(parsed, report);
    }
}
