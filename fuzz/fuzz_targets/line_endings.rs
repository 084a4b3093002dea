//! The bare CR/LF scanner agrees with a naive definition however the input
//! is split, and normalisation leaves no bare CR or LF behind.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::line_endings(data));
