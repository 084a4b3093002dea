//! The DNS records a domain owner publishes so that mail Postern sends for
//! the domain authenticates: both DKIM keys, SPF, a starting DMARC policy,
//! the return-path (bounce) subdomain, and optionally MTA-STS and TLS-RPT.

use std::collections::BTreeMap;
use std::net::IpAddr;

use base64::Engine;

use crate::mta_sts_policy::ServedPolicy;
use crate::DkimKeys;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsRecord {
    /// Fully qualified, without the trailing dot.
    pub name: String,
    /// TXT, MX, CNAME.
    pub rtype: &'static str,
    pub value: String,
    /// What it is for, for people reading the list.
    pub purpose: &'static str,
    /// Verification needs it; optional ones are suggestions.
    pub required: bool,
    /// Its name in SendGrid's `dns` object (dkim1, mail_server, dmarc…).
    pub key: &'static str,
}

#[derive(Clone, Copy)]
pub struct DomainSetup<'a> {
    pub domain: &'a str,
    /// The selector base: keys are published at `<base>-rsa` and `<base>-ed`.
    pub selector: &'a str,
    pub keys: &'a DkimKeys,
    /// Postern's host name (where bounces to the return path arrive).
    pub mail_host: &'a str,
    /// The addresses mail leaves from (the IP pools); empty: the mail
    /// host's own addresses (`a:` mechanism).
    pub source_ips: &'a [IpAddr],
    /// The label of the return-path subdomain, e.g. `pst-bounces`.
    pub return_path_label: &'a str,
    /// Where DMARC aggregate reports go.
    pub dmarc_rua: &'a str,
    /// The id of the MTA-STS policy Postern serves for the domain
    /// (`[[mta_sts]]`); None: no policy, so no `_mta-sts` record.
    pub mta_sts_id: Option<&'a str>,
}

impl DomainSetup<'_> {
    pub fn rsa_selector(&self) -> String {
        format!("{}-rsa", self.selector)
    }

    pub fn ed25519_selector(&self) -> String {
        format!("{}-ed", self.selector)
    }

    pub fn return_path_domain(&self) -> String {
        format!("{}.{}", self.return_path_label, self.domain)
    }

    fn spf(&self, all: &str) -> String {
        let mut v = String::from("v=spf1");
        if self.source_ips.is_empty() {
            v.push_str(&format!(" a:{}", self.mail_host));
        }
        for ip in self.source_ips {
            match ip {
                IpAddr::V4(a) => v.push_str(&format!(" ip4:{a}")),
                IpAddr::V6(a) => v.push_str(&format!(" ip6:{a}")),
            }
        }
        v.push(' ');
        v.push_str(all);
        v
    }

    pub fn records(&self) -> Vec<DnsRecord> {
        let b64 = |k: &[u8]| base64::engine::general_purpose::STANDARD.encode(k);
        let mut records = vec![
            DnsRecord {
                name: format!("{}._domainkey.{}", self.rsa_selector(), self.domain),
                rtype: "TXT",
                value: format!("v=DKIM1; k=rsa; p={}", b64(&self.keys.rsa_public)),
                purpose: "DKIM key (RSA-2048)",
                required: true,
                key: "dkim1",
            },
            DnsRecord {
                name: format!("{}._domainkey.{}", self.ed25519_selector(), self.domain),
                rtype: "TXT",
                // RFC 8463 §4.2: k=ed25519, p= the raw public key.
                value: format!("v=DKIM1; k=ed25519; p={}", b64(&self.keys.ed25519_public)),
                purpose: "DKIM key (Ed25519, RFC 8463)",
                required: true,
                key: "dkim2",
            },
            DnsRecord {
                name: self.return_path_domain(),
                rtype: "MX",
                value: format!("10 {}.", self.mail_host),
                purpose: "return path: bounces come back to Postern",
                required: true,
                key: "mail_server",
            },
            DnsRecord {
                name: self.return_path_domain(),
                rtype: "TXT",
                value: self.spf("-all"),
                purpose: "SPF for the return path (the envelope sender's domain)",
                required: true,
                key: "subdomain_spf",
            },
            DnsRecord {
                name: self.domain.to_owned(),
                rtype: "TXT",
                value: self.spf("~all"),
                purpose:
                    "SPF for the domain itself (merge into an existing v=spf1 record: one per name)",
                required: false,
                key: "domain_spf",
            },
            DnsRecord {
                name: format!("_dmarc.{}", self.domain),
                rtype: "TXT",
                value: format!("v=DMARC1; p=none; rua=mailto:{}", self.dmarc_rua),
                purpose: "DMARC, monitoring only to start with",
                required: true,
                key: "dmarc",
            },
            DnsRecord {
                name: format!("_smtp._tls.{}", self.domain),
                rtype: "TXT",
                value: format!("v=TLSRPTv1; rua=mailto:{}", self.dmarc_rua),
                purpose: "TLS-RPT reports (RFC 8460), optional",
                required: false,
                key: "tls_rpt",
            },
        ];
        if let Some(id) = self.mta_sts_id {
            records.push(DnsRecord {
                name: format!("_mta-sts.{}", self.domain),
                rtype: "TXT",
                // RFC 8461 §3.1: the id changes whenever the policy does
                // (it is derived from the policy's content).
                value: format!("v=STSv1; id={id}"),
                purpose: "MTA-STS (RFC 8461) for mail *to* the domain, optional: Postern serves the policy ([[mta_sts]]) at https://mta-sts.<domain>/.well-known/mta-sts.txt (HTTPS in front of the HTTP listener)",
                required: false,
                key: "mta_sts",
            });
        }
        records
    }
}

