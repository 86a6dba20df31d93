//! Post-processing: the answers a client wants, computed from one raw output as declared by
//! `[postprocess]` — top-k labels with scores, or the text a CTC recogniser read.

use tract_core::internal::bail;
use tract_core::prelude::{tvec, Tensor, TractResult};

use super::manifest::{ClassifyDecl, CtcDecl, PostprocessDecl};
use super::TensorMetadata;
use crate::protocol::DataType;
use crate::tensors::{elements, tensor_of};

/// A declared post-processing, with what it needs from the model directory.
#[derive(Debug, Clone)]
pub struct Postprocess {
    pub decl: PostprocessDecl,
    /// Index of the raw output it reads.
    pub source: usize,
    /// Class names (classify) or characters by class (CTC, blank excluded).
    names: Vec<String>,
}

impl Postprocess {
    /// `names`: the labels file for a classifier (class indices when there is none); the
    /// dictionary for CTC, plus the space character when the model has one.
    pub fn new(decl: PostprocessDecl, source: usize, names: Option<Vec<String>>) -> Postprocess {
        let mut names = names.unwrap_or_default();
        if let PostprocessDecl::Ctc(CtcDecl { space: true, .. }) = decl {
            names.push(" ".into());
        }
        Postprocess { decl, source, names }
    }

    /// The classes the source output must have for the names to line up; `None` when any number
    /// will do (a classifier without labels).
    pub fn expected_classes(&self) -> Option<usize> {
        match self.decl {
            PostprocessDecl::Classify(_) if self.names.is_empty() => None,
            PostprocessDecl::Classify(_) => Some(self.names.len()),
            PostprocessDecl::Ctc(_) => Some(self.names.len() + 1),
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
        }
    }

    /// Computes the added outputs from the raw source output (of one request).
    pub fn compute(&self, source: &Tensor) -> TractResult<[Tensor; 2]> {
        match &self.decl {
            PostprocessDecl::Classify(d) => self.classify(d, source),
            PostprocessDecl::Ctc(d) => self.ctc(d, source),
        }
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
    use super::*;

    fn strings(t: &Tensor) -> Vec<String> {
        elements::<String>(t).unwrap().to_vec()
    }

    #[test]
    fn classify_gives_top_k_labels_per_row() {
        let decl = PostprocessDecl::Classify(ClassifyDecl { output: "p".into(), softmax: false, top_k: 2 });
        let post = Postprocess::new(decl, 0, Some(vec!["a".into(), "b".into(), "c".into()]));
        let probs = Tensor::from_shape(&[2, 3, 1, 1], &[0.1f32, 0.7, 0.2, 0.5, 0.2, 0.3]).unwrap();
        let [labels, scores] = post.compute(&probs).unwrap();
        assert_eq!(labels.shape(), &[2, 2]);
        assert_eq!(strings(&labels), ["b", "c", "a", "c"]);
        assert_eq!(elements::<f32>(&scores).unwrap(), &[0.7, 0.2, 0.5, 0.3]);
    }

    #[test]
    fn classify_softmax_and_index_labels() {
        let decl = PostprocessDecl::Classify(ClassifyDecl { output: "p".into(), softmax: true, top_k: 1 });
        let post = Postprocess::new(decl, 0, None);
        let logits = Tensor::from_shape(&[1, 2], &[0.0f32, 2.0f32.ln()]).unwrap();
        let [labels, scores] = post.compute(&logits).unwrap();
        assert_eq!(strings(&labels), ["1"]);
        assert!((elements::<f32>(&scores).unwrap()[0] - 2.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn ctc_collapses_repeats_drops_blanks_and_averages_confidence() {
        let decl = PostprocessDecl::Ctc(CtcDecl { output: "p".into(), dictionary: "d".into(), blank: 0, space: true });
        let post = Postprocess::new(decl, 0, Some(vec!["h".into(), "i".into()]));
        assert_eq!(post.expected_classes(), Some(4));
        // steps: h h blank h i space i  -> "hh i" ... classes: 0 blank, 1 h, 2 i, 3 space
        let steps = [1, 1, 0, 1, 2, 3, 2];
        let mut probs = vec![0.0f32; steps.len() * 4];
        for (t, &c) in steps.iter().enumerate() {
            probs[t * 4 + c] = 0.5 + t as f32 * 0.05;
        }
        let [text, confidence] = post.compute(&Tensor::from_shape(&[1, 7, 4], &probs).unwrap()).unwrap();
        assert_eq!(strings(&text), ["hhi i"]);
        let kept = [0.5f32, 0.65, 0.7, 0.75, 0.8];
        let mean = kept.iter().sum::<f32>() / 5.0;
        assert!((elements::<f32>(&confidence).unwrap()[0] - mean).abs() < 1e-6);
    }

    #[test]
    fn ctc_of_only_blanks_is_empty_with_zero_confidence() {
        let decl = PostprocessDecl::Ctc(CtcDecl { output: "p".into(), dictionary: "d".into(), blank: 0, space: false });
        let post = Postprocess::new(decl, 0, Some(vec!["x".into()]));
        let probs = Tensor::from_shape(&[1, 2, 2], &[0.9f32, 0.1, 0.8, 0.2]).unwrap();
        let [text, confidence] = post.compute(&probs).unwrap();
        assert_eq!(strings(&text), [""]);
        assert_eq!(elements::<f32>(&confidence).unwrap(), &[0.0]);
    }
}
