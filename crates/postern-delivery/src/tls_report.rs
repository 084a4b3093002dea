//! What each TLS session attempt to a recipient domain's MX host leaves
//! for the domain's TLS-RPT report (RFC 8460): the policy applied (its
//! type, text and MX patterns, §4.4) and, for a failure, its result type
//! (§4.3) with the hosts involved. Written as the JSON of RFC 8460's
//! report fields, so the reporter reads each straight into the report.
//! Only MX deliveries are recorded: a static route's next hop is not the
//! recipient domain's to hear about.

use std::net::IpAddr;
use std::sync::Arc;

use postern_store::{ReportDataStore, TlsObservation};

/// RFC 8460 §4.4 policy types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyType {
    Sts,
    Tlsa,
    NoPolicyFound,
}

impl PolicyType {
    fn word(self) -> &'static str {
        match self {
            PolicyType::Sts => "sts",
            PolicyType::Tlsa => "tlsa",
            PolicyType::NoPolicyFound => "no-policy-found",
        }
    }
}

/// The policy a delivery to a recipient domain's MX went under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportPolicy {
    pub domain: String,
    pub kind: PolicyType,
    /// RFC 8460 §4.4 policy-string: the MTA-STS policy's lines, or the
    /// TLSA records in presentation form.
    pub strings: Vec<String>,
    /// RFC 8460 §4.4 mx-host: the MTA-STS policy's `mx` patterns.
    pub mx_host: Vec<String>,
}

impl ReportPolicy {
    pub fn new(domain: &str, kind: PolicyType) -> Self {
        ReportPolicy {
            domain: domain.to_ascii_lowercase(),
            kind,
            strings: Vec::new(),
            mx_host: Vec::new(),
        }
    }

    fn json(&self) -> String {
        serde_json::json!({
            "policy-type": self.kind.word(),
            "policy-string": self.strings,
            "policy-domain": self.domain,
            "mx-host": self.mx_host,
        })
        .to_string()
    }
}

/// RFC 8460 §4.3 result types Postern tells apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultType {
    StartTlsNotSupported,
    CertificateHostMismatch,
    CertificateExpired,
    CertificateNotTrusted,
    ValidationFailure,
    TlsaInvalid,
    DnssecInvalid,
    DaneRequired,
}

impl ResultType {
    pub fn word(self) -> &'static str {
        match self {
            ResultType::StartTlsNotSupported => "starttls-not-supported",
            ResultType::CertificateHostMismatch => "certificate-host-mismatch",
            ResultType::CertificateExpired => "certificate-expired",
            ResultType::CertificateNotTrusted => "certificate-not-trusted",
            ResultType::ValidationFailure => "validation-failure",
            ResultType::TlsaInvalid => "tlsa-invalid",
            ResultType::DnssecInvalid => "dnssec-invalid",
            ResultType::DaneRequired => "dane-required",
        }
    }

    /// The result type of a failed TLS handshake: the certificate errors
    /// rustls names, `tlsa-invalid` for a certificate the DANE TLSA
    /// records do not match, `validation-failure` for anything else
    /// (RFC 8460 §4.3.2.1: a general failure).
    pub fn of_handshake(error: &std::io::Error, dane: bool) -> Self {
        match error
            .get_ref()
            .and_then(|e| e.downcast_ref::<rustls::Error>())
        {
            Some(e) => Self::of_tls(e, dane),
            None => ResultType::ValidationFailure,
        }
    }

    /// As `of_handshake`, from the TLS library's own error.
    pub fn of_tls(error: &rustls::Error, dane: bool) -> Self {
        use rustls::CertificateError as C;
        match error {
            rustls::Error::InvalidCertificate(c) => match c {
                C::NotValidForName | C::NotValidForNameContext { .. } => {
                    ResultType::CertificateHostMismatch
                }
                C::Expired | C::ExpiredContext { .. } => ResultType::CertificateExpired,
                C::UnknownIssuer | C::BadSignature => ResultType::CertificateNotTrusted,
                _ => ResultType::ValidationFailure,
            },
            rustls::Error::General(_) if dane => ResultType::TlsaInvalid,
            _ => ResultType::ValidationFailure,
        }
    }
}

