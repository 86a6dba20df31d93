//! The model repository: a directory with one sub-directory per model (`<name>/model.onnx`, optionally
//! `<name>/model.toml`). Names come from directory names and appear in MQTT topics, so they are
//! restricted to characters that are safe in a topic level and in a path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{LoadError, Model, ModelCache, ModelManifest};

/// Every model that loaded, by name.
#[derive(Default, Clone)]
pub struct ModelRepository {
    models: BTreeMap<String, Arc<Model>>,
}

/// The repository directory itself is unusable.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("model repository {dir}: {source} (set models.repository in the config or pass --models DIR)")]
    Unreadable { dir: PathBuf, source: std::io::Error },
    #[error("\"{0}\" is not a valid model name: use letters, digits, '_', '-' and '.', at most 64 characters")]
    InvalidName(String),
    #[error("no model \"{name}\" in {dir}")]
    NotFound { name: String, dir: PathBuf },
}

/// Loading a single model failed: the name, the repository or the model itself.
#[derive(Debug, thiserror::Error)]
pub enum LoadOneError {
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// Whether `name` can be a model name: safe as one MQTT topic level and as one path component.
pub fn is_valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl ModelRepository {
    /// Loads every model under `dir`, through `cache` when there is one. A model that fails is
    /// reported in the returned list and left out; the others still serve.
    pub fn load(dir: &Path, cache: Option<&ModelCache>) -> Result<(ModelRepository, Vec<LoadError>), RepositoryError> {
        let names = Self::model_names(dir)?;
        let mut repository = ModelRepository::default();
        let mut failures = Vec::new();
        // Pipelines after the models they are made of, which they share.
        let (pipelines, names): (Vec<String>, Vec<String>) = names.into_iter().partition(|name| {
            ModelManifest::read(&dir.join(name)).ok().flatten().is_some_and(|m| m.pipeline.is_some())
        });
        for name in names {
            let started = std::time::Instant::now();
            match Model::load(&name, &dir.join(&name), cache) {
                Ok(model) => {
                    tracing::info!(model = %name, ms = started.elapsed().as_millis() as u64, "model loaded");
                    repository.models.insert(name, Arc::new(model));
                }
                // A declared model whose file is not there yet (the pack models before
                // `models/fetch.py`, a board before its models are copied) is not a broken one.
                Err(LoadError::MissingOnnx { model, dir }) => tracing::warn!(
                    %model,
                    dir = %dir.display(),
                    "skipped: no model.onnx yet (for the models/ pack: python3 models/fetch.py)"
                ),
                Err(e) => failures.push(e),
            }
        }
        for name in pipelines {
            let manifest = match ModelManifest::read(&dir.join(&name)) {
                Ok(Some(manifest)) => manifest,
                Ok(None) => continue,
                Err(source) => {
                    failures.push(LoadError::Manifest { model: name, source });
                    continue;
                }
            };
            let step = |step: &str| {
                repository.models.get(step).cloned().ok_or_else(|| LoadError::Processing {
                    model: name.clone(),
                    key: "pipeline",
                    message: format!("its step \"{step}\" is not a model that loaded here"),
                })
            };
            match Model::pipeline(&name, &manifest, &step) {
                Ok(model) => {
                    tracing::info!(model = %name, "pipeline ready");
                    repository.models.insert(name, Arc::new(model));
                }
                Err(e) => failures.push(e),
            }
        }
        Ok((repository, failures))
    }

    /// The names of the model directories under `dir`, sorted: directories holding a model.onnx
    /// or a model.toml, with a valid model name (others are logged and skipped).
    pub fn model_names(dir: &Path) -> Result<Vec<String>, RepositoryError> {
        let unreadable = |source| RepositoryError::Unreadable { dir: dir.to_path_buf(), source };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            // `Path::is_dir` follows symlinks: a model directory may be a link into a model store.
            if !entry.path().is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            // Neither a model file nor a model.toml: a directory of something else (scripts,
            // examples in sub-directories, such as models/yolo_synthetic).
            if !entry.path().join("model.onnx").exists() && !entry.path().join("model.toml").exists() {
                tracing::debug!(directory = %entry.path().display(), "skipped: no model.onnx or model.toml");
                continue;
            }
            if is_valid_model_name(&name) {
                names.push(name);
            } else if !name.starts_with('.') {
                tracing::warn!(directory = %entry.path().display(), "skipped: not a valid model name");
            }
        }
        names.sort();
        Ok(names)
    }

    /// Loads the one model `name` from `dir` (through `cache` when there is one), for commands that
    /// need only that model.
    pub fn load_one(dir: &Path, name: &str, cache: Option<&ModelCache>) -> Result<Model, LoadOneError> {
        if !is_valid_model_name(name) {
            return Err(RepositoryError::InvalidName(name.to_string()).into());
        }
        let model_dir = dir.join(name);
        if !model_dir.is_dir() {
            return Err(RepositoryError::NotFound { name: name.to_string(), dir: dir.to_path_buf() }.into());
        }
        Ok(Model::load(name, &model_dir, cache)?)
    }

    /// Serves `model` in place of the one of the same name (a deployed version restored at start).
    pub(crate) fn insert(&mut self, model: Arc<Model>) {
        self.models.insert(model.name().to_string(), model);
    }

    pub(crate) fn remove(&mut self, name: &str) {
        self.models.remove(name);
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Model>> {
        self.models.get(name)
    }

    pub fn models(&self) -> impl Iterator<Item = &Arc<Model>> {
        self.models.values()
    }

    pub fn names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_topic_and_path_safe() {
        for ok in ["digits", "ppocr_rec", "resnet-50", "v1.2"] {
            assert!(is_valid_model_name(ok), "{ok}");
        }
        for bad in ["", "..", ".hidden", "a/b", "a+b", "a#", "x y", "é", &"x".repeat(65)] {
            assert!(!is_valid_model_name(bad), "{bad}");
        }
    }
}
