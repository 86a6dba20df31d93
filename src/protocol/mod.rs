//! The wire format: Open Inference Protocol (KServe v2) JSON and its binary tensor extension.
//!
//! Nothing here knows about MQTT or tract plans: bytes in, typed requests out; tensors in, bytes out.

pub mod binary;
pub mod datatype;
pub mod error;
mod json;
pub mod media;
pub mod request;
pub mod response;
pub mod types;

pub use datatype::DataType;
pub use error::{DecodeError, DecodeFailure, MediaError};
pub use media::decode_media;
pub use request::decode_request;
pub use response::{decode_reply, encode_error, encode_response, EncodedReply, ErrorCode, OutputTensor};
pub use types::{InferRequest, InputTensor, Media, RequestIdentity, RequestedOutput, Thresholds};
