//! `[pipeline]`: a frame goes through a detector; each region it finds is cut out upright (a
//! perspective crop of its quadrilateral, as PaddleOCR's `get_rotate_crop_image`), turned the
//! right way up by an optional orientation classifier, and read by a recogniser. The steps are
//! other models of the repository, run here on the same inference thread: no round trip
//! through MQTT, and the frame is decoded once.

use std::sync::Arc;

use image::RgbImage;
use imageproc::geometric_transformations::{
    rotate180, rotate270, rotate90, warp_into, Border, Interpolation, Projection,
};
use tract_core::prelude::*;

use super::detect::Detection;
use super::image::Frame;
use super::manifest::{ModelManifest, PostprocessDecl};
use super::postprocess::{Computed, Context, Postprocess};
use super::{AnswerError, InputError, Model, TensorMetadata};
use super::{LoadError, ModelMetadata};
use crate::tensors::{elements, tensor_of};

/// The models after the detector.
pub(super) struct Pipeline {
    /// The pipeline's own name, for errors.
    pub name: String,
    /// A classifier whose labels are degrees ("0", "180"), and the score from which it is believed.
    pub orient: Option<(Arc<Model>, f32)>,
    pub read: Arc<Model>,
    /// Readings less sure than this are left out.
    pub read_score: f32,
}

impl Pipeline {
    /// The outputs a pipeline answers with: the detector's regions, then what the reader computed
    /// for each (one row per region).
    pub(super) fn outputs(&self, detector: &Postprocess) -> Vec<TensorMetadata> {
        let mut outputs = detector.outputs();
        outputs.extend(self.read.computed_outputs().iter().map(|t| {
            let mut t = t.clone();
            t.shape[0] = -1;
            t
        }));
        outputs
    }

    /// Finds the regions of one frame and reads each.
    pub(super) fn read(
        &self,
        detector: &Postprocess,
        outputs: &[TValue],
        context: &Context,
        frame: Option<Frame>,
    ) -> Result<Computed, AnswerError> {
        let failed = |e: TractError| AnswerError::Postprocess(e.into());
        let Some(frame) = frame else {
            return Err(InputError::ImageRequired { model: self.name.clone() }.into());
        };
        let mut found = detector.find(outputs, context).map_err(failed)?;
        let mut crops: Vec<RgbImage> = found.detections.iter().map(|d| upright_crop(&frame.rgb, d)).collect();
        drop(frame);
        if let Some((orient, min_score)) = &self.orient {
            let mut answered = orient.answer_images(&crops)?.into_iter();
            let (Some(labels), Some(scores)) = (answered.next(), answered.next()) else {
                unreachable!("a classifier answers labels and scores (checked at load)");
            };
            let labels = elements::<String>(&labels).map_err(failed)?;
            let scores = elements::<f32>(&scores).map_err(failed)?;
            // Each crop's row of top-k labels: the first is the most likely.
            let k = labels.len() / crops.len().max(1);
            for (i, crop) in crops.iter_mut().enumerate() {
                if scores[i * k] > *min_score {
                    turn(crop, &labels[i * k]);
                }
            }
        }
        let read = self.read.answer_images(&crops)?;
        // The reader's second output is its confidence (`ctc`) or its scores, best first (`classify`).
        let sure = elements::<f32>(&read[1]).map_err(failed)?;
        let per_row = sure.len() / crops.len().max(1);
        let keep: Vec<bool> = (0..crops.len()).map(|i| sure[i * per_row] >= self.read_score).collect();
        let mut kept = keep.iter();
        found.detections.retain(|_| *kept.next().expect("one per crop"));
        let mut tensors = found.tensors(&detector.answers()).map_err(failed)?;
        for tensor in read {
            tensors.push(rows(&tensor, &keep).map_err(failed)?);
        }
        Ok(Computed { tensors, capped: found.capped() })
    }
}

/// The rows of `tensor` marked in `keep`.
fn rows(tensor: &Tensor, keep: &[bool]) -> TractResult<Tensor> {
    if keep.iter().all(|&k| k) {
        return Ok(tensor.clone());
    }
    let parts: Vec<Tensor> = keep
        .iter()
        .enumerate()
        .filter(|(_, &k)| k)
        .map(|(i, _)| tensor.slice(0, i, i + 1))
        .collect::<TractResult<_>>()?;
    if !parts.is_empty() {
        return Tensor::stack_tensors(0, &parts);
    }
    // None kept: no rows, the same columns.
    let mut shape = tensor.shape().to_vec();
    shape[0] = 0;
    if tensor.datum_type() == String::datum_type() {
        tensor_of::<String>(&shape, Vec::new())
    } else {
        Tensor::zero_dt(tensor.datum_type(), &shape)
    }
}

