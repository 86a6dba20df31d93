//! A loaded model: an ONNX file turned into an optimised tract plan, with the input and output
//! contract a request is checked against before any computation starts.
//!
//! Loading does all the expensive, failure-prone work once at start: parse, fix input facts,
//! optimise, build the plan, and run it once on zeros. A model that cannot run therefore fails at
//! start, with its name and tract's reason, and never on the first request.

pub mod audio;
pub mod cache;
pub mod image;
pub mod inspect;
pub mod manifest;
pub mod postprocess;
pub mod repository;
pub mod session;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::tensors::elements;
use tract_core::prelude::*;
use tract_onnx::prelude::{Framework, InferenceFact, InferenceModel, InferenceModelExt};
use tract_onnx::tract_hir::infer::Factoid;

use crate::protocol::{
    encode_response, DataType, EncodedReply, ErrorCode, InferRequest, InputTensor, Media, ModelMetadata, OutputTensor,
    TensorMetadata,
};
pub use cache::ModelCache;
use image::ImageTarget;
use manifest::{AudioDecl, PreprocessDecl};
pub use manifest::{ModelManifest, ServingDecl};
use postprocess::Postprocess;
pub use repository::ModelRepository;
use session::{SessionKey, SessionState, SessionStore, Start, MAX_SESSION_ID_BYTES};

/// Name of the batch symbol given to a `-1` leading dimension.
const BATCH_SYMBOL: &str = "N";

/// A model ready to serve. Cheap to share: workers hold an `Arc<Model>` and run the same plan.
pub struct Model {
    metadata: ModelMetadata,
    /// Every graph input, in the graph's order (the metadata leaves out session state inputs,
    /// which clients do not send).
    inputs: Vec<TensorMetadata>,
    /// The graph's outputs come first in `metadata.outputs`; post-processed ones follow.
    raw_outputs: usize,
    serving: ServingDecl,
    plan: Arc<TypedRunnableModel>,
    preprocess: Option<Preprocess>,
    postprocess: Option<Postprocess>,
    session: Option<Session>,
}

/// `[preprocess]`, resolved against the graph: which input it fills, and how.
enum Preprocess {
    Image {
        input: usize,
        target: ImageTarget,
    },
    /// `one_frame`: the input is [1, context + frame] (a model that runs one frame per call).
    Audio {
        input: usize,
        decl: AudioDecl,
        one_frame: bool,
    },
}

impl Preprocess {
    fn input(&self) -> usize {
        match self {
            Preprocess::Image { input, .. } | Preprocess::Audio { input, .. } => *input,
        }
    }
}

/// `[session]`, resolved against the graph.
struct Session {
    store: SessionStore,
    /// (input index, output index, the state a new session starts from).
    state: Vec<(usize, usize, Tensor)>,
}

/// Why a model could not be loaded. Each message names the model and says what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    #[error("model \"{model}\": {source}")]
    Manifest { model: String, source: manifest::ManifestError },
    #[error("model \"{model}\": no model.onnx in {dir}")]
    MissingOnnx { model: String, dir: PathBuf },
    #[error("model \"{model}\": tract cannot {stage}: {reason}")]
    Tract { model: String, stage: &'static str, reason: String },
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
    #[error("inference failed: {0}")]
    Inference(String),
    /// Code under the model (tract, a decoder) panicked: a bug, contained to this request.
    #[error("the engine panicked ({0}); the request was not computed; please report this")]
    Panicked(String),
    #[error(transparent)]
    Encode(#[from] crate::protocol::response::UnsupportedOutput),
}

impl AnswerError {
    /// The reply's error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            AnswerError::Input(e) => e.code(),
            AnswerError::Inference(_) | AnswerError::Panicked(_) | AnswerError::Encode(_) => ErrorCode::Internal,
        }
    }
}

/// A request checked against the model: inputs in the model's order, outputs selected. Inputs
/// that are pre-processed or session state hold a placeholder until an inference thread fills
/// them in (decoding is too slow for the MQTT side, and state must be read in request order).
#[derive(Debug)]
pub struct PreparedInputs {
    pub inputs: TVec<TValue>,
    /// What the inference thread turns into the `[preprocess]` input.
    pub pending: Option<Pending>,
    /// `parameters.session`, for models with `[session]`.
    pub session: Option<String>,
    /// Whose session it is: the request's reply topic (set by the caller, who knows it).
    pub session_owner: String,
    /// Indices into the model's outputs, each with whether it goes back as raw bytes.
    pub outputs: Vec<(usize, bool)>,
}

/// Request data waiting for pre-processing.
#[derive(Debug)]
pub enum Pending {
    Image(Vec<u8>),
    Audio(Vec<f32>),
}

