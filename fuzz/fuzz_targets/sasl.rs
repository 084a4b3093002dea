//! SASL payloads from the network never panic the decoders.
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern_accounts::sasl::{decode_base64, decode_login_field, decode_plain};

fuzz_target!(|data: &[u8]| {
    let _ = decode_plain(data);
    let _ = decode_login_field(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(p) = decode_base64(s) {
            let _ = decode_plain(&p);
        }
    }
});
