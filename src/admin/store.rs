//! Deployed model versions on disk, under `admin.state_dir` (the model repository itself is never
//! written):
//!
//! ```text
//! models/<name>/<version>/   an unpacked package
//! models/<name>/active       the version served; absent: the repository's own version
//! models/<name>/previous     the version `rollback` returns to ("@repository": the repository's)
//! models/<name>/unloaded     present after `unload`: a restart does not serve the model
//! incoming/<sha256>.*        a package being received (see `incoming`)
//! staging/                   a package being unpacked and checked
//! ```
//!
//! `active` and `previous` are replaced by rename, so a crash leaves the old or the new, never
//! half of either. A model keeps at most two versions (the active one and the previous one);
//! older ones are deleted when a new one is activated.

use std::path::{Path, PathBuf};

use crate::package::{self, Manifest, PackageError, PublicKey};

/// Where a served model's files come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The model repository (`models.repository`), as installed with the board.
    Repository,
    /// A version deployed over MQTT.
    Deployed(String),
}

const REPOSITORY: &str = "@repository";

impl Source {
    fn from_file(text: &str) -> Option<Source> {
        match text.trim() {
            REPOSITORY => Some(Source::Repository),
            v if crate::model::repository::is_valid_model_name(v) => Some(Source::Deployed(v.to_string())),
            _ => None,
        }
    }

    fn to_file(&self) -> &str {
        match self {
            Source::Repository => REPOSITORY,
            Source::Deployed(v) => v,
        }
    }

    /// The deployed version, if it is one.
    pub fn deployed(&self) -> Option<&str> {
        match self {
            Source::Repository => None,
            Source::Deployed(v) => Some(v),
        }
    }

    /// How admin replies name it: the version, or `repository`.
    pub fn label(&self) -> &str {
        match self {
            Source::Repository => "repository",
            Source::Deployed(v) => v,
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Repository => f.write_str("the model repository's version"),
            Source::Deployed(v) => write!(f, "version {v}"),
        }
    }
}

/// A disk operation of the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{path}: {source} (check admin.state_dir and its permissions)")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("version {version} of {model} is held already with other files; give the new package a new version")]
    VersionClash { model: String, version: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// The versions directory tree.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) the tree under `root`, and clears what an interrupted unpacking left.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let store = Store { root: root.to_path_buf() };
        let staging = store.staging();
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
        }
        for dir in [store.root.join("models"), store.incoming(), staging] {
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        Ok(store)
    }

    pub fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }

    fn staging(&self) -> PathBuf {
        self.root.join("staging")
    }

    fn model_dir(&self, name: &str) -> PathBuf {
        self.root.join("models").join(name)
    }

    /// The directory of a deployed version.
    pub fn version_dir(&self, name: &str, version: &str) -> PathBuf {
        self.model_dir(name).join(version)
    }

    /// Checks the package file and unpacks it beside the versions held; returns its manifest.
    /// Nothing is served from it until it is activated.
    pub fn install(&self, package: &Path, trusted: &[PublicKey]) -> Result<Manifest, StoreError> {
        let staging = self.staging().join(format!("{}-{}", std::process::id(), unique()));
        std::fs::create_dir(&staging).map_err(io(&staging))?;
        let result = self.install_from(package, trusted, &staging);
        if staging.exists() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        result
    }

    fn install_from(&self, package: &Path, trusted: &[PublicKey], staging: &Path) -> Result<Manifest, StoreError> {
        let manifest = package::unpack(package, trusted, staging)?;
        std::fs::write(staging.join(package::MANIFEST), serde_json::to_vec_pretty(&manifest).expect("serialises"))
            .map_err(io(staging))?;
        let target = self.version_dir(&manifest.name, &manifest.version);
        if target.exists() {
            let held = std::fs::read(target.join(package::MANIFEST)).ok();
            if held.and_then(|h| serde_json::from_slice::<Manifest>(&h).ok()).as_ref() == Some(&manifest) {
                return Ok(manifest);
            }
            return Err(StoreError::VersionClash { model: manifest.name, version: manifest.version });
        }
        let parent = self.model_dir(&manifest.name);
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        std::fs::rename(staging, &target).map_err(io(&target))?;
        Ok(manifest)
    }

    /// The deployed versions of `name` held on disk, sorted.
    pub fn versions(&self, name: &str) -> Vec<String> {
        let mut versions: Vec<String> = std::fs::read_dir(self.model_dir(name))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        versions.sort();
        versions
    }

    fn read_pointer(&self, name: &str, which: &str) -> Option<Source> {
        Source::from_file(&std::fs::read_to_string(self.model_dir(name).join(which)).ok()?)
    }

    /// What a restart serves for `name` (`None`: the repository's, or nothing if it has none).
    pub fn active(&self, name: &str) -> Option<Source> {
        self.read_pointer(name, "active")
    }

    /// What `rollback` returns `name` to.
    pub fn previous(&self, name: &str) -> Option<Source> {
        self.read_pointer(name, "previous")
    }

    pub fn is_unloaded(&self, name: &str) -> bool {
        self.model_dir(name).join("unloaded").exists()
    }

    fn write_pointer(&self, name: &str, which: &str, source: &Source) -> Result<(), StoreError> {
        let dir = self.model_dir(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let temporary = dir.join(format!(".{which}.new"));
        std::fs::write(&temporary, source.to_file()).map_err(io(&temporary))?;
        std::fs::rename(&temporary, dir.join(which)).map_err(io(&dir))
    }

    /// Records that `name` now serves `now`, having served `before`; deletes the versions that
    /// are neither.
    pub fn activated(&self, name: &str, now: &Source, before: Option<&Source>) -> Result<(), StoreError> {
        if let Some(before) = before.filter(|b| *b != now) {
            self.write_pointer(name, "previous", before)?;
        }
        self.write_pointer(name, "active", now)?;
        let unloaded = self.model_dir(name).join("unloaded");
        if unloaded.exists() {
            std::fs::remove_file(&unloaded).map_err(io(&unloaded))?;
        }
        let keep = [Some(now.clone()), self.previous(name)];
        for version in self.versions(name) {
            if !keep.contains(&Some(Source::Deployed(version.clone()))) {
                let dir = self.version_dir(name, &version);
                tracing::info!(model = %name, %version, "deleting a version two activations old");
                std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            }
        }
        Ok(())
    }

    /// Records that `name` is not served until it is activated again.
    pub fn unloaded(&self, name: &str) -> Result<(), StoreError> {
        let dir = self.model_dir(name);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        std::fs::write(dir.join("unloaded"), b"").map_err(io(&dir))
    }

    /// Every model with a state here: deployed, switched or unloaded.
    pub fn models(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.root.join("models"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| crate::model::repository::is_valid_model_name(n))
            .collect();
        names.sort();
        names
    }
}

