//! Decoding Open Inference Protocol requests: JSON, and the binary tensor extension.
//!
//! A request arrives as raw MQTT payload bytes. The JSON header is parsed once; each input's `data`
//! is kept as an unparsed slice and converted straight into a typed buffer for its declared datatype,
//! so numbers never pass through a generic JSON value tree. Binary inputs are copied from the bytes
//! after the header without any number parsing at all.

use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;
use tract_core::prelude::Blob;

use super::binary::{bytes_elements, take, tensor_from_le_bytes};
use super::datatype::DataType;
use super::json::{clean_serde_message, tensor_from_json};
use crate::tensors::tensor_of;

pub use super::binary::{
    binary_bytes, encode_binary_request, header_length_from_properties, parse_header_length, HEADER_LENGTH_PROPERTY,
};
pub use super::error::{DecodeError, DecodeFailure};
pub use super::types::{InferRequest, InputTensor, RequestIdentity, RequestedOutput, Thresholds};

/// Decodes a request payload. `header_len` is the binary extension's JSON header length, when the
/// message carried one (MQTT v5 user property). Without it, the JSON header ends where its object
/// closes: binary data may follow directly, so MQTT 3.1.1 clients can send binary tensors too.
pub fn decode_request(payload: &[u8], header_len: Option<usize>) -> Result<InferRequest, DecodeFailure> {
    let malformed = |header: &[u8], e: serde_json::Error| DecodeFailure {
        identity: recover_identity(header),
        error: DecodeError::MalformedJson(e.to_string()),
    };
    let (raw, header, binary): (RawRequest<'_>, _, _) = match header_len {
        Some(len) if len > payload.len() => {
            return Err(DecodeFailure {
                identity: RequestIdentity::default(),
                error: DecodeError::HeaderLengthTooLarge { header: len, payload: payload.len() },
            })
        }
        Some(len) => {
            let (header, binary) = payload.split_at(len);
            (serde_json::from_slice(header).map_err(|e| malformed(header, e))?, header, binary)
        }
        None => {
            let mut stream = serde_json::Deserializer::from_slice(payload).into_iter::<RawRequest<'_>>();
            let raw = match stream.next() {
                Some(Ok(raw)) => raw,
                Some(Err(e)) => return Err(malformed(payload, e)),
                None => return Err(malformed(payload, serde_json::from_slice::<()>(b"").unwrap_err())),
            };
            let (header, rest) = payload.split_at(stream.byte_offset());
            let claims_binary = raw.inputs.iter().any(|i| i.parameters.binary_data_size.is_some());
            // Without binary inputs only whitespace may follow the JSON, as in a plain JSON payload.
            let binary = if claims_binary || !rest.iter().all(u8::is_ascii_whitespace) { rest } else { &[][..] };
            (raw, header, binary)
        }
    };
    let identity = raw.identity();
    raw.into_request(identity.clone(), header.len(), binary).map_err(|error| DecodeFailure { identity, error })
}

/// Best effort for a payload that is not a valid request: if it is JSON at all, find the id and
/// reply topic so the error still reaches the client.
fn recover_identity(header: &[u8]) -> RequestIdentity {
    #[derive(Deserialize)]
    struct Loose {
        #[serde(default, deserialize_with = "loose_id")]
        id: Option<String>,
        #[serde(default)]
        parameters: Option<LooseParameters>,
    }
    #[derive(Deserialize)]
    struct LooseParameters {
        #[serde(default, deserialize_with = "loose_id")]
        id: Option<String>,
        #[serde(default, deserialize_with = "loose_id")]
        reply_to: Option<String>,
    }
    fn loose_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Ok(scalar_to_string(serde_json::Value::deserialize(d)?))
    }
    match serde_json::from_slice::<Loose>(header) {
        Ok(loose) => {
            let params = loose.parameters;
            RequestIdentity {
                id: loose.id.or_else(|| params.as_ref().and_then(|p| p.id.clone())),
                reply_to: params.and_then(|p| p.reply_to),
            }
        }
        Err(_) => RequestIdentity::default(),
    }
}

