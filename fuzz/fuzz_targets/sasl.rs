//! SASL payloads from the network never panic the decoders.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::sasl(data));
