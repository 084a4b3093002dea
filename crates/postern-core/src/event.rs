//! Per-message events: what happened to a message and each of its
//! recipients, named as SendGrid names them (`processed`, `deferred`,
//! `delivered`, `bounce`, `dropped`) so that tools written for SendGrid's
//! event webhook read Postern's events unchanged.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Accepted and durably queued (one per recipient).
    Processed,
    /// The next hop accepted the recipient.
    Delivered,
    /// A temporary failure; another attempt is scheduled.
    Deferred,
    /// A permanent failure or expiry; no more attempts.
    Bounce,
    /// Not attempted at all (suppressed address, refused by policy, deleted
    /// from the queue or the quarantine).
    Dropped,
    /// Held in quarantine instead of queued (Postern's own kind: SendGrid
    /// has no quarantine), with the reason. Released recipients then get
    /// `processed`, deleted or expired ones `dropped`.
    Quarantined,
    /// Refused at the door of an `mx` listener before any message was
    /// accepted (Postern's own kind): a screened client (block list, talking
    /// before the greeting, reverse DNS, HELO), a recipient at RCPT (relay
    /// denied, unknown user), or a message deferred because a check had no
    /// answer. No message exists: `message_id` names the SMTP session, so
    /// one client's refusals read together.
    Refused,
}

impl EventKind {
    /// The kinds SendGrid's event webhook knows (what a webhook can be set
    /// to send and its test sends); `Quarantined` and `Refused` are not
    /// among them.
    pub const ALL: [EventKind; 5] = [
        EventKind::Processed,
        EventKind::Delivered,
        EventKind::Deferred,
        EventKind::Bounce,
        EventKind::Dropped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Processed => "processed",
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Bounce => "bounce",
            EventKind::Dropped => "dropped",
            EventKind::Quarantined => "quarantined",
            EventKind::Refused => "refused",
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "processed" => EventKind::Processed,
            "delivered" => EventKind::Delivered,
            "deferred" => EventKind::Deferred,
            "bounce" => EventKind::Bounce,
            "dropped" => EventKind::Dropped,
            "quarantined" => EventKind::Quarantined,
            "refused" => EventKind::Refused,
            other => {
                return Err(format!(
                    "unknown event kind {other:?} (processed, delivered, deferred, bounce, dropped, quarantined, refused)"
                ))
            }
        })
    }
}

/// How a delivery attempt went, for `delivered`, `deferred` and `bounce`
/// events. Every field is optional: a DNS failure has no remote host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptInfo {
    /// 1 for the first attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_host: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_ip: Option<String>,
    /// Our source address for the connection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// "TLSv1.3 TLS13_AES_256_GCM_SHA384"; None for plaintext.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<String>,
    /// How the TLS policy was decided: none, opportunistic, required,
    /// mta-sts, dane.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_policy: Option<String>,
    /// RFC 3463 enhanced status code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// See [`crate::bounce::BounceClass`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classification: Option<String>,
}

