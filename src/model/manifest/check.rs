//! Checking a parsed `model.toml` beyond its syntax: shapes, ranges, files inside the model
//! directory, and the combinations of sections that cannot work together. Each refusal names the
//! key to fix.

use std::path::{Component, Path};

use super::{ManifestError, ModelManifest, PostprocessDecl, PreprocessDecl, ResizeMode};
use crate::model::detect::MAX_DETECTIONS;
use crate::protocol::DataType;

impl ModelManifest {
    pub(super) fn validate(&self, path: &Path) -> Result<(), ManifestError> {
        let invalid = |key: String, message: String| ManifestError::Invalid { path: path.to_path_buf(), key, message };
        if let Some(version) = &self.version {
            if !crate::model::repository::is_valid_model_name(version) {
                let message = "use letters, digits, '_', '-' and '.', at most 64 characters".to_string();
                return Err(invalid("version".into(), message));
            }
        }
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
                // A detector's image input takes frames of any size: its height and width are -1 too.
                let any_size = section == "inputs" && self.any_size_image() == Some(decl.name.as_str());
                for (axis, &dim) in decl.shape.iter().enumerate() {
                    if dim < -1 || dim == 0 || (dim == -1 && axis != 0 && !any_size) {
                        return Err(invalid(
                            format!("{key}.shape[{axis}]"),
                            format!(
                                "{dim} is not allowed: dimensions are positive, and only the first may be -1 (batch), \
                                 except an image input's height and width with resize = \"limit_side\""
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
        if self.serving.plans_by_size.is_some_and(|n| n == 0 || n > 64) {
            return Err(invalid("serving.plans_by_size".into(), "must be between 1 and 64".into()));
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
        self.validate_processing(&invalid, &inside)?;
        self.validate_pipeline(&invalid)
    }

    /// The image input that `resize = "limit_side"` fills: one whose size follows the frame.
    fn any_size_image(&self) -> Option<&str> {
        match &self.preprocess {
            Some(PreprocessDecl::Image(d)) if d.resize == ResizeMode::LimitSide => Some(&d.input),
            _ => None,
        }
    }

    /// A pipeline is made of other models: it has nothing of a model of its own but its serving.
    fn validate_pipeline(&self, invalid: &dyn Fn(String, String) -> ManifestError) -> Result<(), ManifestError> {
        let Some(pipeline) = &self.pipeline else {
            return Ok(());
        };
        let own = [
            ("inputs", !self.inputs.is_empty()),
            ("outputs", !self.outputs.is_empty()),
            ("labels", self.labels.is_some()),
            ("preprocess", self.preprocess.is_some()),
            ("postprocess", self.postprocess.is_some()),
            ("session", self.session.is_some()),
            ("serving.max_batch_size", self.serving.max_batch_size.is_some_and(|b| b > 1)),
        ];
        if let Some((key, _)) = own.iter().find(|(_, set)| *set) {
            return Err(invalid(
                (*key).into(),
                "a [pipeline] takes these from its steps' models; set them in those models' model.toml".into(),
            ));
        }
        let steps = [Some(&pipeline.detect), pipeline.orient.as_ref(), Some(&pipeline.read)];
        for (key, step) in ["pipeline.detect", "pipeline.orient", "pipeline.read"].iter().zip(steps) {
            if step.is_some_and(|name| !crate::model::repository::is_valid_model_name(name)) {
                return Err(invalid((*key).into(), "must name a model of the repository".into()));
            }
        }
        for (key, value) in
            [("pipeline.orient_score", pipeline.orient_score), ("pipeline.read_score", pipeline.read_score)]
        {
            if !(0.0..=1.0).contains(&value) {
                return Err(invalid(key.into(), "must be between 0 and 1".into()));
            }
        }
        Ok(())
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
                if !(32..=8192).contains(&d.limit_side_len) {
                    return Err(invalid("preprocess.limit_side_len".into(), "must be between 32 and 8192".into()));
                }
                if !(1..=256).contains(&d.size_multiple) {
                    return Err(invalid("preprocess.size_multiple".into(), "must be between 1 and 256".into()));
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
            Some(PostprocessDecl::Db(d)) => {
                thresholds(invalid, &[("thresh", d.thresh), ("score", d.score)], d.max_detections)?;
                if !(0.0..=10.0).contains(&d.unclip_ratio) {
                    return Err(invalid("postprocess.unclip_ratio".into(), "must be between 0 and 10".into()));
                }
            }
            Some(PostprocessDecl::Scrfd(d)) => {
                thresholds(invalid, &[("score", d.score), ("nms_iou", d.nms_iou)], d.max_detections)?;
                let n = d.strides.len();
                if n == 0
                    || d.scores.len() != n
                    || d.boxes.len() != n
                    || !(d.keypoints.is_empty() || d.keypoints.len() == n)
                {
                    return Err(invalid(
                        "postprocess.strides".into(),
                        "name one scores and one boxes output (and one keypoints output, or none) per stride".into(),
                    ));
                }
                if d.strides.iter().any(|&s| s == 0 || s > 1024) || d.anchors == 0 || d.anchors > 64 {
                    return Err(invalid(
                        "postprocess.strides".into(),
                        "strides are 1 to 1024 pixels, anchors 1 to 64 per cell".into(),
                    ));
                }
            }
            Some(PostprocessDecl::Yolo(d)) => {
                thresholds(invalid, &[("score", d.score), ("nms_iou", d.nms_iou)], d.max_detections)?;
            }
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
}

/// A detector's thresholds are fractions and its cap within [`MAX_DETECTIONS`].
fn thresholds(
    invalid: &dyn Fn(String, String) -> ManifestError,
    fractions: &[(&str, f32)],
    max_detections: usize,
) -> Result<(), ManifestError> {
    for (key, value) in fractions {
        if !(0.0..=1.0).contains(value) {
            return Err(invalid(format!("postprocess.{key}"), "must be between 0 and 1".into()));
        }
    }
    if !(1..=MAX_DETECTIONS).contains(&max_detections) {
        return Err(invalid("postprocess.max_detections".into(), format!("must be between 1 and {MAX_DETECTIONS}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::ServingDecl;
    use super::*;

    fn parse(text: &str) -> Result<Option<ModelManifest>, ManifestError> {
        ModelManifest::parse(text, Path::new("model.toml")).map(Some)
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
                max_queue_delay_us: None,
                plans_by_size: None,
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
}