/// TXT data as zone-file strings: RFC 1035 §3.3.14 caps each string at 255
/// octets, so long keys are split into several quoted strings.
pub fn txt_strings(value: &str) -> String {
    value
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The records as a zone-file snippet, ready to paste.
pub fn zone_snippet(records: &[DnsRecord]) -> String {
    let mut out = String::new();
    for r in records {
        out.push_str(&format!(
            "; {}{}\n",
            r.purpose,
            if r.required { "" } else { " (optional)" }
        ));
        let value = if r.rtype == "TXT" {
            txt_strings(&r.value)
        } else {
            r.value.clone()
        };
        out.push_str(&format!("{}.\t3600\tIN\t{}\t{}\n", r.name, r.rtype, value));
    }
    out
}

/// What the records depend on besides the domain: Postern's host name and
/// the addresses mail leaves from.
#[derive(Debug, Clone, Default)]
pub struct Publishing {
    pub mail_host: String,
    pub source_ips: Vec<IpAddr>,
    /// The MTA-STS policies served, by policy domain (lowercase).
    pub mta_sts: BTreeMap<String, ServedPolicy>,
}

/// The records for a stored domain (`report_to` default: dmarc@<domain>):
/// those of its signing keys, then, during a key rotation, the new
/// selector's (required: they must be found before the new keys sign) and
/// the replaced selector's (kept published until the overlap ends).
pub fn records_for(
    d: &postern_store::DomainRecord,
    publishing: &Publishing,
    report_to: Option<&str>,
) -> Vec<DnsRecord> {
    let keys = DkimKeys {
        rsa_private: Vec::new(),
        rsa_public: d.rsa_public.clone(),
        ed25519_private: Vec::new(),
        ed25519_public: d.ed25519_public.clone(),
    };
    let rua = report_to
        .map(str::to_owned)
        .unwrap_or_else(|| format!("dmarc@{}", d.domain));
    let setup = DomainSetup {
        domain: &d.domain,
        selector: &d.selector,
        keys: &keys,
        mail_host: &publishing.mail_host,
        source_ips: &publishing.source_ips,
        return_path_label: &d.return_path,
        dmarc_rua: &rua,
        mta_sts_id: publishing
            .mta_sts
            .get(&d.domain.to_lowercase())
            .map(|p| p.id.as_str()),
    };
    let mut records = setup.records();
    // The two DKIM records of another selector (a rotation's), from the
    // same setup.
    let dkim_of = |selector: &str, rsa_public: &[u8], ed25519_public: &[u8]| {
        let keys = DkimKeys {
            rsa_private: Vec::new(),
            rsa_public: rsa_public.to_vec(),
            ed25519_private: Vec::new(),
            ed25519_public: ed25519_public.to_vec(),
        };
        DomainSetup {
            selector,
            keys: &keys,
            ..setup
        }
        .records()
        .into_iter()
        .take(2)
        .collect::<Vec<_>>()
    };
    if let Some(next) = &d.next {
        let new = dkim_of(&next.selector, &next.rsa_public, &next.ed25519_public);
        for (mut r, key) in new.into_iter().zip(["next_dkim1", "next_dkim2"]) {
            r.purpose = "DKIM key rotation: the new selector; it signs once found in DNS";
            r.key = key;
            records.push(r);
        }
    }
    if let Some(previous) = &d.previous {
        let old = dkim_of(
            &previous.selector,
            &previous.rsa_public,
            &previous.ed25519_public,
        );
        for (mut r, key) in old.into_iter().zip(["previous_dkim1", "previous_dkim2"]) {
            r.purpose = "DKIM key rotation: the replaced selector; keep it published until the overlap ends (postern domain show), then remove it";
            r.required = false;
            r.key = key;
            records.push(r);
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> DkimKeys {
        DkimKeys {
            rsa_private: vec![],
            rsa_public: vec![7; 270],
            ed25519_private: vec![],
            ed25519_public: vec![9; 32],
        }
    }

    #[test]
    fn records_for_a_domain() {
        let keys = keys();
        let ips: Vec<IpAddr> = vec![
            "192.0.2.10".parse().unwrap(),
            "2001:db8::10".parse().unwrap(),
        ];
        let setup = DomainSetup {
            domain: "example.com",
            selector: "pst1",
            keys: &keys,
            mail_host: "mta.example.net",
            source_ips: &ips,
            return_path_label: "pst-bounces",
            dmarc_rua: "dmarc@example.com",
            mta_sts_id: Some("0a1b"),
        };
        let r = setup.records();
        let by = |name: &str, t: &str| {
            r.iter()
                .find(|x| x.name == name && x.rtype == t)
                .unwrap()
                .value
                .clone()
        };
        assert!(by("pst1-rsa._domainkey.example.com", "TXT").starts_with("v=DKIM1; k=rsa; p=BwcH"));
        assert_eq!(
            by("pst1-ed._domainkey.example.com", "TXT"),
            format!(
                "v=DKIM1; k=ed25519; p={}",
                base64::engine::general_purpose::STANDARD.encode([9u8; 32])
            )
        );
        assert_eq!(by("pst-bounces.example.com", "MX"), "10 mta.example.net.");
        assert_eq!(
            by("pst-bounces.example.com", "TXT"),
            "v=spf1 ip4:192.0.2.10 ip6:2001:db8::10 -all"
        );
        assert_eq!(
            by("_dmarc.example.com", "TXT"),
            "v=DMARC1; p=none; rua=mailto:dmarc@example.com"
        );
        let zone = zone_snippet(&r);
        // Each TXT string at most 255 octets: the RSA key spans several.
        for line in zone.lines().filter(|l| l.contains("k=rsa")) {
            assert!(line.matches("\" \"").count() >= 1, "{line}");
        }
        let none = DomainSetup {
            source_ips: &[],
            ..setup
        };
        assert_eq!(none.records()[3].value, "v=spf1 a:mta.example.net -all");
    }

    /// README: `postern domain add` prints both DKIM keys, the return-path
    /// MX and SPF, SPF, DMARC `p=none`, "and optionally TLS-RPT and
    /// MTA-STS": which records verification requires, and the two optional
    /// ones (RFC 8460 §3, RFC 8461 §3.1), marked so in the zone snippet.
    #[test]
    fn tls_rpt_and_mta_sts_are_printed_as_optional() {
        let keys = keys();
        let setup = DomainSetup {
            domain: "example.com",
            selector: "pst1",
            keys: &keys,
            mail_host: "mta.example.net",
            source_ips: &[],
            return_path_label: "pst-bounces",
            dmarc_rua: "dmarc@example.com",
            mta_sts_id: Some("0a1b"),
        };
        let records = setup.records();
        let listed: Vec<(&str, &str, bool)> = records
            .iter()
            .map(|r| (r.name.as_str(), r.rtype, r.required))
            .collect();
        assert_eq!(
            listed,
            [
                ("pst1-rsa._domainkey.example.com", "TXT", true),
                ("pst1-ed._domainkey.example.com", "TXT", true),
                ("pst-bounces.example.com", "MX", true),
                ("pst-bounces.example.com", "TXT", true),
                ("example.com", "TXT", false),
                ("_dmarc.example.com", "TXT", true),
                ("_smtp._tls.example.com", "TXT", false),
                ("_mta-sts.example.com", "TXT", false),
            ]
        );
        let value = |name: &str| {
            records
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.value.clone())
                .unwrap()
        };
        assert_eq!(
            value("_smtp._tls.example.com"),
            "v=TLSRPTv1; rua=mailto:dmarc@example.com"
        );
        assert_eq!(value("_mta-sts.example.com"), "v=STSv1; id=0a1b");
        // Without a policy served for the domain, no `_mta-sts` record:
        // one would announce a policy that is not there.
        let without = DomainSetup {
            mta_sts_id: None,
            ..setup
        };
        assert!(!without
            .records()
            .iter()
            .any(|r| r.name.starts_with("_mta-sts.")));
        // In the zone snippet each record follows its comment line.
        let zone = zone_snippet(&records);
        let lines: Vec<&str> = zone.lines().collect();
        for name in ["_smtp._tls.example.com.", "_mta-sts.example.com."] {
            let at = lines.iter().position(|l| l.starts_with(name)).unwrap();
            assert!(
                lines[at - 1].starts_with("; ") && lines[at - 1].ends_with("(optional)"),
                "{name}: {zone}"
            );
        }
    }

    #[test]
    fn long_txt_values_split_at_255() {
        let v = "x".repeat(600);
        let s = txt_strings(&v);
        assert_eq!(s.matches('"').count(), 6);
        assert!(s.starts_with(&format!("\"{}\" ", "x".repeat(255))));
    }
}
