//! Envelope addresses from the network: never a panic, and an accepted
//! address reads back as itself (so what is relayed is what was checked).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::address(data));
