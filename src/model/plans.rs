//! A model's tract plans: one for the graph as declared, which runs any batch size, and one per
//! batch size that requests really form, with that size fixed before optimising.
//!
//! tract optimises a graph whose batch dimension is a symbol for every value of it: its kernels
//! cannot be chosen for the real sizes, and shapes are computed at each run. The pack's models
//! run 1.1-1.5x slower that way (bench/RESULTS.md, "Concrete plans"). So a model with a
//! `-1` batch dimension also gets a plan for batch 1, what a lone request runs, and with dynamic
//! batching one for `serving.max_batch_size`, the batch a full queue forms. Other sizes run the
//! symbolic plan: each plan is an optimised copy of the weights (10-15 MB for squeezenet, ~100 MB
//! for resnet50), and a plan per size measured faster on digits only (1.2x), not on squeezenet.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tract_core::internal::{bail, TractErrorContext};
use tract_core::prelude::*;
use tract_onnx::prelude::{InferenceFact, InferenceModel, InferenceModelExt};

use super::TensorMetadata;

#[derive(Clone)]
pub(super) struct Plans {
    /// The graph as declared: the batch dimension (if any) symbolic. For a model whose input
    /// size follows the frame, the plan for the warm-up size.
    any: Arc<TypedRunnableModel>,
    /// For a model whose input size follows the frame: a plan per size.
    by_size: Option<Arc<BySize>>,
    /// (batch size, a plan for exactly that size), ascending.
    fixed: Vec<(usize, Arc<TypedRunnableModel>)>,
    /// The first input with a batch dimension: its leading dimension is the batch size of a run.
    batch_input: Option<usize>,
}

/// The batch sizes that get a plan of their own: none without a batch dimension, else 1 and,
/// with dynamic batching, the full batch.
pub(super) fn batch_sizes(inputs: &[TensorMetadata], max_batch_size: Option<usize>) -> Vec<usize> {
    if batch_input(inputs).is_none() {
        return Vec::new();
    }
    let mut sizes = vec![1];
    sizes.extend(max_batch_size.filter(|&full| full > 1));
    sizes
}

fn batch_input(inputs: &[TensorMetadata]) -> Option<usize> {
    inputs.iter().position(|spec| spec.shape.first() == Some(&-1))
}

/// Optimised plans of `decluttered` with the batch dimension fixed to each of `sizes`. The
/// symbol is read from the batch input's fact, so a graph read back from the model cache works
/// the same as one just parsed.
pub(super) fn fixed_plans(
    decluttered: &TypedModel,
    inputs: &[TensorMetadata],
    sizes: &[usize],
) -> TractResult<Vec<(usize, Arc<TypedRunnableModel>)>> {
    let Some(input) = batch_input(inputs) else {
        return Ok(Vec::new());
    };
    let fact = decluttered.input_fact(input)?;
    let Some(TDim::Sym(batch)) = fact.shape.iter().next().cloned() else {
        bail!("input {input} has no symbolic batch dimension: {fact:?}");
    };
    sizes
        .iter()
        .map(|&size| {
            let subs = HashMap::from([(batch.clone(), TDim::Val(size as i64))]);
            let plan = decluttered
                .set_symbols(&subs)
                .and_then(|fixed| fixed.into_optimized())
                .and_then(|optimised| optimised.into_runnable())
                .with_context(|| format!("fixing the batch size to {size}"))?;
            Ok((size, plan))
        })
        .collect()
}

impl Plans {
    pub(super) fn new(
        any: Arc<TypedRunnableModel>,
        fixed: Vec<(usize, Arc<TypedRunnableModel>)>,
        inputs: &[TensorMetadata],
    ) -> Plans {
        Plans { any, fixed, by_size: None, batch_input: batch_input(inputs) }
    }

    /// The plans of a model whose input size follows the frame; `warm_up` is the one for the
    /// warm-up size.
    pub(super) fn by_size(warm_up: Arc<TypedRunnableModel>, by_size: BySize) -> Plans {
        Plans { any: warm_up, fixed: Vec::new(), by_size: Some(Arc::new(by_size)), batch_input: None }
    }

    /// The plan for these inputs: the one fixed to their batch size, else the symbolic one.
    /// Returns the fixed size too (`None`: the symbolic plan).
    pub(super) fn choose(&self, inputs: &[TValue]) -> (Option<usize>, &Arc<TypedRunnableModel>) {
        let size = self.batch_input.and_then(|i| inputs.get(i)).and_then(|t| t.shape().first().copied());
        match self.fixed.iter().find(|(fixed, _)| Some(*fixed) == size) {
            Some((fixed, plan)) => (Some(*fixed), plan),
            None => (None, &self.any),
        }
    }

