//! Shared types of Postern: identifiers, addresses, envelopes, principals,
//! events and the configuration schema with its defaults.
//!
//! Everything here is plain data; the crates above decide what to do with it.

pub mod address;
pub mod bounce;
pub mod config;
pub mod duration;
pub mod envelope;
pub mod event;
pub mod header_section;
pub mod id;
pub mod network;
pub mod principal;
pub mod printable;
pub mod time;
pub mod verp;

pub use address::{Address, AddressError};
pub use config::{Config, ConfigError};
pub use envelope::{BodyType, Envelope, Recipient};
pub use event::{AttemptInfo, Event, EventKind};
pub use id::MessageId;
pub use principal::Principal;