impl PreparedInputs {
    /// The request's batch size: the leading dimension of its first input (one per image).
    pub fn rows(&self) -> usize {
        if self.pending.is_some() {
            return 1;
        }
        self.inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1)
    }

    /// Bytes the request holds while queued, counted against `requests.max_queued_bytes`.
    pub fn queued_bytes(&self) -> usize {
        let pending = match &self.pending {
            Some(Pending::Image(bytes)) => bytes.len(),
            Some(Pending::Audio(samples)) => samples.len() * 4,
            None => 0,
        };
        pending + self.inputs.iter().map(|t| t.as_bytes().len()).sum::<usize>()
    }
}

impl Model {
    /// Loads `dir/model.onnx` (and `dir/model.toml` when present) as model `name`, through `cache`
    /// when there is one.
    pub fn load(name: &str, dir: &Path, cache: Option<&ModelCache>) -> Result<Model, LoadError> {
        let manifest_err = |source| LoadError::Manifest { model: name.to_string(), source };
        let manifest = ModelManifest::read(dir).map_err(manifest_err)?.unwrap_or_default();
        let onnx = dir.join("model.onnx");
        if !onnx.is_file() {
            return Err(LoadError::MissingOnnx { model: name.to_string(), dir: dir.to_path_buf() });
        }
        let labels = manifest.read_labels(dir).map_err(manifest_err)?;
        let dictionary = manifest.read_dictionary(dir).map_err(manifest_err)?;
        Model::from_onnx(name, &onnx, &manifest, labels, dictionary, cache)
    }

