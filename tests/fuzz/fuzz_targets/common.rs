//! What several targets share: reading a header length the way a peer sends one, and the
//! re-encoding property of decoded requests. Kept small so that a renamed function in src/ is a
//! one-line fix here.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};

use edgeinfer::protocol::request::{
    binary_bytes, decode_request, encode_binary_request, header_length_from_properties, InferRequest,
    HEADER_LENGTH_PROPERTY,
};

/// One allocation larger than this is a finding: the inputs are at most a few hundred kB
/// (`-max_len`), so it is an amplification or a decompression bomb past the daemon's limits.
/// libFuzzer's own `-malloc_limit_mb` needs a sanitizer's allocator hooks; this works without.
pub const MAX_ALLOCATION: usize = 512 << 20;

struct Capped;

// SAFETY: forwards to the system allocator unchanged; only refuses, by aborting, sizes over the cap.
unsafe impl GlobalAlloc for Capped {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

fn check(size: usize) {
    if size > MAX_ALLOCATION {
        // No allocation from here: write the message with a fixed buffer, then abort, which
        // libFuzzer reports as a crash and saves the input.
        use std::io::Write;
        let mut buf = [0u8; 96];
        let mut cursor = std::io::Cursor::new(&mut buf[..]);
        let _ = write!(cursor, "\n==fuzz== allocation of {size} bytes (over {MAX_ALLOCATION})\n");
        let n = cursor.position() as usize;
        let _ = std::io::stderr().write_all(&buf[..n]);
        std::process::abort();
    }
}

#[global_allocator]
static ALLOCATOR: Capped = Capped;

/// Splits a fuzz input into (header length, payload). The first byte chooses how the length
/// arrives: none (the JSON header ends where its object closes), two raw little-endian bytes (so
/// the fuzzer can point it anywhere, past the end included), or the text of the
/// `inference-header-content-length` user property up to the first newline, parsed as the daemon
/// parses it. `None` when the property's text is not a length (the daemon answers bad_request
/// before any decoding).
pub fn split_header_len(data: &[u8]) -> Option<(Option<usize>, &[u8])> {
    let (&selector, rest) = data.split_first()?;
    match selector % 4 {
        0 => Some((None, rest)),
        1 | 2 => {
            let (len, payload) = rest.split_first_chunk::<2>()?;
            Some((Some(u16::from_le_bytes(*len) as usize), payload))
        }
        _ => {
            let newline = rest.iter().position(|&b| b == b'\n')?;
            let value = String::from_utf8_lossy(&rest[..newline]).into_owned();
            let properties = [(HEADER_LENGTH_PROPERTY.to_string(), value)];
            let len = header_length_from_properties(&properties).expect("the property is there").ok()?;
            Some((Some(len), &rest[newline + 1..]))
        }
    }
}

/// A decoded request re-encoded in the binary extension (what `edgeinfer request --binary` sends)
/// decodes to the same request.
pub fn check_binary_roundtrip(request: &InferRequest) {
    let (payload, header_len) = encode_binary_request(request);
    let back = match decode_request(&payload, Some(header_len)) {
        Ok(back) => back,
        Err(e) => panic!("the re-encoded request does not decode: {}", e.error),
    };
    assert_eq!(back.identity, request.identity, "identity");
    assert_eq!(back.timeout, request.timeout, "timeout");
    assert_eq!(back.session, request.session, "session");
    let names = |r: &InferRequest| r.outputs.as_ref().map(|o| o.iter().map(|o| o.name.clone()).collect::<Vec<_>>());
    assert_eq!(names(&back), names(request), "outputs");
    assert_eq!(back.inputs.len(), request.inputs.len(), "inputs");
    for (b, a) in back.inputs.iter().zip(&request.inputs) {
        assert_eq!(b.name, a.name);
        assert_eq!(b.datatype, a.datatype, "{}", a.name);
        assert_eq!(b.tensor.shape(), a.tensor.shape(), "{}", a.name);
        assert_eq!(binary_bytes(&b.tensor), binary_bytes(&a.tensor), "{}", a.name);
    }
}
