//! A loaded model: an ONNX file turned into an optimised tract plan, with the input and output
//! contract a request is checked against before any computation starts.
//!
//! Loading does all the expensive, failure-prone work once at start: parse, fix input facts,
//! optimise, build the plan, and run it once on zeros. A model that cannot run therefore fails at
//! start, with its name and tract's reason, and never on the first request.

pub mod cache;
pub mod inspect;
pub mod manifest;
pub mod repository;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tract_core::prelude::*;
use tract_onnx::prelude::{Framework, InferenceFact, InferenceModel, InferenceModelExt};
use tract_onnx::tract_hir::infer::Factoid;

use crate::protocol::{
    encode_response, DataType, EncodedReply, InferRequest, ModelMetadata, OutputTensor, TensorMetadata,
};
pub use cache::ModelCache;
pub use manifest::{ModelManifest, ServingDecl};
pub use repository::ModelRepository;

/// Name of the batch symbol given to a `-1` leading dimension.
const BATCH_SYMBOL: &str = "N";

/// A model ready to serve. Cheap to share: workers hold an `Arc<Model>` and run the same plan.
pub struct Model {
    metadata: ModelMetadata,
    serving: ServingDecl,
    plan: Arc<TypedRunnableModel>,
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
    #[error("unknown output \"{name}\" requested (model \"{model}\" has {available:?})")]
    UnknownOutput { model: String, name: String, available: Vec<String> },
}

/// A checked request failed while computing or encoding: a fault of the model, not of the request.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("inference failed: {0}")]
    Inference(String),
    #[error(transparent)]
    Encode(#[from] crate::protocol::response::UnsupportedOutput),
}

/// A request checked against the model: inputs in the model's order, outputs selected.
#[derive(Debug)]
pub struct PreparedInputs {
    pub inputs: TVec<TValue>,
    /// Indices into the model's outputs, each with whether it goes back as raw bytes.
    pub outputs: Vec<(usize, bool)>,
}

impl PreparedInputs {
    /// The request's batch size: the leading dimension of its first input.
    pub fn rows(&self) -> usize {
        self.inputs.first().and_then(|t| t.shape().first().copied()).unwrap_or(1)
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
        Model::from_onnx(name, &onnx, &manifest, labels, cache)
    }

