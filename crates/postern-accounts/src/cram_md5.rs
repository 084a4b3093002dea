//! CRAM-MD5 (RFC 2195), opt-in per account.
//!
//! The server must compute HMAC-MD5(password, challenge), so it cannot keep
//! only a slow one-way hash. What it keeps is the HMAC "intermediate state":
//! the MD5 states after the key⊕ipad and key⊕opad blocks (32 bytes), as
//! Dovecot and Cyrus do. That is not the password, but it is
//! password-equivalent for CRAM-MD5: whoever reads it can log in with
//! CRAM-MD5 (not with PLAIN/LOGIN, which check the Argon2 hash). Hence:
//! off by default, enabled per account, offered only on listeners that list
//! it, and only over TLS like every mechanism.
//!
//! Written by hand because no maintained crate resumes HMAC-MD5 from a
//! stored state; md-5's block function does the compression.

use md5::block_api::compress;
use md5::{Digest, Md5};

const IV: [u32; 4] = [0x6745_2301, 0xefcd_ab89, 0x98ba_dcfe, 0x1032_5476];

/// The 32-byte state to store for a password.
pub fn state_from_password(password: &[u8]) -> [u8; 32] {
    let mut key = [0u8; 64];
    if password.len() > 64 {
        key[..16].copy_from_slice(&Md5::digest(password));
    } else {
        key[..password.len()].copy_from_slice(password);
    }
    let pad = |byte: u8| {
        let mut block = [0u8; 64];
        for (b, k) in block.iter_mut().zip(key.iter()) {
            *b = k ^ byte;
        }
        block
    };
    let (mut inner, mut outer) = (IV, IV);
    compress(&mut inner, &[pad(0x36)]);
    compress(&mut outer, &[pad(0x5c)]);
    let mut out = [0u8; 32];
    for (i, w) in inner.iter().chain(outer.iter()).enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Finishes an MD5 computation that already absorbed `done` bytes (one
/// block here) from `state`, over `msg` (RFC 1321 §3.1–3.2 padding).
fn finish(mut state: [u32; 4], done: u64, msg: &[u8]) -> [u8; 16] {
    let mut data = msg.to_vec();
    let bits = (done + msg.len() as u64) * 8;
    data.push(0x80);
    while data.len() % 64 != 56 {
        data.push(0);
    }
    data.extend_from_slice(&bits.to_le_bytes());
    let blocks: Vec<[u8; 64]> = data
        .chunks_exact(64)
        .map(|c| {
            let mut b = [0u8; 64];
            b.copy_from_slice(c);
            b
        })
        .collect();
    compress(&mut state, &blocks);
    let mut out = [0u8; 16];
    for (i, w) in state.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// HMAC-MD5(password, challenge) from the stored state, as lowercase hex.
pub fn response_from_state(state: &[u8], challenge: &[u8]) -> Option<String> {
    if state.len() != 32 {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes([state[i], state[i + 1], state[i + 2], state[i + 3]]);
    let inner = [word(0), word(4), word(8), word(12)];
    let outer = [word(16), word(20), word(24), word(28)];
    let inner_digest = finish(inner, 64, challenge);
    let mac = finish(outer, 64, &inner_digest);
    Some(mac.iter().map(|b| format!("{b:02x}")).collect())
}

/// Constant-time comparison of the client's hex digest with the expected one.
pub fn verify(state: &[u8], challenge: &[u8], client_hex: &str) -> bool {
    let Some(expected) = response_from_state(state, challenge) else {
        return false;
    };
    let client = client_hex.to_ascii_lowercase();
    if client.len() != expected.len() {
        return false;
    }
    // Compare every byte, whatever the first difference, so the time taken
    // does not reveal how much of a guess was right.
    expected
        .bytes()
        .zip(client.bytes())
        .fold(0u8, |acc, (a, b)| acc | (a ^ b))
        == 0
}

/// `<random.timestamp@hostname>` (RFC 2195 §2: a unique, msg-id-like string).
pub fn challenge(hostname: &str) -> String {
    format!(
        "<{}.{}@{}>",
        rand::random::<u64>(),
        postern_core::time::now_millis(),
        hostname
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_2195_example() {
        // RFC 2195 §2: user "tim", password "tanstaaftanstaaf".
        let state = state_from_password(b"tanstaaftanstaaf");
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        assert_eq!(
            response_from_state(&state, challenge).unwrap(),
            "b913a602c7eda7a495b4e6e7334d3890"
        );
        assert!(verify(
            &state,
            challenge,
            "B913A602C7EDA7A495B4E6E7334D3890"
        ));
        assert!(!verify(
            &state,
            challenge,
            "b913a602c7eda7a495b4e6e7334d3891"
        ));
        assert!(!verify(
            &state[..31],
            challenge,
            "b913a602c7eda7a495b4e6e7334d3890"
        ));
    }

    #[test]
    fn long_passwords_are_hashed_first() {
        let long = [b'x'; 100];
        let state = state_from_password(&long);
        // Independent check: HMAC-MD5 computed the textbook way.
        let key = Md5::digest(long);
        let mut k = [0u8; 64];
        k[..16].copy_from_slice(&key);
        let mut inner = Md5::new();
        inner.update(k.map(|b| b ^ 0x36));
        inner.update(b"challenge");
        let mut outer = Md5::new();
        outer.update(k.map(|b| b ^ 0x5c));
        outer.update(inner.finalize());
        let hex: String = outer
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(response_from_state(&state, b"challenge").unwrap(), hex);
    }
}
