//! Loading: an ONNX file (or the model cache's decluttered form) becomes optimised, warmed-up
//! tract plans (see `plans`), its inputs fixed from `model.toml` or the graph and its outputs described.

use std::path::Path;
use std::sync::Arc;

use tract_core::prelude::*;
use tract_onnx::prelude::{Framework, InferenceFact, InferenceModel, InferenceModelExt};
use tract_onnx::tract_hir::infer::Factoid;

use super::contract::{check_batchable, resolve_postprocess, resolve_preprocess, resolve_session};
use super::plans::{self, Plans};
use super::postprocess::Postprocess;
use super::{cache, manifest, LoadError, Model, ModelCache, ModelManifest};
use super::{ModelMetadata, TensorMetadata};
use crate::protocol::DataType;

/// Name of the batch symbol given to a `-1` leading dimension.
const BATCH_SYMBOL: &str = "N";

impl Model {
    /// Loads `dir/model.onnx` (and `dir/model.toml` when present) as model `name`, through `cache`
    /// when there is one.
    pub fn load(name: &str, dir: &Path, cache: Option<&ModelCache>) -> Result<Model, LoadError> {
        let manifest_err = |source| LoadError::Manifest { model: name.to_string(), source };
        let manifest = ModelManifest::read(dir).map_err(manifest_err)?.unwrap_or_default();
        if manifest.pipeline.is_some() {
            // Loaded alone (not by the repository, which shares the models it serves): its steps
            // are loaded from the model directories beside it.
            let repository = dir.parent().unwrap_or(Path::new("."));
            return Model::pipeline(name, &manifest, &|step| {
                Model::load(step, &repository.join(step), cache).map(Arc::new)
            });
        }
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
        let tract = |stage| tract_failed(name, stage);
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
        if let Some(input) = inputs.iter().position(|spec| spec.shape.iter().skip(1).any(|&d| d < 0)) {
            // Not cached: the graph is typed anew for each frame size.
            let by_size = plans::BySize::new(graph, input, &inputs[input], manifest.serving.plans_by_size());
            return Model::from_any_size(name, by_size, inputs, &output_names, manifest, labels, dictionary);
        }
        // Decluttered, not optimised: the form the cache keeps (see `cache`).
        let typed = graph.into_typed().and_then(|t| t.into_decluttered()).map_err(tract("type the graph"))?;
        if let Some(entry) = &entry {
            entry.store(&typed, &inputs, &output_names);
        }
        let decluttered = cache::CachedModel { typed, inputs, output_names };
        Model::from_decluttered(name, decluttered, manifest, labels, dictionary)
    }

    /// Optimises a decluttered graph for this CPU (once as declared, once per batch size that gets
    /// a plan of its own), checks its outputs against `model.toml`, builds the plans and runs each
    /// once.
    fn from_decluttered(
        name: &str,
        decluttered: cache::CachedModel,
        manifest: &ModelManifest,
        labels: Option<Vec<String>>,
        dictionary: Option<Vec<String>>,
    ) -> Result<Model, LoadError> {
        let tract = |stage| tract_failed(name, stage);
        let cache::CachedModel { typed, inputs, output_names } = decluttered;
        let sizes = plans::batch_sizes(&inputs, manifest.serving.max_batch_size);
        let fixed =
            plans::fixed_plans(&typed, &inputs, &sizes).map_err(tract("build a plan for a fixed batch size"))?;
        let typed = typed.into_optimized().map_err(tract("optimise the graph"))?;
        let outputs = describe_outputs(name, &typed, &output_names, manifest)?;
        if manifest.serving.max_batch_size.is_some_and(|b| b > 1) {
            check_batchable(name, &inputs, &outputs)?;
        }
        let plans = Plans::new(typed.into_runnable().map_err(tract("build a plan"))?, fixed, &inputs);
        Model::assemble(name, manifest, inputs, outputs, plans, labels, dictionary)
    }

