//! Turning the checks' findings into one verdict for the intake.

use postern_core::config::{CheckFailure, InboundAction};
use postern_queue::InboundVerdict;

use crate::Finding;

/// Header field the checks' tag goes in: the action and each reason, for
/// the internal server to file or flag the message by. Apart from the
/// authentication's `X-Postern-Verdict`, so each says what it decided.
pub(crate) const CONTENT_VERDICT_FIELD: &str = "X-Postern-Content";

/// Removes forged copies of `names` (and of our verdict field); returns
/// how many went.
pub(crate) fn remove_fields(message: &mut Vec<u8>, names: &[&str]) -> usize {
    let mut all: Vec<&str> = names.to_vec();
    all.push(CONTENT_VERDICT_FIELD);
    postern_core::header_section::remove_named(message, &all)
}

/// The strictest action found decides: reject refuses with the reasons of
/// the findings that asked for it, quarantine holds, tag adds the verdict
/// field. A check without an answer defers the message when `on_error`
/// says so (unless another check already refuses it: the answer would not
/// change).
pub(crate) fn combine(
    findings: &[(&'static str, Finding)],
    on_error: CheckFailure,
) -> InboundVerdict {
    let mut verdict = InboundVerdict::default();
    let mut summary = Vec::new();
    let strictest = findings
        .iter()
        .filter_map(|(_, f)| match f {
            Finding::Found { action, .. } => Some(*action),
            _ => None,
        })
        .max();
    let mut failures = Vec::new();
    for (name, f) in findings {
        let outcome = match f {
            Finding::Clean { note, headers } => {
                verdict.headers.extend_from_slice(headers);
                if note.is_empty() {
                    "clean".to_owned()
                } else {
                    format!("clean({note})")
                }
            }
            Finding::Found {
                action,
                reason,
                headers,
            } => {
                verdict.headers.extend_from_slice(headers);
                format!("{}({reason})", action.as_str())
            }
            Finding::Failed { reason } => {
                failures.push(format!("{name}: {reason}"));
                format!("failed({reason})")
            }
        };
        metrics::counter!(
            "postern_content_findings_total",
            "check" => *name,
            "outcome" => match f {
                Finding::Clean { .. } => "clean",
                Finding::Found { action, .. } => action.as_str(),
                Finding::Failed { .. } => "failed",
            }
        )
        .increment(1);
        summary.push(format!("{name}={outcome}"));
    }
    let reasons = |at_least: InboundAction| -> Vec<&str> {
        findings
            .iter()
            .filter_map(|(_, f)| match f {
                Finding::Found { action, reason, .. } if *action >= at_least => {
                    Some(reason.as_str())
                }
                _ => None,
            })
            .collect()
    };
    match strictest {
        Some(InboundAction::Reject) => {
            verdict.refused = Some(reasons(InboundAction::Reject).join("; "));
            verdict.headers.clear();
        }
        Some(InboundAction::Quarantine) => {
            verdict.quarantined = Some(reasons(InboundAction::Quarantine).join("; "));
        }
        Some(InboundAction::Tag) => {
            let mut field = format!("{CONTENT_VERDICT_FIELD}: tag");
            for r in reasons(InboundAction::Tag) {
                field.push_str(";\r\n\t");
                // The reason is ours or a scanner's; a line break in it
                // would end the field early.
                field.extend(r.chars().map(|c| if c.is_control() { ' ' } else { c }));
            }
            field.push_str("\r\n");
            verdict.headers.extend_from_slice(field.as_bytes());
        }
        Some(InboundAction::Accept) | None => {}
    }
    if verdict.refused.is_none() && !failures.is_empty() {
        match on_error {
            CheckFailure::Defer => verdict.deferred = Some(failures.join("; ")),
            CheckFailure::Accept => summary.push("unchecked=accepted".to_owned()),
        }
    }
    verdict.summary = format!("content: {}", summary.join(" "));
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(action: InboundAction, reason: &str) -> Finding {
        Finding::Found {
            action,
            reason: reason.into(),
            headers: format!("X-Found: {reason}\r\n").into_bytes(),
        }
    }

    #[test]
    fn clean_findings_keep_their_headers_and_notes() {
        let v = combine(
            &[
                (
                    "spam",
                    Finding::Clean {
                        note: "score=1.5".into(),
                        headers: b"X-Spam-Score: 1.5\r\n".to_vec(),
                    },
                ),
                ("virus", Finding::clean()),
            ],
            CheckFailure::Defer,
        );
        assert_eq!(v.headers, b"X-Spam-Score: 1.5\r\n");
        assert_eq!(v.summary, "content: spam=clean(score=1.5) virus=clean");
        assert!(v.refused.is_none() && v.quarantined.is_none() && v.deferred.is_none());
    }

    #[test]
    fn the_strictest_action_decides_with_its_reasons() {
        let v = combine(
            &[
                ("spam", found(InboundAction::Tag, "spam score 6.0")),
                (
                    "virus",
                    found(InboundAction::Reject, "virus Eicar-Signature"),
                ),
                ("uri", found(InboundAction::Reject, "listed URL")),
            ],
            CheckFailure::Defer,
        );
        assert_eq!(
            v.refused.as_deref(),
            Some("virus Eicar-Signature; listed URL")
        );
        assert!(v.headers.is_empty(), "a refused message gets no headers");

        let v = combine(
            &[
                ("spam", found(InboundAction::Quarantine, "spam score 12.0")),
                ("uri", found(InboundAction::Tag, "listed URL")),
            ],
            CheckFailure::Defer,
        );
        assert_eq!(v.quarantined.as_deref(), Some("spam score 12.0"));
        assert!(v.refused.is_none());

        let v = combine(
            &[
                ("spam", found(InboundAction::Tag, "spam score 6.0")),
                ("uri", found(InboundAction::Accept, "listed URL")),
                ("att", found(InboundAction::Tag, "bad\r\nname")),
            ],
            CheckFailure::Defer,
        );
        let h = String::from_utf8(v.headers).unwrap();
        assert!(
            h.ends_with("X-Postern-Content: tag;\r\n\tspam score 6.0;\r\n\tbad  name\r\n"),
            "{h}"
        );
        assert_eq!(
            v.summary,
            "content: spam=tag(spam score 6.0) uri=accept(listed URL) att=tag(bad\r\nname)"
        );
    }

    #[test]
    fn a_check_without_an_answer_defers_unless_told_to_accept_or_already_refused() {
        let failed = Finding::Failed {
            reason: "clamd: connection refused".into(),
        };
        let v = combine(
            &[("virus", failed.clone()), ("spam", Finding::clean())],
            CheckFailure::Defer,
        );
        assert_eq!(
            v.deferred.as_deref(),
            Some("virus: clamd: connection refused")
        );
        let v = combine(&[("virus", failed.clone())], CheckFailure::Accept);
        assert!(v.deferred.is_none());
        assert!(v.summary.ends_with("unchecked=accepted"), "{}", v.summary);
        let v = combine(
            &[
                ("virus", failed),
                ("uri", found(InboundAction::Reject, "listed URL")),
            ],
            CheckFailure::Defer,
        );
        assert!(v.deferred.is_none());
        assert_eq!(v.refused.as_deref(), Some("listed URL"));
    }
}
