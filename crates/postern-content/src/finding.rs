//! What one check found in one message.

use postern_core::config::InboundAction;

#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// Nothing to act on. `note` goes in the summary (`score=1.2`);
    /// `headers` (complete fields, CRLF-terminated) go on the message
    /// all the same (a spam score is worth having below the threshold).
    Clean { note: String, headers: Vec<u8> },
    /// Something was found. `action` is what the message's recipients'
    /// domains say for it (`ContentConfig::action`); `reason` is given to
    /// the client on a refusal and kept with a quarantined message.
    Found {
        action: InboundAction,
        reason: String,
        headers: Vec<u8>,
    },
    /// The check could not give an answer (scanner down, time limit,
    /// refused request); `[content] on_error` decides.
    Failed { reason: String },
}

impl Finding {
    /// Clean, with nothing to add.
    pub fn clean() -> Finding {
        Finding::Clean {
            note: String::new(),
            headers: Vec::new(),
        }
    }
}