    /// Loads an ONNX file with an explicit manifest; `inspect` uses this for a bare `.onnx` file.
    pub fn from_onnx(
        name: &str,
        onnx: &Path,
        manifest: &ModelManifest,
        labels: Option<Vec<String>>,
        dictionary: Option<Vec<String>>,
        cache: Option<&ModelCache>,
    ) -> Result<Model, LoadError> {
        let tract = |stage: &'static str| {
            move |e: TractError| LoadError::Tract { model: name.to_string(), stage, reason: format!("{e:#}") }
        };
        let entry = cache.and_then(|cache| cache.entry(name, onnx));
        if let Some(cached) = entry.as_ref().and_then(|entry| entry.load()) {
            return Model::from_decluttered(name, cached, manifest, labels, dictionary);
        }
        let mut graph = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
            .with_ignore_value_info(manifest.ignore_value_info)
            .model_for_path(onnx)
            .map_err(tract("parse the ONNX file"))?;
        let inputs = fix_inputs(name, &mut graph, manifest)?;
        let output_names: Vec<String> = graph
            .output_outlets()
            .map_err(tract("list outputs"))?
            .iter()
            .map(|o| graph.outlet_label(*o).unwrap_or(&graph.node(o.node).name).to_string())
            .collect();
        // Decluttered, not optimised: the form the cache keeps (see `cache`).
        let typed = graph.into_typed().and_then(|t| t.into_decluttered()).map_err(tract("type the graph"))?;
        if let Some(entry) = &entry {
            entry.store(&typed, &inputs, &output_names);
        }
        let decluttered = cache::CachedModel { typed, inputs, output_names };
        Model::from_decluttered(name, decluttered, manifest, labels, dictionary)
    }

    /// Optimises a decluttered graph for this CPU, checks its outputs against `model.toml`, builds
    /// the plan and runs it once.
    fn from_decluttered(
        name: &str,
        decluttered: cache::CachedModel,
        manifest: &ModelManifest,
        labels: Option<Vec<String>>,
        dictionary: Option<Vec<String>>,
    ) -> Result<Model, LoadError> {
        let tract = |stage: &'static str| {
            move |e: TractError| LoadError::Tract { model: name.to_string(), stage, reason: format!("{e:#}") }
        };
        let cache::CachedModel { typed, inputs, output_names } = decluttered;
        let typed = typed.into_optimized().map_err(tract("optimise the graph"))?;
        let outputs = describe_outputs(name, &typed, &output_names, manifest)?;
        if manifest.serving.max_batch_size.is_some_and(|b| b > 1) {
            check_batchable(name, &inputs, &outputs)?;
        }
        let plan = typed.into_runnable().map_err(tract("build a plan"))?;
        let preprocess = resolve_preprocess(name, manifest, &inputs)?;
        let names = match &manifest.postprocess {
            Some(manifest::PostprocessDecl::Ctc(_)) => dictionary,
            _ => labels.clone(),
        };
        let postprocess = resolve_postprocess(name, manifest, &outputs, names)?;
        let session = resolve_session(name, manifest, &inputs, &outputs)?;
        let raw_outputs = outputs.len();
        let mut public_outputs = outputs;
        public_outputs.extend(postprocess.iter().flat_map(Postprocess::outputs));
        let state_inputs: Vec<usize> = session.iter().flat_map(|s| s.state.iter().map(|(i, _, _)| *i)).collect();
        let public_inputs =
            inputs.iter().enumerate().filter(|(i, _)| !state_inputs.contains(i)).map(|(_, t)| t.clone()).collect();
        let mut serving = manifest.serving.clone();
        if session.is_some() {
            // One thread, so that a session's requests are computed in the order they came.
            serving.workers = Some(1);
        }
        let model = Model {
            metadata: ModelMetadata {
                name: name.to_string(),
                platform: crate::protocol::metadata::PLATFORM.to_string(),
                inputs: public_inputs,
                outputs: public_outputs,
                description: manifest.description.clone(),
                labels,
                preprocess: manifest.preprocess.as_ref().and_then(|d| serde_json::to_value(d).ok()),
                postprocess: manifest.postprocess.as_ref().and_then(|d| serde_json::to_value(d).ok()),
                session: manifest.session.as_ref().and_then(|d| serde_json::to_value(d).ok()),
            },
            inputs,
            raw_outputs,
            serving,
            plan,
            preprocess,
            postprocess,
            session,
        };
        model.warm_up().map_err(tract("run the model on zeros"))?;
        Ok(model)
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    /// The model's own serving settings from `model.toml` (workers, queue, default deadline).
    pub fn serving(&self) -> &ServingDecl {
        &self.serving
    }

    /// Checks a decoded request against the model's contract and puts its inputs in model order.
    /// Cheap: images and audio are only taken over here, and decoded on an inference thread.
    pub fn prepare(&self, request: &mut InferRequest) -> Result<PreparedInputs, InputError> {
        let model = || self.name().to_string();
        let mut pending = None;
        if let Some(media) = request.media.take() {
            pending = Some(self.take_media(media)?);
        }
        let expected: Vec<String> = self.metadata.inputs.iter().map(|i| i.name.clone()).collect();
        let preprocessed = self.preprocess.as_ref().map(Preprocess::input);
        // Where an inference thread fills the input in (`complete`).
        let placeholder = || Tensor::zero::<f32>(&[0]).expect("an empty tensor").into_tvalue();
        let mut inputs = TVec::with_capacity(self.inputs.len());
        let mut batch_sizes = Vec::new();
        for (index, spec) in self.inputs.iter().enumerate() {
            let filled_later = self.is_state_input(&spec.name) || (pending.is_some() && preprocessed == Some(index));
            if filled_later {
                inputs.push(placeholder());
                continue;
            }
            let Some(pos) = request.inputs.iter().position(|i| i.name == spec.name) else {
                return Err(InputError::Missing { model: model(), name: spec.name.clone(), expected });
            };
            let input = request.inputs.swap_remove(pos);
            if preprocessed == Some(index) {
                if let Some(taken) = self.take_encoded_input(&input)? {
                    pending = Some(taken);
                    inputs.push(placeholder());
                    continue;
                }
            }
            if input.datatype != spec.datatype {
                return Err(InputError::WrongDatatype {
                    name: spec.name.clone(),
                    expected: spec.datatype,
                    actual: input.datatype,
                });
            }
            let shape = input.tensor.shape();
            let fits = shape.len() == spec.shape.len()
                && shape.iter().zip(&spec.shape).all(
                    |(&got, &want)| {
                        if want < 0 {
                            got > 0
                        } else {
                            got as i64 == want
                        }
                    },
                );
            if !fits {
                return Err(InputError::WrongShape {
                    name: spec.name.clone(),
                    expected: format!("{:?}", spec.shape),
                    actual: shape.to_vec(),
                });
            }
            if spec.shape.first() == Some(&-1) {
                batch_sizes.push(shape[0]);
            }
            inputs.push(input.tensor.into_tvalue());
        }
        // What the loop did not take is not an input of the model.
        if let Some(extra) = request.inputs.first() {
            if self.is_state_input(&extra.name) {
                return Err(InputError::StateInput { name: extra.name.clone() });
            }
            return Err(InputError::Unknown { model: model(), name: extra.name.clone(), expected });
        }
        if batch_sizes.windows(2).any(|w| w[0] != w[1]) {
            return Err(InputError::BatchMismatch(batch_sizes));
        }
        let session = request.session.take();
        if let Some(id) = &session {
            if self.session.is_none() {
                return Err(InputError::Session(format!(
                    "model \"{}\" keeps no state between requests; leave out parameters.session",
                    self.name()
                )));
            }
            if id.is_empty() || id.len() > MAX_SESSION_ID_BYTES {
                return Err(InputError::Session(format!(
                    "parameters.session must be 1 to {MAX_SESSION_ID_BYTES} bytes, it is {}",
                    id.len()
                )));
            }
        }
        let default_outputs = match self.postprocess {
            // The computed answers; the raw outputs they come from only when asked for by name.
            Some(_) => (self.raw_outputs..self.metadata.outputs.len()).collect::<Vec<_>>(),
            None => (0..self.raw_outputs).collect(),
        };
        if let Some(wanted) = &request.outputs {
            let mut names: Vec<&str> = wanted.iter().map(|w| w.name.as_str()).collect();
            names.sort_unstable();
            if let Some(twice) = names.windows(2).find(|w| w[0] == w[1]) {
                return Err(InputError::DuplicateOutput(twice[0].to_string()));
            }
        }
        let outputs = match &request.outputs {
            None => default_outputs.into_iter().map(|i| (i, request.binary_outputs)).collect(),
            Some(wanted) => wanted
                .iter()
                .map(|w| {
                    let index = self.metadata.outputs.iter().position(|o| o.name == w.name).ok_or_else(|| {
                        InputError::UnknownOutput {
                            model: model(),
                            name: w.name.clone(),
                            available: self.metadata.outputs.iter().map(|o| o.name.clone()).collect(),
                        }
                    })?;
                    Ok((index, w.binary.unwrap_or(request.binary_outputs)))
                })
                .collect::<Result<_, InputError>>()?,
        };
        Ok(PreparedInputs { inputs, pending, session, session_owner: String::new(), outputs })
    }

    fn is_state_input(&self, name: &str) -> bool {
        self.session.as_ref().is_some_and(|s| s.state.iter().any(|(i, _, _)| self.inputs[*i].name == name))
    }

    /// A whole-payload image or audio request, for the model's `[preprocess]`.
    fn take_media(&self, media: Media) -> Result<Pending, InputError> {
        match (media, &self.preprocess) {
            (Media::Image(bytes), Some(Preprocess::Image { .. })) => Ok(Pending::Image(bytes)),
            (Media::Audio { samples, datatype, rate }, Some(Preprocess::Audio { decl, .. })) => {
                if let Some(sent) = rate.filter(|&r| r != decl.sample_rate) {
                    return Err(InputError::SampleRate {
                        model: self.name().to_string(),
                        sent,
                        expected: decl.sample_rate,
                    });
                }
                Ok(Pending::Audio(samples_to_f32(&samples, datatype)))
            }
            (media, preprocess) => Err(InputError::MediaNotAccepted {
                model: self.name().to_string(),
                sent: media.kind(),
                accepts: match preprocess {
                    Some(Preprocess::Image { .. }) => {
                        "send a PNG or JPEG file (Content Type image/png, image/jpeg)".into()
                    }
                    Some(Preprocess::Audio { decl, .. }) => {
                        format!("send mono samples (Content Type audio/pcm;format=s16le;rate={})", decl.sample_rate)
                    }
                    None => "send an Open Inference Protocol request (JSON)".into(),
                },
            }),
        }
    }

    /// The `[preprocess]` input sent in the protocol's own form: one BYTES element holding an
    /// image file, or a rank-1 INT16/FP32 tensor of audio samples. `None`: an ordinary tensor,
    /// already prepared by the client.
    fn take_encoded_input(&self, input: &InputTensor) -> Result<Option<Pending>, InputError> {
        match &self.preprocess {
            Some(Preprocess::Image { .. }) if input.datatype == DataType::Bytes => {
                let blobs = elements::<Blob>(&input.tensor).expect("BYTES inputs hold blobs");
                match blobs {
                    [image] => Ok(Some(Pending::Image(image.as_bytes().to_vec()))),
                    _ => Err(InputError::WrongShape {
                        name: input.name.clone(),
                        expected: "[1] (one image file)".into(),
                        actual: input.tensor.shape().to_vec(),
                    }),
                }
            }
            Some(Preprocess::Audio { .. })
                if input.tensor.rank() == 1 && matches!(input.datatype, DataType::Int16 | DataType::Fp32) =>
            {
                Ok(Some(Pending::Audio(samples_to_f32(&input.tensor, input.datatype))))
            }
            _ => Ok(None),
        }
    }

    /// Runs the model once. Every call gets a fresh tract state: reusing one would carry recurrent
    /// (LSTM/GRU) hidden state from one request into the next and give wrong answers.
    pub fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.plan.run(inputs)
    }

    /// Runs a prepared request and encodes the reply with the outputs the client asked for. A
    /// request of a session continues from the session's state and leaves the new state behind.
    pub fn answer(&self, id: Option<&str>, mut prepared: PreparedInputs) -> Result<EncodedReply, AnswerError> {
        let session_key =
            prepared.session.take().map(|id| SessionKey { owner: std::mem::take(&mut prepared.session_owner), id });
        let (mut state, start) = match (&self.session, &session_key) {
            (Some(session), Some(key)) => session.store.take(key),
            _ => (None, Start::New),
        };
        let previous = state.clone();
        let outputs = self
            .complete(&mut prepared, &mut state)
            .and_then(|()| self.run(prepared.inputs).map_err(|e| AnswerError::Inference(format!("{e:#}"))));
        let (Some(session), Some(key)) = (&self.session, session_key) else {
            let outputs = outputs?;
            return self.encode(id, None, &outputs.iter().map(|t| &**t).collect::<Vec<_>>(), &prepared.outputs);
        };
        let outputs = match outputs {
            Ok(outputs) => outputs,
            Err(e) => {
                // The chunk was not taken: the session stays where it was.
                if let Some(previous) = previous {
                    session.store.put(key, previous);
                }
                return Err(e);
            }
        };
        let mut state = state.unwrap_or_else(|| self.fresh_state());
        state.tensors = session.state.iter().map(|(_, output, _)| (*outputs[*output]).clone()).collect();
        let session_id = key.id.clone();
        session.store.put(key, state);
        let mut parameters = serde_json::Map::new();
        parameters.insert("session".into(), session_id.into());
        if start != Start::Continued {
            parameters.insert("session_started".into(), true.into());
        }
        if let Some(why) = start.eviction() {
            parameters.insert("session_evicted".into(), why.into());
        }
        self.encode(id, Some(&parameters), &outputs.iter().map(|t| &**t).collect::<Vec<_>>(), &prepared.outputs)
    }

    /// Fills in what `prepare` left for the inference thread: the pre-processed input (decoded
    /// image, framed audio) and the session state inputs. `state` is the session's, `None` for a
    /// fresh state (a new session, or a request without one).
    fn complete(&self, prepared: &mut PreparedInputs, state: &mut Option<SessionState>) -> Result<(), AnswerError> {
        if let Some(session) = &self.session {
            let state = state.get_or_insert_with(|| self.fresh_state());
            for ((input, _, _), value) in session.state.iter().zip(&state.tensors) {
                prepared.inputs[*input] = value.clone().into_tvalue();
            }
        }
        match (prepared.pending.take(), &self.preprocess) {
            (None, _) => {}
            (Some(Pending::Image(bytes)), Some(Preprocess::Image { input, target })) => {
                prepared.inputs[*input] = target.tensor(&bytes).map_err(InputError::from)?.into_tvalue();
            }
            (Some(Pending::Audio(samples)), Some(Preprocess::Audio { input, decl, one_frame })) => {
                let mut scratch = Vec::new();
                let context = match state {
                    Some(state) => &mut state.context,
                    None => &mut scratch,
                };
                prepared.inputs[*input] =
                    audio::frames(decl, &samples, context, *one_frame).map_err(InputError::from)?.into_tvalue();
            }
            (Some(_), _) => unreachable!("prepare only leaves pending data for the model's own preprocess kind"),
        }
        Ok(())
    }

    /// The state a new session starts from: zeros.
    fn fresh_state(&self) -> SessionState {
        let tensors = self.session.iter().flat_map(|s| s.state.iter().map(|(_, _, zero)| zero.clone())).collect();
        SessionState { tensors, context: Vec::new() }
    }

    /// Rows per run with dynamic batching: 1 when it is off.
    pub fn max_batch_size(&self) -> usize {
        self.serving.max_batch_size.unwrap_or(1)
    }

    /// Runs several prepared requests as one batch (stacked along the batch dimension, which
    /// `max_batch_size` guarantees every input and output has) and answers each with its own rows.
    /// A request whose image cannot be decoded fails alone; a failed run fails the whole batch.
    pub fn answer_batch(
        &self,
        requests: Vec<(Option<&str>, PreparedInputs)>,
    ) -> Vec<Result<EncodedReply, AnswerError>> {
        if requests.len() == 1 {
            let (id, prepared) = requests.into_iter().next().expect("one request");
            return vec![self.answer(id, prepared)];
        }
        let mut answers: Vec<Option<Result<EncodedReply, AnswerError>>> = requests.iter().map(|_| None).collect();
        let mut ready = Vec::with_capacity(requests.len());
        for (slot, (id, mut prepared)) in requests.into_iter().enumerate() {
            match self.complete(&mut prepared, &mut None) {
                Ok(()) => ready.push((slot, id, prepared)),
                Err(e) => answers[slot] = Some(Err(e)),
            }
        }
        let outputs = (0..self.inputs.len())
            .map(|input| {
                let parts: Vec<&Tensor> = ready.iter().map(|(_, _, p)| &*p.inputs[input]).collect();
                Ok(Tensor::stack_tensors(0, &parts)?.into_tvalue())
            })
            .collect::<TractResult<TVec<TValue>>>()
            .and_then(|stacked| self.run(stacked));
        let mut start = 0;
        for (slot, id, prepared) in &ready {
            let answer = match &outputs {
                Err(e) => Err(AnswerError::Inference(format!("{e:#}"))),
                Ok(outputs) => {
                    let range = start..start + prepared.rows();
                    start = range.end;
                    outputs
                        .iter()
                        .map(|t| t.slice(0, range.start, range.end))
                        .collect::<TractResult<Vec<Tensor>>>()
                        .map_err(|e| AnswerError::Inference(format!("splitting the batch: {e:#}")))
                        .and_then(|own| self.encode(*id, None, &own.iter().collect::<Vec<_>>(), &prepared.outputs))
                }
            };
            answers[*slot] = Some(answer);
        }
        answers.into_iter().map(|a| a.expect("every request answered")).collect()
    }

    /// Encodes the outputs a request asked for, computing post-processed ones when asked for.
    fn encode(
        &self,
        id: Option<&str>,
        parameters: Option<&serde_json::Map<String, serde_json::Value>>,
        outputs: &[&Tensor],
        wanted: &[(usize, bool)],
    ) -> Result<EncodedReply, AnswerError> {
        let computed = match &self.postprocess {
            Some(post) if wanted.iter().any(|(i, _)| *i >= self.raw_outputs) => Some(
                post.compute(outputs[post.source])
                    .map_err(|e| AnswerError::Inference(format!("post-processing: {e:#}")))?,
            ),
            _ => None,
        };
        let selected: Vec<OutputTensor<'_>> = wanted
            .iter()
            .map(|&(index, binary)| OutputTensor {
                name: &self.metadata.outputs[index].name,
                tensor: match index.checked_sub(self.raw_outputs) {
                    None => outputs[index],
                    Some(j) => &computed.as_ref().expect("computed when asked for")[j],
                },
                binary,
            })
            .collect();
        Ok(encode_response(self.name(), id, parameters, &selected)?)
    }

    /// Zero-filled inputs of the model's shapes, `batch` standing for the batch dimension: the
    /// warm-up run and `edgeinfer bench` use them.
    pub fn zero_inputs(&self, batch: usize) -> TractResult<TVec<TValue>> {
        self.inputs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> = spec.shape.iter().map(|&d| if d < 0 { batch } else { d as usize }).collect();
                let dt = spec.datatype.datum_type().expect("numeric inputs only");
                Ok(Tensor::zero_dt(dt, &shape)?.into_tvalue())
            })
            .collect()
    }

    /// One run on zeros. At load it proves the model runs; each inference thread does it again
    /// at start, so that its own scratch buffers (tract keeps them per thread) and allocator arena
    /// exist before the first request: the first answers are not slower, and the RSS after start
    /// is what the daemon needs when busy, not a fraction of it.
    pub fn warm_up(&self) -> TractResult<TVec<TValue>> {
        self.run(self.zero_inputs(1)?)
    }

    /// The image pre-processing alone, for `edgeinfer bench --image`; `None` when the model takes
    /// no images.
    pub fn preprocess_image(&self, bytes: &[u8]) -> Option<Result<Tensor, image::ImageError>> {
        match &self.preprocess {
            Some(Preprocess::Image { target, .. }) => Some(target.tensor(bytes)),
            _ => None,
        }
    }

    /// Live sessions, for the stats; `None` for a model without `[session]`.
    pub fn sessions(&self) -> Option<usize> {
        self.session.as_ref().map(|s| s.store.len())
    }
}

