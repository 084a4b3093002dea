//! DMARC aggregate reports (RFC 7489 §7.2) about inbound mail: what each
//! evaluated message leaves behind (`observation`), and the report built
//! from a policy domain's observations (`build`), in mail-auth's report
//! types (its XML, gzipped, in a mail per destination).

use std::net::IpAddr;

use mail_auth::common::cache::NoCache;
use mail_auth::dmarc::Dmarc;
use mail_auth::report::{
    ActionDisposition, PolicyOverride, PolicyOverrideReason, PolicyPublished, Record, Report,
    SPFDomainScope,
};
use mail_auth::{DkimOutput, DmarcOutput, DnsError, Error, MessageAuthenticator, SpfOutput, Txt};
use postern_core::config::InboundAction;
use postern_store::{DmarcObservation, DmarcPending};

use super::ReportError;

/// The published policy as stored with each observation: mail-auth's
/// `PolicyPublished` (for the report) and the `rua` destinations (for the
/// sender), as they were when the message was evaluated.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredPolicy {
    pub published: PolicyPublished,
    /// `mailto:` addresses (without the scheme) and their `!size` limit in
    /// bytes, 0 for none.
    pub rua: Vec<(String, usize)>,
}

/// What the checks of one message found.
pub struct Checked<'a> {
    pub source_ip: IpAddr,
    /// The SPF result DMARC used: the MAIL FROM identity's, or the HELO
    /// identity's for a null reverse-path (`spf_scope_helo`).
    pub spf: &'a SpfOutput,
    pub spf_scope_helo: bool,
    pub dkim: &'a [DkimOutput<'a>],
    pub dmarc: &'a DmarcOutput,
    /// The RFC5321.MailFrom domain (the HELO domain for `<>`).
    pub envelope_from_domain: &'a str,
}

/// How DMARC was applied to one message, besides what the checks found.
pub struct Applied<'a> {
    /// What was done with the message (the strictest action any check
    /// called for): the report's disposition.
    pub action: InboundAction,
    /// The sealer of a trusted forwarder's ARC chain that overrode a
    /// DMARC failure (RFC 7489 §6.7 `trusted_forwarder`).
    pub forwarded_by: Option<&'a str>,
}

/// What one message evaluated under DMARC leaves for the aggregate report:
/// None when no DMARC policy applied (RFC 7489 §6.6.3: no record found, or
/// no single From domain).
pub fn observation(
    at: i64,
    checked: Checked<'_>,
    applied: Applied<'_>,
) -> Option<DmarcObservation> {
    let Checked {
        source_ip,
        spf,
        spf_scope_helo,
        dkim,
        dmarc,
        envelope_from_domain,
    } = checked;
    let record: &Dmarc = dmarc.dmarc_record()?;
    // Peer-controlled: it names the report's file and subject and goes in
    // the send log, so only a domain's characters are kept.
    let from_domain = crate::inbound::verdict::sanitize(dmarc.domain()).to_ascii_lowercase();
    if from_domain.is_empty() {
        return None;
    }
    let policy = StoredPolicy {
        // The domain is set when the report is made (the policy domain,
        // where the record was found).
        published: PolicyPublished::from_record(from_domain.clone(), record),
        rua: record
            .rua
            .iter()
            .map(|u| (u.uri().to_owned(), u.max_size()))
            .collect(),
    };
    let scope = if spf_scope_helo {
        SPFDomainScope::Helo
    } else {
        SPFDomainScope::MailFrom
    };
    let mut row = Record::new()
        .with_dkim_output(dkim)
        .with_spf_output(spf, scope)
        .with_dmarc_output(dmarc)
        .with_source_ip(source_ip)
        .with_envelope_from(envelope_from_domain)
        .with_header_from(from_domain.clone());
    // RFC 7489 §7.2.1.1 disposition: the policy actually applied, which
    // may differ from the one published (local policy, an override).
    let disposition = match applied.action {
        InboundAction::Reject => ActionDisposition::Reject,
        InboundAction::Quarantine => ActionDisposition::Quarantine,
        InboundAction::Accept | InboundAction::Tag => ActionDisposition::None,
    };
    let dmarc_failed = !matches!(dmarc.dkim_result(), mail_auth::DmarcResult::Pass)
        && !matches!(dmarc.spf_result(), mail_auth::DmarcResult::Pass);
    let published = match dmarc.policy() {
        mail_auth::dmarc::Policy::Reject => ActionDisposition::Reject,
        mail_auth::dmarc::Policy::Quarantine => ActionDisposition::Quarantine,
        _ => ActionDisposition::None,
    };
    row = row.with_action_disposition(disposition);
    if let Some(sealer) = applied.forwarded_by {
        row = row.with_policy_override_reason(
            PolicyOverrideReason::new(PolicyOverride::TrustedForwarder)
                .with_comment(format!("ARC chain sealed by {sealer} says DMARC passed")),
        );
    } else if dmarc_failed && disposition != published {
        // RFC 7489 §7.2.1.1 PolicyOverrideType local_policy: the receiver's
        // own rules decided.
        row =
            row.with_policy_override_reason(PolicyOverrideReason::new(PolicyOverride::LocalPolicy));
    }
    Some(DmarcObservation {
        at,
        from_domain,
        policy: serde_json::to_string(&policy).ok()?,
        row: serde_json::to_string(&row).ok()?,
    })
}

