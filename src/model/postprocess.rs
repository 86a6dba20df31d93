//! Post-processing: the answers a client wants, computed from one raw output as declared by
//! `[postprocess]` — top-k labels with scores, the text a CTC recogniser read, or the regions a
//! detector found (see `detect`).

use tract_core::internal::bail;
use tract_core::prelude::{tvec, TValue, Tensor, TractResult};

use super::detect::{self, Answers, Found, Thresholds};
use super::image::ImageGeometry;
use super::manifest::{ClassifyDecl, CtcDecl, DbDecl, PostprocessDecl, ScrfdDecl, YoloDecl};
use super::TensorMetadata;
use crate::protocol::DataType;
use crate::tensors::{elements, tensor_of};

/// A declared post-processing, with what it needs from the model directory.
#[derive(Debug, Clone)]
pub struct Postprocess {
    pub decl: PostprocessDecl,
    /// Indices of the raw outputs it reads, in the order the declaration names them.
    pub sources: Vec<usize>,
    /// Class names (classify, yolo) or characters by class (CTC, blank excluded).
    names: Vec<String>,
    /// The model input's width and height when fixed: a detector's frame when the request sent
    /// a tensor instead of an image.
    pub input_size: Option<(usize, usize)>,
    /// Keypoints per face (SCRFD: five), from the keypoint outputs' shape.
    pub keypoints: usize,
}

impl Postprocess {
    /// `names`: the labels file for a classifier (class indices when there is none); the
    /// dictionary for CTC, plus the space character when the model has one.
    pub fn new(decl: PostprocessDecl, sources: Vec<usize>, names: Option<Vec<String>>) -> Postprocess {
        let mut names = names.unwrap_or_default();
        if let PostprocessDecl::Ctc(CtcDecl { space: true, .. }) = decl {
            names.push(" ".into());
        }
        Postprocess { decl, sources, names, input_size: None, keypoints: 0 }
    }

    /// How many class names there are, when a labels file gave some.
    pub fn names_len(&self) -> Option<usize> {
        (!self.names.is_empty()).then_some(self.names.len())
    }

    /// The classes the source output must have for the names to line up; `None` when any number
    /// will do (a classifier without labels).
    pub fn expected_classes(&self) -> Option<usize> {
        match self.decl {
            PostprocessDecl::Classify(_) if self.names.is_empty() => None,
            PostprocessDecl::Classify(_) => Some(self.names.len()),
            PostprocessDecl::Ctc(_) => Some(self.names.len() + 1),
            PostprocessDecl::Db(_) | PostprocessDecl::Scrfd(_) | PostprocessDecl::Yolo(_) => None,
        }
    }

    /// The outputs it adds to the model's, in order, with their shapes for a batch of `-1`.
    pub fn outputs(&self) -> Vec<TensorMetadata> {
        let tensor = |name: &str, datatype, shape: Vec<i64>| TensorMetadata { name: name.into(), datatype, shape };
        match &self.decl {
            PostprocessDecl::Classify(d) => {
                let k = d.top_k as i64;
                vec![tensor("labels", DataType::Bytes, vec![-1, k]), tensor("scores", DataType::Fp32, vec![-1, k])]
            }
            PostprocessDecl::Ctc(_) => {
                vec![tensor("text", DataType::Bytes, vec![-1]), tensor("confidence", DataType::Fp32, vec![-1])]
            }
            // -1: as many as were found.
            PostprocessDecl::Db(_) => vec![
                tensor("boxes", DataType::Fp32, vec![-1, 4]),
                tensor("polygons", DataType::Fp32, vec![-1, 4, 2]),
                tensor("scores", DataType::Fp32, vec![-1]),
            ],
            PostprocessDecl::Scrfd(d) => {
                let mut outputs =
                    vec![tensor("boxes", DataType::Fp32, vec![-1, 4]), tensor("scores", DataType::Fp32, vec![-1])];
                if !d.keypoints.is_empty() {
                    outputs.push(tensor("keypoints", DataType::Fp32, vec![-1, self.keypoints as i64, 2]));
                }
                outputs
            }
            PostprocessDecl::Yolo(_) => vec![
                tensor("boxes", DataType::Fp32, vec![-1, 4]),
                tensor("scores", DataType::Fp32, vec![-1]),
                tensor("labels", DataType::Bytes, vec![-1]),
            ],
        }
    }