/// Audio samples as floats at full scale 1.0.
fn samples_to_f32(samples: &Tensor, datatype: DataType) -> Vec<f32> {
    match datatype {
        DataType::Int16 => audio::pcm16_to_f32(elements::<i16>(samples).expect("INT16 samples")),
        _ => elements::<f32>(samples).expect("FP32 samples").to_vec(),
    }
}

/// Where the tensor `name` is in `tensors`, or a message listing the names there are.
fn position_of(tensors: &[TensorMetadata], name: &str, kind: &str) -> Result<usize, String> {
    tensors.iter().position(|t| t.name == name).ok_or_else(|| {
        let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        format!("\"{name}\" is not an {kind} of the model, which has {names:?}")
    })
}

fn resolve_preprocess(
    model: &str,
    manifest: &ModelManifest,
    inputs: &[TensorMetadata],
) -> Result<Option<Preprocess>, LoadError> {
    let Some(decl) = &manifest.preprocess else {
        return Ok(None);
    };
    let invalid = |message: String| LoadError::Processing { model: model.into(), key: "preprocess.input", message };
    let input = position_of(inputs, decl.input(), "input").map_err(invalid)?;
    let spec = &inputs[input];
    if spec.datatype != DataType::Fp32 {
        return Err(invalid(format!("\"{}\" is {}; pre-processing produces FP32", spec.name, spec.datatype)));
    }
    Ok(Some(match decl {
        PreprocessDecl::Image(decl) => {
            let target = ImageTarget::new(decl, &spec.shape).ok_or_else(|| {
                invalid(format!(
                    "\"{}\" has shape {:?}; an image input is [1, 3, H, W] (layout NCHW) or [1, H, W, 3] (NHWC), \
                     the first dimension 1 or -1",
                    spec.name, spec.shape
                ))
            })?;
            Preprocess::Image { input, target }
        }
        PreprocessDecl::Audio(decl) => {
            let width = (decl.context + decl.frame) as i64;
            if spec.shape.len() != 2 || !matches!(spec.shape[0], -1 | 1) || spec.shape[1] != width {
                return Err(invalid(format!(
                    "\"{}\" has shape {:?}; audio rows need [-1, context + frame] = [-1, {width}] (or [1, {width}] \
                     for one frame per request)",
                    spec.name, spec.shape
                )));
            }
            Preprocess::Audio { input, decl: decl.clone(), one_frame: spec.shape[0] == 1 }
        }
    }))
}

