//! Why a payload is not a usable request: the decoders' errors, each message naming the field to
//! fix. All of them are the client's mistake (`bad_request`).

use super::binary::HEADER_LENGTH_PROPERTY;
use super::datatype::{DataType, UnknownDataType};
use super::response::ErrorCode;
use super::types::RequestIdentity;

/// Why a payload is not a usable request. Each message names the offending field and what to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("malformed request JSON: {0}")]
    MalformedJson(String),
    #[error("the request has no inputs; send {{\"inputs\":[{{\"name\",\"shape\",\"datatype\",\"data\"}}]}}")]
    NoInputs,
    #[error("input \"{0}\" appears more than once")]
    DuplicateInput(String),
    #[error("input \"{name}\": {source}")]
    UnknownDataType { name: String, source: UnknownDataType },
    #[error("input \"{0}\": BYTES elements are each a 4-byte little-endian length and that many bytes; {1}")]
    BadBytes(String, String),
    #[error("input \"{name}\": shape {shape:?} is too large")]
    ShapeOverflow { name: String, shape: Vec<u64> },
    #[error("input \"{name}\": has neither \"data\" nor parameters.binary_data_size")]
    NoData { name: String },
    #[error("input \"{name}\": {message}")]
    BadData { name: String, message: String },
    #[error("input \"{name}\": shape {shape:?} needs {expected} values, data has {actual}")]
    LengthMismatch { name: String, shape: Vec<usize>, expected: usize, actual: usize },
    #[error("input \"{name}\": binary_data_size is {actual} bytes, shape {shape:?} of {datatype} needs {expected}")]
    BinarySizeMismatch { name: String, shape: Vec<usize>, datatype: DataType, expected: usize, actual: usize },
    #[error("binary inputs need {needed} bytes after the {header} byte header, the payload has {available}")]
    BinaryTruncated { header: usize, needed: usize, available: usize },
    #[error("{extra} bytes after the JSON header are not claimed by any input's binary_data_size")]
    BinaryTrailing { extra: usize },
    #[error("header length {header} (user property {HEADER_LENGTH_PROPERTY}) exceeds the {payload} byte payload")]
    HeaderLengthTooLarge { header: usize, payload: usize },
    #[error("user property {HEADER_LENGTH_PROPERTY} must be a byte count, got \"{0}\"")]
    BadHeaderLength(String),
    #[error(transparent)]
    Media(#[from] MediaError),
}

/// A request that could not be decoded, with whatever identity could be recovered for the reply.
#[derive(Debug)]
pub struct DecodeFailure {
    pub identity: RequestIdentity,
    pub error: DecodeError,
}

impl DecodeError {
    /// The reply's error code.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::BadRequest
    }
}

/// Why a media request could not be read. Sent back to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("Content Type \"{0}\": format must be s16le or f32le")]
    AudioFormat(String),
    #[error("Content Type \"{0}\": rate must be a number of samples per second")]
    AudioRate(String),
    #[error("Content Type \"{0}\": only mono audio is accepted (channels=1); mix the channels down first")]
    AudioChannels(String),
    #[error("the WAV file is not readable: {0}")]
    Wav(String),
    #[error(
        "the WAV file has {channels} channel(s) of {bits}-bit {format} samples; send mono 16-bit integer or \
         32-bit float samples"
    )]
    WavFormat { channels: u16, bits: u16, format: &'static str },
    #[error(
        "Content Type \"{0}\" is not accepted; send image/png, image/jpeg, audio/pcm;format=s16le;rate=N, \
         audio/wav, or an Open Inference Protocol request (application/json, or no Content Type)"
    )]
    Unsupported(String),
    #[error("user property timeout_ms must be a whole number of milliseconds, got \"{0}\"")]
    Timeout(String),
    #[error("user properties score and nms_iou must be numbers between 0 and 1, got \"{0}\"")]
    Score(String),
    #[error("user property max_detections must be a whole number, got \"{0}\"")]
    MaxDetections(String),
    /// The samples are not a whole number of their size, say.
    #[error("input \"payload\": {0}")]
    Samples(String),
}
