//! File-based session transcripts: `tests/vectors/session/<case>.in` is sent
//! to an `mx` listener in one write (so it is pipelined), and everything the
//! server answers until it closes must equal `<case>.out`, with queue ids
//! written as `<ID>`. `<case>.readme` says what the case is about. Adding a
//! case is adding files.

mod harness;

use harness::{connect, start};
use postern_core::Config;

fn mask_queue_ids(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("queued as ") {
        let (head, tail) = rest.split_at(i + "queued as ".len());
        out.push_str(head);
        let id_len = tail.bytes().take_while(|b| b.is_ascii_hexdigit()).count();
        out.push_str("<ID>");
        rest = &tail[id_len..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn session_transcripts() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/session");
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "in"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 5, "vectors missing from {}", dir.display());
    let server = start(Config::default()).await;
    for input in cases {
        let name = input.file_stem().unwrap().to_string_lossy().into_owned();
        let expected = std::fs::read(input.with_extension("out")).unwrap();
        let mut c = connect(server.mx).await;
        c.send(&std::fs::read(&input).unwrap()).await;
        let got = mask_queue_ids(&c.rest().await);
        assert_eq!(got, String::from_utf8_lossy(&expected), "case {name}");
    }
}
