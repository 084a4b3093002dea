//! `[content]`: what `mx` listeners check in the content of mail that
//! arrives without AUTH, once it is authenticated (viruses, spam, listed
//! URLs, attachments), and what is done with what a check finds. Each
//! check has its own table; a check without one is off.

use serde::{Deserialize, Serialize};

use super::{invalid, ConfigError, InboundAction};

/// What is done with a message a content check could not finish (a
/// scanner down or past its time limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckFailure {
    /// `451 4.3.0`: the client keeps the message and tries again later.
    Defer,
    /// Accepted unchecked, with the failure in the summary and the log
    /// (for operators who would rather take the risk than delay mail).
    Accept,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContentConfig {
    /// What is done when a check cannot give an answer.
    pub on_error: CheckFailure,
    /// Per relay domain: stricter or looser actions than the defaults.
    pub domain: Vec<ContentDomainPolicy>,
}

/// `[[content.domain]]`: a relay domain's own actions for what the
/// content checks find. A message for several relay domains gets the
/// strictest action among its recipients' domains.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentDomainPolicy {
    pub domain: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_error: Option<CheckFailure>,
}

impl Default for ContentConfig {
    fn default() -> Self {
        ContentConfig {
            on_error: CheckFailure::Defer,
            domain: Vec::new(),
        }
    }
}

impl ContentConfig {
    pub(super) fn validate(&self, relay_domains: &[String]) -> Result<(), ConfigError> {
        let mut seen = std::collections::HashSet::new();
        for (i, p) in self.domain.iter().enumerate() {
            let d = p.domain.to_lowercase();
            if !relay_domains.iter().any(|r| r.eq_ignore_ascii_case(&d)) {
                return Err(invalid(
                    format!("content.domain[{i}].domain"),
                    format!("{} is not one of relay.domains", p.domain),
                ));
            }
            if !seen.insert(d) {
                return Err(invalid(
                    format!("content.domain[{i}].domain"),
                    format!("{} has more than one [[content.domain]]", p.domain),
                ));
            }
        }
        Ok(())
    }

    /// The action for a message to `domains` (its recipients' domains):
    /// the strictest of each domain's own (`pick`) or, for a domain with
    /// none, `default`.
    pub fn action<'a>(
        &self,
        domains: impl IntoIterator<Item = &'a str>,
        pick: impl Fn(&ContentDomainPolicy) -> Option<InboundAction>,
        default: InboundAction,
    ) -> InboundAction {
        domains
            .into_iter()
            .map(|d| {
                self.domain
                    .iter()
                    .find(|p| p.domain.eq_ignore_ascii_case(d))
                    .and_then(&pick)
                    .unwrap_or(default)
            })
            .max()
            .unwrap_or(default)
    }

    /// What is done when a check fails, for a message to `domains`:
    /// deferred if any of its domains says so.
    pub fn on_error<'a>(&self, domains: impl IntoIterator<Item = &'a str>) -> CheckFailure {
        let defer = domains.into_iter().any(|d| {
            self.domain
                .iter()
                .find(|p| p.domain.eq_ignore_ascii_case(d))
                .and_then(|p| p.on_error)
                .unwrap_or(self.on_error)
                == CheckFailure::Defer
        });
        if defer {
            CheckFailure::Defer
        } else {
            CheckFailure::Accept
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;

    #[test]
    fn defaults_defer_on_error_and_name_no_domain() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.content.on_error, CheckFailure::Defer);
        assert!(c.content.domain.is_empty());
    }

    #[test]
    fn domain_overrides_name_relay_domains_once() {
        let e = Config::parse(
            "[relay]\ndomains = [\"a.test\"]\nrecipient_check = \"any\"\n[[content.domain]]\ndomain = \"b.test\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("content.domain[0].domain"), "{e}");
        let e = Config::parse(
            "[relay]\ndomains = [\"a.test\"]\nrecipient_check = \"any\"\n[[content.domain]]\ndomain = \"a.test\"\n[[content.domain]]\ndomain = \"A.test\"\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("more than one"), "{e}");
    }

    #[test]
    fn the_strictest_domain_decides() {
        let c = Config::parse(
            "[relay]\ndomains = [\"a.test\", \"b.test\", \"c.test\"]\nrecipient_check = \"any\"\n[content]\non_error = \"accept\"\n[[content.domain]]\ndomain = \"a.test\"\non_error = \"defer\"\n[[content.domain]]\ndomain = \"b.test\"\n",
        )
        .unwrap()
        .content;
        // `pick` stands in for a check's own per-domain key.
        let pick =
            |p: &ContentDomainPolicy| (p.domain == "a.test").then_some(InboundAction::Reject);
        assert_eq!(
            c.action(["b.test", "c.test"], pick, InboundAction::Tag),
            InboundAction::Tag
        );
        assert_eq!(
            c.action(["c.test", "A.TEST"], pick, InboundAction::Tag),
            InboundAction::Reject
        );
        assert_eq!(c.on_error(["b.test", "c.test"]), CheckFailure::Accept);
        assert_eq!(c.on_error(["b.test", "a.test"]), CheckFailure::Defer);
    }
}
