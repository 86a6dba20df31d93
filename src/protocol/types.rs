//! The decoded forms a request takes, whichever way it arrived (JSON, binary tensors, a media
//! payload): what the model layer checks and runs.

use std::time::Duration;

use tract_core::prelude::Tensor;

use super::datatype::DataType;

/// A decoded, well-formed request. Whether the model accepts it is checked later, against the model.
#[derive(Debug)]
pub struct InferRequest {
    pub identity: RequestIdentity,
    pub inputs: Vec<InputTensor>,
    /// The outputs the client asked for, in its order; `None` means every output.
    pub outputs: Option<Vec<RequestedOutput>>,
    /// `parameters.binary_data_output`: every output as raw bytes unless an output says otherwise.
    pub binary_outputs: bool,
    /// `parameters.timeout_ms`: how long the client will wait for the answer.
    pub timeout: Option<Duration>,
    /// `parameters.session`: the stream this request continues, for models with `[session]`.
    pub session: Option<String>,
    /// An image file or audio samples sent as the whole payload (MQTT Content Type), for the
    /// model's `[preprocess]` input.
    pub media: Option<Media>,
    /// A detector's thresholds for this request (`parameters.score`, `parameters.max_detections`).
    pub thresholds: Thresholds,
}

/// A request's own detection thresholds, replacing the model's defaults; a model that detects
/// nothing ignores them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Thresholds {
    /// The lowest score of a region kept.
    pub score: Option<f32>,
    /// The most regions looked at.
    pub max_detections: Option<u64>,
    /// Of two overlapping regions, the weaker is dropped above this overlap (intersection over union).
    pub nms_iou: Option<f32>,
}

/// What is needed to answer a request, even one that failed to decode.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestIdentity {
    /// The client's request id, echoed in the reply (top-level `id`, else `parameters.id`).
    pub id: Option<String>,
    /// `parameters.reply_to`: where an MQTT 3.1.1 client, which has no Response Topic, wants the reply.
    pub reply_to: Option<String>,
}

/// One named input tensor, already in tract's representation.
#[derive(Debug)]
pub struct InputTensor {
    pub name: String,
    pub datatype: DataType,
    pub tensor: Tensor,
}

/// An entry of the request's `outputs` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    /// `Some(true)` asks for this output as raw bytes, `Some(false)` as JSON, `None` follows the request.
    pub binary: Option<bool>,
}

/// The payload of a media request.
#[derive(Debug)]
pub enum Media {
    /// A PNG or JPEG file.
    Image(Vec<u8>),
    /// Mono samples, INT16 or FP32, shape [n]; `rate` when the Content Type named one.
    Audio { samples: Tensor, datatype: DataType, rate: Option<u32> },
}

impl Media {
    /// What the request sent, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Media::Image(_) => "an image",
            Media::Audio { .. } => "audio samples",
        }
    }
}
