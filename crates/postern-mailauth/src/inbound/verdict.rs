//! What is done with an inbound message, from what its checks found and
//! the relay domain's rules. Pure: the checks are `super`'s.

use postern_core::config::{CheckFailure, InboundAction};

/// A relay domain's rules (`[inbound_auth]`, overridden per domain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Apply the sender's DMARC `p=` (RFC 7489 §6.3).
    pub honor_sender_policy: bool,
    /// The least done with mail failing DMARC (local policy; it can only
    /// make the sender's stricter).
    pub dmarc_fail: InboundAction,
    /// Done with mail whose MAIL FROM identity fails SPF.
    pub spf_fail: InboundAction,
    /// Answer 451 when DMARC could not be evaluated for now.
    pub defer_temperror: bool,
}

impl Rules {
    /// These rules with what a relay domain's or a sender's entry sets
    /// over them (None keeps ours).
    pub fn overridden(
        self,
        honor_sender_policy: Option<bool>,
        dmarc_fail: Option<InboundAction>,
        spf_fail: Option<InboundAction>,
        dmarc_temperror: Option<CheckFailure>,
    ) -> Rules {
        Rules {
            honor_sender_policy: honor_sender_policy.unwrap_or(self.honor_sender_policy),
            dmarc_fail: dmarc_fail.unwrap_or(self.dmarc_fail),
            spf_fail: spf_fail.unwrap_or(self.spf_fail),
            defer_temperror: dmarc_temperror
                .map_or(self.defer_temperror, |t| t == CheckFailure::Defer),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DmarcState {
    Pass,
    Fail,
    TempError,
    PermError,
    /// No policy published (or no single From domain): DMARC does not apply.
    None,
}

impl DmarcState {
    pub fn word(self) -> &'static str {
        match self {
            DmarcState::Pass => "pass",
            DmarcState::Fail => "fail",
            DmarcState::TempError => "temperror",
            DmarcState::PermError => "permerror",
            DmarcState::None => "none",
        }
    }
}

/// The policy the From domain publishes (RFC 7489 §6.3 `p=`, or `sp=` for
/// a subdomain, as the DMARC check chose).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderPolicy {
    None,
    Quarantine,
    Reject,
}

impl SenderPolicy {
    fn word(self) -> &'static str {
        match self {
            SenderPolicy::None => "none",
            SenderPolicy::Quarantine => "quarantine",
            SenderPolicy::Reject => "reject",
        }
    }
}

/// What the checks found.
#[derive(Debug, Clone)]
pub struct Facts {
    /// SPF of the MAIL FROM identity (RFC 7208 §2.4) is `fail`.
    pub spf_fail: bool,
    /// The domain SPF was checked for (MAIL FROM, or HELO for `<>`).
    pub spf_domain: String,
    pub dmarc: DmarcState,
    pub policy: SenderPolicy,
    /// The RFC 5322 From domain.
    pub from_domain: String,
    /// A trusted forwarder's ARC sealer whose validated chain says the
    /// message passed DMARC there.
    pub forwarded_pass: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The strictest action any failure called for.
    pub action: InboundAction,
    /// Why the action is more than Accept, each failure that counted.
    pub reasons: Vec<String>,
    /// Refused: the reason for the client and the metric's label.
    pub refusal: Option<(String, &'static str)>,
    /// DMARC failed but was not enforced: why (RFC 7489 §6.7 override).
    pub overridden: Option<String>,
    /// Not decided now: DMARC could not be evaluated (the reason).
    pub deferred: Option<String>,
}

impl Decision {
    fn raise(&mut self, action: InboundAction, reason: String, label: &'static str) {
        if action == InboundAction::Accept {
            return;
        }
        if action == InboundAction::Reject && self.refusal.is_none() {
            self.refusal = Some((reason.clone(), label));
        }
        if action > self.action {
            self.action = action;
        }
        self.reasons.push(reason);
    }

    pub fn action_word(&self) -> &'static str {
        self.action.as_str()
    }

    /// The `X-Postern-Verdict:` field of a tagged message: the action and
    /// each reason, for the internal server to file or flag it by.
    pub fn verdict_field(&self) -> String {
        let mut f = format!("X-Postern-Verdict: {}", self.action_word());
        for r in &self.reasons {
            f.push_str(";\r\n\t");
            f.push_str(r);
        }
        f.push_str("\r\n");
        f
    }
}