    /// What a detector answers with after `boxes`.
    pub fn answers(&self) -> Answers {
        match &self.decl {
            PostprocessDecl::Scrfd(d) => Answers::Keypoints(if d.keypoints.is_empty() { 0 } else { self.keypoints }),
            PostprocessDecl::Yolo(_) => Answers::Labels(self.names.clone()),
            _ => Answers::Polygons,
        }
    }

    /// Computes the added outputs from the raw outputs of one request.
    pub fn compute(&self, outputs: &[TValue], context: &Context) -> TractResult<Computed> {
        let source = &outputs[self.sources[0]];
        match &self.decl {
            PostprocessDecl::Classify(d) => Ok(self.classify(d, source)?.into()),
            PostprocessDecl::Ctc(d) => Ok(self.ctc(d, source)?.into()),
            PostprocessDecl::Db(_) | PostprocessDecl::Scrfd(_) | PostprocessDecl::Yolo(_) => {
                let found = self.find(outputs, context)?;
                Ok(Computed { tensors: found.tensors(&self.answers())?, capped: found.capped() })
            }
        }
    }

    /// The regions a detector found, in the frame's pixels (the input's when the request sent a
    /// tensor rather than an image).
    pub fn find(&self, outputs: &[TValue], context: &Context) -> TractResult<Found> {
        match &self.decl {
            PostprocessDecl::Db(d) => self.regions(d, &outputs[self.sources[0]], context),
            PostprocessDecl::Scrfd(d) => self.faces(d, outputs, context),
            PostprocessDecl::Yolo(d) => self.objects(d, &outputs[self.sources[0]], context),
            _ => bail!("not a detector"),
        }
    }

    /// Where the frame is in the input: the image's geometry, or the input itself (`w` x `h`).
    fn geometry(&self, context: &Context, (w, h): (usize, usize)) -> ImageGeometry {
        context.geometry.unwrap_or(ImageGeometry { width: w as u32, height: h as u32, scale_x: 1.0, scale_y: 1.0 })
    }

    fn regions(&self, decl: &DbDecl, source: &Tensor, context: &Context) -> TractResult<Found> {
        let source = source.cast_to::<f32>()?;
        let &[1, 1, h, w] = source.shape() else {
            bail!("a DB probability map must be [1, 1, H, W], it is {:?}", source.shape())
        };
        let geometry = self.geometry(context, (w, h));
        Ok(detect::db::regions(elements::<f32>(&source)?, w, h, decl, &context.thresholds, &geometry))
    }

    fn faces(&self, decl: &ScrfdDecl, outputs: &[TValue], context: &Context) -> TractResult<Found> {
        let n = decl.strides.len();
        let tensors: Vec<_> = self.sources.iter().map(|&i| outputs[i].cast_to::<f32>()).collect::<TractResult<_>>()?;
        let flat = |i: usize| elements::<f32>(&tensors[i]);
        let mut levels = Vec::with_capacity(n);
        for level in 0..n {
            let scores = flat(level)?;
            let boxes = flat(n + level)?;
            let keypoints = if decl.keypoints.is_empty() { &[][..] } else { flat(2 * n + level)? };
            let anchors = scores.len();
            if boxes.len() != anchors * 4 || (!keypoints.is_empty() && keypoints.len() != anchors * 2 * self.keypoints)
            {
                bail!(
                    "stride {}: {} scores, {} box values, {} keypoint values do not line up",
                    decl.strides[level],
                    anchors,
                    boxes.len(),
                    keypoints.len()
                );
            }
            levels.push(detect::scrfd::Level { scores, boxes, keypoints });
        }
        let (w, h) = self.input_size.unwrap_or((640, 640));
        Ok(detect::scrfd::faces(&levels, w, decl, &context.thresholds, &self.geometry(context, (w, h))))
    }