    pub(super) fn run(&self, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        self.plan_for(&inputs)?.run(inputs)
    }

    /// The plan a run of these inputs takes.
    pub(super) fn plan_for(&self, inputs: &[TValue]) -> TractResult<Arc<TypedRunnableModel>> {
        if let Some(by_size) = &self.by_size {
            return by_size.plan(inputs[by_size.input].shape());
        }
        Ok(self.choose(inputs).1.clone())
    }

    /// Runs every plan once, on the inputs `zeros` makes for its batch size (the symbolic one on
    /// batch 1), so that a plan that cannot run fails the load and not a request.
    pub(super) fn check(&self, zeros: impl Fn(usize) -> TractResult<TVec<TValue>>) -> TractResult<()> {
        self.any.run(zeros(1)?).context("the plan for any batch size, on batch 1")?;
        for (size, plan) in &self.fixed {
            plan.run(zeros(*size)?).with_context(|| format!("the plan for batch {size}"))?;
        }
        Ok(())
    }

    /// The batch sizes with a plan of their own, ascending.
    #[cfg(test)]
    pub(super) fn fixed_sizes(&self) -> Vec<usize> {
        self.fixed.iter().map(|(size, _)| *size).collect()
    }
}

/// Plans for each input size of a model whose image input takes frames of any size (a
/// detector): tract cannot always type such a graph with symbolic sizes (PP-OCR's detector halves
/// and doubles its feature maps, and `ceil(h / 32) * 8` is not provably `ceil(h / 8)`), and a
/// concrete plan is the fast one anyway. A camera sends one size, so one plan is made, on its
/// first frame; the last `capacity` sizes are kept, each about one copy of the weights.
pub(super) struct BySize {
    /// The parsed graph, its other inputs fixed.
    graph: InferenceModel,
    /// The input whose size follows the frame.
    pub input: usize,
    datum: DatumType,
    capacity: usize,
    /// Most recently used first.
    plans: Mutex<VecDeque<(TVec<usize>, Arc<TypedRunnableModel>)>>,
}

impl BySize {
    pub(super) fn new(graph: InferenceModel, input: usize, spec: &TensorMetadata, capacity: usize) -> BySize {
        let datum = spec.datatype.datum_type().expect("numeric inputs only");
        BySize { graph, input, datum, capacity: capacity.max(1), plans: Mutex::new(VecDeque::new()) }
    }

    /// The plan for inputs of `shape`, made now if no kept one has it.
    pub(super) fn plan(&self, shape: &[usize]) -> TractResult<Arc<TypedRunnableModel>> {
        {
            let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = plans.iter().position(|(s, _)| s.as_slice() == shape) {
                let entry = plans.remove(at).expect("found");
                let plan = entry.1.clone();
                plans.push_front(entry);
                return Ok(plan);
            }
        }
        // Made outside the lock: other sizes keep being served meanwhile.
        let started = std::time::Instant::now();
        let mut graph = self.graph.clone();
        graph.set_input_fact(self.input, InferenceFact::dt_shape(self.datum, shape))?;
        let plan = graph
            .into_typed()
            .and_then(|typed| typed.into_decluttered())
            .and_then(|typed| typed.into_optimized())
            .and_then(|optimised| optimised.into_runnable())
            .with_context(|| format!("making a plan for input size {shape:?}"))?;
        tracing::info!(shape = ?shape, ms = started.elapsed().as_millis() as u64, "plan made for a new input size");
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        plans.push_front((shape.into(), plan.clone()));
        plans.truncate(self.capacity);
        Ok(plan)
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use ndarray_npy::ReadNpyExt;
    use tract_core::ndarray::{concatenate, s, ArrayD, Axis};

    use super::*;
    use crate::model::Model;
    use crate::protocol::DataType;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
    }

