//! BYTES parsing (each element a 4-byte little-endian length, then that many bytes) on both sides:
//! the daemon's request decoder and the client's reply decoder read the same fuzzed elements,
//! framed by a well-formed header, so the fuzzer spends its time on the element layout.
#![no_main]

use edgeinfer::protocol::request::{binary_bytes, decode_request};
use edgeinfer::protocol::response::decode_reply;
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, elements)) = data.split_first() else {
        return;
    };
    // The declared shape: plain counts, and shapes whose element count is 0 but whose other
    // dimensions are huge (what a tensor library may refuse to lay out).
    let n = u64::from(selector & 0x3f);
    let shape: Vec<u64> = match selector >> 6 {
        0 => vec![n],
        1 => vec![1, n],
        2 => vec![0, 1 << (n % 64), 1 << 40],
        _ => vec![n, 0],
    };
    let count: u64 = shape.iter().product();
    let shape_json = serde_json_shape(&shape);
    let mut request = format!(
        r#"{{"inputs":[{{"name":"b","datatype":"BYTES","shape":{shape_json},"parameters":{{"binary_data_size":{}}}}}]}}"#,
        elements.len()
    )
    .into_bytes();
    let header_len = request.len();
    request.extend_from_slice(elements);
    let decoded = decode_request(&request, Some(header_len));

    let mut reply = format!(
        r#"{{"model_name":"m","outputs":[{{"name":"b","datatype":"BYTES","shape":{shape_json},"parameters":{{"binary_data_size":{}}}}}]}}"#,
        elements.len()
    )
    .into_bytes();
    let reply_header_len = reply.len();
    reply.extend_from_slice(elements);
    let read_back = decode_reply(&reply, Some(reply_header_len));

    if let Ok(decoded) = decoded {
        let tensor = &decoded.inputs[0].tensor;
        assert_eq!(tensor.len() as u64, count);
        // The elements are kept exactly: re-encoding gives the bytes that came in.
        assert_eq!(&*binary_bytes(tensor), elements);
        // What the daemon accepts, the client reads back with as many elements.
        let read_back = read_back.expect("the client's decoder refuses what the daemon's accepts");
        let strings = read_back["outputs"][0]["data"].as_array().expect("BYTES data is an array");
        assert_eq!(strings.len() as u64, count);
    }
});

fn serde_json_shape(shape: &[u64]) -> String {
    let dims: Vec<String> = shape.iter().map(u64::to_string).collect();
    format!("[{}]", dims.join(","))
}
