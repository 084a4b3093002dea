//! Delivery reports (RFC 3464) arrive from anyone who can reach the mx
//! listener at a return path, and so do return-path local parts: never a
//! panic; a parsed return path is hex and bounded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern_core::verp::parse_local;
use postern_mailauth::return_path::{delivery_report, parse_delivery_status};

fuzz_target!(|data: &[u8]| {
    if let Some(reports) = delivery_report(data) {
        for r in reports {
            if let Some(s) = r.status {
                assert!(!s.contains(char::is_whitespace));
            }
        }
    }
    let text = String::from_utf8_lossy(data);
    let _ = parse_delivery_status(&text);
    if let Some(v) = parse_local(&text) {
        assert!(v.message_id.len() <= 40);
        assert!(v.tag.bytes().all(|b| b.is_ascii_hexdigit()));
    }
});
