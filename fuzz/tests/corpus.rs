//! Replays every committed corpus in `fuzz/corpus/<target>/` through the
//! target's per-input function, on stable (`.ci/run`), so seeds and past
//! findings stay fixed without a nightly toolchain. The `session` and
//! `mail_send` corpora are replayed here too, besides their crates' tests.

use std::path::PathBuf;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(files.len() >= 5, "corpus {} is nearly empty", dir.display());
    for path in files {
        eprintln!("{}", path.display());
        run(&std::fs::read(&path).unwrap());
    }
}

#[test]
fn address() {
    replay("address", postern_fuzz::address);
}

#[test]
fn config() {
    replay("config", postern_fuzz::config);
}

#[test]
fn data_round_trip() {
    replay("data_round_trip", postern_fuzz::data_round_trip);
}

#[test]
fn delivery_report() {
    replay("delivery_report", postern_fuzz::delivery_report);
}

#[test]
fn header_from() {
    replay("header_from", postern_fuzz::header_from);
}

#[test]
fn line_endings() {
    replay("line_endings", postern_fuzz::line_endings);
}

#[test]
fn mta_sts() {
    replay("mta_sts", postern_fuzz::mta_sts);
}

#[test]
fn sasl() {
    replay("sasl", postern_fuzz::sasl);
}

#[test]
fn session() {
    replay("session", postern_smtp::fuzzing::session);
}

#[test]
fn mail_send() {
    replay("mail_send", |data| {
        postern_api::fuzzing::mail_send(data);
    });
}
