//! Event webhooks: each account's events POSTed to its URL in SendGrid's
//! event webhook format (a JSON array), batched, retried with backoff, and
//! signed as SendGrid signs them (ECDSA P-256 over timestamp + body).

pub mod destination;
pub mod dispatcher;
pub mod signing;

pub use destination::DestinationPolicy;
pub use dispatcher::WebhookDispatcher;
