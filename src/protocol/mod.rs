//! The wire format: Open Inference Protocol (KServe v2) JSON and its binary tensor extension.
//!
//! Nothing here knows about MQTT or tract plans: bytes in, typed requests out; tensors in, bytes out.

pub mod datatype;
pub mod media;
pub mod metadata;
pub mod request;
pub mod response;

pub use datatype::DataType;
pub use media::{decode_media, Media};
pub use metadata::{ModelMetadata, TensorMetadata};
pub use request::{decode_request, DecodeError, DecodeFailure, InferRequest, InputTensor, RequestIdentity};
pub use response::{decode_reply, encode_error, encode_response, EncodedReply, ErrorCode, OutputTensor};