fn scalar_to_string(v: serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Request ids are strings in the protocol; numeric ids are common enough to accept as well.
fn id_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        v => {
            scalar_to_string(v).map(Some).ok_or_else(|| serde::de::Error::custom("\"id\" must be a string or a number"))
        }
    }
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(default, deserialize_with = "id_string")]
    id: Option<String>,
    #[serde(default)]
    parameters: RequestParameters,
    #[serde(borrow)]
    inputs: Vec<RawInput<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

#[derive(Deserialize, Default)]
struct RequestParameters {
    #[serde(default, deserialize_with = "id_string")]
    id: Option<String>,
    #[serde(default)]
    reply_to: Option<String>,
    #[serde(default)]
    timeout_ms: Option<u64>,
    #[serde(default)]
    binary_data_output: Option<bool>,
    #[serde(default, deserialize_with = "id_string")]
    session: Option<String>,
    #[serde(default)]
    score: Option<f32>,
    #[serde(default)]
    max_detections: Option<u64>,
    #[serde(default)]
    nms_iou: Option<f32>,
}

#[derive(Deserialize)]
struct RawInput<'a> {
    name: String,
    shape: Vec<u64>,
    datatype: String,
    #[serde(default)]
    parameters: TensorParameters,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
struct TensorParameters {
    #[serde(default)]
    binary_data_size: Option<u64>,
    #[serde(default)]
    binary_data: Option<bool>,
}

#[derive(Deserialize)]
struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: TensorParameters,
}

impl RawRequest<'_> {
    fn identity(&self) -> RequestIdentity {
        RequestIdentity {
            id: self.id.clone().or_else(|| self.parameters.id.clone()),
            reply_to: self.parameters.reply_to.clone(),
        }
    }

    fn into_request(
        self,
        identity: RequestIdentity,
        header_len: usize,
        binary: &[u8],
    ) -> Result<InferRequest, DecodeError> {
        if self.inputs.is_empty() {
            return Err(DecodeError::NoInputs);
        }
        let mut inputs: Vec<InputTensor> = Vec::with_capacity(self.inputs.len());
        let mut offset = 0usize;
        for raw in self.inputs {
            if inputs.iter().any(|i| i.name == raw.name) {
                return Err(DecodeError::DuplicateInput(raw.name));
            }
            inputs.push(raw.into_tensor(header_len, binary, &mut offset)?);
        }
        if offset < binary.len() {
            return Err(DecodeError::BinaryTrailing { extra: binary.len() - offset });
        }
        let outputs = self.outputs.map(|outs| {
            outs.into_iter().map(|o| RequestedOutput { name: o.name, binary: o.parameters.binary_data }).collect()
        });
        Ok(InferRequest {
            identity,
            inputs,
            outputs,
            binary_outputs: self.parameters.binary_data_output.unwrap_or(false),
            timeout: self.parameters.timeout_ms.map(Duration::from_millis),
            session: self.parameters.session,
            media: None,
            thresholds: Thresholds {
                score: self.parameters.score,
                max_detections: self.parameters.max_detections,
                nms_iou: self.parameters.nms_iou,
            },
        })
    }
}