    fn objects(&self, decl: &YoloDecl, source: &Tensor, context: &Context) -> TractResult<Found> {
        let source = source.cast_to::<f32>()?;
        if source.rank() != 3 || source.shape()[0] != 1 {
            bail!(
                "a YOLO head must be [1, fields, candidates] (v8) or [1, candidates, fields] (v5), it is {:?}",
                source.shape()
            );
        }
        let size = self.input_size.unwrap_or((0, 0));
        let geometry = self.geometry(context, size);
        Ok(detect::yolo::objects(elements::<f32>(&source)?, source.shape(), decl, &context.thresholds, &geometry))
    }

    fn classify(&self, decl: &ClassifyDecl, source: &Tensor) -> TractResult<[Tensor; 2]> {
        let source = source.cast_to::<f32>()?;
        let rows = source.shape().first().copied().unwrap_or(1).max(1);
        let values = elements::<f32>(&source)?;
        let classes = values.len() / rows;
        let k = decl.top_k.min(classes);
        let mut labels = Vec::with_capacity(rows * k);
        let mut scores = Vec::with_capacity(rows * k);
        for row in values.chunks(classes.max(1)) {
            let probs = if decl.softmax { softmax(row) } else { row.to_vec() };
            let mut order: Vec<usize> = (0..probs.len()).collect();
            // Highest first; equal scores keep the lower class first (stable sort).
            order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
            for &class in order.iter().take(k) {
                labels.push(self.names.get(class).cloned().unwrap_or_else(|| class.to_string()));
                scores.push(probs[class]);
            }
        }
        Ok([tensor_of(&[rows, k], labels)?, tensor_of(&[rows, k], scores)?])
    }

    fn ctc(&self, decl: &CtcDecl, source: &Tensor) -> TractResult<[Tensor; 2]> {
        let source = source.cast_to::<f32>()?;
        let &[rows, steps, classes] = source.shape() else {
            bail!("CTC output must be [batch, steps, classes], it is {:?}", source.shape())
        };
        let values = elements::<f32>(&source)?;
        let mut texts = Vec::with_capacity(rows);
        let mut confidences = Vec::with_capacity(rows);
        for sequence in values.chunks(steps * classes).take(rows) {
            let mut text = String::new();
            let mut kept = tvec!();
            let mut previous = None;
            for step in sequence.chunks(classes) {
                let (best, prob) = argmax(step);
                if best != decl.blank && previous != Some(best) {
                    let index = if best > decl.blank { best - 1 } else { best };
                    text.push_str(self.names.get(index).map(String::as_str).unwrap_or("\u{fffd}"));
                    kept.push(prob);
                }
                previous = Some(best);
            }
            let confidence = if kept.is_empty() { 0.0 } else { kept.iter().sum::<f32>() / kept.len() as f32 };
            texts.push(text);
            confidences.push(confidence);
        }
        Ok([tensor_of(&[rows], texts)?, tensor_of(&[rows], confidences)?])
    }
}

/// What post-processing needs besides the outputs: where the image went in the input, and the
/// request's own thresholds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    pub geometry: Option<ImageGeometry>,
    pub thresholds: Thresholds,
}

/// The computed outputs, in the order of [`Postprocess::outputs`].
#[derive(Debug)]
pub struct Computed {
    pub tensors: Vec<Tensor>,
    /// Said in the reply when a detector's cap left candidates out.
    pub capped: Option<serde_json::Value>,
}

impl From<[Tensor; 2]> for Computed {
    fn from(tensors: [Tensor; 2]) -> Computed {
        Computed { tensors: tensors.into(), capped: None }
    }
}

