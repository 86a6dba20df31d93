//! `model.toml`: what the ONNX file alone does not say — concrete input shapes, the batch dimension,
//! a description for operators, class labels, how request bytes become the input tensor
//! (`[preprocess]`), what is computed from the outputs (`[postprocess]`) and the state a streaming
//! model carries between requests (`[session]`).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::DataType;

mod check;

/// The parsed `model.toml` of one model directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Shown in metadata and `edgeinfer models`: what the model does, for the operator.
    #[serde(default)]
    pub description: Option<String>,
    /// A file next to `model.toml`, one label per line, in the order of the model's class outputs.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Input declarations. Inputs not listed keep what the ONNX file says.
    #[serde(default)]
    pub inputs: Vec<TensorDecl>,
    /// Output declarations, checked against the model at load time.
    #[serde(default)]
    pub outputs: Vec<TensorDecl>,
    /// Ignore the ONNX file's intermediate shape annotations (`value_info`): some exporters write
    /// ones that contradict the concrete input shapes, and tract works the shapes out itself.
    #[serde(default)]
    pub ignore_value_info: bool,
    /// How this model is served, where it differs from the daemon's `[requests]` settings.
    #[serde(default)]
    pub serving: ServingDecl,
    /// How an image file or audio samples become the model's input, so clients send what their
    /// camera or microphone gives them instead of re-implementing the model's preparation.
    #[serde(default)]
    pub preprocess: Option<PreprocessDecl>,
    /// Answers computed from a raw output (top-k labels, decoded text), returned instead of the
    /// raw outputs unless the request names those.
    #[serde(default)]
    pub postprocess: Option<PostprocessDecl>,
    /// Streaming models: outputs fed back as inputs on the next request of the same session.
    #[serde(default)]
    pub session: Option<SessionDecl>,
}

/// Where request bytes go and how they are turned into the model's input tensor.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PreprocessDecl {
    Image(ImageDecl),
    Audio(AudioDecl),
}

impl PreprocessDecl {
    /// The model input the pre-processing fills.
    pub fn input(&self) -> &str {
        match self {
            PreprocessDecl::Image(d) => &d.input,
            PreprocessDecl::Audio(d) => &d.input,
        }
    }
}

/// An image file (PNG or JPEG) -> decoded RGB -> resized -> scaled -> laid out as the model's FP32 input.
/// The target height and width come from the input's shape.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImageDecl {
    pub input: String,
    #[serde(default)]
    pub resize: ResizeMode,
    #[serde(default)]
    pub color: ColorOrder,
    #[serde(default)]
    pub layout: Layout,
    /// Each 0-255 pixel value is first multiplied by this.
    #[serde(default = "one_over_255")]
    pub scale: f32,
    /// Then, per channel in RGB order, `(value - mean) / std`.
    #[serde(default)]
    pub mean: [f32; 3],
    #[serde(default = "ones")]
    pub std: [f32; 3],
    /// What the area outside the resized image holds, after scaling (`fit_height`, `letterbox`).
    #[serde(default)]
    pub pad_value: f32,
}

fn one_over_255() -> f32 {
    1.0 / 255.0
}

fn ones() -> [f32; 3] {
    [1.0; 3]
}

/// How an image of any size is brought to the model's height and width.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMode {
    /// To exactly height x width, whatever the aspect ratio.
    #[default]
    Stretch,
    /// Text-line recognisers (PaddleOCR): full height, width from the aspect ratio (rounded up,
    /// at most the model's width), padded on the right.
    FitHeight,
    /// Keep the aspect ratio, fit inside height x width, pad right and bottom.
    Letterbox,
}

/// Channel order the model was trained with (OpenCV-based models use BGR).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ColorOrder {
    #[default]
    Rgb,
    Bgr,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Layout {
    #[default]
    Nchw,
    Nhwc,
}

