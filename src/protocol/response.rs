//! Encoding Open Inference Protocol responses and error replies, and reading them back on the client side.

use serde::ser::{Serialize, SerializeSeq, Serializer};
use serde_json::{json, Value};
use tract_core::prelude::{f16, Datum, Tensor};

use super::binary::{binary_bytes, bytes_elements};
use super::datatype::DataType;

/// One output to send back, and whether it goes as raw bytes after the JSON header.
#[derive(Debug)]
pub struct OutputTensor<'a> {
    pub name: &'a str,
    pub tensor: &'a Tensor,
    pub binary: bool,
}

/// A reply ready to publish. `header_len` is set when binary data follows the JSON header; it travels
/// in the `inference-header-content-length` user property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedReply {
    pub payload: Vec<u8>,
    pub header_len: Option<usize>,
}

/// Machine-readable class of an error reply, so clients (and `loadgen`) can count errors by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request itself is wrong: fix it and send again.
    BadRequest,
    /// No model by that name is loaded on this device.
    UnknownModel,
    /// The payload is over `max_payload_bytes`.
    TooLarge,
    /// The model's queue is full: retry later or elsewhere.
    Busy,
    /// The request's deadline passed before it could be computed.
    DeadlineExceeded,
    /// The daemon is stopping and did not take the request.
    ShuttingDown,
    /// The engine failed on a request that looked valid.
    Internal,
}

impl ErrorCode {
    /// Every code, in declaration order (`code as usize` indexes it).
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::BadRequest,
        ErrorCode::UnknownModel,
        ErrorCode::TooLarge,
        ErrorCode::Busy,
        ErrorCode::DeadlineExceeded,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::UnknownModel => "unknown_model",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Busy => "busy",
            ErrorCode::DeadlineExceeded => "deadline_exceeded",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An output whose element type the protocol cannot carry.
#[derive(Debug, thiserror::Error)]
#[error("output \"{name}\" has element type {datum:?}, which the Open Inference Protocol cannot carry")]
pub struct UnsupportedOutput {
    pub name: String,
    pub datum: tract_core::prelude::DatumType,
}

#[derive(serde::Serialize)]
struct ResponseHeader<'a> {
    model_name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    model_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<&'a serde_json::Map<String, Value>>,
    outputs: Vec<OutputHeader<'a>>,
}

#[derive(serde::Serialize)]
struct OutputHeader<'a> {
    name: &'a str,
    datatype: DataType,
    shape: &'a [usize],
    #[serde(skip_serializing_if = "OutputParameters::is_empty")]
    parameters: OutputParameters,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<JsonData<'a>>,
}

#[derive(serde::Serialize, Default)]
struct OutputParameters {
    #[serde(skip_serializing_if = "Option::is_none")]
    binary_data_size: Option<usize>,
    /// JSON has no NaN or infinity: such elements are sent as `null`, and this says how many
    /// there are, so that a client can tell a model's NaN from a missing value.
    #[serde(skip_serializing_if = "Option::is_none")]
    non_finite: Option<usize>,
}

impl OutputParameters {
    fn is_empty(&self) -> bool {
        self.binary_data_size.is_none() && self.non_finite.is_none()
    }
}

/// How many elements of a float tensor JSON cannot carry (NaN, +-Inf); `None` when all can.
fn non_finite(tensor: &Tensor, datatype: DataType) -> Option<usize> {
    fn count<T: Datum>(t: &Tensor, finite: impl Fn(&T) -> bool) -> usize {
        t.to_plain_array_view::<T>().map(|v| v.iter().filter(|x| !finite(x)).count()).unwrap_or(0)
    }
    let n = match datatype {
        DataType::Fp16 => count::<f16>(tensor, |v| v.is_finite()),
        DataType::Fp32 => count::<f32>(tensor, |v| v.is_finite()),
        DataType::Fp64 => count::<f64>(tensor, |v| v.is_finite()),
        _ => 0,
    };
    (n > 0).then_some(n)
}

