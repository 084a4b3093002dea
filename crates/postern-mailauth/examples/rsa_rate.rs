//! The machine's RSA-2048 signing rate: the ceiling on how many messages per
//! second Postern can sign with an RSA-2048 DKIM key, since each message
//! costs one signature (RFC 6376 §3.7) and nothing else in signing is close
//! in cost (`sign_cost` measures the rest). bench/side-by-side.sh prints
//! Postern's signed rate as a percentage of it.
//!
//!   cargo run --release -p postern-mailauth --example rsa_rate -- [THREADS [SECONDS]]
//!
//! THREADS defaults to the cores this process may run on (what Postern's
//! runtime and blocking pool get too); each thread signs with its own copy
//! of one key for SECONDS (default 3; the main thread sleeps that long: it
//! is the measuring window, not a wait for anything). Prints one JSON line.
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use postern_mailauth::DkimKeys;

fn main() {
    let mut args = std::env::args().skip(1);
    let threads: usize = args.next().map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |a| a.parse().expect("THREADS is a number"),
    );
    let seconds: f64 = args
        .next()
        .map_or(3.0, |a| a.parse().expect("SECONDS is a number"));
    let keys = DkimKeys::generate().expect("keys");
    // What DKIM signs: the hash of the canonicalized header fields and the
    // DKIM-Signature itself; its size hardly matters beside the RSA
    // private-key operation.
    let input = vec![b'h'; 600];
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, count, der, input) = (
                stop.clone(),
                count.clone(),
                keys.rsa_private.clone(),
                input.clone(),
            );
            std::thread::spawn(move || {
                let key = RsaKeyPair::from_pkcs8(&der).expect("RSA key");
                let rng = SystemRandom::new();
                let mut sig = vec![0; key.public_modulus_len()];
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    key.sign(&RSA_PKCS1_SHA256, &rng, &input, &mut sig)
                        .expect("sign");
                    n += 1;
                }
                count.fetch_add(n, Ordering::Relaxed);
            })
        })
        .collect();
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().expect("a signing thread panicked");
    }
    let elapsed = t.elapsed().as_secs_f64();
    let n = count.load(Ordering::Relaxed);
    println!(
        "{{\"rsa2048_signatures_per_s\":{:.0},\"threads\":{threads},\"seconds\":{elapsed:.2},\"signatures\":{n}}}",
        n as f64 / elapsed
    );
}
