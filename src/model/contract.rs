//! `model.toml` against the graph: the `[preprocess]`, `[postprocess]` and `[session]` sections
//! resolved to the graph's inputs and outputs, and `max_batch_size` checked against their shapes.
//! Every mismatch is a [`LoadError`] naming the key to fix.

use tract_core::prelude::Tensor;

use super::image::ImageTarget;
use super::manifest::{self, ModelManifest, PreprocessDecl};
use super::postprocess::Postprocess;
use super::session::SessionStore;
use super::TensorMetadata;
use super::{LoadError, Preprocess, Session};
use crate::protocol::DataType;

/// Where the tensor `name` is in `tensors`, or a message listing the names there are.
fn position_of(tensors: &[TensorMetadata], name: &str, kind: &str) -> Result<usize, String> {
    tensors.iter().position(|t| t.name == name).ok_or_else(|| {
        let names: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        format!("\"{name}\" is not an {kind} of the model, which has {names:?}")
    })
}

pub(super) fn resolve_preprocess(
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

pub(super) fn resolve_postprocess(
    model: &str,
    manifest: &ModelManifest,
    outputs: &[TensorMetadata],
    names: Option<Vec<String>>,
) -> Result<Option<Postprocess>, LoadError> {
    let Some(decl) = &manifest.postprocess else {
        return Ok(None);
    };
    let invalid = |message: String| LoadError::Processing { model: model.into(), key: "postprocess.output", message };
    let sources = decl
        .outputs()
        .iter()
        .map(|name| position_of(outputs, name, "output"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(invalid)?;
    let source = sources[0];
    let mut post = Postprocess::new(decl.clone(), sources.clone(), names);
    let shape = &outputs[source].shape;
    let classes = match decl {
        manifest::PostprocessDecl::Classify(_) => {
            shape.iter().skip(1).try_fold(1i64, |acc, &d| (d > 0).then_some(acc * d))
        }
        manifest::PostprocessDecl::Ctc(_) if shape.len() == 3 => shape.last().copied().filter(|&d| d > 0),
        manifest::PostprocessDecl::Ctc(_) => {
            return Err(invalid(format!(
                "a CTC output is [batch, steps, classes], \"{}\" is {shape:?}",
                decl.outputs()[0]
            )))
        }
        manifest::PostprocessDecl::Db(_) if shape.len() == 4 && matches!(shape[..2], [1 | -1, 1]) => None,
        manifest::PostprocessDecl::Db(_) => {
            return Err(invalid(format!(
                "a DB probability map is [1, 1, H, W], \"{}\" is {shape:?}",
                decl.outputs()[0]
            )))
        }
        manifest::PostprocessDecl::Scrfd(d) => {
            let last = |i: usize| outputs[sources[i]].shape.last().copied();
            let n = d.strides.len();
            let wrong = (0..n).find(|&i| last(i) != Some(1) || last(n + i) != Some(4));
            if let Some(i) = wrong {
                return Err(invalid(format!(
                    "SCRFD scores end in 1 and boxes in 4; \"{}\" is {:?}, \"{}\" is {:?}",
                    d.scores[i],
                    outputs[sources[i]].shape,
                    d.boxes[i],
                    outputs[sources[n + i]].shape
                )));
            }
            if !d.keypoints.is_empty() {
                let values = last(2 * n).filter(|&v| v > 0 && v % 2 == 0).ok_or_else(|| {
                    invalid(format!(
                        "SCRFD keypoints end in 2k (x, y per point); \"{}\" is {:?}",
                        d.keypoints[0],
                        outputs[sources[2 * n]].shape
                    ))
                })?;
                post.keypoints = values as usize / 2;
            }
            None
        }
        manifest::PostprocessDecl::Yolo(d) => {
            let fields = match d.version {
                manifest::YoloVersion::V8 => shape.get(1),
                manifest::YoloVersion::V5 => shape.get(2),
            };
            let least = if d.version == manifest::YoloVersion::V8 { 5 } else { 6 };
            if shape.len() != 3 || fields.is_none_or(|&f| f >= 0 && f < least) {
                return Err(invalid(format!(
                    "a YOLO {:?} head is [1, 4 + classes, candidates] (v8) or [1, candidates, 5 + classes] (v5), \"{}\" is {shape:?}",
                    d.version, d.output
                )));
            }
            let classes = fields.copied().filter(|&f| f > 0).map(|f| f - least + 1);
            if let (Some(classes), Some(names)) = (classes, post.names_len()) {
                if names != classes as usize {
                    return Err(invalid(format!(
                        "\"{}\" has {classes} classes, the labels file gives {names}; they must line up",
                        d.output
                    )));
                }
            }
            None
        }
    };
    if let (Some(expected), Some(classes)) = (post.expected_classes(), classes) {
        if expected as i64 != classes {
            let file = if matches!(decl, manifest::PostprocessDecl::Ctc(_)) { "dictionary" } else { "labels file" };
            return Err(invalid(format!(
                "\"{}\" has {classes} classes, the {file} gives {expected}; they must line up",
                decl.outputs()[0]
            )));
        }
    }
    Ok(Some(post))
}

pub(super) fn resolve_session(
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
            source: e.into(),
        })?;
        state.push((input, output, zero));
    }
    Ok(Some(Session { store: SessionStore::new(decl), state }))
}

pub(super) fn check_batchable(
    model: &str,
    inputs: &[TensorMetadata],
    outputs: &[TensorMetadata],
) -> Result<(), LoadError> {
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
