//! Per-message events: what happened to a message and each of its recipients.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// Accepted and durably queued.
    Received,
    /// The next hop accepted the recipient.
    Delivered,
    /// A temporary failure; another attempt is scheduled.
    Deferred,
    /// A permanent failure or expiry; no more attempts.
    Failed,
    /// Not attempted at all (the address is on the account's suppression list).
    Dropped,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Received => "received",
            EventKind::Delivered => "delivered",
            EventKind::Deferred => "deferred",
            EventKind::Failed => "failed",
            EventKind::Dropped => "dropped",
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
            "received" => EventKind::Received,
            "delivered" => EventKind::Delivered,
            "deferred" => EventKind::Deferred,
            "failed" => EventKind::Failed,
            "dropped" => EventKind::Dropped,
            other => return Err(format!("unknown event kind {other:?}")),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub at_millis: i64,
    pub message_id: String,
    pub kind: EventKind,
    /// The recipient, for per-recipient events.
    pub recipient: Option<String>,
    /// A human-readable detail: the remote reply, the error, the sender.
    pub detail: String,
}