    /// Loads an ONNX file with an explicit manifest; `inspect` uses this for a bare `.onnx` file.
    pub fn from_onnx(
        name: &str,
        onnx: &Path,
        manifest: &ModelManifest,
        labels: Option<Vec<String>>,
        cache: Option<&ModelCache>,
    ) -> Result<Model, LoadError> {
        let tract = |stage: &'static str| {
            move |e: TractError| LoadError::Tract { model: name.to_string(), stage, reason: format!("{e:#}") }
        };
        let entry = cache.and_then(|cache| cache.entry(name, onnx));
        if let Some(cached) = entry.as_ref().and_then(|entry| entry.load()) {
            return Model::from_decluttered(name, cached, manifest, labels);
        }
        let mut graph = tract_onnx::onnx()
            .with_ignore_output_shapes(true)
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
        Model::from_decluttered(name, cache::CachedModel { typed, inputs, output_names }, manifest, labels)
    }

    /// Optimises a decluttered graph for this CPU, checks its outputs against `model.toml`, builds
    /// the plan and runs it once.
    fn from_decluttered(
        name: &str,
        decluttered: cache::CachedModel,
        manifest: &ModelManifest,
        labels: Option<Vec<String>>,
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
        let model = Model {
            metadata: ModelMetadata {
                name: name.to_string(),
                platform: crate::protocol::metadata::PLATFORM.to_string(),
                inputs,
                outputs,
                description: manifest.description.clone(),
                labels,
            },
            serving: manifest.serving.clone(),
            plan,
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
    pub fn prepare(&self, request: &mut InferRequest) -> Result<PreparedInputs, InputError> {
        let expected: Vec<String> = self.metadata.inputs.iter().map(|i| i.name.clone()).collect();
        if let Some(missing) = expected.iter().find(|name| !request.inputs.iter().any(|i| &i.name == *name)) {
            return Err(InputError::Missing { model: self.name().to_string(), name: missing.clone(), expected });
        }
        if let Some(extra) = request.inputs.iter().find(|i| !expected.contains(&i.name)) {
            return Err(InputError::Unknown { model: self.name().to_string(), name: extra.name.clone(), expected });
        }
        let mut inputs = TVec::with_capacity(expected.len());
        let mut batch_sizes = Vec::new();
        for spec in &self.metadata.inputs {
            let pos = request.inputs.iter().position(|i| i.name == spec.name).expect("checked above");
            let input = request.inputs.swap_remove(pos);
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
        if batch_sizes.windows(2).any(|w| w[0] != w[1]) {
            return Err(InputError::BatchMismatch(batch_sizes));
        }
        let outputs = match &request.outputs {
            None => (0..self.metadata.outputs.len()).map(|i| (i, request.binary_outputs)).collect(),
            Some(wanted) => wanted
                .iter()
                .map(|w| {
                    let index = self.metadata.outputs.iter().position(|o| o.name == w.name).ok_or_else(|| {
                        InputError::UnknownOutput {
                            model: self.name().to_string(),
                            name: w.name.clone(),
                            available: self.metadata.outputs.iter().map(|o| o.name.clone()).collect(),
                        }
                    })?;
                    Ok((index, w.binary.unwrap_or(request.binary_outputs)))
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(PreparedInputs { inputs, outputs })
    }

    /// Runs the model once. Every call gets a fresh tract state: reusing one would carry recurrent
    /// (LSTM/GRU) hidden state from one request into the next and give wrong answers.
    pub fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.plan.run(inputs)
    }

    /// Runs a prepared request and encodes the reply with the outputs the client asked for.
    pub fn answer(&self, id: Option<&str>, prepared: PreparedInputs) -> Result<EncodedReply, AnswerError> {
        let outputs = self.run(prepared.inputs).map_err(|e| AnswerError::Inference(format!("{e:#}")))?;
        let outputs: Vec<&Tensor> = outputs.iter().map(|t| &**t).collect();
        self.encode(id, &outputs, &prepared.outputs)
    }

    /// Rows per run with dynamic batching: 1 when it is off.
    pub fn max_batch_size(&self) -> usize {
        self.serving.max_batch_size.unwrap_or(1)
    }

    /// Runs several prepared requests as one batch (stacked along the batch dimension, which
    /// `max_batch_size` guarantees every input and output has) and answers each with its own rows.
    /// A failed run fails every request of the batch.
    pub fn answer_batch(
        &self,
        requests: Vec<(Option<&str>, PreparedInputs)>,
    ) -> Vec<Result<EncodedReply, AnswerError>> {
        if requests.len() == 1 {
            let (id, prepared) = requests.into_iter().next().expect("one request");
            return vec![self.answer(id, prepared)];
        }
        let rows: Vec<usize> = requests.iter().map(|(_, p)| p.rows()).collect();
        let outputs = (0..self.metadata.inputs.len())
            .map(|input| {
                let parts: Vec<&Tensor> = requests.iter().map(|(_, p)| &*p.inputs[input]).collect();
                Ok(Tensor::stack_tensors(0, &parts)?.into_tvalue())
            })
            .collect::<TractResult<TVec<TValue>>>()
            .and_then(|stacked| self.run(stacked));
        let outputs = match outputs {
            Ok(outputs) => outputs,
            Err(e) => {
                let message = format!("{e:#}");
                return requests.iter().map(|_| Err(AnswerError::Inference(message.clone()))).collect();
            }
        };
        let mut start = 0;
        requests
            .iter()
            .zip(rows)
            .map(|((id, prepared), rows)| {
                let range = start..start + rows;
                start = range.end;
                let own = outputs
                    .iter()
                    .map(|t| t.slice(0, range.start, range.end))
                    .collect::<TractResult<Vec<Tensor>>>()
                    .map_err(|e| AnswerError::Inference(format!("splitting the batch: {e:#}")))?;
                self.encode(*id, &own.iter().collect::<Vec<_>>(), &prepared.outputs)
            })
            .collect()
    }

    /// Encodes the outputs a request asked for.
    fn encode(
        &self,
        id: Option<&str>,
        outputs: &[&Tensor],
        wanted: &[(usize, bool)],
    ) -> Result<EncodedReply, AnswerError> {
        let selected: Vec<OutputTensor<'_>> = wanted
            .iter()
            .map(|&(index, binary)| OutputTensor {
                name: &self.metadata.outputs[index].name,
                tensor: outputs[index],
                binary,
            })
            .collect();
        Ok(encode_response(self.name(), id, &selected)?)
    }

    /// Zero-filled inputs of the model's shapes, `batch` standing for the batch dimension: the
    /// warm-up run and `edgeinfer bench` use them.
    pub fn zero_inputs(&self, batch: usize) -> TractResult<TVec<TValue>> {
        self.metadata
            .inputs
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
