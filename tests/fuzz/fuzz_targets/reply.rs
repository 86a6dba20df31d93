//! `decode_reply`, the client's (`edgeinfer request`, `loadgen`) reading of a reply: JSON, or a
//! JSON header and binary outputs (numbers and BYTES elements) after it.
#![no_main]

use edgeinfer::protocol::response::decode_reply;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((header_len, payload)) = common::split_header_len(data) else {
        return;
    };
    let _ = decode_reply(payload, header_len);
});
