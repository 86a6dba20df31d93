//! What can go wrong with a model: at load ([`LoadError`]), checking a request ([`InputError`]) and
//! answering one ([`AnswerError`]); each request-side error decides its reply's code.

use std::path::PathBuf;

use tract_core::prelude::DatumType;

use super::{audio, image, manifest};
use crate::protocol::{DataType, ErrorCode};
use crate::report::Cause;

/// Why a model could not be loaded. Each message names the model and says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("model \"{model}\": {source}")]
    Manifest { model: String, source: manifest::ManifestError },
    #[error("model \"{model}\": no model.onnx in {dir}")]
    MissingOnnx { model: String, dir: PathBuf },
    #[error("model \"{model}\": tract cannot {stage}")]
    Tract { model: String, stage: &'static str, source: Cause },
    #[error("model \"{model}\": model.toml declares {kind} \"{name}\", the ONNX graph has {available:?}")]
    UnknownTensor { model: String, kind: &'static str, name: String, available: Vec<String> },
    #[error(
        "model \"{model}\": input \"{input}\" has no fixed {what} in the ONNX file; declare it in model.toml \
         ([[inputs]] name, datatype, shape; -1 for a leading batch dimension)"
    )]
    UnfixedInput { model: String, input: String, what: &'static str },
    #[error("model \"{model}\": {kind} \"{name}\" has element type {datum:?}, which requests cannot carry")]
    UnsupportedType { model: String, kind: &'static str, name: String, datum: DatumType },
    #[error("model \"{model}\": model.toml says output \"{name}\" is {declared}, the model produces {actual}")]
    OutputMismatch { model: String, name: String, declared: String, actual: String },
    #[error(
        "model \"{model}\": serving.max_batch_size needs a batch dimension (-1 first) on every input and output, \
         and {kind} \"{name}\" has shape {shape:?}; remove max_batch_size or declare the batch dimension"
    )]
    NotBatchable { model: String, kind: &'static str, name: String, shape: Vec<i64> },
    #[error("model \"{model}\": model.toml {key}: {message}")]
    Processing { model: String, key: &'static str, message: String },
}

/// A request that the model cannot take. The message is sent back to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    #[error("missing input \"{name}\" (model \"{model}\" takes {expected:?})")]
    Missing { model: String, name: String, expected: Vec<String> },
    #[error("unknown input \"{name}\" (model \"{model}\" takes {expected:?})")]
    Unknown { model: String, name: String, expected: Vec<String> },
    #[error("input \"{name}\" must be {expected}, the request sent {actual}")]
    WrongDatatype { name: String, expected: DataType, actual: DataType },
    #[error("input \"{name}\" has shape {actual:?}; the model takes {expected} (-1: any size)")]
    WrongShape { name: String, expected: String, actual: Vec<usize> },
    #[error("inputs disagree on the batch size: {0:?}")]
    BatchMismatch(Vec<usize>),
    #[error("output \"{0}\" is requested more than once; name each output once")]
    DuplicateOutput(String),
    #[error("unknown output \"{name}\" requested (model \"{model}\" has {available:?})")]
    UnknownOutput { model: String, name: String, available: Vec<String> },
    #[error("model \"{model}\" does not take {sent} as the payload; {accepts}")]
    MediaNotAccepted { model: String, sent: &'static str, accepts: String },
    #[error("the audio is at {sent} Hz, model \"{model}\" takes {expected} Hz; resample it before sending")]
    SampleRate { model: String, sent: u32, expected: u32 },
    #[error("input \"{name}\" is session state, which the daemon keeps; send parameters.session instead")]
    StateInput { name: String },
    #[error("{0}")]
    Session(String),
    #[error("model \"{model}\" reads an image: send a PNG or JPEG file (Content Type image/png, image/jpeg)")]
    ImageRequired { model: String },
    #[error("parameters.{key} must be {range}, the request sent {sent}")]
    Threshold { key: &'static str, range: String, sent: String },
    #[error(transparent)]
    Image(#[from] image::ImageError),
    #[error(transparent)]
    Audio(#[from] audio::AudioError),
}

impl InputError {
    /// The reply's error code: the client's mistake, except for an image that is too large to
    /// decode or that must wait for memory other images hold.
    pub fn code(&self) -> ErrorCode {
        match self {
            InputError::Image(image::ImageError::Busy) => ErrorCode::Busy,
            InputError::Image(
                image::ImageError::TooLarge { .. }
                | image::ImageError::TooManyPixels { .. }
                | image::ImageError::OverBudget { .. },
            ) => ErrorCode::TooLarge,
            _ => ErrorCode::BadRequest,
        }
    }
}

/// A checked request failed while computing or encoding.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The request's image or audio could not be prepared: the client's fault, sent back to it.
    #[error(transparent)]
    Input(#[from] InputError),
    /// The model failed on a valid request.
    #[error("inference failed")]
    Inference(#[source] Cause),
    #[error("splitting the batch's outputs failed")]
    SplitBatch(#[source] Cause),
    /// `[postprocess]` failed on the model's output.
    #[error("post-processing failed")]
    Postprocess(#[source] Cause),
    /// Code under the model (tract, a decoder) panicked: a bug, contained to this request.
    #[error("the engine panicked ({0}); the request was not computed; please report this")]
    Panicked(String),
}

impl AnswerError {
    /// The reply's error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AnswerError::Input(e) => e.code(),
            AnswerError::Inference(_)
            | AnswerError::SplitBatch(_)
            | AnswerError::Postprocess(_)
            | AnswerError::Panicked(_) => ErrorCode::Internal,
        }
    }
}
