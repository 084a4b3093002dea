//! What Postern says about DANE outside the delivery path: the `/healthz`
//! line, and `postern check-config --probe-dns`.

use std::sync::Arc;
use std::time::SystemTime;

use postern_core::Config;
use postern_delivery::dnssec_probe::{DaneStatus, ProbeResult};
use postern_delivery::{DaneState, DnssecProbe, MxResolver};

/// Why DANE is not in play at all, if it is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unused {
    /// `dns.dane = false`.
    Off,
    /// A `"*"` route: no mail goes through MX.
    AllRouted,
}

/// The `dane:` line of `/healthz`.
pub struct DaneHealth {
    pub probe: Option<Arc<DnssecProbe>>,
    pub unused: Option<Unused>,
    pub required: bool,
}

impl postern_api::HealthDetail for DaneHealth {
    fn line(&self) -> String {
        match (self.unused, &self.probe) {
            (Some(Unused::Off), _) | (None, None) => "dane: off (dns.dane = false)".into(),
            (Some(Unused::AllRouted), _) => {
                "dane: not used (a \"*\" route sends every domain to a fixed next hop)".into()
            }
            (None, Some(p)) => describe(&p.status(), self.required, SystemTime::now()),
        }
    }

    fn degraded(&self) -> bool {
        self.required
            && self.unused.is_none()
            && self
                .probe
                .as_ref()
                .is_some_and(|p| p.state() == DaneState::Inactive)
    }
}

/// "dane: inactive; …" from a probe's status.
pub fn describe(status: &DaneStatus, required: bool, now: SystemTime) -> String {
    let mut line = format!("dane: {}", status.state.as_str());
    match status.state {
        DaneState::Active => {}
        DaneState::Inactive if required => line.push_str(
            " (the resolver path does not supply DNSSEC data that validates; \
             dns.dane_required: MX mail is deferred)",
        ),
        DaneState::Inactive => line.push_str(
            " (the resolver path does not supply DNSSEC data that validates; \
             MX mail uses the usual TLS policy)",
        ),
        DaneState::Unknown => line.push_str(" (not probed yet)"),
    }
    if let Some(last) = &status.last {
        let ago = now
            .duration_since(last.at)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let result = match &last.result {
            ProbeResult::Secure => "validated".to_owned(),
            ProbeResult::NotValidated(why) => format!("not validated: {why}"),
        };
        line.push_str(&format!(
            "; last probe ({} SOA) {ago}s ago: {result}",
            status.zone
        ));
    }
    line
}

/// `check-config --probe-dns`: asks the configured resolver once and says
/// whether DANE would be active.
pub async fn probe_for_check(config: &Config) -> anyhow::Result<String> {
    if !config.dns.dane {
        return Ok("DANE: off (dns.dane = false)".into());
    }
    let resolver =
        MxResolver::with_dnssec(&config.dns.nameservers, None).map_err(anyhow::Error::msg)?;
    let Some(probe) = resolver.dane_probe() else {
        return Ok("DANE: off".into());
    };
    let verdict = match probe.probe().await {
        ProbeResult::Secure => {
            "DANE: would be active (the resolver path supplies DNSSEC data that validates)"
                .to_owned()
        }
        ProbeResult::NotValidated(why) if config.dns.dane_required => format!(
            "DANE: would be INACTIVE ({why}); dns.dane_required is set, so MX mail would be deferred"
        ),
        ProbeResult::NotValidated(why) => format!(
            "DANE: would be inactive ({why}); MX mail would use the usual TLS policy"
        ),
    };
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use postern_delivery::dnssec_probe::ProbeReport;
    use std::time::Duration;

    #[test]
    fn health_lines_say_what_happens_to_mail() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let inactive = DaneStatus {
            state: DaneState::Inactive,
            zone: ".".into(),
            last: Some(ProbeReport {
                result: ProbeResult::NotValidated("no RRSIG".into()),
                at,
            }),
        };
        let now = at + Duration::from_secs(42);
        let line = describe(&inactive, false, now);
        assert!(line.starts_with("dane: inactive"), "{line}");
        assert!(line.contains("usual TLS policy"), "{line}");
        assert!(line.contains("42s ago: not validated: no RRSIG"), "{line}");
        assert!(describe(&inactive, true, now).contains("deferred"));
        let active = DaneStatus {
            state: DaneState::Active,
            zone: ".".into(),
            last: Some(ProbeReport {
                result: ProbeResult::Secure,
                at,
            }),
        };
        assert_eq!(
            describe(&active, false, now),
            "dane: active; last probe (. SOA) 42s ago: validated"
        );
    }
}
