//! Model metadata in the Open Inference Protocol's shape: what a client needs to build a request,
//! with the `model.toml` sections that say what else the model takes and gives.

use serde::{Deserialize, Serialize};

use super::manifest::{PostprocessDecl, PreprocessDecl, SessionDecl};
use crate::protocol::DataType;

/// A tensor's name, datatype and shape; `-1` marks a dimension of any size (the batch dimension).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: DataType,
    pub shape: Vec<i64>,
}

/// The protocol's model-metadata document, published retained per model and printed by `edgeinfer models`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    /// The version served, alone: the protocol's list, so that OIP clients read it where they
    /// expect it. A board holds other versions on disk (the `models` admin operation lists them).
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
    /// The model's `model.toml` description: says to an operator what the model is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Class labels, in output order, where the model has a labels file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// The model's `[preprocess]` (what payloads it takes besides tensors: images, audio).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocess: Option<PreprocessDecl>,
    /// The model's `[postprocess]` (which outputs are computed answers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postprocess: Option<PostprocessDecl>,
    /// The model's `[session]`: requests carry `parameters.session` to continue a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionDecl>,
}

/// The platform string for every model served here: ONNX executed by tract.
pub const PLATFORM: &str = "onnx_tract";
