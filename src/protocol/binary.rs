//! The binary tensor extension, both directions: raw little-endian tensors after the JSON header,
//! BYTES elements each a 4-byte little-endian length and its bytes (the Triton convention), and
//! the header length carried in an MQTT v5 User Property.

use std::borrow::Cow;

use tract_core::prelude::{Blob, Tensor};

use super::datatype::DataType;
use super::error::DecodeError;
use super::types::InferRequest;

#[cfg(target_endian = "big")]
compile_error!("the binary tensor extension is little-endian; big-endian hosts are not supported");

/// MQTT v5 User Property that carries the JSON header length of a binary request or reply.
pub const HEADER_LENGTH_PROPERTY: &str = "inference-header-content-length";

/// Parses the value of the `inference-header-content-length` user property.
pub fn parse_header_length(value: &str) -> Result<usize, DecodeError> {
    value.trim().parse().map_err(|_| DecodeError::BadHeaderLength(value.to_string()))
}

/// Reads the per-message metadata the decoder needs from MQTT v5 user properties.
pub fn header_length_from_properties(user_properties: &[(String, String)]) -> Option<Result<usize, DecodeError>> {
    user_properties
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(HEADER_LENGTH_PROPERTY))
        .map(|(_, v)| parse_header_length(v))
}

/// The next `size` bytes of `binary` after `offset` (the bytes after a `header`-byte JSON header),
/// moving `offset` past them.
pub(super) fn take<'b>(
    binary: &'b [u8],
    offset: &mut usize,
    size: usize,
    header: usize,
) -> Result<&'b [u8], DecodeError> {
    let end = offset.checked_add(size).filter(|&end| end <= binary.len()).ok_or(DecodeError::BinaryTruncated {
        header,
        needed: offset.saturating_add(size),
        available: binary.len(),
    })?;
    let bytes = &binary[*offset..end];
    *offset = end;
    Ok(bytes)
}

/// Why BYTES elements could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BytesError {
    #[error("the data ends inside a length")]
    EndsInsideLength,
    #[error("an element claims {claimed} bytes, {remaining} remain")]
    ElementTooLong { claimed: usize, remaining: usize },
}

/// BYTES elements, each a 4-byte little-endian length and that many bytes, split apart.
pub fn bytes_elements(mut bytes: &[u8]) -> Result<Vec<&[u8]>, BytesError> {
    let mut elements = Vec::new();
    while !bytes.is_empty() {
        let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
            return Err(BytesError::EndsInsideLength);
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > rest.len() {
            return Err(BytesError::ElementTooLong { claimed: len, remaining: rest.len() });
        }
        elements.push(&rest[..len]);
        bytes = &rest[len..];
    }
    Ok(elements)
}

/// A tensor's bytes in the binary extension: raw little-endian values, or for BYTES (blobs and
/// strings) each element as a 4-byte length and its bytes.
pub fn binary_bytes(tensor: &Tensor) -> Cow<'_, [u8]> {
    let prefixed = |parts: &mut dyn Iterator<Item = &[u8]>| {
        let mut out = Vec::new();
        for part in parts {
            out.extend_from_slice(&(part.len() as u32).to_le_bytes());
            out.extend_from_slice(part);
        }
        Cow::Owned(out)
    };
    if let Ok(blobs) = crate::tensors::elements::<Blob>(tensor) {
        return prefixed(&mut blobs.iter().map(|b| b.as_bytes()));
    }
    if let Ok(strings) = crate::tensors::elements::<String>(tensor) {
        return prefixed(&mut strings.iter().map(|s| s.as_bytes()));
    }
    Cow::Borrowed(tensor.as_bytes())
}

/// A numeric tensor from its raw little-endian bytes; the error says what is wrong with them.
pub(super) fn tensor_from_le_bytes(datatype: DataType, shape: &[usize], bytes: &[u8]) -> Result<Tensor, String> {
    let dt = datatype.datum_type().expect("BYTES inputs are decoded apart");
    if datatype == DataType::Bool {
        if let Some(pos) = bytes.iter().position(|&b| b > 1) {
            return Err(format!("BOOL byte {pos} is {}, must be 0 or 1", bytes[pos]));
        }
    }
    // SAFETY: every bit pattern is a valid value of the numeric datum types, and BOOL bytes were
    // checked above to be 0 or 1; `from_raw_dt` copies into a freshly aligned buffer.
    unsafe { Tensor::from_raw_dt(dt, shape, bytes) }.map_err(|e| e.to_string())
}

/// Re-encodes a request in the binary tensor extension: the same inputs as raw little-endian bytes
/// after a JSON header, and binary outputs asked for. Returns the payload and the header length.
pub fn encode_binary_request(request: &InferRequest) -> (Vec<u8>, usize) {
    let inputs: Vec<serde_json::Value> = request
        .inputs
        .iter()
        .map(|i| {
            serde_json::json!({
                "name": i.name,
                "shape": i.tensor.shape(),
                "datatype": i.datatype,
                "parameters": {"binary_data_size": binary_bytes(&i.tensor).len()},
            })
        })
        .collect();
    let mut header = serde_json::json!({"parameters": {"binary_data_output": true}, "inputs": inputs});
    if let Some(id) = &request.identity.id {
        header["id"] = id.as_str().into();
    }
    if let Some(reply_to) = &request.identity.reply_to {
        header["parameters"]["reply_to"] = reply_to.as_str().into();
    }
    if let Some(timeout) = request.timeout {
        header["parameters"]["timeout_ms"] = (timeout.as_millis() as u64).into();
    }
    if let Some(session) = &request.session {
        header["parameters"]["session"] = session.as_str().into();
    }
    if let Some(outputs) = &request.outputs {
        header["outputs"] = outputs.iter().map(|o| serde_json::json!({"name": o.name})).collect();
    }
    let mut payload = serde_json::to_vec(&header).expect("a JSON object serialises");
    let header_len = payload.len();
    for input in &request.inputs {
        payload.extend_from_slice(&binary_bytes(&input.tensor));
    }
    (payload, header_len)
}