fn resolve_postprocess(
    model: &str,
    manifest: &ModelManifest,
    outputs: &[TensorMetadata],
    names: Option<Vec<String>>,
) -> Result<Option<Postprocess>, LoadError> {
    let Some(decl) = &manifest.postprocess else {
        return Ok(None);
    };
    let invalid = |message: String| LoadError::Processing { model: model.into(), key: "postprocess.output", message };
    let source = position_of(outputs, decl.output(), "output").map_err(invalid)?;
    let post = Postprocess::new(decl.clone(), source, names);
    let shape = &outputs[source].shape;
    let classes = match decl {
        manifest::PostprocessDecl::Classify(_) => {
            shape.iter().skip(1).try_fold(1i64, |acc, &d| (d > 0).then_some(acc * d))
        }
        manifest::PostprocessDecl::Ctc(_) if shape.len() == 3 => shape.last().copied().filter(|&d| d > 0),
        manifest::PostprocessDecl::Ctc(_) => {
            return Err(invalid(format!("a CTC output is [batch, steps, classes], \"{}\" is {shape:?}", decl.output())))
        }
    };
    if let (Some(expected), Some(classes)) = (post.expected_classes(), classes) {
        if expected as i64 != classes {
            let file = if matches!(decl, manifest::PostprocessDecl::Ctc(_)) { "dictionary" } else { "labels file" };
            return Err(invalid(format!(
                "\"{}\" has {classes} classes, the {file} gives {expected}; they must line up",
                decl.output()
            )));
        }
    }
    Ok(Some(post))
}