    /// A model whose image input takes any height and width (a detector): a plan per frame size,
    /// made when a frame of that size first comes. Two are made now, at two sizes, to check the
    /// model and to tell which output dimensions follow the frame (they become -1).
    fn from_any_size(
        name: &str,
        by_size: plans::BySize,
        inputs: Vec<TensorMetadata>,
        output_names: &[String],
        manifest: &ModelManifest,
        labels: Option<Vec<String>>,
        dictionary: Option<Vec<String>>,
    ) -> Result<Model, LoadError> {
        let tract = |stage| tract_failed(name, stage);
        let shape = |side: usize| -> Vec<usize> {
            inputs[by_size.input].shape.iter().map(|&d| if d < 0 { side } else { d as usize }).collect()
        };
        let small =
            by_size.plan(&shape(super::ANY_SIDE_AT_WARM_UP)).map_err(tract("type the graph for a frame size"))?;
        let larger = by_size
            .plan(&shape(super::ANY_SIDE_AT_WARM_UP * 3 / 2))
            .map_err(tract("type the graph for a frame size"))?;
        let mut outputs = describe_outputs(name, small.model(), output_names, manifest)?;
        for (ix, output) in outputs.iter_mut().enumerate() {
            let other = larger.model().output_fact(ix).map_err(tract("type the outputs"))?;
            for (dim, d) in output.shape.iter_mut().zip(other.shape.iter()) {
                if d.to_i64().ok() != Some(*dim) {
                    *dim = -1;
                }
            }
        }
        let plans = Plans::by_size(small, by_size);
        Model::assemble(name, manifest, inputs, outputs, plans, labels, dictionary)
    }

    /// The model from its plans and contract: `model.toml`'s processing resolved against them.
    #[allow(clippy::too_many_arguments)]
    fn assemble(
        name: &str,
        manifest: &ModelManifest,
        inputs: Vec<TensorMetadata>,
        outputs: Vec<TensorMetadata>,
        plans: Plans,
        labels: Option<Vec<String>>,
        dictionary: Option<Vec<String>>,
    ) -> Result<Model, LoadError> {
        let tract = |stage| tract_failed(name, stage);
        let preprocess = resolve_preprocess(name, manifest, &inputs)?;
        let names = match &manifest.postprocess {
            Some(manifest::PostprocessDecl::Ctc(_)) => dictionary,
            _ => labels.clone(),
        };
        let mut postprocess = resolve_postprocess(name, manifest, &outputs, names)?;
        if let (Some(post), Some(super::Preprocess::Image { target, .. })) = (&mut postprocess, &preprocess) {
            post.input_size = target.width.zip(target.height);
        }
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
                versions: vec![manifest.version.clone().unwrap_or_else(|| super::DEFAULT_VERSION.into())],
                platform: super::PLATFORM.to_string(),
                inputs: public_inputs,
                outputs: public_outputs,
                description: manifest.description.clone(),
                labels,
                preprocess: manifest.preprocess.clone(),
                postprocess: manifest.postprocess.clone(),
                session: manifest.session.clone(),
            },
            inputs,
            raw_outputs,
            serving,
            plans,
            preprocess,
            postprocess,
            session,
            pipeline: None,
        };
        model.plans.check(|batch| model.zero_inputs(batch)).map_err(tract("run the model on zeros"))?;
        Ok(model)
    }
}

/// The error for tract failing at `stage` of loading `model`, its cause kept.
fn tract_failed<'a>(model: &'a str, stage: &'static str) -> impl FnOnce(TractError) -> LoadError + 'a {
    move |e| LoadError::Tract { model: model.to_string(), stage, source: e.into() }
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
        .map_err(|e| LoadError::Tract { model: model.into(), stage: "list inputs", source: e.into() })?
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
    let tract =
        |stage: &'static str| move |e: TractError| LoadError::Tract { model: model.into(), stage, source: e.into() };
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
        // The batch dimension is N; an image's free height and width get symbols of their own
        // (replaced by each frame's size, see `plans::BySize`).
        let dims: TVec<TDim> = spec
            .shape
            .iter()
            .enumerate()
            .map(|(axis, &d)| match (d, axis) {
                (-1, 0) => TDim::from(batch.clone()),
                (-1, axis) => TDim::from(graph.symbols.sym(&format!("S{ix}_{axis}"))),
                (d, _) => TDim::from(d),
            })
            .collect();
        graph.set_input_fact(ix, InferenceFact::dt_shape(dt, dims)).map_err(|e| LoadError::Tract {
            model: model.into(),
            stage: "set the input shape",
            source: e.into(),
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
            source: e.into(),
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
