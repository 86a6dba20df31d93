//! `model.toml`: what the ONNX file alone does not say — concrete input shapes, the batch dimension,
//! a description for operators, class labels, how request bytes become the input tensor
//! (`[preprocess]`), what is computed from the outputs (`[postprocess]`) and the state a streaming
//! model carries between requests (`[session]`).

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::protocol::DataType;

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
        let manifest: ModelManifest =
            toml::from_str(&text).map_err(|e| ManifestError::Parse { path: path.clone(), message: e.to_string() })?;
        manifest.validate(&path)?;
        Ok(Some(manifest))
    }

    fn validate(&self, path: &Path) -> Result<(), ManifestError> {
        let invalid = |key: String, message: String| ManifestError::Invalid { path: path.to_path_buf(), key, message };
        for (section, decls) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            for (i, decl) in decls.iter().enumerate() {
                let key = format!("{section}[{i}] ({})", decl.name);
                if decl.datatype == DataType::Bytes {
                    return Err(invalid(key, "BYTES tensors are not supported; use a numeric datatype".into()));
                }
                if let Some(value) = &decl.value {
                    // Checked: a product that wraps to the number of values would pass (tests/fuzz).
                    let count: i64 = decl.shape.iter().try_fold(1i64, |p, &d| p.checked_mul(d)).unwrap_or(-1);
                    if section == "outputs" || decl.shape.contains(&-1) || value.len() as i64 != count {
                        return Err(invalid(
                            format!("{key}.value"),
                            format!(
                                "a constant input needs a fixed shape and one value per element ({count}), it has {}",
                                value.len()
                            ),
                        ));
                    }
                }
                for (axis, &dim) in decl.shape.iter().enumerate() {
                    if dim < -1 || dim == 0 || (dim == -1 && axis != 0) {
                        return Err(invalid(
                            format!("{key}.shape[{axis}]"),
                            format!(
                                "{dim} is not allowed: dimensions are positive, and only the first may be -1 (batch)"
                            ),
                        ));
                    }
                }
            }
        }
        if self.serving.workers.is_some_and(|w| w == 0 || w > 256) {
            return Err(invalid("serving.workers".into(), "must be between 1 and 256".into()));
        }
        if self.serving.max_batch_size.is_some_and(|b| b == 0 || b > 65536) {
            return Err(invalid("serving.max_batch_size".into(), "must be between 1 and 65536".into()));
        }
        if self.serving.max_queue_delay_us.is_some_and(|d| d > 1_000_000) {
            return Err(invalid(
                "serving.max_queue_delay_us".into(),
                "must be at most 1000000 (1 s); a batch that waits longer than that helps nobody".into(),
            ));
        }
        if self.serving.queue_capacity == Some(0) {
            return Err(invalid("serving.queue_capacity".into(), "must be at least 1".into()));
        }
        let inside = |key: &str, file: &Path| {
            if file.is_absolute() || file.components().any(|c| matches!(c, Component::ParentDir)) {
                return Err(invalid(
                    key.into(),
                    format!("{} must be a file inside the model directory", file.display()),
                ));
            }
            Ok(())
        };
        if let Some(labels) = &self.labels {
            inside("labels", labels)?;
        }
        self.validate_processing(&invalid, &inside)
    }

    fn validate_processing(
        &self,
        invalid: &dyn Fn(String, String) -> ManifestError,
        inside: &dyn Fn(&str, &Path) -> Result<(), ManifestError>,
    ) -> Result<(), ManifestError> {
        match &self.preprocess {
            Some(PreprocessDecl::Image(d)) => {
                if let Some(i) = d.std.iter().position(|s| !s.is_normal()) {
                    return Err(invalid(format!("preprocess.std[{i}]"), "must be a non-zero number".into()));
                }
                if !d.scale.is_finite() || d.mean.iter().any(|m| !m.is_finite()) || !d.pad_value.is_finite() {
                    return Err(invalid("preprocess".into(), "scale, mean and pad_value must be finite".into()));
                }
            }
            Some(PreprocessDecl::Audio(d)) => {
                if d.frame == 0 || d.frame > 1 << 20 {
                    return Err(invalid("preprocess.frame".into(), "must be between 1 and 1048576 samples".into()));
                }
                if d.context > 1 << 20 {
                    return Err(invalid("preprocess.context".into(), "must be at most 1048576 samples".into()));
                }
                if d.sample_rate == 0 {
                    return Err(invalid("preprocess.sample_rate".into(), "must be positive".into()));
                }
            }
            None => {}
        }
        match &self.postprocess {
            Some(PostprocessDecl::Classify(d)) if d.top_k == 0 => {
                return Err(invalid("postprocess.top_k".into(), "must be at least 1".into()));
            }
            Some(PostprocessDecl::Ctc(d)) => inside("postprocess.dictionary", &d.dictionary)?,
            _ => {}
        }
        if let Some(session) = &self.session {
            if session.state.is_empty() {
                return Err(invalid("session.state".into(), "name at least one {input, output} pair".into()));
            }
            if session.max_sessions == 0 || session.max_sessions > 1_000_000 {
                return Err(invalid("session.max_sessions".into(), "must be between 1 and 1000000".into()));
            }
            if session.idle_ttl_secs == 0 {
                return Err(invalid("session.idle_ttl_secs".into(), "must be at least 1".into()));
            }
            if self.serving.workers.is_some_and(|w| w > 1) {
                return Err(invalid(
                    "serving.workers".into(),
                    "a model with [session] runs on one worker, so that a session's requests are computed in order"
                        .into(),
                ));
            }
        }
        let streams = self.session.is_some() || matches!(self.preprocess, Some(PreprocessDecl::Audio(_)));
        if streams && self.serving.max_batch_size.is_some_and(|b| b > 1) {
            return Err(invalid(
                "serving.max_batch_size".into(),
                "batching cannot combine with [session] or audio pre-processing (rows are frames of one stream)".into(),
            ));
        }
        Ok(())
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
    fn serving_settings_parse_and_are_checked() {
        let m = parse("[serving]\nworkers = 1\nqueue_capacity = 8\ndefault_timeout_ms = 250").unwrap().unwrap();
        assert_eq!(
            m.serving,
            ServingDecl {
                workers: Some(1),
                queue_capacity: Some(8),
                default_timeout_ms: Some(250),
                max_batch_size: None,
                max_queue_delay_us: None
            }
        );
        let err = parse("[serving]\nworkers = 0").unwrap_err();
        assert!(err.to_string().contains("serving.workers"), "{err}");
        let err = parse("[serving]\nmax_batch_size = 0").unwrap_err();
        assert!(err.to_string().contains("serving.max_batch_size"), "{err}");
        let err = parse("[serving]\nmax_queue_delay_us = 5000000").unwrap_err();
        assert!(err.to_string().contains("serving.max_queue_delay_us"), "{err}");
        let err = parse("[serving]\ninstances = 2").unwrap_err();
        assert!(err.to_string().contains("instances"), "{err}");
    }

    #[test]
    fn a_constant_whose_shape_product_overflows_is_refused() {
        // Found by tests/fuzz (bench/fuzz-results.md, finding 3): 2^64 wrapped to 0 values.
        let toml = "[[inputs]]\nname = \"sr\"\ndatatype = \"INT64\"\nshape = [4294967296, 4294967296]\nvalue = []";
        let err = parse(toml).unwrap_err();
        assert!(err.to_string().contains("inputs[0] (sr).value"), "{err}");
    }

    #[test]
    fn mistakes_name_the_key() {
        let err = parse("[[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\nshape = [1, -1]").unwrap_err();
        assert!(err.to_string().contains("inputs[0] (x).shape[1]"), "{err}");
        let err = parse("descripton = \"typo\"").unwrap_err();
        assert!(err.to_string().contains("descripton"), "{err}");
        let err = parse("labels = \"../../etc/passwd\"").unwrap_err();
        assert!(err.to_string().contains("labels"), "{err}");
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
    fn processing_mistakes_name_the_key() {
        let cases = [
            ("[preprocess]\nkind = \"video\"\ninput = \"x\"", "video"),
            ("[preprocess]\nkind = \"image\"\ninput = \"x\"\nstd = [1, 0, 1]", "preprocess.std[1]"),
            ("[preprocess]\nkind = \"image\"\ninput = \"x\"\nresize = \"crop\"", "crop"),
            ("[preprocess]\nkind = \"audio\"\ninput = \"a\"\nsample_rate = 16000\nframe = 0", "preprocess.frame"),
            ("[postprocess]\nkind = \"ctc\"\noutput = \"p\"\ndictionary = \"/etc/passwd\"", "postprocess.dictionary"),
            ("[postprocess]\nkind = \"classify\"\noutput = \"p\"\ntop_k = 0", "postprocess.top_k"),
            ("[session]\nstate = []", "session.state"),
            ("[[inputs]]\nname = \"sr\"\ndatatype = \"INT64\"\nshape = [2]\nvalue = [1]", "inputs[0] (sr).value"),
            ("[[inputs]]\nname = \"sr\"\ndatatype = \"INT64\"\nshape = [-1]\nvalue = [1]", "inputs[0] (sr).value"),
            ("[session]\nstate = [{input = \"h\", output = \"hn\"}]\nmax_sessions = 0", "session.max_sessions"),
            ("[serving]\nworkers = 2\n[session]\nstate = [{input = \"h\", output = \"hn\"}]", "serving.workers"),
            (
                "[serving]\nmax_batch_size = 4\n[preprocess]\nkind = \"audio\"\ninput = \"a\"\nsample_rate = 8000\nframe = 256",
                "serving.max_batch_size",
            ),
        ];
        for (text, key) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn no_manifest_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ModelManifest::read(dir.path()).unwrap().is_none());
    }
}