fn resolve_session(
    model: &str,
    manifest: &ModelManifest,
    inputs: &[TensorMetadata],
    outputs: &[TensorMetadata],
) -> Result<Option<Session>, LoadError> {
    let Some(decl) = &manifest.session else {
        return Ok(None);
    };
    let invalid = |message: String| LoadError::Processing { model: model.into(), key: "session.state", message };
    let mut state = Vec::with_capacity(decl.state.len());
    for pair in &decl.state {
        let input = position_of(inputs, &pair.input, "input").map_err(invalid)?;
        let output = position_of(outputs, &pair.output, "output").map_err(invalid)?;
        let (i, o) = (&inputs[input], &outputs[output]);
        if i.datatype != o.datatype || i.shape != o.shape || i.shape.iter().any(|&d| d < 0) {
            return Err(invalid(format!(
                "output \"{}\" ({} {:?}) cannot feed input \"{}\" ({} {:?}): state needs one fixed shape",
                o.name, o.datatype, o.shape, i.name, i.datatype, i.shape
            )));
        }
        let shape: Vec<usize> = i.shape.iter().map(|&d| d as usize).collect();
        let dt = i.datatype.datum_type().expect("numeric inputs only");
        let zero = Tensor::zero_dt(dt, &shape).map_err(|e| LoadError::Tract {
            model: model.into(),
            stage: "make the initial state",
            reason: format!("{e:#}"),
        })?;
        state.push((input, output, zero));
    }
    Ok(Some(Session { store: SessionStore::new(decl), state }))
}

