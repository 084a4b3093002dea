//! `POST /v3/mail/send` bodies: parsed, validated and built as the route
//! does, up to the intake. See postern_api::fuzzing.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    postern_api::fuzzing::mail_send(data);
});
