//! The strict header From parser against the files in
//! tests/vectors/header-from: each `accept/*.from` is a From field value
//! (what follows "From:"; a line break inside it is a fold, written as
//! LF in the file and read as CRLF) with its `.expect`, the addresses it
//! yields one per line; each `refuse/*.from` must be refused. The e2e test
//! tests/e2e/test_header_from.py reads the same files (Python's `email`
//! must agree on the accepted ones; the refused ones are submitted).

use std::path::{Path, PathBuf};

use postern_mailauth::header_from::{header_from, parse_mailbox_list};

/// The field value of a vector file: its final LF dropped, other LFs
/// turned into CRLF (folds). Any other byte is kept as it is.
fn value(path: &Path) -> Vec<u8> {
    let raw = std::fs::read(path).unwrap();
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    let mut out = Vec::new();
    for &b in raw {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

fn vectors(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/header-from")
        .join(kind);
    let mut v: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "from"))
        .collect();
    v.sort();
    v
}

/// The value inside a whole message, as the sender check reads it.
fn in_message(value: &[u8]) -> Vec<u8> {
    let mut m = b"To: rcpt@example.net\r\nFrom:".to_vec();
    m.extend_from_slice(value);
    m.extend_from_slice(b"\r\nSubject: s\r\n\r\nbody\r\n");
    m
}

#[test]
fn accepted_vectors() {
    let files = vectors("accept");
    for f in &files {
        let v = value(f);
        let expect = std::fs::read_to_string(f.with_extension("expect")).unwrap();
        let expect: Vec<&str> = expect.lines().collect();
        let got: Vec<String> = match parse_mailbox_list(&v) {
            Ok(list) => list.into_iter().map(|m| m.address).collect(),
            Err(e) => panic!("{} refused: {e}", f.display()),
        };
        assert_eq!(got, expect, "{}", f.display());
        let whole = header_from(&in_message(&v))
            .unwrap_or_else(|e| panic!("{} refused in a message: {e}", f.display()))
            .unwrap();
        assert_eq!(whole.len(), expect.len(), "{}", f.display());
    }
    assert!(files.len() >= 20, "only {} vectors found", files.len());
}

#[test]
fn refused_vectors() {
    let files = vectors("refuse");
    for f in &files {
        let v = value(f);
        if let Ok(list) = parse_mailbox_list(&v) {
            panic!("{} accepted as {list:?}", f.display());
        }
        assert!(
            header_from(&in_message(&v)).is_err(),
            "{} accepted in a message",
            f.display()
        );
    }
    assert!(files.len() >= 20, "only {} vectors found", files.len());
}

/// What `/v3/mail/send` builds (mail-builder, from a display name the API
/// checked only for controls and length) is read back by the strict
/// parser: quotes, backslashes, specials, UTF-8 and long (folded) names.
#[test]
fn names_written_by_mail_builder_are_accepted() {
    use mail_builder::headers::address::Address;
    use mail_builder::MessageBuilder;
    let names = [
        "Plain Name",
        "Jane \"JD\" Doe",
        "back\\slash",
        "Doe, Jane <ceo@bank.example>",
        "John Q. Public (x) [y]: z;",
        "Jörg Müller",
        "\"",
        "\\",
        "=?utf-8?q?not_really?=",
        "\ta\tb",
        &"Long Name ".repeat(20),
        &"ü".repeat(120),
    ];
    for name in names {
        let body = MessageBuilder::new()
            .from(Address::new_address(Some(name), "me@good.example"))
            .to("rcpt@example.net")
            .subject("s")
            .text_body("x")
            .write_to_vec()
            .unwrap();
        let from = header_from(&body)
            .unwrap_or_else(|e| panic!("{name:?}: {e}\n{}", String::from_utf8_lossy(&body)))
            .unwrap();
        assert_eq!(from.len(), 1, "{name:?}");
        assert_eq!(from[0].address, "me@good.example", "{name:?}");
    }
}