impl RawInput<'_> {
    fn into_tensor(self, header_len: usize, binary: &[u8], offset: &mut usize) -> Result<InputTensor, DecodeError> {
        let datatype: DataType =
            self.datatype.parse().map_err(|source| DecodeError::UnknownDataType { name: self.name.clone(), source })?;
        let shape = checked_shape(&self.name, &self.shape)?;
        let Some(element_size) = datatype.element_size() else {
            return self.into_bytes_tensor(shape, header_len, binary, offset);
        };
        let name = self.name;
        let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let byte_len = count.and_then(|c| c.checked_mul(element_size));
        let (Some(count), Some(byte_len)) = (count, byte_len) else {
            return Err(DecodeError::ShapeOverflow { name, shape: self.shape });
        };
        let tensor = if let Some(size) = self.parameters.binary_data_size {
            let size = usize::try_from(size).unwrap_or(usize::MAX);
            if size != byte_len {
                return Err(DecodeError::BinarySizeMismatch {
                    name,
                    shape,
                    datatype,
                    expected: byte_len,
                    actual: size,
                });
            }
            let bytes = take(binary, offset, size, header_len)?;
            tensor_from_le_bytes(datatype, &shape, bytes)
                .map_err(|message| DecodeError::BadData { name: name.clone(), message })?
        } else if let Some(data) = self.data {
            tensor_from_json(&name, datatype, &shape, count, data)?
        } else {
            return Err(DecodeError::NoData { name });
        };
        Ok(InputTensor { name, datatype, tensor })
    }

    /// A BYTES input (an encoded image, say): in JSON, an array of strings; in binary, each element
    /// as a 4-byte little-endian length and its bytes (the Triton convention).
    fn into_bytes_tensor(
        self,
        shape: Vec<usize>,
        header_len: usize,
        binary: &[u8],
        offset: &mut usize,
    ) -> Result<InputTensor, DecodeError> {
        let name = self.name;
        let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)).filter(|&c| c <= 1 << 16);
        let Some(count) = count else {
            return Err(DecodeError::ShapeOverflow { name, shape: self.shape });
        };
        let elements: Vec<Blob> = if let Some(size) = self.parameters.binary_data_size {
            let bytes = take(binary, offset, usize::try_from(size).unwrap_or(usize::MAX), header_len)?;
            let parts = bytes_elements(bytes).map_err(|e| DecodeError::BadBytes(name.clone(), e.to_string()))?;
            parts.into_iter().map(|part| Blob::from_bytes(part).expect("a byte buffer")).collect()
        } else if let Some(data) = self.data {
            let strings: Vec<String> = serde_json::from_str(data.get()).map_err(|e| DecodeError::BadData {
                name: name.clone(),
                message: format!("BYTES data must be an array of strings: {}", clean_serde_message(&e)),
            })?;
            strings.iter().map(|s| Blob::from_bytes(s.as_bytes()).expect("a byte buffer")).collect()
        } else {
            return Err(DecodeError::NoData { name });
        };
        if elements.len() != count {
            return Err(DecodeError::LengthMismatch { name, shape, expected: count, actual: elements.len() });
        }
        let tensor = tensor_of(&shape, elements)
            .map_err(|_| DecodeError::ShapeOverflow { name: name.clone(), shape: self.shape.clone() })?;
        Ok(InputTensor { name, datatype: DataType::Bytes, tensor })
    }
}