/// Decides for one relay domain's rules.
pub fn decide(facts: &Facts, rules: &Rules) -> Decision {
    let mut d = Decision {
        action: InboundAction::Accept,
        reasons: Vec::new(),
        refusal: None,
        overridden: None,
        deferred: None,
    };
    if facts.dmarc == DmarcState::TempError && rules.defer_temperror {
        // RFC 7489 §6.6.2: with the policy unknown, a temporary failure
        // may be deferred; the sender's retry will find it.
        d.deferred = Some(format!(
            "DMARC could not be evaluated for {} now (temporary DNS error)",
            facts.from_domain
        ));
    }
    if facts.dmarc == DmarcState::Fail {
        if let Some(sealer) = &facts.forwarded_pass {
            // RFC 7489 §6.7 (local policy override, "trusted_forwarder")
            // and RFC 8617 §7.2: the forwarder saw the original pass.
            d.overridden = Some(format!(
                "trusted_forwarder: the ARC chain sealed by {sealer} validates and says DMARC passed"
            ));
        } else {
            let sender = if rules.honor_sender_policy {
                match facts.policy {
                    SenderPolicy::Reject => InboundAction::Reject,
                    SenderPolicy::Quarantine => InboundAction::Quarantine,
                    SenderPolicy::None => InboundAction::Accept,
                }
            } else {
                InboundAction::Accept
            };
            let local = rules.dmarc_fail;
            if sender >= local {
                d.raise(
                    sender,
                    format!(
                        "DMARC failed for {} (no aligned SPF or DKIM pass) and its policy is p={}",
                        facts.from_domain,
                        facts.policy.word()
                    ),
                    "dmarc_policy",
                );
            } else {
                d.raise(
                    local,
                    format!(
                        "DMARC failed for {} (no aligned SPF or DKIM pass); local policy for DMARC failures: {}",
                        facts.from_domain,
                        local.as_str()
                    ),
                    "dmarc_local",
                );
            }
        }
    }
    if facts.spf_fail {
        d.raise(
            rules.spf_fail,
            format!(
                "SPF failed for {}: the client is not a permitted sender (RFC 7208 section 8.4)",
                facts.spf_domain
            ),
            "spf",
        );
    }
    d
}

/// The DMARC resinfo of the Authentication-Results field (RFC 7489
/// §11.2): the result, the override reason if any, the From domain and
/// the sender's policy.
pub fn dmarc_resinfo(facts: &Facts, decision: &Decision) -> String {
    let mut s = format!(";\r\n\tdmarc={}", facts.dmarc.word());
    if let Some(why) = &decision.overridden {
        // RFC 8601 §2.2 reasonspec; `why` holds no quote or backslash.
        s.push_str(&format!(" reason=\"policy override: {why}\""));
    }
    if !facts.from_domain.is_empty() {
        s.push_str(&format!(" header.from={}", facts.from_domain));
    }
    if facts.dmarc != DmarcState::None {
        s.push_str(&format!(" policy.dmarc={}", facts.policy.word()));
    }
    s
}

