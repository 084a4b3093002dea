//! What DKIM signing costs per message, each key alone and both:
//!   cargo run --release -p postern-mailauth --example sign_cost
use std::time::Instant;

use postern_mailauth::{DkimKeys, DomainSigner};

fn main() {
    let keys = DkimKeys::generate().expect("keys");
    let mut body =
        b"From: loadgen@example.org\r\nTo: rcpt@example.net\r\nSubject: load\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 1024));
    body.extend_from_slice(b"\r\n");
    let n = 2000;
    for (label, rsa, ed) in [
        ("rsa-2048", true, false),
        ("ed25519", false, true),
        ("both", true, true),
    ] {
        let signer = DomainSigner::new(
            "example.org",
            rsa.then_some(("s-rsa", keys.rsa_private.as_slice())),
            ed.then_some(("s-ed", keys.ed25519_private.as_slice())),
        )
        .expect("signer");
        let t = Instant::now();
        for _ in 0..n {
            signer.sign(&body).expect("sign");
        }
        let us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{{\"key\":\"{label}\",\"us_per_message\":{us:.1}}}");
    }
    println!(
        "{{\"step\":\"parse headers (From)\",\"us_per_message\":{:.1}}}",
        parse_cost(&body)
    );
}

fn parse_cost(body: &[u8]) -> f64 {
    let n = 20_000;
    let t = Instant::now();
    for _ in 0..n {
        let m = mail_auth::AuthenticatedMessage::parse(body).expect("parse");
        std::hint::black_box(m.from.len());
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}
