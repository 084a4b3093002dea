//! The strict header From parser (postern-mailauth header_from) on
//! arbitrary bytes: never a panic, and what it accepts is stable: the
//! addresses it returns, written back as a mailbox-list of angle-addrs,
//! parse to the same addresses (the check and the signature act on
//! exactly what was read).
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern_mailauth::header_from::{header_from, parse_mailbox_list};

fuzz_target!(|data: &[u8]| {
    let _ = header_from(data);
    if let Ok(list) = parse_mailbox_list(data) {
        assert!(!list.is_empty());
        let written = list
            .iter()
            .map(|m| format!("<{}>", m.address))
            .collect::<Vec<_>>()
            .join(", ");
        let again = parse_mailbox_list(written.as_bytes()).expect("re-parse");
        let a: Vec<_> = list.iter().map(|m| &m.address).collect();
        let b: Vec<_> = again.iter().map(|m| &m.address).collect();
        assert_eq!(a, b);
    }
});