/// Serialises a tensor as a flat row-major JSON array without an intermediate copy.
struct JsonData<'a>(&'a Tensor, DataType);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        fn seq<S: Serializer, T: Datum, U: Serialize>(
            s: S,
            t: &Tensor,
            f: impl Fn(&T) -> U,
        ) -> Result<S::Ok, S::Error> {
            let view = t.to_plain_array_view::<T>().map_err(serde::ser::Error::custom)?;
            let mut out = s.serialize_seq(Some(view.len()))?;
            for v in view.iter() {
                out.serialize_element(&f(v))?;
            }
            out.end()
        }
        let t = self.0;
        match self.1 {
            DataType::Bool => seq::<S, bool, _>(s, t, |v| *v),
            DataType::Uint8 => seq::<S, u8, _>(s, t, |v| *v),
            DataType::Uint16 => seq::<S, u16, _>(s, t, |v| *v),
            DataType::Uint32 => seq::<S, u32, _>(s, t, |v| *v),
            DataType::Uint64 => seq::<S, u64, _>(s, t, |v| *v),
            DataType::Int8 => seq::<S, i8, _>(s, t, |v| *v),
            DataType::Int16 => seq::<S, i16, _>(s, t, |v| *v),
            DataType::Int32 => seq::<S, i32, _>(s, t, |v| *v),
            DataType::Int64 => seq::<S, i64, _>(s, t, |v| *v),
            DataType::Fp16 => seq::<S, f16, _>(s, t, |v| v.to_f32()),
            DataType::Fp32 => seq::<S, f32, _>(s, t, |v| *v),
            DataType::Fp64 => seq::<S, f64, _>(s, t, |v| *v),
            DataType::Bytes => seq::<S, String, _>(s, t, |v| v.clone()),
        }
    }
}

