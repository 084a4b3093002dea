//! Checking what a domain owner published against what Postern asked for:
//! each record found, missing, or wrong and why.

use crate::records::DnsRecord;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Found,
    Missing,
    Wrong(String),
}

#[derive(Debug, Clone)]
pub struct Checked {
    pub record: DnsRecord,
    pub status: Status,
}

/// The value of a tag in a `k=v; k=v` record (DKIM, DMARC), whitespace
/// removed as RFC 6376 §3.2 allows inside values.
fn tag(record: &str, name: &str) -> Option<String> {
    record.split(';').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == name).then(|| v.split_whitespace().collect::<String>())
    })
}

/// Compares one expected record with the values DNS returned for its name
/// and type (TXT strings joined; MX as `pref host`).
pub fn check(expected: &DnsRecord, found: &[String]) -> Status {
    let value = &expected.value;
    if value.starts_with("v=DKIM1") {
        let keys: Vec<&String> = found.iter().filter(|f| tag(f, "p").is_some()).collect();
        if keys.is_empty() {
            return Status::Missing;
        }
        let want = tag(value, "p");
        if keys
            .iter()
            .any(|f| tag(f, "p") == want && tag(f, "k") == tag(value, "k"))
        {
            Status::Found
        } else {
            Status::Wrong("a different key is published under this selector".into())
        }
    } else if value.starts_with("v=spf1") {
        let spf: Vec<&String> = found.iter().filter(|f| f.starts_with("v=spf1")).collect();
        match spf.as_slice() {
            [] => Status::Missing,
            [one] => {
                // Every mechanism Postern asked for must be there; the
                // owner's own ones may be too.
                let have: Vec<&str> = one.split_whitespace().collect();
                let lacking: Vec<&str> = value
                    .split_whitespace()
                    .skip(1)
                    .filter(|m| !m.ends_with("all") && !have.contains(m))
                    .collect();
                if lacking.is_empty() {
                    Status::Found
                } else {
                    Status::Wrong(format!("does not authorize {}", lacking.join(" ")))
                }
            }
            // RFC 7208 §4.5: two SPF records make the result permerror.
            _ => Status::Wrong("more than one v=spf1 record (RFC 7208 §4.5: permerror)".into()),
        }
    } else if value.starts_with("v=DMARC1") {
        match found.iter().find(|f| f.starts_with("v=DMARC1")) {
            Some(f) if tag(f, "p").is_some() => Status::Found,
            Some(_) => Status::Wrong("no p= policy".into()),
            None => Status::Missing,
        }
    } else if value.starts_with("v=STSv1") {
        // RFC 8461 §3.1: any id will do; it is the owner's to change.
        if found.iter().any(|f| f.starts_with("v=STSv1")) {
            Status::Found
        } else {
            Status::Missing
        }
    } else if value.starts_with("v=TLSRPTv1") {
        if found.iter().any(|f| f.starts_with("v=TLSRPTv1")) {
            Status::Found
        } else {
            Status::Missing
        }
    } else if expected.rtype == "MX" {
        let host = value
            .split_whitespace()
            .last()
            .unwrap_or("")
            .trim_end_matches('.')
            .to_ascii_lowercase();
        if found.is_empty() {
            Status::Missing
        } else if found.iter().any(|f| {
            f.split_whitespace()
                .last()
                .is_some_and(|h| h.trim_end_matches('.').eq_ignore_ascii_case(&host))
        }) {
            Status::Found
        } else {
            Status::Wrong(format!("the MX does not point to {host}"))
        }
    } else if found.iter().any(|f| f == value) {
        Status::Found
    } else if found.is_empty() {
        Status::Missing
    } else {
        Status::Wrong("a different value is published".into())
    }
}

/// Verified when every required record is found.
pub fn verified(checked: &[Checked]) -> bool {
    checked
        .iter()
        .all(|c| !c.record.required || c.status == Status::Found)
}

/// Where records are looked up (Postern's resolver in service, a loopback
/// DNS server in tests).
pub trait RecordLookup: Send + Sync {
    /// The values at `name` of type `rtype` ("TXT": strings joined; "MX":
    /// "pref host").
    fn lookup<'a>(
        &'a self,
        name: &'a str,
        rtype: &'static str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<String>, String>> + Send + 'a>>;
}

/// Looks every record up and checks it.
pub async fn check_all(records: Vec<DnsRecord>, dns: &dyn RecordLookup) -> Vec<Checked> {
    let mut out = Vec::with_capacity(records.len());
    for record in records {
        let status = match dns.lookup(&record.name, record.rtype).await {
            Ok(values) => check(&record, &values),
            Err(e) => Status::Wrong(format!("lookup failed: {e}")),
        };
        out.push(Checked { record, status });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(rtype: &'static str, value: &str) -> DnsRecord {
        DnsRecord {
            name: "x".into(),
            rtype,
            value: value.into(),
            purpose: "",
            required: true,
            key: "test",
        }
    }

    #[test]
    fn dkim_spf_dmarc_mx() {
        let dkim = rec("TXT", "v=DKIM1; k=rsa; p=ABCD");
        assert_eq!(
            check(&dkim, &["v=DKIM1; k=rsa; p=AB CD".into()]),
            Status::Found
        );
        assert!(matches!(
            check(&dkim, &["v=DKIM1; k=rsa; p=ZZZZ".into()]),
            Status::Wrong(_)
        ));
        assert_eq!(check(&dkim, &["v=spf1 -all".into()]), Status::Missing);

        let spf = rec("TXT", "v=spf1 ip4:192.0.2.10 -all");
        assert_eq!(
            check(
                &spf,
                &["v=spf1 include:_spf.google.com ip4:192.0.2.10 ~all".into()]
            ),
            Status::Found
        );
        assert_eq!(
            check(&spf, &["v=spf1 ip4:192.0.2.99 -all".into()]),
            Status::Wrong("does not authorize ip4:192.0.2.10".into())
        );
        assert!(
            matches!(check(&spf, &["v=spf1 -all".into(), "v=spf1 a -all".into()]), Status::Wrong(w) if w.contains("permerror"))
        );

        let dmarc = rec("TXT", "v=DMARC1; p=none; rua=mailto:d@example.com");
        assert_eq!(check(&dmarc, &["v=DMARC1; p=reject".into()]), Status::Found);
        assert_eq!(check(&dmarc, &[]), Status::Missing);

        let mx = rec("MX", "10 mta.example.net.");
        assert_eq!(check(&mx, &["20 MTA.example.net".into()]), Status::Found);
        assert!(matches!(
            check(&mx, &["10 other.example".into()]),
            Status::Wrong(_)
        ));
    }
}
