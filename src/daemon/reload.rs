//! `SIGHUP`: the model repository edited in place is served again, model by model, with the same
//! swap as a deployment (loaded and warmed up beside the version served, then swapped in; queued
//! requests finish on the old one). Only models whose files changed are reloaded; a model that
//! fails to load keeps its old version serving; a model whose directory is gone is unloaded.
//! Models serving a deployed version (`admin.state_dir`) are left alone: the repository is not
//! where they come from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::admin::store::{Source, Store};
use crate::admin::{Announce, Change};
use crate::model::{Model, ModelCache, ModelRepository};
use crate::mqtt::reply::ReplyTo;
use crate::report::Report;
use crate::scheduler::Scheduler;
use crate::stats::Stats;

/// What identifies a model directory's content cheaply: each file's name, size and mtime.
type Fingerprint = Vec<(String, u64, Option<SystemTime>)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    let mut files: Fingerprint = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            // `metadata` follows symlinks: a link into a model store changes when its target does.
            let meta = std::fs::metadata(entry.path()).ok().filter(|m| m.is_file())?;
            Some((entry.file_name().to_string_lossy().into_owned(), meta.len(), meta.modified().ok()))
        })
        .collect();
    files.sort();
    files
}

/// Reloads on request; holds what it saw last.
pub(super) struct Reloader {
    pub repository: PathBuf,
    pub cache: Option<ModelCache>,
    pub store: Option<Store>,
    pub scheduler: Scheduler<ReplyTo>,
    pub stats: Arc<Stats>,
    pub announce: Announce,
    /// Held while the served models change, by this and by the admin thread.
    pub changes: Arc<Mutex<()>>,
    pub seen: BTreeMap<String, Fingerprint>,
}

impl Reloader {
    /// Remembers what the models served from the repository look like now.
    pub fn remember(&mut self) {
        for name in self.repository_models().unwrap_or_default() {
            self.seen.insert(name.clone(), fingerprint(&self.repository.join(&name)));
        }
    }

    /// The repository's model directories now; an unreadable repository serves on as it was.
    fn repository_models(&self) -> Option<Vec<String>> {
        ModelRepository::model_names(&self.repository)
            .inspect_err(|e| tracing::error!(error = %Report(e), "SIGHUP: repository not reloaded"))
            .ok()
    }

    /// Whether `name` serves a version the repository does not hold, or was unloaded on purpose.
    fn managed_elsewhere(&self, name: &str) -> bool {
        self.store.as_ref().is_some_and(|s| s.is_unloaded(name) || matches!(s.active(name), Some(Source::Deployed(_))))
    }

    /// Serves the repository as it is now. Blocking (loads models).
    pub fn reload(&mut self) {
        let _changing = self.changes.lock().unwrap_or_else(|e| e.into_inner());
        let Some(names) = self.repository_models() else {
            return;
        };
        let (mut reloaded, mut failed) = (0, 0);
        for name in &names {
            if self.managed_elsewhere(name) {
                continue;
            }
            let now = fingerprint(&self.repository.join(name));
            if self.seen.get(name) == Some(&now) && self.scheduler.model(name).is_some() {
                continue;
            }
            match Model::load(name, &self.repository.join(name), self.cache.as_ref()) {
                Ok(model) => {
                    let model = Arc::new(model);
                    let replaced = self.scheduler.serve(model.clone());
                    self.stats.add_model(name);
                    (self.announce)(Change::Served);
                    tracing::info!(model = %name, replaced = replaced.is_some(), "reloaded from the repository");
                    reloaded += 1;
                }
                Err(e) => {
                    tracing::error!(model = %name, error = %Report(&e), "reload failed; the version served before goes on serving");
                    failed += 1;
                }
            }
            self.seen.insert(name.clone(), now);
        }
        for gone in self.seen.keys().filter(|n| !names.contains(n)).cloned().collect::<Vec<_>>() {
            self.seen.remove(&gone);
            if !self.managed_elsewhere(&gone) && self.scheduler.unload(&gone).is_some() {
                (self.announce)(Change::Unloaded(&gone));
                tracing::warn!(model = %gone, "its directory left the repository; unloaded");
            }
        }
        tracing::info!(reloaded, failed, unchanged = names.len() - reloaded - failed, "SIGHUP: repository reloaded");
    }
}
