//! A loaded model: an ONNX file turned into an optimised tract plan, with the input and output
//! contract a request is checked against before any computation starts.
//!
//! Loading does all the expensive, failure-prone work once at start: parse, fix input facts,
//! optimise, build the plan, and run it once on zeros. A model that cannot run therefore fails at
//! start, with its name and tract's reason, and never on the first request.

pub mod audio;
pub mod cache;
mod contract;
pub mod detect;
mod error;
pub mod image;
pub mod inspect;
mod load;
pub mod manifest;
mod metadata;
mod pipeline;
mod plans;
pub(crate) mod postprocess;
mod prepare;
pub mod profile;
pub mod repository;
mod run;
pub(crate) mod session;

use tract_core::prelude::*;

pub use cache::ModelCache;
pub use error::{AnswerError, InputError, LoadError};
use image::ImageTarget;
use manifest::AudioDecl;
pub use manifest::{ModelManifest, ServingDecl};
pub use metadata::{ModelMetadata, TensorMetadata, PLATFORM};
use postprocess::Postprocess;
pub use prepare::{Pending, PreparedInputs};
pub use repository::ModelRepository;
pub use run::{Answer, AnsweredOutput};
use session::SessionStore;

/// The height and width a detector that takes frames of any size is warmed up with: a multiple
/// of every stride such networks have (32), small enough to cost nothing.
pub const ANY_SIDE_AT_WARM_UP: usize = 64;

/// The version of a model whose `model.toml` declares none (Triton's default, too).
pub const DEFAULT_VERSION: &str = "1";

/// A model ready to serve. Cheap to share: workers hold an `Arc<Model>` and run the same plans.
pub struct Model {
    metadata: ModelMetadata,
    /// Every graph input, in the graph's order (the metadata leaves out session state inputs,
    /// which clients do not send).
    inputs: Vec<TensorMetadata>,
    /// The graph's outputs come first in `metadata.outputs`; post-processed ones follow.
    raw_outputs: usize,
    serving: ServingDecl,
    /// The symbolic plan and the ones fixed to batch sizes (see `plans`).
    plans: plans::Plans,
    preprocess: Option<Preprocess>,
    postprocess: Option<Postprocess>,
    session: Option<Session>,
    /// For a `[pipeline]`: the models after the detector, whose plans and processing are the ones above.
    pipeline: Option<pipeline::Pipeline>,
}

/// `[preprocess]`, resolved against the graph: which input it fills, and how.
#[derive(Clone)]
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

impl Model {
    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    pub fn metadata(&self) -> &ModelMetadata {
        &self.metadata
    }

    /// The version this model answers as (`model_version` in replies).
    pub fn version(&self) -> &str {
        &self.metadata.versions[0]
    }

    /// Serves this model as `version`: a deployed package's version, which replaces the one its
    /// `model.toml` may declare.
    pub fn set_version(&mut self, version: &str) {
        self.metadata.versions = vec![version.to_string()];
    }

    /// The model's own serving settings from `model.toml` (workers, queue, default deadline).
    pub fn serving(&self) -> &ServingDecl {
        &self.serving
    }

    /// Zero-filled inputs of the model's shapes, `batch` standing for the batch dimension (and
    /// [`ANY_SIDE_AT_WARM_UP`] for an image's free height and width): the warm-up run and
    /// `edgeinfer bench` use them.
    pub fn zero_inputs(&self, batch: usize) -> TractResult<TVec<TValue>> {
        self.inputs
            .iter()
            .map(|spec| {
                let shape: Vec<usize> = spec
                    .shape
                    .iter()
                    .enumerate()
                    .map(|(axis, &d)| match (d, axis) {
                        (-1, 0) => batch,
                        (-1, _) => ANY_SIDE_AT_WARM_UP,
                        (d, _) => d as usize,
                    })
                    .collect();
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
            Some(Preprocess::Image { target, .. }) => Some(target.tensor(bytes).map(|(tensor, _)| tensor)),
            _ => None,
        }
    }

    /// Where the `[preprocess]` input is among the graph's inputs: the order of
    /// [`zero_inputs`](Model::zero_inputs) and [`run`](Model::run), which include session state
    /// inputs that the metadata leaves out.
    pub fn preprocess_input(&self) -> Option<usize> {
        self.preprocess.as_ref().map(Preprocess::input)
    }

    /// The model's `[preprocess]` audio section, for a model that takes audio.
    pub fn audio(&self) -> Option<&AudioDecl> {
        match &self.preprocess {
            Some(Preprocess::Audio { decl, .. }) => Some(decl),
            _ => None,
        }
    }

    /// Live sessions, for the stats; `None` for a model without `[session]`.
    pub fn sessions(&self) -> Option<usize> {
        self.session.as_ref().map(|s| s.store.len())
    }
}