/// The domain whose DMARC record applies to mail from `from_domain`, found
/// as RFC 7489 §6.6.3 finds the record: the From domain itself, else a
/// parent (the first with a record, walking up; RFC 9989 §4.10 caps the
/// walk at eight names), with the `rua` its record names now: reports go
/// where the policy domain says today, never where a message's record (or
/// a look-alike domain's, grouped under it) said then. None: no record
/// any more.
pub async fn policy_domain(
    dns: &MessageAuthenticator,
    from_domain: &str,
) -> Result<Option<(String, Vec<(String, usize)>)>, ReportError> {
    let labels: Vec<&str> = from_domain.split('.').filter(|l| !l.is_empty()).collect();
    for skip in 0..labels.len().saturating_sub(1).min(8) {
        let name = labels[skip..].join(".");
        match dns
            .txt_lookup::<Dmarc>(format!("_dmarc.{name}."), None::<&NoCache<Box<str>, Txt>>)
            .await
        {
            Ok(record) => {
                // The first few destinations only: a record listing
                // hundreds would make one pass queue hundreds of copies.
                let rua = record
                    .rua
                    .iter()
                    .take(super::MAX_DESTINATIONS)
                    .map(|u| (u.uri().to_owned(), u.max_size()))
                    .collect();
                return Ok(Some((name, rua)));
            }
            Err(Error::Dns(DnsError::RecordNotFound(_)))
            | Err(Error::Dns(DnsError::InvalidRecordType)) => {}
            Err(e) => return Err(ReportError::Dns(format!("_dmarc.{name}: {e}"))),
        }
    }
    Ok(None)
}

/// The `rua` addresses that may receive the policy domain's reports:
/// RFC 7489 §7.1, an address in another domain only when that domain
/// publishes `<policy-domain>._report._dmarc.<its domain>` with
/// `v=DMARC1`. Err: the lookups failed (try again next time).
pub async fn authorized_destinations(
    dns: &MessageAuthenticator,
    policy_domain: &str,
    rua: &[(String, usize)],
) -> Result<Vec<(String, usize)>, ReportError> {
    let addresses: Vec<&str> = rua
        .iter()
        // Peer-published: only plain addresses are mailed.
        .filter(|(a, _)| postern_core::address::Address::parse(a, false).is_ok())
        .map(|(a, _)| a.as_str())
        .collect();
    let ok = dns
        .verify_dmarc_report_address(policy_domain, &addresses, None::<&NoCache<Box<str>, Txt>>)
        .await
        .ok_or_else(|| {
            ReportError::Dns(format!(
                "verifying the report destinations of {policy_domain}"
            ))
        })?;
    Ok(rua
        .iter()
        .filter(|(a, _)| ok.iter().any(|o| **o == a.as_str()))
        .cloned()
        .collect())
}

/// The aggregate report of `pending` (observations of one or more From
/// domains under one policy domain) for the period up to `end` (unix ms).
pub fn build(
    policy_domain: &str,
    pending: &[&DmarcPending],
    org_name: &str,
    email: &str,
    report_id: &str,
    end: i64,
) -> Result<(Report, StoredPolicy), ReportError> {
    let newest = pending
        .iter()
        .max_by_key(|p| p.up_to)
        .ok_or_else(|| ReportError::Data("nothing to report".into()))?;
    let mut policy: StoredPolicy = serde_json::from_str(&newest.policy)
        .map_err(|e| ReportError::Data(format!("stored policy: {e}")))?;
    policy.published.domain = policy_domain.to_owned();
    let begin = pending.iter().map(|p| p.first_at).min().unwrap_or(end);
    let mut report = Report::new()
        // RFC 7489 appendix C: version 1.0 of the format.
        .with_version(1.0)
        .with_org_name(org_name)
        .with_email(email)
        .with_report_id(report_id)
        .with_date_range_begin((begin / 1000).max(0) as u64)
        .with_date_range_end((end / 1000).max(0) as u64)
        .with_policy_published(policy.published.clone());
    for p in pending {
        for (row, count) in &p.rows {
            let mut record: Record = serde_json::from_str(row)
                .map_err(|e| ReportError::Data(format!("stored row: {e}")))?;
            record.row.count = u32::try_from(*count).unwrap_or(u32::MAX);
            report.add_record(record);
        }
    }
    Ok((report, policy))
}