/// A name no other staging directory of this process has.
fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::package::SigningKey;

    #[test]
    fn activation_keeps_two_versions_and_rolls_back() {
        let (state, work) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let store = Store::open(state.path()).unwrap();
        let public = SigningKey::generate(&work.path().join("key")).unwrap();
        let key = SigningKey::read(&work.path().join("key")).unwrap();
        let model = work.path().join("m");
        std::fs::create_dir(&model).unwrap();
        let mut before = Some(Source::Repository);
        for version in ["1", "2", "3"] {
            std::fs::write(model.join("model.onnx"), version).unwrap();
            let package = work.path().join(format!("m-{version}.tar"));
            std::fs::write(&package, package::make(&model, "m", version, &key, &[]).unwrap()).unwrap();
            let manifest = store.install(&package, std::slice::from_ref(&public)).unwrap();
            assert_eq!(
                std::fs::read(store.version_dir("m", &manifest.version).join("model.onnx")).unwrap(),
                version.as_bytes()
            );
            let now = Source::Deployed(version.into());
            store.activated("m", &now, before.as_ref()).unwrap();
            before = Some(now);
        }
        assert_eq!(store.versions("m"), ["2", "3"]);
        assert_eq!(store.active("m"), Some(Source::Deployed("3".into())));
        assert_eq!(store.previous("m"), Some(Source::Deployed("2".into())));
        store.activated("m", &Source::Deployed("2".into()), Some(&Source::Deployed("3".into()))).unwrap();
        assert_eq!(store.previous("m"), Some(Source::Deployed("3".into())));
        assert_eq!(store.versions("m"), ["2", "3"], "a rollback deletes nothing");

        std::fs::write(model.join("model.onnx"), "other").unwrap();
        let package = work.path().join("clash.tar");
        std::fs::write(&package, package::make(&model, "m", "2", &key, &[]).unwrap()).unwrap();
        assert!(matches!(store.install(&package, &[public]), Err(StoreError::VersionClash { .. })));
        assert_eq!(std::fs::read_dir(state.path().join("staging")).unwrap().count(), 0, "staging is cleaned up");
    }
}