fn check_batchable(model: &str, inputs: &[TensorMetadata], outputs: &[TensorMetadata]) -> Result<(), LoadError> {
    let tensors = inputs.iter().map(|t| ("input", t)).chain(outputs.iter().map(|t| ("output", t)));
    for (kind, tensor) in tensors {
        if tensor.shape.first() != Some(&-1) {
            return Err(LoadError::NotBatchable {
                model: model.into(),
                kind,
                name: tensor.name.clone(),
                shape: tensor.shape.clone(),
            });
        }
    }
    Ok(())
}

/// Gives every graph input a concrete datatype and shape (a leading batch dimension may stay
/// symbolic), from `model.toml` where it declares the input, else from the ONNX file.
fn fix_inputs(
    model: &str,
    graph: &mut InferenceModel,
    manifest: &ModelManifest,
) -> Result<Vec<TensorMetadata>, LoadError> {
    let names: Vec<String> = graph
        .input_outlets()
        .map_err(|e| LoadError::Tract { model: model.into(), stage: "list inputs", reason: format!("{e:#}") })?
        .iter()
        .map(|o| graph.node(o.node).name.clone())
        .collect();
    if let Some(decl) = manifest.inputs.iter().find(|d| !names.contains(&d.name)) {
        return Err(LoadError::UnknownTensor {
            model: model.into(),
            kind: "input",
            name: decl.name.clone(),
            available: names,
        });
    }
    let tract = |stage: &'static str| {
        move |e: TractError| LoadError::Tract { model: model.into(), stage, reason: format!("{e:#}") }
    };
    // Constant inputs first: they become part of the graph and leave the input list.
    let outlets = graph.input_outlets().map_err(tract("list inputs"))?.to_vec();
    for (outlet, name) in outlets.iter().zip(&names) {
        let Some(decl) = manifest.inputs.iter().find(|d| &d.name == name && d.value.is_some()) else {
            continue;
        };
        let value = decl.constant().map_err(tract("make the constant input"))?;
        let node = graph.node_mut(outlet.node);
        node.op = Box::new(
            tract_onnx::tract_hir::ops::konst::Const::new(value.clone().into_arc_tensor())
                .map_err(tract("make the constant input"))?,
        );
        node.outputs[0].fact = InferenceFact::from(value);
        graph.inputs.retain(|o| o != outlet);
    }
    let names: Vec<String> =
        names.into_iter().filter(|n| !manifest.inputs.iter().any(|d| &d.name == n && d.value.is_some())).collect();
    let batch = graph.symbols.sym(BATCH_SYMBOL);
    let mut specs = Vec::with_capacity(names.len());
    for (ix, name) in names.iter().enumerate() {
        let spec = match manifest.inputs.iter().find(|d| &d.name == name) {
            Some(decl) => TensorMetadata { name: name.clone(), datatype: decl.datatype, shape: decl.shape.clone() },
            None => onnx_input_spec(model, name, graph.input_fact(ix).expect("index from input_outlets"))?,
        };
        let dt = spec.datatype.datum_type().expect("numeric inputs only");
        let dims: TVec<TDim> =
            spec.shape.iter().map(|&d| if d < 0 { TDim::from(batch.clone()) } else { TDim::from(d) }).collect();
        graph.set_input_fact(ix, InferenceFact::dt_shape(dt, dims)).map_err(|e| LoadError::Tract {
            model: model.into(),
            stage: "set the input shape",
            reason: format!("{e:#}"),
        })?;
        specs.push(spec);
    }
    Ok(specs)
}

