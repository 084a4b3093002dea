//! A whole SMTP session on an in-memory stream: the first input byte picks
//! the starting state (mx or submission, plaintext, as if after STARTTLS,
//! authenticated, dev override), the second how the input is cut into
//! reads, the rest is what the client sends. See postern_smtp::fuzzing.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| postern_smtp::fuzzing::session(data));
