//! Replays the committed cargo-fuzz corpora of the targets whose per-input
//! functions live in this crate (`postern_smtp::fuzzing`), so every seed
//! and every past finding is run by `cargo test` on stable. Fuzzing itself
//! (nightly, open-ended) is `scripts/fuzz.sh`.

use std::path::PathBuf;

/// The files of `fuzz/corpus/<target>/`, sorted; a corpus that has gone
/// missing fails the test rather than passing vacuously.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "corpus {} is nearly empty",
        dir.display()
    );
    files
        .into_iter()
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

#[test]
fn session_corpus_replays() {
    let harness = postern_smtp::fuzzing::SessionHarness::new();
    let mut transcripts = std::collections::HashMap::new();
    for (name, data) in corpus("session") {
        let started = std::time::Instant::now();
        let out = String::from_utf8_lossy(&harness.run(&data)).into_owned();
        eprintln!("session/{name}: {:?}", started.elapsed());
        transcripts.insert(name, out);
    }
    // The hand-written seeds reach the states they are named for: a harness
    // wired wrongly (no TLS, no key, wrong listener) would still "pass".
    for (seed, expected) in [
        ("mx-relay-ok", "250 2.0.0 OK queued as "),
        ("mx-relay-refused", "550 5.7.1"),
        ("smuggle-lf-dot-lf", "554 5.6.11"),
        ("smuggle-normalize", "250 2.0.0 OK queued as "),
        ("bdat-chunks", "250 2.0.0 OK queued as "),
        ("auth-before-tls", "538 5.7.11"),
        ("auth-on-mx", "503 5.5.1 AUTH not available"),
        ("auth-plain-ok", "235 2.7.0"),
        ("auth-login", "235 2.7.0"),
        ("auth-plain-authzid-subuser", "235 2.7.0"),
        (
            "auth-plain-bad-thrice",
            "421 4.7.0 Too many authentication failures",
        ),
        ("starttls-then-auth", "250 2.0.0 OK queued as "),
        ("authenticated-send", "250 2.0.0 OK queued as "),
        ("dev-override-auth", "235 2.7.0"),
        ("implicit-tls", "503 5.5.1 TLS already active"),
        ("no-cert-starttls", "454 4.7.0 TLS not available"),
        (
            "refused-recipients",
            "421 4.7.0 Too many refused recipients",
        ),
    ] {
        let out = &transcripts[seed];
        assert!(out.contains(expected), "{seed}: {expected:?} not in\n{out}");
    }
    // Pipelined after STARTTLS, in plaintext, in the same read: never acted
    // on (CVE-2011-0411), so neither the AUTH nor the message gets through.
    let injected = &transcripts["starttls-injection"];
    assert!(
        !injected.contains("235 ") && !injected.contains("queued"),
        "{injected}"
    );
}

/// Without a nightly toolchain, libFuzzer cannot run: a bounded, seeded
/// stand-in mutates the corpus (byte flips, splices, truncation, a new
/// state byte and pipe size) through the same per-input function.
#[test]
fn session_seeded_mutations() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let seeds: Vec<Vec<u8>> = corpus("session").into_iter().map(|(_, d)| d).collect();
    let harness = postern_smtp::fuzzing::SessionHarness::new();
    let mut rng = StdRng::seed_from_u64(0x5e55_1011);
    for _ in 0..2000 {
        let mut input = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..6) {
            let len = input.len().max(1);
            match rng.random_range(0..5) {
                0 => {
                    let i = rng.random_range(0..len).min(input.len().saturating_sub(1));
                    if let Some(b) = input.get_mut(i) {
                        *b = rng.random();
                    }
                }
                1 => {
                    let other = &seeds[rng.random_range(0..seeds.len())];
                    let from = rng.random_range(0..other.len());
                    let at = rng.random_range(0..=input.len());
                    let piece: Vec<u8> = other[from..].iter().take(64).copied().collect();
                    input.splice(at..at, piece);
                }
                2 => input.truncate(rng.random_range(0..=input.len())),
                3 => {
                    let at = rng.random_range(0..=input.len());
                    let piece: &[u8] = [
                        &b"\r\n"[..],
                        b"\n",
                        b"\r",
                        b".",
                        b"\n.\n",
                        b"\r\n.\r\n",
                        b"\0",
                    ][rng.random_range(0..7)];
                    input.splice(at..at, piece.iter().copied());
                }
                _ => {
                    if input.len() >= 2 {
                        input[0] = rng.random();
                        input[1] = rng.random();
                    }
                }
            }
        }
        harness.run(&input);
    }
}