/// A domain as it may appear in a header field Postern writes: letters,
/// digits, '.', '-' and '_' only (a peer-controlled From domain can hold
/// anything else, CR and LF included).
pub fn sanitize(domain: &str) -> String {
    domain
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .take(253)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use InboundAction::*;

    fn facts(dmarc: DmarcState, policy: SenderPolicy, spf_fail: bool) -> Facts {
        Facts {
            spf_fail,
            spf_domain: "bounce.sender.test".into(),
            dmarc,
            policy,
            from_domain: "sender.test".into(),
            forwarded_pass: None,
        }
    }

    const DEFAULT: Rules = Rules {
        honor_sender_policy: true,
        dmarc_fail: Accept,
        spf_fail: Tag,
        defer_temperror: false,
    };

    #[test]
    fn a_dmarc_temperror_defers_only_when_told() {
        let deferring = Rules {
            defer_temperror: true,
            ..DEFAULT
        };
        let d = decide(
            &facts(DmarcState::TempError, SenderPolicy::None, false),
            &deferring,
        );
        assert!(
            d.deferred.as_deref().unwrap().contains("sender.test"),
            "{d:?}"
        );
        assert_eq!((d.action, d.refusal), (Accept, None));
        for state in [
            DmarcState::Pass,
            DmarcState::Fail,
            DmarcState::PermError,
            DmarcState::None,
        ] {
            let d = decide(&facts(state, SenderPolicy::None, false), &deferring);
            assert_eq!(d.deferred, None, "{state:?}");
        }
        let d = decide(
            &facts(DmarcState::TempError, SenderPolicy::None, false),
            &DEFAULT,
        );
        assert_eq!(d.deferred, None);
    }

    #[test]
    fn the_senders_policy_applies_to_dmarc_failures_only() {
        let reject = decide(
            &facts(DmarcState::Fail, SenderPolicy::Reject, false),
            &DEFAULT,
        );
        assert_eq!(reject.action, Reject);
        let (reason, label) = reject.refusal.unwrap();
        assert_eq!(label, "dmarc_policy");
        assert!(
            reason.contains("sender.test") && reason.contains("p=reject"),
            "{reason}"
        );
        // p=quarantine: held in the quarantine, not refused.
        let q = decide(
            &facts(DmarcState::Fail, SenderPolicy::Quarantine, false),
            &DEFAULT,
        );
        assert_eq!((q.action, q.refusal), (Quarantine, None));
        assert!(q.reasons[0].contains("p=quarantine"), "{:?}", q.reasons);
        assert_eq!(
            decide(
                &facts(DmarcState::Fail, SenderPolicy::None, false),
                &DEFAULT
            )
            .action,
            Accept
        );
        // A policy that is not failed is not applied, whatever it says.
        for state in [
            DmarcState::Pass,
            DmarcState::None,
            DmarcState::TempError,
            DmarcState::PermError,
        ] {
            let d = decide(&facts(state, SenderPolicy::Reject, false), &DEFAULT);
            assert_eq!(d.action, Accept, "{state:?}");
            assert!(d.reasons.is_empty());
        }
    }

    #[test]
    fn local_policy_is_stricter_never_weaker() {
        let strict = Rules {
            dmarc_fail: Reject,
            ..DEFAULT
        };
        let d = decide(&facts(DmarcState::Fail, SenderPolicy::None, false), &strict);
        assert_eq!(d.action, Reject);
        assert_eq!(d.refusal.unwrap().1, "dmarc_local");
        // A local "accept" does not undo the sender's p=reject...
        let d = decide(
            &facts(DmarcState::Fail, SenderPolicy::Reject, false),
            &DEFAULT,
        );
        assert_eq!(d.action, Reject);
        // ...unless the sender's policy is not honoured at all.
        let ignoring = Rules {
            honor_sender_policy: false,
            ..DEFAULT
        };
        let d = decide(
            &facts(DmarcState::Fail, SenderPolicy::Reject, false),
            &ignoring,
        );
        assert_eq!((d.action, d.refusal), (Accept, None));
        // A local "quarantine" holds what the sender's p=none would let in.
        let q = Rules {
            dmarc_fail: Quarantine,
            ..ignoring
        };
        assert_eq!(
            decide(&facts(DmarcState::Fail, SenderPolicy::None, false), &q).action,
            Quarantine
        );
    }

    #[test]
    fn spf_failure_takes_its_own_action_and_the_strictest_wins() {
        let d = decide(&facts(DmarcState::Pass, SenderPolicy::None, true), &DEFAULT);
        assert_eq!(d.action, Tag);
        assert!(
            d.reasons[0].contains("bounce.sender.test"),
            "{:?}",
            d.reasons
        );
        let accept = Rules {
            spf_fail: Accept,
            ..DEFAULT
        };
        let d = decide(&facts(DmarcState::Pass, SenderPolicy::None, true), &accept);
        assert_eq!((d.action, d.reasons.len()), (Accept, 0));
        let reject = Rules {
            spf_fail: Reject,
            ..DEFAULT
        };
        let d = decide(
            &facts(DmarcState::Fail, SenderPolicy::Quarantine, true),
            &reject,
        );
        assert_eq!(d.action, Reject);
        assert_eq!(d.refusal.unwrap().1, "spf");
        assert_eq!(d.reasons.len(), 2, "both failures are named");
    }

    #[test]
    fn a_trusted_forwarders_pass_overrides_dmarc_and_is_recorded() {
        let mut f = facts(DmarcState::Fail, SenderPolicy::Reject, false);
        f.forwarded_pass = Some("forwarder.test".into());
        let strict = Rules {
            dmarc_fail: Reject,
            ..DEFAULT
        };
        let d = decide(&f, &strict);
        assert_eq!((d.action, d.refusal.clone()), (Accept, None));
        let why = d.overridden.clone().unwrap();
        assert!(why.contains("forwarder.test"), "{why}");
        let resinfo = dmarc_resinfo(&f, &d);
        assert_eq!(
            resinfo,
            format!(";\r\n\tdmarc=fail reason=\"policy override: {why}\" header.from=sender.test policy.dmarc=reject")
        );
        // The override is DMARC's only: an SPF failure is still acted on.
        f.spf_fail = true;
        assert_eq!(decide(&f, &strict).action, Tag);
    }

    #[test]
    fn verdict_field_and_sanitized_domains() {
        let d = decide(
            &facts(DmarcState::Fail, SenderPolicy::Quarantine, true),
            &DEFAULT,
        );
        let field = d.verdict_field();
        assert!(
            field.starts_with("X-Postern-Verdict: quarantine;\r\n\tDMARC failed for sender.test")
        );
        assert!(field.contains(";\r\n\tSPF failed for bounce.sender.test"));
        // RFC 5322 §2.2: header fields are ASCII (and so are SMTP replies,
        // where the reasons of a refusal go).
        assert!(field.is_ascii(), "{field}");
        assert!(field.ends_with("\r\n") && !field[..field.len() - 2].contains("\r\n\r\n"));
        assert_eq!(
            sanitize("evil.test\r\nX-Injected: 1"),
            "evil.testX-Injected1"
        );
    }
}
