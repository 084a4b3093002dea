//! Outbound delivery: the scheduler that takes due work from the queue, the
//! routes and MX resolution that pick the next hop, and the SMTP client.
//!
//! The SMTP server never calls into this crate: the two meet only at the
//! store, as Postfix's smtpd and smtp meet only at the queue.

pub mod client;
pub mod dane;
pub mod dnssec_probe;
pub mod dsn_limit;
pub mod mta_sts;
pub mod mx;
pub mod outcome;
pub mod route;
pub mod scheduler;
pub mod shaping;
pub mod tls;
pub mod tls_report;

pub use client::{ClientSettings, KeptConnection, SmtpClient, Source};
pub use dnssec_probe::{DaneState, DnssecProbe};
pub use mx::{MxResolver, TrustAnchor};
pub use outcome::Outcome;
pub use route::{Destination, Router};
pub use scheduler::Scheduler;
pub use shaping::Shaping;
