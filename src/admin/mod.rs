//! Operating a board over MQTT (README: "Operating a fleet"): what it serves, deployments of
//! signed model packages, version switches, health checks.
//!
//! ```text
//! <base>/<device>/admin/<op>   this board          -> the request's Response Topic, with its Correlation Data:
//! <base>/fleet/admin/<op>      every board            {"status":"ok"|"error","device","op","data"|"error"}
//! ```
//!
//! Operations run one at a time, on a thread of their own: loading a new version takes seconds,
//! and requests go on being answered by the old one meanwhile. A new version is loaded, warmed up
//! and checked (its package's `golden.json`) beside the old one and only then takes its place in
//! the scheduler; jobs queued for the old one are computed by it. A version that fails to load or
//! to pass its checks is never served, and the reply says why.

pub mod golden;
mod incoming;
pub mod store;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::model::{Model, ModelCache, ModelManifest, ModelRepository};
use crate::mqtt::publisher::{Command, Outgoing};
use crate::mqtt::reply::{Outbox, ReplyTo};
use crate::mqtt::topics::{ReplyRules, Topics};
use crate::package::{self, PublicKey};
use crate::report::Report;
use crate::scheduler::Scheduler;
use crate::stats::Stats;
use crate::untrusted::Untrusted;
use incoming::{Offer, Transfer};
use store::{Source, Store};

/// Admin messages waiting for the admin thread; beyond this they are answered `busy`.
pub(crate) const QUEUE: usize = 64;

/// An admin message as it came in.
pub(crate) struct AdminRequest {
    pub op: String,
    pub publish: Publish,
}

