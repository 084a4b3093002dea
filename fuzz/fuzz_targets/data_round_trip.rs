//! What the delivery client sends as DATA ends exactly where it should: read
//! back with smtp-proto's receiver (as the next hop would), it yields the
//! body with line endings normalised, and nothing after the terminator.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern_delivery::client::encode_data;
use postern_smtp::body::normalize_line_endings;
use smtp_proto::request::receiver::DataReceiver;

fuzz_target!(|body: &[u8]| {
    let wire = encode_data(body);
    let mut receiver = DataReceiver::new();
    // The next hop has just read "DATA\r\n": its receiver is at a line start.
    receiver.ingest(&mut b"\r\n".iter(), &mut Vec::new());
    let mut out = Vec::new();
    let mut iter = wire.iter();
    assert!(receiver.ingest(&mut iter, &mut out), "terminator not found");
    assert_eq!(iter.len(), 0, "bytes after the terminator");
    let mut expected = normalize_line_endings(body);
    if !expected.is_empty() && !expected.ends_with(b"\r\n") {
        expected.extend_from_slice(b"\r\n");
    }
    // The receiver keeps the CRLF that precedes the terminating dot.
    assert_eq!(out, expected);
});
