//! Delivery reports (RFC 3464) arrive from anyone who can reach the mx
//! listener at a return path, and so do return-path local parts: never a
//! panic; a parsed return path is hex and bounded.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::delivery_report(data));
