//! `model.toml`: what the ONNX file alone does not say — concrete input shapes, the batch dimension,
//! a description for operators, and class labels.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::protocol::DataType;

/// The parsed `model.toml` of one model directory.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelManifest {
    /// Shown in metadata and `edgeinfer models`: what the model does, for the operator.
    #[serde(default)]
    pub description: Option<String>,
    /// A file next to `model.toml`, one label per line, in the order of the model's class outputs.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Input declarations. Inputs not listed keep what the ONNX file says.
    #[serde(default)]
    pub inputs: Vec<TensorDecl>,
    /// Output declarations, checked against the model at load time.
    #[serde(default)]
    pub outputs: Vec<TensorDecl>,
    /// How this model is served, where it differs from the daemon's `[requests]` settings.
    #[serde(default)]
    pub serving: ServingDecl,
}

/// Per-model serving settings (like Triton's instance count and queue policy); unset keys follow
/// the daemon's config.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServingDecl {
    /// Inference threads for this model (`requests.workers` otherwise).
    pub workers: Option<usize>,
    /// Requests that may wait for this model (`requests.queue_capacity` otherwise).
    pub queue_capacity: Option<usize>,
    /// Deadline for this model's requests that carry none (`requests.default_timeout_ms` otherwise).
    pub default_timeout_ms: Option<u64>,
    /// Dynamic batching: a worker runs queued requests together, up to this many rows in all.
    /// Unset or 1: off. Pays where one run of N rows costs much less than N runs (see bench/).
    pub max_batch_size: Option<usize>,
    /// How long a worker holding a partial batch waits for more requests (microseconds, default 0:
    /// it takes only what is already queued, so a lone request is never delayed).
    pub max_queue_delay_us: Option<u64>,
}

/// One tensor as declared in `model.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorDecl {
    pub name: String,
    pub datatype: DataType,
    /// Concrete dimensions; only the first may be `-1` (any batch size).
    pub shape: Vec<i64>,
}

/// `model.toml` could not be used; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {key}: {message}")]
    Invalid { path: PathBuf, key: String, message: String },
}

impl ModelManifest {
    /// Reads `model.toml` from a model directory; `Ok(None)` when the model has none.
    pub fn read(dir: &Path) -> Result<Option<ModelManifest>, ManifestError> {
        let path = dir.join("model.toml");
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(ManifestError::Read { path, source }),
        };
        let manifest: ModelManifest =
            toml::from_str(&text).map_err(|e| ManifestError::Parse { path: path.clone(), message: e.to_string() })?;
        manifest.validate(&path)?;
        Ok(Some(manifest))
    }

    fn validate(&self, path: &Path) -> Result<(), ManifestError> {
        let invalid = |key: String, message: String| ManifestError::Invalid { path: path.to_path_buf(), key, message };
        for (section, decls) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            for (i, decl) in decls.iter().enumerate() {
                let key = format!("{section}[{i}] ({})", decl.name);
                if decl.datatype == DataType::Bytes {
                    return Err(invalid(key, "BYTES tensors are not supported; use a numeric datatype".into()));
                }
                for (axis, &dim) in decl.shape.iter().enumerate() {
                    if dim < -1 || dim == 0 || (dim == -1 && axis != 0) {
                        return Err(invalid(
                            format!("{key}.shape[{axis}]"),
                            format!(
                                "{dim} is not allowed: dimensions are positive, and only the first may be -1 (batch)"
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
        if self.serving.queue_capacity == Some(0) {
            return Err(invalid("serving.queue_capacity".into(), "must be at least 1".into()));
        }
        if let Some(labels) = &self.labels {
            if labels.is_absolute() || labels.components().any(|c| matches!(c, std::path::Component::ParentDir)) {
                return Err(invalid(
                    "labels".into(),
                    format!("{} must be a file name inside the model directory", labels.display()),
                ));
            }
        }
        Ok(())
    }

    /// The labels file's lines, when the manifest names one.
    pub fn read_labels(&self, dir: &Path) -> Result<Option<Vec<String>>, ManifestError> {
        let Some(file) = &self.labels else {
            return Ok(None);
        };
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path).map_err(|source| ManifestError::Read { path, source })?;
        Ok(Some(text.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<ModelManifest>, ManifestError> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("model.toml"), text).unwrap();
        ModelManifest::read(dir.path())
    }

    #[test]
    fn a_full_manifest_parses() {
        let m = parse(
            r#"description = "d"
               labels = "labels.txt"
               [[inputs]]
               name = "x"
               datatype = "FP32"
               shape = [-1, 64]"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(m.inputs[0].shape, vec![-1, 64]);
        assert_eq!(m.inputs[0].datatype, DataType::Fp32);
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
                max_queue_delay_us: None
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
    fn mistakes_name_the_key() {
        let err = parse("[[inputs]]\nname = \"x\"\ndatatype = \"FP32\"\nshape = [1, -1]").unwrap_err();
        assert!(err.to_string().contains("inputs[0] (x).shape[1]"), "{err}");
        let err = parse("descripton = \"typo\"").unwrap_err();
        assert!(err.to_string().contains("descripton"), "{err}");
        let err = parse("labels = \"../../etc/passwd\"").unwrap_err();
        assert!(err.to_string().contains("labels"), "{err}");
    }

    #[test]
    fn no_manifest_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        assert!(ModelManifest::read(dir.path()).unwrap().is_none());
    }
}
