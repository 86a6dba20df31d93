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
    /// The model's version, echoed as `model_version` in every reply so that a client (and a
    /// fleet rollout) can tell which version answered. A deployed package's version replaces it.
    #[serde(default)]
    pub version: Option<String>,
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
    /// A model made of other models of the repository (detect, then read what was found): it has
    /// no ONNX file of its own.
    #[serde(default)]
    pub pipeline: Option<PipelineDecl>,
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
    /// How pixels are resampled when resizing.
    #[serde(default)]
    pub interpolation: Interpolation,
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
    /// `limit_side`: which side is brought to `limit_side_len`.
    #[serde(default)]
    pub limit_type: LimitType,
    /// `limit_side`: the length, in pixels, that side is brought to.
    #[serde(default = "default_limit_side_len")]
    pub limit_side_len: u32,
    /// `limit_side`: both sides are then rounded to a multiple of this (the detector's largest stride).
    #[serde(default = "default_size_multiple")]
    pub size_multiple: u32,
}

fn default_limit_side_len() -> u32 {
    736
}

fn default_size_multiple() -> u32 {
    32
}

/// Which side of the image `limit_side` scales to `limit_side_len` (PaddleOCR's `limit_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitType {
    /// The shorter side, and only up: small frames are enlarged so that small text stays readable.
    #[default]
    Min,
    /// The longer side, and only down: large frames are shrunk to bound the work.
    Max,
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
    /// Detectors that take a frame of any size (PaddleOCR's DBNet; the input's height and width
    /// are -1): keep the aspect ratio, scale by `limit_type`/`limit_side_len`, round each side to
    /// a multiple of `size_multiple`.
    LimitSide,
}

/// Resampling filter of a resize.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Interpolation {
    /// Pillow's BILINEAR (a triangle filter, which also averages when shrinking).
    #[default]
    Bilinear,
    /// Pillow's NEAREST: what some detectors' own code resizes with (the `scrfd` package).
    Nearest,
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
    /// Text regions from a DBNet probability map (PaddleOCR's detector): outputs `boxes`,
    /// `polygons` and `scores`, in the pixels of the image as sent.
    Db(DbDecl),
    /// Faces from an SCRFD detector's per-stride heads: outputs `boxes`, `scores` and
    /// `keypoints` (eyes, nose, mouth corners), after NMS.
    Scrfd(ScrfdDecl),
    /// Objects from a YOLOv5/YOLOv8-style head: outputs `boxes`, `scores` and `labels`, after
    /// class-wise NMS.
    Yolo(YoloDecl),
}

impl PostprocessDecl {
    /// The raw outputs the answers are computed from.
    pub fn outputs(&self) -> Vec<&str> {
        match self {
            PostprocessDecl::Classify(d) => vec![&d.output],
            PostprocessDecl::Ctc(d) => vec![&d.output],
            PostprocessDecl::Db(d) => vec![&d.output],
            PostprocessDecl::Scrfd(d) => {
                d.scores.iter().chain(&d.boxes).chain(&d.keypoints).map(String::as_str).collect()
            }
            PostprocessDecl::Yolo(d) => vec![&d.output],
        }
    }

    /// Whether it finds regions in a frame (the first step of a pipeline must).
    pub fn detects(&self) -> bool {
        matches!(self, PostprocessDecl::Db(_) | PostprocessDecl::Scrfd(_) | PostprocessDecl::Yolo(_))
    }
}

/// InsightFace's SCRFD decoding (as the `scrfd` package does it): per stride, anchor centres on
/// the stride's grid, box sides and keypoints as distances from them in strides. `score`,
/// `nms_iou` and `max_detections` can be changed per request.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScrfdDecl {
    /// The score outputs ([1, anchors, 1] probabilities), one per stride, in `strides` order.
    pub scores: Vec<String>,
    /// The box outputs ([1, anchors, 4]: left, top, right, bottom distances), per stride.
    pub boxes: Vec<String>,
    /// The keypoint outputs ([1, anchors, 2k]), per stride; empty for a model without them.
    #[serde(default)]
    pub keypoints: Vec<String>,
    #[serde(default = "scrfd_strides")]
    pub strides: Vec<usize>,
    /// Anchors per grid location.
    #[serde(default = "two")]
    pub anchors: usize,
    #[serde(default = "scrfd_score")]
    pub score: f32,
    /// A face overlapping a better one by more than this is the same face.
    #[serde(default = "half")]
    pub nms_iou: f32,
    #[serde(default = "scrfd_max_detections")]
    pub max_detections: usize,
}