    /// The random-weight squeezenet (`python3 models/fetch.py` makes it), its model.toml with
    /// `extra` appended, loaded from a copy in a temporary directory.
    fn squeezenet(extra: &str) -> Model {
        let source = root().join("target/pack-random/squeezenet");
        assert!(
            source.join("model.onnx").is_file(),
            "{} is missing: run `python3 models/fetch.py`",
            source.join("model.onnx").display()
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(source.join("model.onnx"), dir.path().join("model.onnx")).unwrap();
        let toml = std::fs::read_to_string(source.join("model.toml")).unwrap();
        std::fs::write(dir.path().join("model.toml"), format!("{toml}\n{extra}")).unwrap();
        Model::load("squeezenet", dir.path(), None).unwrap()
    }

    /// Three different images: the fixture, mirrored, and upside down.
    fn three_images() -> Tensor {
        let file = std::fs::File::open(root().join("tests/fixtures/squeezenet_random_input.npy")).unwrap();
        let input = ArrayD::<f32>::read_npy(file).unwrap();
        let mirrored = input.slice(s![.., .., .., ..;-1]).to_owned().into_dyn();
        let flipped = input.slice(s![.., .., ..;-1, ..]).to_owned().into_dyn();
        concatenate(Axis(0), &[input.view(), mirrored.view(), flipped.view()]).unwrap().into_tensor()
    }

    fn values(outputs: &TVec<TValue>) -> Vec<f32> {
        crate::tensors::elements::<f32>(&outputs[0]).unwrap().to_vec()
    }

    /// |a - b| <= 1e-5 of the largest |b|, element by element (the tolerance tests/pack_models.rs
    /// holds tract to against onnxruntime).
    fn assert_close(what: &str, a: &[f32], b: &[f32]) {
        assert_eq!(a.len(), b.len(), "{what}: number of values");
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(scale > 0.0, "{what}: all zeros, nothing compared");
        assert!(worst <= 1e-5 * scale, "{what}: differ by {worst:e} (of {scale:e})");
    }

    #[test]
    fn plans_are_made_for_batch_1_and_the_full_batch() {
        let spec = |shape: Vec<i64>| TensorMetadata { name: "x".into(), datatype: DataType::Fp32, shape };
        assert!(batch_sizes(&[spec(vec![1, 64])], Some(8)).is_empty(), "no batch dimension, no extra plan");
        assert_eq!(batch_sizes(&[spec(vec![-1, 64])], None), [1]);
        assert_eq!(batch_sizes(&[spec(vec![-1, 64])], Some(1)), [1]);
        assert_eq!(batch_sizes(&[spec(vec![4, 2]), spec(vec![-1, 64])], Some(4)), [1, 4]);
        assert_eq!(batch_sizes(&[spec(vec![-1, 64])], Some(64)), [1, 64]);
    }

    #[test]
    fn a_lone_request_runs_the_batch_1_plan_and_gets_the_symbolic_plans_answer() {
        let model = squeezenet("");
        assert_eq!(model.plans.fixed_sizes(), [1], "without batching, batch 1 alone gets a plan");
        let images = three_images();
        let one = images.slice(0, 0, 1).unwrap().into_tvalue();
        let (size, plan) = model.plans.choose(std::slice::from_ref(&one));
        assert_eq!(size, Some(1));
        let fact = plan.model().input_fact(0).unwrap();
        assert_eq!(fact.shape.as_concrete(), Some(&[1, 3, 224, 224][..]), "the chosen plan is fixed to batch 1");
        let fixed = values(&model.run(tvec![one.clone()]).unwrap());
        let symbolic = values(&model.plans.any.run(tvec![one]).unwrap());
        assert_close("batch-1 plan vs symbolic plan", &fixed, &symbolic);
        // Rows beyond the plans' sizes run the symbolic plan.
        assert_eq!(model.plans.choose(&[images.clone().into_tvalue()]).0, None);
        assert_eq!(model.run(tvec![images.into_tvalue()]).unwrap()[0].shape(), [3, 1000, 1, 1]);
    }

    #[test]
    fn with_batching_the_full_batch_has_a_plan_and_a_batchs_rows_are_the_lone_answers() {
        let model = squeezenet("[serving]\nmax_batch_size = 3\n");
        assert_eq!(model.plans.fixed_sizes(), [1, 3]);
        let images = three_images();
        let lone: Vec<Vec<f32>> = (0..3)
            .map(|row| values(&model.run(tvec![images.slice(0, row, row + 1).unwrap().into_tvalue()]).unwrap()))
            .collect();
        let batch = tvec![images.clone().into_tvalue()];
        assert_eq!(model.plans.choose(&batch).0, Some(3));
        let batched = values(&model.run(batch.clone()).unwrap());
        let symbolic = values(&model.plans.any.run(batch).unwrap());
        assert_close("batch-3 plan vs symbolic plan", &batched, &symbolic);
        for (row, alone) in lone.iter().enumerate() {
            assert_close(&format!("row {row} of the batch vs alone"), &batched[row * 1000..(row + 1) * 1000], alone);
        }
        assert!(lone[0] != lone[1] && lone[0] != lone[2], "the three images must give different answers");
        let two = tvec![images.slice(0, 1, 3).unwrap().into_tvalue()];
        assert_eq!(model.plans.choose(&two).0, None, "a partial batch runs the symbolic plan");
        assert_close("rows 1-2 on the symbolic plan", &values(&model.run(two).unwrap()), &batched[1000..]);
    }
}
