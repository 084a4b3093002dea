//! A config file of any content gives a config or an error, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::config(data));