/// First index of the largest value, and the value.
fn argmax(values: &[f32]) -> (usize, f32) {
    values.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &v)| if v > best.1 { (i, v) } else { best })
}

fn softmax(values: &[f32]) -> Vec<f32> {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exp: Vec<f32> = values.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exp.iter().sum();
    exp.into_iter().map(|v| v / sum).collect()
}

#[cfg(test)]
mod tests {
    use tract_core::prelude::IntoTValue;

    use super::*;

    fn compute(post: &Postprocess, source: Tensor) -> [Tensor; 2] {
        let computed = post.compute(&[source.into_tvalue()], &Context::default()).unwrap();
        computed.tensors.try_into().unwrap()
    }

    fn strings(t: &Tensor) -> Vec<String> {
        elements::<String>(t).unwrap().to_vec()
    }

    #[test]
    fn classify_gives_top_k_labels_per_row() {
        let decl = PostprocessDecl::Classify(ClassifyDecl { output: "p".into(), softmax: false, top_k: 2 });
        let post = Postprocess::new(decl, vec![0], Some(vec!["a".into(), "b".into(), "c".into()]));
        let probs = Tensor::from_shape(&[2, 3, 1, 1], &[0.1f32, 0.7, 0.2, 0.5, 0.2, 0.3]).unwrap();
        let [labels, scores] = compute(&post, probs);
        assert_eq!(labels.shape(), &[2, 2]);
        assert_eq!(strings(&labels), ["b", "c", "a", "c"]);
        assert_eq!(elements::<f32>(&scores).unwrap(), &[0.7, 0.2, 0.5, 0.3]);
    }

    #[test]
    fn classify_softmax_and_index_labels() {
        let decl = PostprocessDecl::Classify(ClassifyDecl { output: "p".into(), softmax: true, top_k: 1 });
        let post = Postprocess::new(decl, vec![0], None);
        let logits = Tensor::from_shape(&[1, 2], &[0.0f32, 2.0f32.ln()]).unwrap();
        let [labels, scores] = compute(&post, logits);
        assert_eq!(strings(&labels), ["1"]);
        assert!((elements::<f32>(&scores).unwrap()[0] - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn ctc_collapses_repeats_drops_blanks_and_averages_confidence() {
        let decl = PostprocessDecl::Ctc(CtcDecl { output: "p".into(), dictionary: "d".into(), blank: 0, space: true });
        let post = Postprocess::new(decl, vec![0], Some(vec!["h".into(), "i".into()]));
        assert_eq!(post.expected_classes(), Some(4));
        // steps: h h blank h i space i  -> "hh i" ... classes: 0 blank, 1 h, 2 i, 3 space
        let steps = [1, 1, 0, 1, 2, 3, 2];
        let mut probs = vec![0.0f32; steps.len() * 4];
        for (t, &c) in steps.iter().enumerate() {
            probs[t * 4 + c] = 0.5 + t as f32 * 0.05;
        }
        let [text, confidence] = compute(&post, Tensor::from_shape(&[1, 7, 4], &probs).unwrap());
        assert_eq!(strings(&text), ["hhi i"]);
        let kept = [0.5f32, 0.65, 0.7, 0.75, 0.8];
        let mean = kept.iter().sum::<f32>() / 5.0;
        assert!((elements::<f32>(&confidence).unwrap()[0] - mean).abs() < 1e-6);
    }

    #[test]
    fn ctc_of_only_blanks_is_empty_with_zero_confidence() {
        let decl = PostprocessDecl::Ctc(CtcDecl { output: "p".into(), dictionary: "d".into(), blank: 0, space: false });
        let post = Postprocess::new(decl, vec![0], Some(vec!["x".into()]));
        let probs = Tensor::from_shape(&[1, 2, 2], &[0.9f32, 0.1, 0.8, 0.2]).unwrap();
        let [text, confidence] = compute(&post, probs);
        assert_eq!(strings(&text), [""]);
        assert_eq!(elements::<f32>(&confidence).unwrap(), &[0.0]);
    }
}