/// Mono audio samples -> rows of `context + frame` samples, each row's context being the samples
/// that precede its frame in the stream (carried across requests of a session).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AudioDecl {
    pub input: String,
    /// Samples per second the model expects; requests that say otherwise are refused, not resampled.
    pub sample_rate: u32,
    /// Samples per row; a request carries a whole number of frames.
    pub frame: usize,
    /// Samples of the stream before each frame that the row starts with.
    #[serde(default)]
    pub context: usize,
}

/// Answers computed from one raw output.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PostprocessDecl {
    /// Top-k classes: outputs `labels` (BYTES, from the labels file, else the class index) and `scores`.
    Classify(ClassifyDecl),
    /// CTC greedy decoding: outputs `text` (BYTES) and `confidence` (mean of the kept steps' probabilities).
    Ctc(CtcDecl),
}

impl PostprocessDecl {
    /// The raw output the answers are computed from.
    pub fn output(&self) -> &str {
        match self {
            PostprocessDecl::Classify(d) => &d.output,
            PostprocessDecl::Ctc(d) => &d.output,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifyDecl {
    /// An output of shape [batch, classes] (trailing 1s allowed).
    pub output: String,
    /// Apply softmax first (when the output is logits, not probabilities).
    #[serde(default)]
    pub softmax: bool,
    #[serde(default = "five")]
    pub top_k: usize,
}

fn five() -> usize {
    5
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CtcDecl {
    /// An output of shape [batch, steps, classes] holding per-step probabilities.
    pub output: String,
    /// One character per line, file next to `model.toml`; class `i` is line `i - 1` after the blank.
    pub dictionary: PathBuf,
    /// Class index of the CTC blank.
    #[serde(default)]
    pub blank: usize,
    /// The class after the dictionary's last line is a space (PaddleOCR's `use_space_char`).
    #[serde(default)]
    pub space: bool,
}

/// State a streaming model carries from one request of a session to the next.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SessionDecl {
    /// Each `output` is fed back as `input` on the session's next request (zeros for a new one).
    pub state: Vec<StateDecl>,
    /// A session unused this long is dropped; its next request starts fresh and is told so.
    #[serde(default = "default_idle_ttl")]
    pub idle_ttl_secs: u64,
    /// At most this many sessions are kept; a new one beyond it evicts the least recently used.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
}

fn default_idle_ttl() -> u64 {
    300
}

fn default_max_sessions() -> usize {
    1000
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateDecl {
    pub input: String,
    pub output: String,
}

/// Per-model serving settings (like Triton's instance count and queue policy); unset keys follow
/// the daemon's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingDecl {
    /// Inference threads for this model (`requests.workers` otherwise).
    pub workers: Option<usize>,
    /// Requests that may wait for this model (`requests.queue_capacity` otherwise).
    pub queue_capacity: Option<usize>,
    /// Deadline for this model's requests that carry none (`requests.default_timeout_ms` otherwise).
    pub default_timeout_ms: Option<u64>,
    /// Dynamic batching: a worker runs queued requests together, up to this many rows in all.
    /// Unset or 1: off. Pays where one run of N rows costs much less than N runs (see bench/).
    pub max_batch_size: Option<usize>,
    /// How long a worker holding a partial batch waits for more requests (microseconds, default 0:
    /// it takes only what is already queued, so a lone request is never delayed).
    pub max_queue_delay_us: Option<u64>,
}

/// One tensor as declared in `model.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorDecl {
    pub name: String,
    pub datatype: DataType,
    /// Concrete dimensions; only the first may be `-1` (any batch size).
    pub shape: Vec<i64>,
    /// Makes the input a constant of these values (row-major): clients do not send it, and tract
    /// can fold away what depends on it, such as an `If` on a sample rate whose branches it could
    /// not otherwise reconcile.
    #[serde(default)]
    pub value: Option<Vec<f64>>,
}

impl TensorDecl {
    /// The constant tensor of a declaration with a `value`.
    pub fn constant(&self) -> tract_core::prelude::TractResult<tract_core::prelude::Tensor> {
        let values = self.value.as_deref().unwrap_or_default();
        let shape: Vec<usize> = self.shape.iter().map(|&d| d.max(1) as usize).collect();
        let tensor = tract_core::prelude::Tensor::from_shape(&shape, values)?;
        Ok(tensor.cast_to_dt(self.datatype.datum_type().expect("checked numeric"))?.into_owned())
    }
}

/// `model.toml` could not be used; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

impl ModelManifest {
    /// Reads `model.toml` from a model directory; `Ok(None)` when the model has none.
    pub fn read(dir: &Path) -> Result<Option<ModelManifest>, ManifestError> {
        let path = dir.join("model.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        ModelManifest::parse(&text, &path).map(Some)
    }

    /// Parses and checks the text of a `model.toml`; `path` is where it came from, for messages.
    pub fn parse(text: &str, path: &Path) -> Result<ModelManifest, ManifestError> {
        let manifest: ModelManifest = toml::from_str(text)
            .map_err(|e| ManifestError::Parse { path: path.to_path_buf(), message: e.to_string() })?;
        manifest.validate(path)?;
        Ok(manifest)
    }

    /// The labels file's lines, when the manifest names one.
    pub fn read_labels(&self, dir: &Path) -> Result<Option<Vec<String>>, ManifestError> {
        let Some(file) = &self.labels else {
            return Ok(None);
        };
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read { path, source })?;
        Ok(Some(text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()))
    }

    /// The CTC dictionary's characters, one per line, kept exactly (a line may be a space).
    pub fn read_dictionary(&self, dir: &Path) -> Result<Option<Vec<String>>, ManifestError> {
        let Some(PostprocessDecl::Ctc(decl)) = &self.postprocess else {
            return Ok(None);
        };
        let path = dir.join(&decl.dictionary);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read { path, source })?;
        Ok(Some(text.lines().map(|l| l.trim_end_matches('\r').to_string()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ModelManifest>, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.toml"), text).unwrap();
        ModelManifest::read(dir.path())
    }

    #[test]
    fn a_full_manifest_parses() {
        let m = parse(
            r#"description = "d"
               labels = "labels.txt"
               [[inputs]]
               name = "x"
               datatype = "FP32"
               shape = [-1, 64]"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.inputs[0].shape, vec![-1, 64]);
        assert_eq!(m.inputs[0].datatype, DataType::Fp32);
    }

    #[test]
    fn processing_sections_parse_with_defaults() {
        let m = parse(
            r#"[preprocess]
               kind = "image"
               input = "x"
               resize = "fit_height"
               color = "bgr"
               [postprocess]
               kind = "ctc"
               output = "probs"
               dictionary = "keys.txt"
               [session]
               state = [{ input = "h", output = "hn" }]"#,
        )
        .unwrap()
        .unwrap();
        let Some(PreprocessDecl::Image(image)) = &m.preprocess else { panic!("image") };
        assert_eq!((image.resize, image.color, image.layout), (ResizeMode::FitHeight, ColorOrder::Bgr, Layout::Nchw));
        assert_eq!((image.mean, image.std, image.scale), ([0.0; 3], [1.0; 3], 1.0 / 255.0));
        assert!(matches!(&m.postprocess, Some(PostprocessDecl::Ctc(CtcDecl { blank: 0, space: false, .. }))));
        let session = m.session.unwrap();
        assert_eq!((session.idle_ttl_secs, session.max_sessions), (300, 1000));
    }

    #[test]
    fn a_constant_input_becomes_a_tensor_of_its_datatype() {
        let m = parse("[[inputs]]\nname = \"sr\"\ndatatype = \"INT64\"\nshape = []\nvalue = [16000]").unwrap().unwrap();
        let t = m.inputs[0].constant().unwrap();
        assert_eq!(t, tract_core::prelude::Tensor::from(16000i64));
    }

    #[test]
    fn no_manifest_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ModelManifest::read(dir.path()).unwrap().is_none());
    }
}