/// Why an operation failed: the reply's `error`.
#[derive(Debug, thiserror::Error)]
enum OpError {
    #[error("unknown operation \"{0}\"; this board knows models, deploy, chunk, activate, rollback, unload, health")]
    UnknownOp(String),
    #[error("the request is not valid JSON for {op}: {message}")]
    BadRequest { op: &'static str, message: String },
    #[error("no model \"{0}\" is served here")]
    NotServed(String),
    #[error("model \"{model}\" has no {what} here (versions held: {held:?})")]
    NoSuchVersion { model: String, what: String, held: Vec<String> },
    #[error(transparent)]
    Transfer(#[from] incoming::TransferError),
    #[error("the package was refused: {0}")]
    Package(#[source] store::StoreError),
    #[error("{version} was not activated: {message}; the version served before goes on serving")]
    Refused { version: Source, message: String },
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

/// What changed in the served models, for [`Announce`].
pub(crate) enum Change<'a> {
    /// A model (a new one, or a new version) is served now.
    Served,
    /// The model of this name is no longer served.
    Unloaded(&'a str),
}

/// Republishes the board's retained messages (status, every model's metadata) after a change.
pub(crate) type Announce = Arc<dyn Fn(Change<'_>) + Send + Sync>;

/// What the admin thread needs.
pub(crate) struct Admin {
    pub topics: Topics,
    pub reply_rules: ReplyRules,
    pub outbox: Arc<Outbox>,
    pub scheduler: Scheduler<ReplyTo>,
    pub stats: Arc<Stats>,
    pub store: Store,
    pub trusted: Vec<PublicKey>,
    pub max_package_bytes: u64,
    /// `models.repository`: where `Source::Repository` loads from.
    pub repository: PathBuf,
    pub cache: Option<ModelCache>,
    pub announce: Announce,
    /// Held while an operation runs: SIGHUP reloads wait for it, and it for them.
    pub changes: Arc<std::sync::Mutex<()>>,
}

impl Admin {
    /// Handles admin messages until the channel closes. Blocking: run it on its own thread.
    pub fn run(mut self, mut requests: tokio::sync::mpsc::Receiver<AdminRequest>) {
        let mut transfer = None;
        while let Some(AdminRequest { op, publish }) = requests.blocking_recv() {
            let span = tracing::info_span!("admin", op = %Untrusted(&op));
            let _entered = span.enter();
            let started = Instant::now();
            let changes = self.changes.clone();
            let changing = changes.lock().unwrap_or_else(|e| e.into_inner());
            let outcome = self.handle(&op, &publish, &mut transfer);
            drop(changing);
            match &outcome {
                Ok(_) if op == "chunk" => tracing::debug!(ms = started.elapsed().as_millis() as u64, "done"),
                Ok(_) => tracing::info!(ms = started.elapsed().as_millis() as u64, "done"),
                Err(e) => tracing::warn!(error = %Untrusted(&Report(e).to_string()), "refused"),
            }
            self.reply(&op, &publish, outcome);
        }
    }

    fn handle(&mut self, op: &str, publish: &Publish, transfer: &mut Option<Transfer>) -> Result<Value, OpError> {
        if let Some(name) = named_model(&publish.payload).filter(|n| !crate::model::repository::is_valid_model_name(n))
        {
            return Err(OpError::NotServed(Untrusted(&name).to_string()));
        }
        match op {
            "models" => Ok(self.models()),
            "deploy" => self.deploy(parse("deploy", &publish.payload)?, transfer),
            "chunk" => self.chunk(publish, transfer),
            "activate" => {
                let request: ActivateRequest = parse("activate", &publish.payload)?;
                let source = match (request.version, request.repository) {
                    (Some(version), false) if !crate::model::repository::is_valid_model_name(&version) => {
                        let message = format!("\"{}\" is not a version name", Untrusted(&version));
                        return Err(OpError::BadRequest { op: "activate", message });
                    }
                    (Some(version), false) => Source::Deployed(version),
                    (None, true) => Source::Repository,
                    _ => {
                        let message = "give \"version\" (one held here) or \"repository\": true".into();
                        return Err(OpError::BadRequest { op: "activate", message });
                    }
                };
                self.activate(&request.model, source)
            }
            "rollback" => {
                let request: ModelRequest = parse("rollback", &publish.payload)?;
                let previous = self.store.previous(&request.model).ok_or_else(|| OpError::NoSuchVersion {
                    model: request.model.clone(),
                    what: "previous version to roll back to".into(),
                    held: self.store.versions(&request.model),
                })?;
                self.activate(&request.model, previous)
            }
            "unload" => {
                let request: ModelRequest = parse("unload", &publish.payload)?;
                let model = self.scheduler.unload(&request.model).ok_or(OpError::NotServed(request.model.clone()))?;
                self.store.unloaded(&request.model)?;
                (self.announce)(Change::Unloaded(&request.model));
                tracing::info!(model = %request.model, version = %model.version(), "unloaded");
                Ok(json!({"model": request.model, "unloaded": model.version()}))
            }
            "health" => self.health(),
            other => Err(OpError::UnknownOp(Untrusted(other).to_string())),
        }
    }

    /// What is served and held: each model's version, where it comes from, the versions on disk.
    fn models(&self) -> Value {
        let mut names: Vec<String> = self.scheduler.names();
        names.extend(self.store.models());
        names.sort();
        names.dedup();
        let models: Vec<Value> = names
            .iter()
            .map(|name| {
                let served = self.scheduler.model(name);
                let source = self.store.active(name).unwrap_or(Source::Repository);
                let dir = self.dir_of(name, &source);
                json!({
                    "name": name,
                    "served": served.is_some(),
                    "version": served.as_ref().map(|m| m.version()),
                    "source": match source { Source::Repository => "repository", Source::Deployed(_) => "deployed" },
                    "sha256": served.as_ref().and_then(|_| package::file_sha256(&dir.join("model.onnx")).ok()),
                    "held": self.store.versions(name),
                    "previous": self.store.previous(name).map(|p| p.label().to_string()),
                })
            })
            .collect();
        Value::from(models)
    }

    /// A package offer: the chunks still missing, or, once all are in, the package installed
    /// (and activated unless the offer says not to).
    fn deploy(&mut self, request: DeployRequest, transfer: &mut Option<Transfer>) -> Result<Value, OpError> {
        let offer = Offer { sha256: request.sha256, size: request.size, chunk_bytes: request.chunk_bytes };
        if transfer.as_ref().is_none_or(|t| *t.offer() != offer) {
            *transfer = Some(Transfer::begin(&self.store.incoming(), offer, self.max_package_bytes)?);
        }
        let receiving = transfer.take().expect("set above");
        let path = match receiving.complete() {
            Ok(Some(path)) => path.to_path_buf(),
            Ok(None) => {
                let missing = receiving.missing();
                *transfer = Some(receiving);
                return Ok(json!({"state": "receiving", "missing": missing}));
            }
            Err(e) => return Err(e.into()),
        };
        let installed = self.store.install(&path, &self.trusted);
        receiving.discard();
        let manifest = installed.map_err(OpError::Package)?;
        tracing::info!(model = %manifest.name, version = %manifest.version, "package installed");
        if !request.activate {
            return Ok(json!({"state": "installed", "model": manifest.name, "version": manifest.version}));
        }
        let mut activated = self.activate(&manifest.name, Source::Deployed(manifest.version.clone()))?;
        activated["state"] = "activated".into();
        Ok(activated)
    }

    fn chunk(&mut self, publish: &Publish, transfer: &mut Option<Transfer>) -> Result<Value, OpError> {
        let property = |key: &str| {
            let props = publish.properties.as_ref();
            props.and_then(|p| p.user_properties.iter().find(|(k, _)| k == key)).map(|(_, v)| v.as_str())
        };
        let bad = |message: &str| OpError::BadRequest { op: "chunk", message: message.into() };
        let sha256 = property("sha256").ok_or_else(|| bad("the chunk has no sha256 user property"))?;
        let index: u64 =
            property("index").and_then(|i| i.parse().ok()).ok_or_else(|| bad("no numeric index user property"))?;
        let receiving = transfer
            .as_mut()
            .filter(|t| t.offer().sha256 == sha256)
            .ok_or_else(|| incoming::TransferError::NotOffered(Untrusted(sha256).to_string()))?;
        let missing = receiving.chunk(index, &publish.payload)?;
        Ok(json!({"index": index, "missing": missing}))
    }

    /// Loads `source` of `name` beside what is served, checks it, and serves it. Whatever fails,
    /// the version served before goes on serving.
    fn activate(&mut self, name: &str, source: Source) -> Result<Value, OpError> {
        let refused = |message: String| OpError::Refused { version: source.clone(), message };
        let dir = self.dir_of(name, &source);
        if matches!(source, Source::Deployed(_)) && !dir.is_dir() {
            let held = self.store.versions(name);
            return Err(OpError::NoSuchVersion { model: name.into(), what: source.to_string(), held });
        }
        let started = Instant::now();
        let model = load(name, &dir, source.deployed(), self.cache.as_ref()).map_err(&refused)?;
        let load_ms = started.elapsed().as_millis() as u64;
        let checks = match std::fs::read(dir.join(package::GOLDEN)) {
            Ok(goldens) => golden::check(&model, &goldens).map_err(|e| refused(format!("its checks failed: {e}")))?,
            Err(_) => 0,
        };
        let before = self.scheduler.model(name).map(|_| self.store.active(name).unwrap_or(Source::Repository));
        let model = Arc::new(model);
        let replaced = self.scheduler.serve(model.clone());
        self.stats.add_model(name);
        self.store.activated(name, &source, before.as_ref())?;
        (self.announce)(Change::Served);
        tracing::info!(
            model = %name,
            version = %model.version(),
            replaced = ?replaced.as_ref().map(|m| m.version().to_string()),
            load_ms,
            checks,
            "activated"
        );
        Ok(json!({
            "model": name,
            "version": model.version(),
            "replaced": replaced.as_ref().map(|m| m.version()),
            "load_ms": load_ms,
            "checks": checks,
        }))
    }

    /// Where `source` of model `name` loads from.
    fn dir_of(&self, name: &str, source: &Source) -> PathBuf {
        match source {
            Source::Repository => self.repository.join(name),
            Source::Deployed(version) => self.store.version_dir(name, version),
        }
    }

    /// Runs every served model once on its warm-up input (and a deployed version's checks).
    fn health(&self) -> Result<Value, OpError> {
        let mut report = serde_json::Map::new();
        let mut healthy = true;
        for model in self.scheduler.models() {
            let started = Instant::now();
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.warm_up()));
            let mut entry = json!({"version": model.version()});
            let error = match run {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(panic) => Some(crate::panics::panic_message(panic.as_ref())),
            };
            let error = error.or_else(|| {
                let source @ Source::Deployed(_) = self.store.active(model.name())? else {
                    return None;
                };
                let goldens = std::fs::read(self.dir_of(model.name(), &source).join(package::GOLDEN)).ok()?;
                golden::check(&model, &goldens).err().map(|e| e.to_string())
            });
            entry["ms"] = json!(started.elapsed().as_secs_f64() * 1e3);
            entry["ok"] = json!(error.is_none());
            if let Some(error) = error {
                healthy = false;
                entry["error"] = json!(error);
            }
            report.insert(model.name().to_string(), entry);
        }
        Ok(json!({"healthy": healthy, "models": report}))
    }

    /// Publishes the outcome on the Response Topic (or the board's admin response topic).
    fn reply(&self, op: &str, publish: &Publish, outcome: Result<Value, OpError>) {
        let outcome = outcome.map_err(|e| Report(&e).to_string());
        if let Some(command) = reply(&self.topics, &self.reply_rules, op, publish, outcome) {
            self.outbox.send_blocking(command);
        }
    }
}

/// The reply to an admin message that the admin thread will not take: too many are waiting.
pub(crate) fn busy(topics: &Topics, rules: &ReplyRules, op: &str, publish: &Publish) -> Option<Command> {
    let error = format!("{QUEUE} admin operations are waiting already; retry later");
    reply(topics, rules, op, publish, Err(error))
}

/// An admin reply, to the Response Topic if the rules allow it (else to the board's admin
/// response topic when the request named none): `None` when there is nowhere to send it.
fn reply(
    topics: &Topics,
    rules: &ReplyRules,
    op: &str,
    publish: &Publish,
    outcome: Result<Value, String>,
) -> Option<Command> {
    let props = publish.properties.clone().unwrap_or_default();
    let mut body = json!({"device": topics.device(), "op": Untrusted(op).to_string()});
    match outcome {
        Ok(data) => {
            let healthy = data.get("healthy").and_then(Value::as_bool).unwrap_or(true);
            body["status"] = json!(if healthy { "ok" } else { "error" });
            if !healthy {
                body["error"] = json!("a model failed its health check");
            }
            body["data"] = data;
        }
        Err(error) => {
            body["status"] = json!("error");
            body["error"] = json!(error);
        }
    }
    let topic = match props.response_topic {
        Some(topic) => match rules.check(&topic) {
            Ok(()) => topic,
            Err(e) => {
                tracing::warn!(topic = %Untrusted(&topic), error = %e, "admin reply not sent: its Response Topic is refused");
                return None;
            }
        },
        None if crate::model::repository::is_valid_model_name(op) => topics.admin_response(op),
        None => return None,
    };
    Some(Command::Publish(Outgoing {
        topic,
        payload: serde_json::to_vec(&body).expect("JSON serialises"),
        header_len: None,
        correlation: props.correlation_data.map(|c| Bytes::copy_from_slice(&c)),
        qos: QoS::AtLeastOnce,
        retain: false,
        held: None,
        ack: None,
    }))
}

/// Replaces, in the repository loaded at start, each model whose state directory says it serves
/// a deployed version (or is unloaded), so that a restart serves what was last activated. A
/// version that no longer loads is logged and the repository's own is served.
pub(crate) fn restore(
    repository: &mut ModelRepository,
    store: &Store,
    models_dir: &std::path::Path,
    cache: Option<&ModelCache>,
) {
    for name in store.models() {
        if store.is_unloaded(&name) {
            tracing::info!(model = %name, "not served: unloaded by an admin operation");
            repository.remove(&name);
            continue;
        }
        let Some(Source::Deployed(version)) = store.active(&name) else {
            continue;
        };
        match load(&name, &store.version_dir(&name, &version), Some(&version), cache) {
            Ok(model) => {
                tracing::info!(model = %name, %version, "serving the version last activated");
                repository.insert(Arc::new(model));
            }
            Err(message) => tracing::error!(
                model = %name,
                %version,
                error = %message,
                repository = %models_dir.display(),
                "the version last activated does not load; serving the repository's"
            ),
        }
    }
}

/// Loads one version of a model. A deployed version may name only its own files (labels,
/// dictionary) and may not be a pipeline (whose steps are other models of the repository).
fn load(
    name: &str,
    dir: &std::path::Path,
    deployed: Option<&str>,
    cache: Option<&ModelCache>,
) -> Result<Model, String> {
    if deployed.is_some() {
        let manifest = ModelManifest::read(dir).map_err(|e| Report(&e).to_string())?.unwrap_or_default();
        if manifest.pipeline.is_some() {
            return Err("a pipeline cannot be deployed as a package; deploy its steps".into());
        }
        for file in manifest.referenced_files() {
            let plain = file.components().count() == 1
                && matches!(file.components().next(), Some(std::path::Component::Normal(_)));
            if !plain || !dir.join(file).is_file() {
                return Err(format!("model.toml names {}, which is not a file of the package", file.display()));
            }
        }
    }
    let mut model = Model::load(name, dir, cache).map_err(|e| Report(&e).to_string())?;
    if let Some(version) = deployed {
        model.set_version(version);
    }
    Ok(model)
}

/// The `model` an operation's JSON names, checked before it goes near a path.
fn named_model(payload: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(payload).ok()?;
    Some(value.get("model")?.as_str()?.to_string())
}

fn parse<'a, T: Deserialize<'a>>(op: &'static str, payload: &'a [u8]) -> Result<T, OpError> {
    let payload = if payload.iter().all(u8::is_ascii_whitespace) { b"{}".as_slice() } else { payload };
    serde_json::from_slice(payload).map_err(|e| OpError::BadRequest { op, message: e.to_string() })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeployRequest {
    sha256: String,
    size: u64,
    chunk_bytes: u64,
    #[serde(default = "yes")]
    activate: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateRequest {
    model: String,
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    repository: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelRequest {
    model: String,
}