/// Encodes a successful inference reply. `parameters` are the reply's own (a session's state, say).
pub fn encode_response(
    model_name: &str,
    model_version: Option<&str>,
    id: Option<&str>,
    parameters: Option<&serde_json::Map<String, Value>>,
    outputs: &[OutputTensor<'_>],
) -> Result<EncodedReply, UnsupportedOutput> {
    let mut headers = Vec::with_capacity(outputs.len());
    let mut binary = Vec::new();
    for out in outputs {
        // BYTES outputs are strings (decoded text, labels); raw blobs never leave a model.
        let datatype = DataType::from_datum_type(out.tensor.datum_type())
            .ok_or_else(|| UnsupportedOutput { name: out.name.to_string(), datum: out.tensor.datum_type() })?;
        let (parameters, data) = if out.binary {
            let bytes = binary_bytes(out.tensor);
            let size = bytes.len();
            binary.push(bytes);
            (OutputParameters { binary_data_size: Some(size), ..Default::default() }, None)
        } else {
            let parameters = OutputParameters { non_finite: non_finite(out.tensor, datatype), ..Default::default() };
            (parameters, Some(JsonData(out.tensor, datatype)))
        };
        headers.push(OutputHeader { name: out.name, datatype, shape: out.tensor.shape(), parameters, data });
    }
    let header = ResponseHeader { model_name, model_version, id, parameters, outputs: headers };
    let mut payload = serde_json::to_vec(&header).expect("tensors of supported types serialise");
    if binary.is_empty() {
        return Ok(EncodedReply { payload, header_len: None });
    }
    let header_len = payload.len();
    payload.reserve(binary.iter().map(|b| b.len()).sum());
    for bytes in binary {
        payload.extend_from_slice(&bytes);
    }
    Ok(EncodedReply { payload, header_len: Some(header_len) })
}

/// The longest error message a reply carries: messages quote request data (an input name, say),
/// and an error reply must stay small whatever the request held.
pub const MAX_ERROR_MESSAGE_BYTES: usize = 2048;

/// Encodes an error reply: the protocol's `{"error": ...}` plus the request id, the model and a code.
pub fn encode_error(id: Option<&str>, model_name: &str, code: ErrorCode, message: &str) -> Vec<u8> {
    let message = if message.len() > MAX_ERROR_MESSAGE_BYTES {
        let cut = message.floor_char_boundary(MAX_ERROR_MESSAGE_BYTES);
        format!("{}... (error message cut at {cut} of {} bytes)", &message[..cut], message.len())
    } else {
        message.to_string()
    };
    let mut reply = json!({ "model_name": model_name, "error": message, "code": code.as_str() });
    if let Some(id) = id {
        reply["id"] = Value::from(id);
    }
    serde_json::to_vec(&reply).expect("a JSON object serialises")
}

/// Why a reply could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum ReplyError {
    #[error("reply is not JSON: {0}")]
    NotJson(#[from] serde_json::Error),
    #[error("reply header length {0} exceeds the payload")]
    HeaderTooLong(usize),
    #[error("binary output \"{0}\" is malformed: {1}")]
    BadBinary(String, String),
}

/// Reads a reply as JSON, turning binary outputs into ordinary `data` arrays so that a client can
/// print or compare replies without caring how they travelled.
pub fn decode_reply(payload: &[u8], header_len: Option<usize>) -> Result<Value, ReplyError> {
    let len = header_len.unwrap_or(payload.len());
    if len > payload.len() {
        return Err(ReplyError::HeaderTooLong(len));
    }
    let (header, mut binary) = payload.split_at(len);
    let mut reply: Value = serde_json::from_slice(header)?;
    let Some(outputs) = reply.get_mut("outputs").and_then(Value::as_array_mut) else {
        return Ok(reply);
    };
    for out in outputs {
        let Some(size) = out.pointer("/parameters/binary_data_size").and_then(Value::as_u64) else {
            continue;
        };
        let name = out["name"].as_str().unwrap_or("?").to_string();
        let bad = |m: &str| ReplyError::BadBinary(name.clone(), m.to_string());
        let size = usize::try_from(size).map_err(|_| bad("size overflows"))?;
        if size > binary.len() {
            return Err(bad("fewer bytes than binary_data_size"));
        }
        let datatype: DataType =
            out["datatype"].as_str().and_then(|d| d.parse().ok()).ok_or_else(|| bad("unknown datatype"))?;
        let (bytes, rest) = binary.split_at(size);
        binary = rest;
        out["data"] = binary_to_json(datatype, bytes).ok_or_else(|| bad("size is not a whole number of elements"))?;
    }
    Ok(reply)
}

fn binary_to_json(datatype: DataType, bytes: &[u8]) -> Option<Value> {
    let Some(size) = datatype.element_size() else {
        return bytes_to_json(bytes);
    };
    if !bytes.len().is_multiple_of(size) {
        return None;
    }
    let values = bytes.chunks_exact(size).map(|c| match datatype {
        DataType::Bool => Value::from(c[0] != 0),
        DataType::Uint8 => Value::from(c[0]),
        DataType::Int8 => Value::from(c[0] as i8),
        DataType::Uint16 => Value::from(u16::from_le_bytes([c[0], c[1]])),
        DataType::Int16 => Value::from(i16::from_le_bytes([c[0], c[1]])),
        DataType::Fp16 => Value::from(f16::from_le_bytes([c[0], c[1]]).to_f32()),
        DataType::Uint32 => Value::from(u32::from_le_bytes(c.try_into().expect("4 bytes"))),
        DataType::Int32 => Value::from(i32::from_le_bytes(c.try_into().expect("4 bytes"))),
        DataType::Fp32 => Value::from(f32::from_le_bytes(c.try_into().expect("4 bytes"))),
        DataType::Uint64 => Value::from(u64::from_le_bytes(c.try_into().expect("8 bytes"))),
        DataType::Int64 => Value::from(i64::from_le_bytes(c.try_into().expect("8 bytes"))),
        DataType::Fp64 => Value::from(f64::from_le_bytes(c.try_into().expect("8 bytes"))),
        DataType::Bytes => Value::Null,
    });
    Some(Value::Array(values.collect()))
}

/// BYTES elements (4-byte length, then the bytes) as JSON strings, lossy where not UTF-8.
fn bytes_to_json(bytes: &[u8]) -> Option<Value> {
    let elements = bytes_elements(bytes).ok()?;
    Some(Value::Array(elements.into_iter().map(|e| Value::from(String::from_utf8_lossy(e).into_owned())).collect()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reply_carries_id_model_shape_and_data() {
        let t = Tensor::from_shape(&[1, 3], &[0.25f32, 0.5, 0.25]).unwrap();
        let reply =
            encode_response("digits", None, Some("r1"), None, &[OutputTensor { name: "p", tensor: &t, binary: false }])
                .unwrap();
        assert_eq!(reply.header_len, None);
        let v: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(
            v,
            json!({"model_name":"digits","id":"r1","outputs":[{"name":"p","datatype":"FP32","shape":[1,3],"data":[0.25,0.5,0.25]}]})
        );
    }

    #[test]
    fn non_finite_values_go_as_null_and_the_output_says_how_many() {
        let t = Tensor::from_shape(&[4], &[f32::NAN, 1.0, f32::INFINITY, f32::NEG_INFINITY]).unwrap();
        let reply =
            encode_response("m", None, None, None, &[OutputTensor { name: "y", tensor: &t, binary: false }]).unwrap();
        let v: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(v["outputs"][0]["data"], json!([null, 1.0, null, null]));
        assert_eq!(v["outputs"][0]["parameters"], json!({"non_finite": 3}));
        let finite = Tensor::from_shape(&[1], &[2.0f32]).unwrap();
        let reply =
            encode_response("m", None, None, None, &[OutputTensor { name: "y", tensor: &finite, binary: false }])
                .unwrap();
        let v: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert!(v["outputs"][0].get("parameters").is_none(), "{v}");
    }

    #[test]
    fn error_messages_are_cut_to_a_bounded_size() {
        let name = "\u{e9}".repeat(1 << 20);
        let reply = encode_error(Some("r"), "m", ErrorCode::BadRequest, &format!("unknown input \"{name}\""));
        assert!(reply.len() < MAX_ERROR_MESSAGE_BYTES + 200, "{}", reply.len());
        let v: Value = serde_json::from_slice(&reply).unwrap();
        assert!(v["error"].as_str().unwrap().ends_with(" bytes)"), "{v}");
    }

    #[test]
    fn fp32_values_survive_json_exactly() {
        let values = [0.1f32, 1.0 / 3.0, 1e-30, 3.4028235e38, -0.0];
        let t = Tensor::from_shape(&[5], &values).unwrap();
        let reply =
            encode_response("m", None, None, None, &[OutputTensor { name: "y", tensor: &t, binary: false }]).unwrap();
        let v = decode_reply(&reply.payload, None).unwrap();
        let back: Vec<f32> =
            v["outputs"][0]["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
        assert_eq!(back.iter().map(|f| f.to_bits()).collect::<Vec<_>>(), values.map(f32::to_bits).to_vec());
    }

    #[test]
    fn binary_outputs_follow_the_header_and_read_back_as_data() {
        let a = Tensor::from_shape(&[2], &[1.5f32, -2.0]).unwrap();
        let b = Tensor::from_shape(&[3], &[7i64, -8, 9]).unwrap();
        let reply = encode_response(
            "m",
            Some("7"),
            Some("x"),
            None,
            &[
                OutputTensor { name: "a", tensor: &a, binary: true },
                OutputTensor { name: "b", tensor: &b, binary: false },
            ],
        )
        .unwrap();
        let header_len = reply.header_len.unwrap();
        assert_eq!(reply.payload.len(), header_len + 8);
        let header: Value = serde_json::from_slice(&reply.payload[..header_len]).unwrap();
        assert_eq!(header["model_version"], "7");
        assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 8);
        assert!(header["outputs"][0].get("data").is_none());
        let v = decode_reply(&reply.payload, Some(header_len)).unwrap();
        assert_eq!(v["outputs"][0]["data"], json!([1.5, -2.0]));
        assert_eq!(v["outputs"][1]["data"], json!([7, -8, 9]));
    }

    #[test]
    fn strings_go_as_bytes_in_json_and_binary_with_the_reply_parameters() {
        let text = crate::tensors::tensor_of(&[2], vec!["héllo".to_string(), String::new()]).unwrap();
        let mut parameters = serde_json::Map::new();
        parameters.insert("session".into(), "s1".into());
        let json = encode_response(
            "ocr",
            None,
            None,
            Some(&parameters),
            &[OutputTensor { name: "text", tensor: &text, binary: false }],
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&json.payload).unwrap();
        assert_eq!(v["parameters"], json!({"session": "s1"}));
        assert_eq!(v["outputs"][0], json!({"name":"text","datatype":"BYTES","shape":[2],"data":["héllo",""]}));
        let binary =
            encode_response("ocr", None, None, None, &[OutputTensor { name: "text", tensor: &text, binary: true }])
                .unwrap();
        let header_len = binary.header_len.unwrap();
        assert_eq!(binary.payload.len() - header_len, 4 + "héllo".len() + 4);
        let back = decode_reply(&binary.payload, Some(header_len)).unwrap();
        assert_eq!(back["outputs"][0]["data"], json!(["héllo", ""]));
    }

    #[test]
    fn error_reply_names_id_model_and_code() {
        let v: Value =
            serde_json::from_slice(&encode_error(Some("9"), "digits", ErrorCode::Busy, "queue full")).unwrap();
        assert_eq!(v, json!({"id":"9","model_name":"digits","error":"queue full","code":"busy"}));
    }
}
