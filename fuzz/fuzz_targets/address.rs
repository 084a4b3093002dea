//! Envelope addresses from the network: never a panic, and an accepted
//! address reads back as itself (so what is relayed is what was checked).
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern_core::Address;

fuzz_target!(|data: &[u8]| {
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
});
