//! The MTA-STS policy parser against the files in tests/vectors/mta-sts.

use postern_delivery::mta_sts::{Mode, Policy};

#[test]
fn policy_vectors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/mta-sts");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "policy"))
        .collect();
    entries.sort();
    for policy in entries {
        let body = std::fs::read_to_string(&policy).unwrap();
        let expect = std::fs::read_to_string(policy.with_extension("expect")).unwrap();
        let got = match Policy::parse("v", &body) {
            Ok(p) => format!(
                "{} max_age={} mx={}",
                match p.mode {
                    Mode::Enforce => "enforce",
                    Mode::Testing => "testing",
                    Mode::None => "none",
                },
                p.max_age.as_secs(),
                p.mx.join(",")
            ),
            Err(_) => "error".into(),
        };
        assert_eq!(got, expect.trim(), "{}", policy.display());
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} vectors found");
}
