//! The bare CR/LF scanner agrees with a naive definition however the input
//! is split, and normalisation leaves no bare CR or LF behind.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern_smtp::body::{normalize_line_endings, BareLineEndingScanner};

fn naive(b: &[u8]) -> bool {
    b.iter().enumerate().any(|(i, &c)| {
        (c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
            || (c == b'\r' && b.get(i + 1) != Some(&b'\n'))
    })
}

fuzz_target!(|input: (u16, Vec<u8>)| {
    let (split, data) = input;
    let split = split as usize % (data.len() + 1);
    let mut s = BareLineEndingScanner::default();
    s.scan(&data[..split]);
    s.scan(&data[split..]);
    assert_eq!(s.finish(), naive(&data));
    let n = normalize_line_endings(&data);
    assert!(!naive(&n));
});
