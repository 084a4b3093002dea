//! The per-input functions of the fuzz targets whose code under test is
//! public (each target in `fuzz_targets/` is a one-liner calling one), so
//! that `tests/corpus.rs` replays the committed corpora through exactly
//! what libFuzzer runs, on stable. The `session` and `mail_send` targets
//! need crate-private access and live in their crates (`fuzzing` modules),
//! replayed by those crates' own tests.

use postern_accounts::sasl::{decode_base64, decode_login_field, decode_plain};
use postern_core::verp::parse_local;
use postern_core::Address;
use postern_delivery::client::encode_data;
use postern_delivery::mta_sts::{txt_id, Mode, Policy};
use postern_mailauth::header_from::{header_from as read_header_from, parse_mailbox_list};
use postern_mailauth::return_path::{
    delivery_report as read_delivery_report, parse_delivery_status,
};
use postern_smtp::body::{normalize_line_endings, BareLineEndingScanner};
use smtp_proto::request::receiver::DataReceiver;

/// Envelope addresses from the network: never a panic, and an accepted
/// address reads back as itself (so what is relayed is what was checked).
pub fn address(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for utf8 in [false, true] {
        if let Ok(a) = Address::parse(s, utf8) {
            assert!(!a.domain().contains('@'));
            assert_eq!(a.domain(), a.domain().to_lowercase());
            let again = Address::parse(&a.to_string(), utf8).expect("re-parse");
            assert_eq!(again, a);
            let _ = a.check_no_routing();
        }
    }
}

/// A config file of any content gives a config or an error, never a panic.
pub fn config(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = postern_core::Config::parse(s);
    }
}

/// What the delivery client sends as DATA ends exactly where it should:
/// read back with smtp-proto's receiver (as the next hop would), it yields
/// the body with line endings normalised, and nothing after the terminator.
pub fn data_round_trip(body: &[u8]) {
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
}

/// Delivery reports (RFC 3464) arrive from anyone who can reach the mx
/// listener at a return path, and so do return-path local parts: never a
/// panic; a parsed return path is hex and bounded.
pub fn delivery_report(data: &[u8]) {
    if let Some(reports) = read_delivery_report(data) {
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
}

/// The strict header From parser on arbitrary bytes: never a panic, and
/// what it accepts is stable: the addresses it returns, written back as a
/// mailbox-list of angle-addrs, parse to the same addresses (the check and
/// the signature act on exactly what was read).
pub fn header_from(data: &[u8]) {
    let _ = read_header_from(data);
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
}

fn naive_bare_line_ending(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| {
        (c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
            || (c == b'\r' && b.get(i + 1) != Some(&b'\n'))
    })
}

/// The bare CR/LF scanner agrees with a naive definition however the input
/// is split, and normalisation leaves no bare CR or LF behind. The first
/// two bytes (little-endian) pick the split point, the rest is the data.
pub fn line_endings(input: &[u8]) {
    let (split, data) = match input {
        [a, b, rest @ ..] => (usize::from(u16::from_le_bytes([*a, *b])), rest),
        _ => (0, input),
    };
    let split = split % (data.len() + 1);
    let mut s = BareLineEndingScanner::default();
    s.scan(&data[..split]);
    s.scan(&data[split..]);
    assert_eq!(s.finish(), naive_bare_line_ending(data));
    let n = normalize_line_endings(data);
    assert!(!naive_bare_line_ending(&n));
}

/// MTA-STS policy bodies and `_mta-sts` TXT records come from whoever
/// answers for a receiving domain: never a panic, and an accepted policy
/// is self-consistent (a mode, a bounded max_age, MX patterns unless none).
pub fn mta_sts(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(p) = Policy::parse("fuzz", &text) {
        assert!(p.max_age.as_secs() <= 31_557_600);
        assert!(p.mode == Mode::None || !p.mx.is_empty());
        for pattern in &p.mx {
            let _ = p.allows(pattern);
            let _ = p.allows(&format!("x.{pattern}"));
        }
    }
    let records: Vec<String> = text.split('\n').map(str::to_owned).collect();
    if let Some(id) = txt_id(&records) {
        assert!(!id.is_empty() && !id.contains(';'));
    }
}

/// SASL payloads from the network never panic the decoders.
pub fn sasl(data: &[u8]) {
    let _ = decode_plain(data);
    let _ = decode_login_field(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = decode_base64(s) {
            let _ = decode_plain(&p);
        }
    }
}