/// The shape as sizes, refused when a tensor of it could not be laid out: the product of its
/// non-zero dimensions must fit the strides (`isize`), even when another dimension is 0 (found
/// by fuzzing: `[0, 2^32, 2^40]` holds no element but overflowed the stride computation).
fn checked_shape(name: &str, shape: &[u64]) -> Result<Vec<usize>, DecodeError> {
    let overflow = || DecodeError::ShapeOverflow { name: name.to_string(), shape: shape.to_vec() };
    shape
        .iter()
        .filter(|&&d| d != 0)
        .try_fold(1u64, |product, &d| product.checked_mul(d))
        .filter(|&product| product <= isize::MAX as u64)
        .ok_or_else(overflow)?;
    shape.iter().map(|&d| usize::try_from(d)).collect::<Result<Vec<_>, _>>().map_err(|_| overflow())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<InferRequest, DecodeFailure> {
        decode_request(json.as_bytes(), None)
    }

    #[test]
    fn flat_and_nested_data_give_the_same_tensor() {
        let flat = decode(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3,4.5]}]}"#).unwrap();
        let nested =
            decode(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2],[3,4.5]]}]}"#).unwrap();
        assert_eq!(flat.inputs[0].tensor, nested.inputs[0].tensor);
        assert_eq!(flat.inputs[0].tensor.shape(), &[2, 2]);
        let view = flat.inputs[0].tensor.to_plain_array_view::<f32>().unwrap();
        assert_eq!(view.iter().copied().collect::<Vec<_>>(), vec![1.0, 2.0, 3.0, 4.5]);
    }

    #[test]
    fn every_numeric_datatype_decodes() {
        for (dt, data) in [
            ("BOOL", "[true,false]"),
            ("UINT8", "[0,255]"),
            ("UINT16", "[0,65535]"),
            ("UINT32", "[0,4294967295]"),
            ("UINT64", "[0,18446744073709551615]"),
            ("INT8", "[-128,127]"),
            ("INT16", "[-32768,32767]"),
            ("INT32", "[-2147483648,2147483647]"),
            ("INT64", "[-9223372036854775808,9223372036854775807]"),
            ("FP16", "[0.5,-2]"),
            ("FP32", "[0.5,-2]"),
            ("FP64", "[0.5,-2]"),
        ] {
            let json = format!(r#"{{"inputs":[{{"name":"x","shape":[2],"datatype":"{dt}","data":{data}}}]}}"#);
            let req = decode(&json).unwrap_or_else(|e| panic!("{dt}: {}", e.error));
            assert_eq!(req.inputs[0].datatype.as_str(), dt);
            assert_eq!(req.inputs[0].tensor.datum_type(), req.inputs[0].datatype.datum_type().unwrap());
        }
    }

    #[test]
    fn out_of_range_and_fractional_integers_are_refused() {
        for (dt, data) in [("UINT8", "[256]"), ("INT8", "[-129]"), ("INT32", "[1.5]"), ("BOOL", "[1]")] {
            let json = format!(r#"{{"id":"r","inputs":[{{"name":"x","shape":[1],"datatype":"{dt}","data":{data}}}]}}"#);
            let err = decode(&json).unwrap_err();
            assert!(matches!(err.error, DecodeError::BadData { .. }), "{dt}: {:?}", err.error);
            assert!(err.error.to_string().contains(dt), "{}", err.error);
            assert_eq!(err.identity.id.as_deref(), Some("r"));
        }
    }

    #[test]
    fn data_length_must_match_shape() {
        let short = decode(r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#).unwrap_err();
        assert!(matches!(short.error, DecodeError::LengthMismatch { expected: 3, actual: 2, .. }));
        let long = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}]}"#).unwrap_err();
        assert!(long.error.to_string().contains("more values than the shape holds"));
    }

    #[test]
    fn malformed_json_still_recovers_the_identity_when_it_can() {
        let err = decode(r#"{"id":7,"parameters":{"reply_to":"me/replies"},"inputs":"nope"}"#).unwrap_err();
        assert!(matches!(err.error, DecodeError::MalformedJson(_)));
        assert_eq!(err.identity.id.as_deref(), Some("7"));
        assert_eq!(err.identity.reply_to.as_deref(), Some("me/replies"));
        let err = decode("not json at all").unwrap_err();
        assert_eq!(err.identity, RequestIdentity::default());
    }

    #[test]
    fn parameters_carry_id_reply_to_timeout_and_binary_output() {
        let req = decode(
            r#"{"parameters":{"id":"p1","reply_to":"a/b","timeout_ms":250,"binary_data_output":true},
                "inputs":[{"name":"x","shape":[1],"datatype":"INT64","data":[1]}],
                "outputs":[{"name":"y","parameters":{"binary_data":false}}]}"#,
        )
        .unwrap();
        assert_eq!(req.identity.id.as_deref(), Some("p1"));
        assert_eq!(req.identity.reply_to.as_deref(), Some("a/b"));
        assert_eq!(req.timeout, Some(Duration::from_millis(250)));
        assert!(req.binary_outputs);
        assert_eq!(req.outputs.unwrap()[0], RequestedOutput { name: "y".into(), binary: Some(false) });
    }

    fn binary_payload(header: &str, body: &[u8]) -> (Vec<u8>, usize) {
        let mut payload = header.as_bytes().to_vec();
        payload.extend_from_slice(body);
        (payload, header.len())
    }

    #[test]
    fn binary_inputs_are_read_after_the_header_in_order() {
        let mut body = Vec::new();
        for v in [1.0f32, 2.0, 3.0] {
            body.extend_from_slice(&v.to_le_bytes());
        }
        body.extend_from_slice(&[1, 0]);
        let (payload, len) = binary_payload(
            r#"{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":12}},
                          {"name":"b","shape":[2],"datatype":"BOOL","parameters":{"binary_data_size":2}}]}"#,
            &body,
        );
        let req = decode_request(&payload, Some(len)).unwrap();
        let a = req.inputs[0].tensor.to_plain_array_view::<f32>().unwrap();
        assert_eq!(a.iter().copied().collect::<Vec<_>>(), vec![1.0, 2.0, 3.0]);
        let b = req.inputs[1].tensor.to_plain_array_view::<bool>().unwrap();
        assert_eq!(b.iter().copied().collect::<Vec<_>>(), vec![true, false]);
    }

    #[test]
    fn binary_sizes_that_do_not_add_up_are_named() {
        let header = r#"{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":12}}]}"#;
        let (payload, len) = binary_payload(header, &[0; 8]);
        assert!(matches!(decode_request(&payload, Some(len)).unwrap_err().error, DecodeError::BinaryTruncated { .. }));
        let (payload, len) = binary_payload(header, &[0; 16]);
        assert!(matches!(
            decode_request(&payload, Some(len)).unwrap_err().error,
            DecodeError::BinaryTrailing { extra: 4 }
        ));
        let wrong = r#"{"inputs":[{"name":"a","shape":[3],"datatype":"FP32","parameters":{"binary_data_size":10}}]}"#;
        let (payload, len) = binary_payload(wrong, &[0; 10]);
        assert!(matches!(
            decode_request(&payload, Some(len)).unwrap_err().error,
            DecodeError::BinarySizeMismatch { expected: 12, actual: 10, .. }
        ));
        assert!(matches!(decode_request(b"{}", Some(99)).unwrap_err().error, DecodeError::HeaderLengthTooLarge { .. }));
    }

    #[test]
    fn binary_re_encoding_decodes_to_the_same_tensors() {
        let json = decode(
            r#"{"id":"b","inputs":[{"name":"a","shape":[2],"datatype":"FP32","data":[1.5,2]},
                                   {"name":"b","shape":[1,2],"datatype":"INT64","data":[[3,-4]]}]}"#,
        )
        .unwrap();
        let (payload, header_len) = encode_binary_request(&json);
        let binary = decode_request(&payload, Some(header_len)).unwrap();
        assert_eq!(binary.identity.id.as_deref(), Some("b"));
        assert!(binary.binary_outputs);
        for (a, b) in json.inputs.iter().zip(&binary.inputs) {
            assert_eq!((&a.name, a.datatype, &a.tensor), (&b.name, b.datatype, &b.tensor));
        }
    }

    #[test]
    fn huge_shapes_do_not_allocate() {
        let err = decode(
            r#"{"inputs":[{"name":"x","shape":[4294967296,4294967296,4294967296],"datatype":"FP32","data":[1]}]}"#,
        )
        .unwrap_err();
        assert!(matches!(err.error, DecodeError::ShapeOverflow { .. }));
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1000000000],"datatype":"FP32","data":[1]}]}"#).unwrap_err();
        assert!(matches!(err.error, DecodeError::LengthMismatch { .. }));
    }

    #[test]
    fn bytes_inputs_arrive_as_blobs_in_binary_and_json() {
        let header =
            r#"{"inputs":[{"name":"img","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":13}}]}"#;
        let mut body = Vec::new();
        for element in [&b"abc"[..], &b"\x00\xff"[..]] {
            body.extend_from_slice(&(element.len() as u32).to_le_bytes());
            body.extend_from_slice(element);
        }
        let (payload, len) = binary_payload(header, &body);
        let request = decode_request(&payload, Some(len)).unwrap();
        let blobs = crate::tensors::elements::<Blob>(&request.inputs[0].tensor).unwrap();
        assert_eq!(request.inputs[0].datatype, DataType::Bytes);
        assert_eq!(blobs.iter().map(|b| b.as_bytes().to_vec()).collect::<Vec<_>>(), [b"abc".to_vec(), vec![0, 255]]);
        assert_eq!(binary_bytes(&request.inputs[0].tensor).as_ref(), &body[..]);

        let json = decode(r#"{"inputs":[{"name":"t","shape":[1],"datatype":"BYTES","data":["hi"]}]}"#).unwrap();
        assert_eq!(crate::tensors::elements::<Blob>(&json.inputs[0].tensor).unwrap()[0].as_bytes(), b"hi");

        let (short, len) = binary_payload(
            r#"{"inputs":[{"name":"img","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}"#,
            &[9, 0, 0, 0, 1, 2],
        );
        let err = decode_request(&short, Some(len)).unwrap_err().error;
        assert!(err.to_string().contains("claims 9 bytes"), "{err}");
    }

    #[test]
    fn without_a_header_length_binary_data_follows_the_json_object() {
        let header =
            r#"{"id":"v3","inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}]}"#;
        let mut payload = header.as_bytes().to_vec();
        payload.extend_from_slice(&[1.5f32.to_le_bytes(), (-2f32).to_le_bytes()].concat());
        let request = decode_request(&payload, None).unwrap();
        assert_eq!(crate::tensors::elements::<f32>(&request.inputs[0].tensor).unwrap(), &[1.5, -2.0]);
        // A plain JSON request may still end in whitespace; anything else after it is named.
        assert!(decode("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}\n ").is_ok());
        let err = decode("{\"inputs\":[{\"name\":\"x\",\"shape\":[1],\"datatype\":\"FP32\",\"data\":[1]}]}xyz")
            .unwrap_err()
            .error;
        assert!(matches!(err, DecodeError::BinaryTrailing { extra: 3 }), "{err}");
    }

    #[test]
    fn other_request_mistakes_are_named() {
        assert!(matches!(decode(r#"{"inputs":[]}"#).unwrap_err().error, DecodeError::NoInputs));
        assert!(matches!(
            decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#).unwrap_err().error,
            DecodeError::NoData { .. }
        ));
        assert!(matches!(
            decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FLOAT","data":[1]}]}"#).unwrap_err().error,
            DecodeError::UnknownDataType { .. }
        ));
        assert!(matches!(
            decode(
                r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1]},
                              {"name":"x","shape":[1],"datatype":"FP32","data":[1]}]}"#
            )
            .unwrap_err()
            .error,
            DecodeError::DuplicateInput(_)
        ));
        assert!(matches!(parse_header_length("12a"), Err(DecodeError::BadHeaderLength(_))));
    }

    #[test]
    fn empty_shapes_whose_other_dimensions_overflow_are_refused_not_a_panic() {
        // Found by tests/fuzz (bench/fuzz-results.md, findings 1 and 2).
        for datatype in ["BYTES", "FP32"] {
            let json = format!(
                r#"{{"inputs":[{{"name":"b","shape":[0,4294967296,1099511627776],"datatype":"{datatype}","data":[]}}]}}"#
            );
            let err = decode(&json).unwrap_err();
            assert!(matches!(err.error, DecodeError::ShapeOverflow { .. }), "{datatype}: {}", err.error);
        }
        let header = r#"{"inputs":[{"name":"b","shape":[0,4294967296,1099511627776],"datatype":"BYTES","parameters":{"binary_data_size":0}}]}"#;
        let err = decode_request(header.as_bytes(), Some(header.len())).unwrap_err();
        assert!(matches!(err.error, DecodeError::ShapeOverflow { .. }), "{}", err.error);
    }
}