/// A failed session: RFC 8460 §4.4 failure-details.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub result: ResultType,
    pub sending_ip: Option<IpAddr>,
    pub mx_host: Option<String>,
    pub receiving_ip: Option<IpAddr>,
    /// What Postern saw (additional-information is a URI in RFC 8460;
    /// this goes to failure-reason-code, free text).
    pub reason: Option<String>,
}

impl Failure {
    fn json(&self) -> String {
        let mut v = serde_json::json!({ "result-type": self.result.word() });
        if let Some(o) = v.as_object_mut() {
            if let Some(ip) = self.sending_ip {
                o.insert("sending-mta-ip".into(), ip.to_string().into());
            }
            if let Some(h) = &self.mx_host {
                o.insert("receiving-mx-hostname".into(), h.clone().into());
            }
            if let Some(ip) = self.receiving_ip {
                o.insert("receiving-ip".into(), ip.to_string().into());
            }
            if let Some(r) = &self.reason {
                o.insert("failure-reason-code".into(), r.clone().into());
            }
        }
        v.to_string()
    }
}

/// Where session outcomes go; each write joins the store's next group
/// commit while the delivery goes on, and a failure costs the report a
/// session, never the delivery.
#[derive(Clone)]
pub struct TlsRecorder {
    store: Arc<dyn ReportDataStore>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

/// Recordings waiting for the store at most: past it (a store slower than
/// the sessions for long) a session is left out of the report and counted,
/// rather than tasks piling up without bound.
const MAX_IN_FLIGHT: usize = 1024;

impl TlsRecorder {
    pub fn new(store: Arc<dyn ReportDataStore>) -> Self {
        TlsRecorder {
            store,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        }
    }

    pub fn record(&self, policy: &ReportPolicy, failure: Option<Failure>) {
        let observation = TlsObservation {
            at: postern_core::time::now_millis(),
            policy_domain: policy.domain.clone(),
            policy: policy.json(),
            failure: failure.as_ref().map(Failure::json),
        };
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            metrics::counter!("postern_tls_report_records_dropped_total").increment(1);
            return;
        };
        let store = self.store.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = store.record_tls(observation).await {
                metrics::counter!("postern_tls_report_records_failed_total").increment(1);
                tracing::warn!(error = %e, "cannot record a TLS session for the TLS-RPT report");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_errors_map_to_result_types() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        let cert = |c| io(rustls::Error::InvalidCertificate(c));
        assert_eq!(
            ResultType::of_handshake(&cert(rustls::CertificateError::NotValidForName), false),
            ResultType::CertificateHostMismatch
        );
        assert_eq!(
            ResultType::of_handshake(&cert(rustls::CertificateError::Expired), false),
            ResultType::CertificateExpired
        );
        assert_eq!(
            ResultType::of_handshake(&cert(rustls::CertificateError::UnknownIssuer), false),
            ResultType::CertificateNotTrusted
        );
        let dane = || io(rustls::Error::General("no TLSA match".into()));
        assert_eq!(
            ResultType::of_handshake(&dane(), true),
            ResultType::TlsaInvalid
        );
        assert_eq!(
            ResultType::of_handshake(&dane(), false),
            ResultType::ValidationFailure
        );
        assert_eq!(
            ResultType::of_handshake(&std::io::Error::other("reset"), false),
            ResultType::ValidationFailure
        );
    }

    #[test]
    fn policies_and_failures_are_rfc_8460_fields() {
        let mut p = ReportPolicy::new("Example.TEST", PolicyType::Sts);
        p.mx_host = vec!["mx.example.test".into()];
        let v: serde_json::Value = serde_json::from_str(&p.json()).unwrap();
        assert_eq!(v["policy-type"], "sts");
        assert_eq!(v["policy-domain"], "example.test");
        assert_eq!(v["mx-host"][0], "mx.example.test");
        let f = Failure {
            result: ResultType::StartTlsNotSupported,
            sending_ip: Some("127.0.0.1".parse().unwrap()),
            mx_host: Some("mx.example.test".into()),
            receiving_ip: Some("127.0.0.2".parse().unwrap()),
            reason: None,
        };
        let v: serde_json::Value = serde_json::from_str(&f.json()).unwrap();
        assert_eq!(v["result-type"], "starttls-not-supported");
        assert_eq!(v["receiving-ip"], "127.0.0.2");
        assert!(v.get("failure-reason-code").is_none());
    }
}