impl AttemptInfo {
    pub fn is_empty(&self) -> bool {
        *self == AttemptInfo::default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the event log: unique and increasing.
    pub seq: i64,
    pub at_millis: i64,
    pub message_id: String,
    pub kind: EventKind,
    /// The recipient, for per-recipient events.
    pub recipient: Option<String>,
    /// A human-readable detail: the remote reply, the error, the sender.
    pub detail: String,
    /// The account (or subuser) that sent the message.
    pub account: Option<String>,
    pub info: AttemptInfo,
}

impl Event {
    /// The form `postern events --json` and `/v3/messages` show.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "seq": self.seq,
            "time": crate::time::rfc3339(self.at_millis),
            "message_id": self.message_id,
            "event": self.kind.as_str(),
            "recipient": self.recipient,
            "detail": self.detail,
            "account": self.account,
        });
        if let (Some(obj), Ok(serde_json::Value::Object(info))) =
            (v.as_object_mut(), serde_json::to_value(&self.info))
        {
            obj.extend(info);
        }
        v
    }

    /// One element of a SendGrid event webhook POST (a JSON array of
    /// these): the field names and meanings of SendGrid's event webhook
    /// reference, so existing receivers parse it.
    pub fn to_webhook_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "email": self.recipient.clone().unwrap_or_default(),
            "timestamp": self.at_millis / 1000,
            "event": self.kind.as_str(),
            "sg_event_id": format!("{}-{}", self.message_id, self.seq),
            "sg_message_id": self.message_id,
        });
        let Some(obj) = v.as_object_mut() else {
            return v;
        };
        match self.kind {
            EventKind::Delivered => {
                obj.insert("response".into(), self.detail.clone().into());
            }
            EventKind::Deferred => {
                obj.insert("response".into(), self.detail.clone().into());
                if let Some(n) = self.info.attempt {
                    // SendGrid sends the attempt number as a string.
                    obj.insert("attempt".into(), n.to_string().into());
                }
            }
            EventKind::Bounce => {
                obj.insert("reason".into(), self.detail.clone().into());
                let blocked = self.info.classification.as_deref() == Some("block");
                obj.insert(
                    "type".into(),
                    if blocked { "blocked" } else { "bounce" }.into(),
                );
                if let Some(s) = &self.info.status {
                    obj.insert("status".into(), s.clone().into());
                }
                if let Some(c) = &self.info.classification {
                    obj.insert(
                        "bounce_classification".into(),
                        crate::bounce::BounceClass::from_label(c)
                            .map(|c| c.sendgrid_label())
                            .unwrap_or("Unclassified")
                            .into(),
                    );
                }
            }
            EventKind::Dropped | EventKind::Quarantined | EventKind::Refused => {
                obj.insert("reason".into(), self.detail.clone().into());
            }
            EventKind::Processed => {}
        }
        if matches!(
            self.kind,
            EventKind::Delivered | EventKind::Deferred | EventKind::Bounce
        ) {
            obj.insert("tls".into(), u8::from(self.info.tls.is_some()).into());
            if let Some(ip) = &self.info.source_ip {
                obj.insert("ip".into(), ip.clone().into());
            }
        }
        if let Some(a) = &self.account {
            obj.insert("postern_account".into(), a.clone().into());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind) -> Event {
        Event {
            seq: 7,
            at_millis: 1_700_000_000_123,
            message_id: "m1".into(),
            kind,
            recipient: Some("a@example.net".into()),
            detail: "RCPT: 550 5.1.1 no such user".into(),
            account: Some("acme".into()),
            info: AttemptInfo {
                attempt: Some(2),
                status: Some("5.1.1".into()),
                classification: Some("invalid_address".into()),
                tls: Some("TLSv1.3 X".into()),
                ..AttemptInfo::default()
            },
        }
    }

    #[test]
    fn kinds_round_trip() {
        for k in EventKind::ALL.into_iter().chain([EventKind::Quarantined]) {
            assert_eq!(k.as_str().parse::<EventKind>(), Ok(k));
        }
        assert!("failed".parse::<EventKind>().is_err());
    }

    #[test]
    fn webhook_form_follows_sendgrid() {
        let v = event(EventKind::Bounce).to_webhook_json();
        assert_eq!(v["event"], "bounce");
        assert_eq!(v["email"], "a@example.net");
        assert_eq!(v["timestamp"], 1_700_000_000);
        assert_eq!(v["type"], "bounce");
        assert_eq!(v["status"], "5.1.1");
        assert_eq!(v["bounce_classification"], "Invalid Address");
        assert_eq!(v["tls"], 1);
        assert_eq!(v["sg_event_id"], "m1-7");
        let v = event(EventKind::Deferred).to_webhook_json();
        assert_eq!(v["attempt"], "2");
        assert!(v.get("type").is_none());
    }

    /// Every kind's webhook form has exactly the fields SendGrid's event
    /// webhook sends for it (plus `postern_account`): common ones, then
    /// `response` (delivered, deferred), `attempt` (deferred), `reason`
    /// (bounce, dropped), `type`/`status`/`bounce_classification` (bounce),
    /// `tls` and `ip` where a connection was made. The match is exhaustive:
    /// a new kind cannot be added without its form here.
    #[test]
    fn every_kind_has_sendgrids_fields_and_no_others() {
        use std::collections::BTreeSet;
        let common = [
            "email",
            "timestamp",
            "event",
            "sg_event_id",
            "sg_message_id",
            "postern_account",
        ];
        for kind in EventKind::ALL
            .into_iter()
            .chain([EventKind::Quarantined, EventKind::Refused])
        {
            let mut e = event(kind);
            e.info.source_ip = Some("192.0.2.1".into());
            let v = e.to_webhook_json();
            let got: BTreeSet<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
            let extra: &[&str] = match kind {
                EventKind::Processed => &[],
                EventKind::Delivered => &["response", "tls", "ip"],
                EventKind::Deferred => &["response", "attempt", "tls", "ip"],
                EventKind::Bounce => &[
                    "reason",
                    "type",
                    "status",
                    "bounce_classification",
                    "tls",
                    "ip",
                ],
                EventKind::Dropped | EventKind::Quarantined | EventKind::Refused => &["reason"],
            };
            let want: BTreeSet<&str> = common.iter().chain(extra).copied().collect();
            assert_eq!(got, want, "{kind:?}");
            assert_eq!(v["event"], kind.as_str());
        }
        // A block is a bounce of type "blocked" (SendGrid's two types).
        let mut blocked = event(EventKind::Bounce);
        blocked.info.classification = Some("block".into());
        assert_eq!(blocked.to_webhook_json()["type"], "blocked");
    }

    #[test]
    fn json_form_flattens_attempt_info() {
        let v = event(EventKind::Delivered).to_json();
        assert_eq!(v["attempt"], 2);
        assert_eq!(v["classification"], "invalid_address");
        assert!(v.get("remote_host").is_none());
    }
}