fn scrfd_strides() -> Vec<usize> {
    vec![8, 16, 32]
}

fn two() -> usize {
    2
}

fn scrfd_score() -> f32 {
    0.4
}

fn half() -> f32 {
    0.5
}

fn scrfd_max_detections() -> usize {
    1000
}

/// A YOLO head: `v8` is [1, 4 + classes, candidates] (cx, cy, w, h, class scores), `v5` is
/// [1, candidates, 5 + classes] (cx, cy, w, h, objectness, class scores), boxes in input pixels.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct YoloDecl {
    pub output: String,
    pub version: YoloVersion,
    /// Candidates scoring above this are kept (Ultralytics' `conf`).
    #[serde(default = "yolo_score")]
    pub score: f32,
    /// Of two boxes of one class overlapping by more than this, the weaker goes (Ultralytics' `iou`).
    #[serde(default = "yolo_nms_iou")]
    pub nms_iou: f32,
    #[serde(default = "yolo_max_detections")]
    pub max_detections: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum YoloVersion {
    V5,
    V8,
}

fn yolo_score() -> f32 {
    0.25
}

fn yolo_nms_iou() -> f32 {
    0.45
}

fn yolo_max_detections() -> usize {
    300
}

/// PaddleOCR's `DBPostProcess`, with its defaults (RapidOCR's config). `score` and
/// `max_detections` can be lowered or raised per request (`parameters`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DbDecl {
    /// An output of shape [1, 1, H, W] holding each pixel's probability of being text.
    pub output: String,
    /// Pixels above this probability are text.
    #[serde(default = "db_thresh")]
    pub thresh: f32,
    /// A region is kept when the mean probability inside its box is at least this (`box_thresh`).
    #[serde(default = "db_score")]
    pub score: f32,
    /// Regions looked at, at most (`max_candidates`); a frame with more says so in the reply.
    #[serde(default = "db_max_detections")]
    pub max_detections: usize,
    /// How far a region's box is grown: by area * ratio / perimeter (the network sees shrunk text).
    #[serde(default = "db_unclip_ratio")]
    pub unclip_ratio: f32,
    /// Grow the text mask by one pixel first (PaddleOCR's `use_dilation`, a 2x2 kernel).
    #[serde(default = "yes")]
    pub dilation: bool,
}

fn db_thresh() -> f32 {
    0.3
}

fn db_score() -> f32 {
    0.5
}

fn db_max_detections() -> usize {
    1000
}

fn db_unclip_ratio() -> f32 {
    1.6
}

fn yes() -> bool {
    true
}

/// `[pipeline]`: a frame goes through a detector, each region it finds is cropped upright from
/// the frame, turned the right way up, and read. Each step names a model of the same repository,
/// which is also served on its own.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineDecl {
    /// A model with a detecting `[postprocess]` (`db`) and an image `[preprocess]`.
    pub detect: String,
    /// Optional: a classifier whose labels are the degrees to turn a crop by ("0", "180"); a crop
    /// is turned when the label's score is at least `orient_score`.
    #[serde(default)]
    pub orient: Option<String>,
    #[serde(default = "orient_score")]
    pub orient_score: f32,
    /// A model with an image `[preprocess]` run on every crop (a `ctc` text reader, or a classifier).
    pub read: String,
    /// Regions whose reading is less sure than this are left out of the answer (RapidOCR's
    /// `text_score`; the reader's `confidence`, or its best `scores`).
    #[serde(default)]
    pub read_score: f32,
}

fn orient_score() -> f32 {
    0.9
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
    /// A model whose image input takes any size keeps a plan for each of the last this many
    /// frame sizes (default 4); each costs about one copy of the weights.
    pub plans_by_size: Option<usize>,
}

impl ServingDecl {
    pub fn plans_by_size(&self) -> usize {
        self.plans_by_size.unwrap_or(4)
    }
}

/// One tensor as declared in `model.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorDecl {
    pub name: String,
    pub datatype: DataType,
    /// Concrete dimensions; only the first may be `-1` (any batch size), and the height and width
    /// of an image input with `resize = "limit_side"` (any frame size).
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

    /// The files beside `model.toml` it names (labels, dictionary): a deployed package must hold them.
    pub fn referenced_files(&self) -> Vec<&Path> {
        let dictionary = match &self.postprocess {
            Some(PostprocessDecl::Ctc(decl)) => Some(decl.dictionary.as_path()),
            _ => None,
        };
        self.labels.as_deref().into_iter().chain(dictionary).collect()
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
