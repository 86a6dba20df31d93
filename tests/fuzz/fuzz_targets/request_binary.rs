//! `decode_request` with the binary extension's header length (raw, or parsed from the user
//! property as the daemon does): a JSON header, then raw little-endian tensors and BYTES elements.
#![no_main]

use edgeinfer::protocol::request::decode_request;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((header_len, payload)) = common::split_header_len(data) else {
        return;
    };
    if let Ok(request) = decode_request(payload, header_len) {
        common::check_binary_roundtrip(&request);
    }
});
