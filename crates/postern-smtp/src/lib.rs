//! Postern's inbound SMTP server: listeners, TLS, connection limits, and the
//! session, one file per SMTP phase under `session/`.

pub mod body;
/// Per-input functions for the fuzz targets in `fuzz/` and their corpus
/// replay test; not an API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod listener;
pub mod recipients;
pub mod reply;
pub mod screen;
pub mod session;
pub mod tls;

pub use limits::ConnectionLimiter;
pub use listener::{mechanism_bits, serve_listener, ListenerContext, SmtpContext};
pub use recipients::{AnyRecipient, ListedRecipients, RecipientVerdict, RecipientVerifier};
