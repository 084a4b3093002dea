//! The audit log's hash chain: each row's hash covers the previous row's
//! hash and every field of the row, so changing, removing or reordering a
//! row is evident to `verify`. (An attacker who can rewrite the whole table
//! can recompute the chain; export the latest hash elsewhere to pin it.)

use aws_lc_rs::digest::{Context, SHA256};

use crate::AuditEntry;

/// The hash that precedes the first row.
pub const GENESIS: [u8; 32] = [0u8; 32];

pub fn row_hash(prev: &[u8], seq: i64, e: &AuditEntry) -> Vec<u8> {
    let mut ctx = Context::new(&SHA256);
    ctx.update(prev);
    ctx.update(&seq.to_be_bytes());
    ctx.update(&e.at.to_be_bytes());
    for field in [
        Some(e.kind.as_str()),
        Some(e.actor.as_str()),
        e.account.as_deref(),
        e.client_ip.as_deref(),
        Some(e.detail.as_str()),
    ] {
        // Length-prefixed, with a distinct marker for "absent", so no two
        // different rows hash the same bytes.
        match field {
            Some(f) => {
                ctx.update(&[1]);
                ctx.update(&(f.len() as u64).to_be_bytes());
                ctx.update(f.as_bytes());
            }
            None => ctx.update(&[0]),
        }
    }
    ctx.finish().as_ref().to_vec()
}