/// The region cut out of the frame as an upright rectangle: its quadrilateral mapped onto a
/// rectangle as wide as its longer horizontal edge and as high as its longer vertical one
/// (bicubic, edges replicated), then turned a quarter left when it is much higher than wide
/// (vertical text), as PaddleOCR does.
fn upright_crop(frame: &RgbImage, detection: &Detection) -> RgbImage {
    let [x0, y0, x1, y1] = detection.bbox;
    let p = detection.polygon.unwrap_or([[x0, y0], [x1, y0], [x1, y1], [x0, y1]]);
    let side = |a: [f32; 2], b: [f32; 2]| (a[0] - b[0]).hypot(a[1] - b[1]);
    let width = side(p[0], p[1]).max(side(p[2], p[3])).max(1.0) as u32;
    let height = side(p[0], p[3]).max(side(p[1], p[2])).max(1.0) as u32;
    let (w, h) = (width as f32, height as f32);
    let corners = p.map(|[x, y]| (x, y));
    let mut crop = RgbImage::new(width, height);
    // No projection when three corners are in a line: nothing to read, and a blank crop reads as nothing.
    if let Some(projection) = Projection::from_control_points(corners, [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]) {
        warp_into(frame, projection, Interpolation::Bicubic, Border::Replicate, &mut crop);
    }
    if height as f32 / width as f32 >= 1.5 {
        crop = rotate270(&crop);
    }
    crop
}

/// Turns a crop by the degrees an orientation label names ("90" is a quarter clockwise).
fn turn(crop: &mut RgbImage, degrees: &str) {
    *crop = match degrees.trim() {
        "90" => rotate90(crop),
        "180" => rotate180(crop),
        "270" => rotate270(crop),
        _ => return,
    };
}

impl Model {
    /// Runs this model on decoded images (a pipeline's crops), as many per run as its plans take,
    /// and returns its computed outputs for all of them, stacked along the first axis.
    pub(super) fn answer_images(&self, images: &[RgbImage]) -> Result<Vec<Tensor>, AnswerError> {
        let (Some(super::Preprocess::Image { input, target }), Some(post)) = (&self.preprocess, &self.postprocess)
        else {
            unreachable!("a pipeline's steps take images and compute answers (checked at load)");
        };
        let failed = |e: TractError| AnswerError::Inference(e.into());
        let mut parts: Vec<Vec<Tensor>> = Vec::new();
        let per_run = if self.inputs[*input].shape[0] == -1 { self.max_batch_size().max(1) } else { 1 };
        for chunk in images.chunks(per_run) {
            let rows: Vec<Tensor> = chunk.iter().map(|image| target.tensor_of(image).0).collect();
            let mut inputs = self.zero_inputs(chunk.len()).map_err(failed)?;
            inputs[*input] = Tensor::stack_tensors(0, &rows).map_err(failed)?.into_tvalue();
            let outputs = self.run(inputs).map_err(failed)?;
            let computed =
                post.compute(&outputs, &Context::default()).map_err(|e| AnswerError::Postprocess(e.into()))?;
            parts.push(computed.tensors);
        }
        let count = post.outputs().len();
        (0..count)
            .map(|i| {
                if parts.is_empty() {
                    // No regions: each output has no rows.
                    let spec = &post.outputs()[i];
                    let mut shape: Vec<usize> = spec.shape.iter().map(|&d| d.max(0) as usize).collect();
                    shape[0] = 0;
                    return match spec.datatype.datum_type() {
                        Some(dt) => Tensor::zero_dt(dt, &shape),
                        None => tensor_of::<String>(&shape, Vec::new()),
                    };
                }
                let column: Vec<&Tensor> = parts.iter().map(|p| &p[i]).collect();
                Tensor::stack_tensors(0, &column)
            })
            .collect::<TractResult<Vec<Tensor>>>()
            .map_err(|e| AnswerError::Postprocess(e.into()))
    }

    /// The outputs `[postprocess]` adds, as in the metadata.
    fn computed_outputs(&self) -> &[TensorMetadata] {
        &self.metadata.outputs[self.raw_outputs..]
    }
}

