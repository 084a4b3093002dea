//! What the delivery client sends as DATA ends exactly where it should: read
//! back with smtp-proto's receiver (as the next hop would), it yields the
//! body with line endings normalised, and nothing after the terminator.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_fuzz::data_round_trip(data));
