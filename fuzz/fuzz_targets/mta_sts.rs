//! MTA-STS policy bodies and `_mta-sts` TXT records come from whoever
//! answers for a receiving domain: never a panic, and an accepted policy
//! is self-consistent (a mode, a bounded max_age, MX patterns unless none).
#![no_main]
use libfuzzer_sys::fuzz_target;
use postern_delivery::mta_sts::{txt_id, Mode, Policy};

fuzz_target!(|data: &[u8]| {
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
});