fn onnx_input_spec(model: &str, name: &str, fact: &InferenceFact) -> Result<TensorMetadata, LoadError> {
    let unfixed = |what| LoadError::UnfixedInput { model: model.into(), input: name.into(), what };
    let datum = fact.datum_type.concretize().ok_or_else(|| unfixed("datatype"))?;
    let datatype = DataType::from_datum_type(datum)
        .filter(|d| *d != DataType::Bytes)
        .ok_or_else(|| LoadError::UnsupportedType { model: model.into(), kind: "input", name: name.into(), datum })?;
    let dims = fact.shape.concretize().ok_or_else(|| unfixed("rank"))?;
    let shape = dims
        .iter()
        .enumerate()
        .map(|(axis, d)| match d.to_i64() {
            Ok(v) => Ok(v),
            Err(_) if axis == 0 => Ok(-1),
            Err(_) => Err(unfixed("shape")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(TensorMetadata { name: name.into(), datatype, shape })
}

fn describe_outputs(
    model: &str,
    typed: &TypedModel,
    names: &[String],
    manifest: &ModelManifest,
) -> Result<Vec<TensorMetadata>, LoadError> {
    if let Some(decl) = manifest.outputs.iter().find(|d| !names.contains(&d.name)) {
        return Err(LoadError::UnknownTensor {
            model: model.into(),
            kind: "output",
            name: decl.name.clone(),
            available: names.to_vec(),
        });
    }
    let mut specs = Vec::with_capacity(names.len());
    for (ix, name) in names.iter().enumerate() {
        let fact = typed.output_fact(ix).map_err(|e| LoadError::Tract {
            model: model.into(),
            stage: "type the outputs",
            reason: format!("{e:#}"),
        })?;
        let datatype =
            DataType::from_datum_type(fact.datum_type).filter(|d| *d != DataType::Bytes).ok_or_else(|| {
                LoadError::UnsupportedType {
                    model: model.into(),
                    kind: "output",
                    name: name.clone(),
                    datum: fact.datum_type,
                }
            })?;
        let shape: Vec<i64> = fact.shape.iter().map(|d| d.to_i64().unwrap_or(-1)).collect();
        if let Some(decl) = manifest.outputs.iter().find(|d| &d.name == name) {
            let compatible = decl.shape.len() == shape.len()
                && decl.shape.iter().zip(&shape).all(|(a, b)| a == b || *a == -1 || *b == -1);
            if decl.datatype != datatype || !compatible {
                return Err(LoadError::OutputMismatch {
                    model: model.into(),
                    name: name.clone(),
                    declared: format!("{} {:?}", decl.datatype, decl.shape),
                    actual: format!("{datatype} {shape:?}"),
                });
            }
        }
        specs.push(TensorMetadata { name: name.clone(), datatype, shape });
    }
    Ok(specs)
}
