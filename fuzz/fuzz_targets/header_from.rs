//! The strict header From parser (postern-mailauth header_from) on
//! arbitrary bytes: never a panic, and what it accepts is stable: the
//! addresses it returns, written back as a mailbox-list of angle-addrs,
//! parse to the same addresses (the check and the signature act on
//! exactly what was read).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::header_from(data));
