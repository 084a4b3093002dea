//! The delivery-report reader against the files in tests/vectors/dsn: each
//! `.eml` is a message as a receiving MTA might send it back, each `.expect`
//! a line per recipient group ("recipient action status diagnostic", `-`
//! for a missing field) or `none` when the message is not a report.

use postern_mailauth::return_path::delivery_report;

#[test]
fn dsn_vectors() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/dsn");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    entries.sort();
    for eml in &entries {
        let message = std::fs::read(eml).unwrap();
        let expect = std::fs::read_to_string(eml.with_extension("expect")).unwrap();
        let got = match delivery_report(&message) {
            None => "none".to_owned(),
            Some(reports) => reports
                .iter()
                .map(|r| {
                    let f = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
                    format!(
                        "{} {} {} {}",
                        f(&r.final_recipient),
                        f(&r.action),
                        f(&r.status),
                        f(&r.diagnostic)
                    )
                })
                .collect::<Vec<_>>()
                .join("\n"),
        };
        assert_eq!(got, expect.trim(), "{}", eml.display());
    }
    assert!(entries.len() >= 4, "only {} vectors found", entries.len());
}
