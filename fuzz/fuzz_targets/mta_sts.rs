//! MTA-STS policy bodies and `_mta-sts` TXT records come from whoever
//! answers for a receiving domain: never a panic, and an accepted policy
//! is self-consistent (a mode, a bounded max_age, MX patterns unless none).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::mta_sts(data));
