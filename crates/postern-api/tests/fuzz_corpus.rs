//! Replays the committed corpus of the `mail_send` fuzz target through the
//! same function (`postern_api::fuzzing::mail_send`), so every seed and
//! every past finding runs in `cargo test` on stable.

use std::path::PathBuf;

#[test]
fn mail_send_corpus_replays() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/mail_send");
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
    let mut built = std::collections::BTreeMap::new();
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        built.insert(
            name,
            postern_api::fuzzing::mail_send(&std::fs::read(&path).unwrap()),
        );
    }
    eprintln!("{built:?}");
    // The well-formed seeds get past validation (so the properties were
    // checked on what they built), and the injection seeds do not.
    for (seed, messages) in [
        ("minimal", 1),
        ("sendgrid-docs-full", 2),
        ("many-personalizations", 12),
        ("custom-headers", 1),
        ("inline-image", 1),
        ("utf8-names-and-subject", 1),
        ("display-name-specials", 1),
        ("reply-to-list", 1),
        ("personalization-subject-from", 1),
    ] {
        assert_eq!(built[seed], messages, "{seed}");
    }
    for (seed, n) in &built {
        if seed.starts_with("inject-") || seed.starts_with("reserved-") {
            assert_eq!(*n, 0, "{seed} was built");
        }
    }
}