/// The report as a mail to `to` (RFC 7489 §7.2.1.1: the gzipped XML as an
/// attachment, the subject naming the domain, the submitter and the id).
pub fn message(
    report: &Report,
    submitter: &str,
    from: &str,
    to: &str,
) -> Result<Vec<u8>, ReportError> {
    report
        .to_rfc5322(submitter, from, std::iter::once(to))
        .map(String::into_bytes)
        .map_err(|e| ReportError::Data(format!("writing the report: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(domain: &str, policy: &StoredPolicy, rows: &[(Record, u64)]) -> DmarcPending {
        DmarcPending {
            from_domain: domain.into(),
            policy: serde_json::to_string(policy).unwrap(),
            rows: rows
                .iter()
                .map(|(r, n)| (serde_json::to_string(r).unwrap(), *n))
                .collect(),
            first_at: 1_700_000_000_000,
            last_at: 1_700_000_100_000,
            up_to: 3,
        }
    }

    /// The "a DMARC aggregate report produced and parsed back":
    /// what `build` and `message` make, mail-auth's parser reads back as
    /// the same report, counts and results included.
    #[test]
    fn a_report_is_produced_and_parsed_back() {
        use mail_auth::common::parse::TxtRecordParser;
        let record = Dmarc::parse(
            b"v=DMARC1; p=quarantine; sp=reject; adkim=s; rua=mailto:agg@sender.test!50k",
        )
        .unwrap();
        let policy = StoredPolicy {
            published: PolicyPublished::from_record("mail.sender.test", &record),
            rua: vec![("agg@sender.test".into(), 50 * 1024)],
        };
        let pass = Record::new()
            .with_source_ip("192.0.2.7".parse().unwrap())
            .with_action_disposition(ActionDisposition::None)
            .with_envelope_from("sender.test")
            .with_header_from("mail.sender.test")
            .with_dkim_auth_result(
                mail_auth::report::DKIMAuthResult::new()
                    .with_domain("sender.test")
                    .with_selector("s1")
                    .with_result(mail_auth::report::DkimResult::Pass),
            );
        let fail = Record::new()
            .with_source_ip("2001:db8::9".parse().unwrap())
            .with_action_disposition(ActionDisposition::Quarantine)
            .with_envelope_from("evil.test")
            .with_header_from("sender.test");
        let a = pending("mail.sender.test", &policy, &[(pass.clone(), 3)]);
        let b = pending("sender.test", &policy, &[(fail.clone(), 1)]);
        let (report, stored) = build(
            "sender.test",
            &[&a, &b],
            "Postern Test",
            "postmaster@postern.test",
            "r-1",
            1_700_086_400_000,
        )
        .unwrap();
        assert_eq!(stored.rua, vec![("agg@sender.test".into(), 50 * 1024)]);
        let mail = message(
            &report,
            "postern.test",
            "postmaster@postern.test",
            "agg@sender.test",
        )
        .unwrap();
        let parsed = Report::parse_rfc5322(&mail, 1 << 20).expect("parsed back");
        assert_eq!(parsed.domain(), "sender.test");
        assert_eq!(parsed.org_name(), "Postern Test");
        assert_eq!(parsed.report_id(), "r-1");
        assert_eq!(parsed.date_range_begin(), 1_700_000_000);
        assert_eq!(parsed.date_range_end(), 1_700_086_400);
        assert_eq!(parsed.p(), mail_auth::report::Disposition::Quarantine);
        assert_eq!(parsed.sp(), mail_auth::report::Disposition::Reject);
        assert_eq!(parsed.adkim(), mail_auth::report::Alignment::Strict);
        let records = parsed.records();
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].count(), 3);
        assert_eq!(records[0].source_ip(), Some("192.0.2.7".parse().unwrap()));
        assert_eq!(records[0].header_from(), "mail.sender.test");
        assert_eq!(records[0].dkim_auth_result()[0].selector(), "s1");
        assert_eq!(records[1].count(), 1);
        assert_eq!(
            records[1].action_disposition(),
            ActionDisposition::Quarantine
        );
        assert_eq!(records[1].source_ip(), Some("2001:db8::9".parse().unwrap()));
        // The whole report survives the round trip, not only what is
        // checked above.
        assert_eq!(parsed, report);
    }
}
