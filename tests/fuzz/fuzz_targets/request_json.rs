//! `decode_request` on a whole payload without a header-length property: a JSON request, or one
//! followed by binary tensors (MQTT 3.1.1 clients). Anything it accepts must survive re-encoding.
#![no_main]

use edgeinfer::protocol::request::decode_request;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data, None) {
        common::check_binary_roundtrip(&request);
    }
});