impl Model {
    /// A `[pipeline]` model: `step` gives the models it names (loaded already). The pipeline
    /// runs the detector's own plans; its answers are the regions and what was read in each.
    pub fn pipeline(
        name: &str,
        manifest: &ModelManifest,
        step: &dyn Fn(&str) -> Result<Arc<Model>, LoadError>,
    ) -> Result<Model, LoadError> {
        let decl = manifest.pipeline.as_ref().expect("a [pipeline] manifest");
        let invalid = |key: &'static str, message: String| LoadError::Processing { model: name.into(), key, message };
        let takes_images = |model: &Model| matches!(model.preprocess, Some(super::Preprocess::Image { .. }));
        let detector = step(&decl.detect)?;
        let detecting = detector.postprocess.as_ref().filter(|p| p.decl.detects());
        let (Some(found), true, None) = (detecting, takes_images(&detector), &detector.pipeline) else {
            return Err(invalid(
                "pipeline.detect",
                format!("model \"{}\" must take images and detect ([postprocess] kind = \"db\")", decl.detect),
            ));
        };
        let orient = match &decl.orient {
            None => None,
            Some(orient) => {
                let model = step(orient)?;
                let classifies =
                    matches!(model.postprocess.as_ref().map(|p| &p.decl), Some(PostprocessDecl::Classify(_)));
                if !classifies || !takes_images(&model) || model.pipeline.is_some() {
                    return Err(invalid(
                        "pipeline.orient",
                        format!(
                            "model \"{orient}\" must take images and classify them by degrees (labels \"0\", \"180\")"
                        ),
                    ));
                }
                Some((model, decl.orient_score))
            }
        };
        let read = step(&decl.read)?;
        if read.postprocess.is_none() || !takes_images(&read) || read.pipeline.is_some() {
            return Err(invalid(
                "pipeline.read",
                format!(
                    "model \"{}\" must take images and compute an answer ([postprocess] ctc or classify)",
                    decl.read
                ),
            ));
        }
        let pipeline = Pipeline { name: name.to_string(), orient, read, read_score: decl.read_score };
        let mut outputs = detector.metadata.outputs[..detector.raw_outputs].to_vec();
        outputs.extend(pipeline.outputs(found));
        let mut serving = manifest.serving.clone();
        serving.max_batch_size = None;
        Ok(Model {
            metadata: ModelMetadata {
                name: name.to_string(),
                versions: vec![manifest.version.clone().unwrap_or_else(|| super::DEFAULT_VERSION.into())],
                platform: super::PLATFORM.to_string(),
                inputs: detector.metadata.inputs.clone(),
                outputs,
                description: manifest.description.clone(),
                labels: None,
                preprocess: detector.metadata.preprocess.clone(),
                postprocess: detector.metadata.postprocess.clone(),
                session: None,
            },
            inputs: detector.inputs.clone(),
            raw_outputs: detector.raw_outputs,
            serving,
            plans: detector.plans.clone(),
            preprocess: detector.preprocess.clone(),
            postprocess: detector.postprocess.clone(),
            session: None,
            pipeline: Some(pipeline),
        })
    }
}

#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;

    fn region(polygon: [[f32; 2]; 4]) -> Detection {
        Detection { bbox: [0.0; 4], polygon: Some(polygon), keypoints: Vec::new(), label: None, score: 1.0 }
    }

    #[test]
    fn a_region_is_cut_out_upright_at_its_own_size() {
        // A frame whose left half is black and right half white; the region spans both.
        let frame = RgbImage::from_fn(40, 20, |x, _| if x < 20 { Rgb([0, 0, 0]) } else { Rgb([255, 255, 255]) });
        let crop = upright_crop(&frame, &region([[10.0, 5.0], [30.0, 5.0], [30.0, 15.0], [10.0, 15.0]]));
        assert_eq!(crop.dimensions(), (20, 10));
        assert_eq!(crop.get_pixel(2, 5), &Rgb([0, 0, 0]));
        assert_eq!(crop.get_pixel(17, 5), &Rgb([255, 255, 255]));
        // Much higher than wide: vertical text, turned a quarter left (the left column becomes the bottom row).
        let tall = upright_crop(&frame, &region([[15.0, 0.0], [25.0, 0.0], [25.0, 20.0], [15.0, 20.0]]));
        assert_eq!(tall.dimensions(), (20, 10));
        assert_eq!(tall.get_pixel(10, 9), &Rgb([0, 0, 0]));
        assert_eq!(tall.get_pixel(10, 0), &Rgb([255, 255, 255]));
    }

    #[test]
    fn an_orientation_label_turns_the_crop_and_rows_keep_what_is_marked() {
        let mut crop = RgbImage::from_fn(2, 1, |x, _| Rgb([x as u8, 0, 0]));
        turn(&mut crop, "180");
        assert_eq!(crop.get_pixel(0, 0), &Rgb([1, 0, 0]));
        turn(&mut crop, "0");
        assert_eq!(crop.get_pixel(0, 0), &Rgb([1, 0, 0]));
        let t = Tensor::from_shape(&[3, 2], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let kept = rows(&t, &[true, false, true]).unwrap();
        assert_eq!(kept.shape(), &[2, 2]);
        assert_eq!(elements::<f32>(&kept).unwrap(), &[1.0, 2.0, 5.0, 6.0]);
        assert_eq!(rows(&t, &[false, false, false]).unwrap().shape(), &[0, 2]);
        let texts = tensor_of(&[2], vec!["a".to_string(), "b".to_string()]).unwrap();
        assert_eq!(elements::<String>(&rows(&texts, &[false, true]).unwrap()).unwrap(), ["b"]);
        assert_eq!(rows(&texts, &[false, false]).unwrap().shape(), &[0]);
    }
}
