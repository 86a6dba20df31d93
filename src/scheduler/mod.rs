//! Scheduling: a bounded queue per model and a pool of inference threads per model.
//!
//! The MQTT side never waits for inference: it puts a checked request on the model's queue, or
//! answers `busy` at once when the queue is full. Workers are plain threads (tract is CPU-bound
//! and synchronous); each takes jobs in arrival order, drops those whose deadline has passed, runs
//! the model and hands the answer to the job's [`Responder`]. How answers travel (MQTT topics,
//! QoS, encoding) is the responder's business, not the scheduler's.

mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::OwnedSemaphorePermit;
use tract_linalg::multithread::Executor;

use crate::model::{Answer, AnswerError, Model, ModelRepository, PreparedInputs};
use crate::protocol::ErrorCode;

/// Where the outcome of a job goes: the side that took the request implements it (the daemon's
/// MQTT replies do), so that the scheduler knows jobs and workers, not transports.
pub trait Responder: Send + 'static {
    /// Called exactly once per job, on its inference thread, which it may block (waiting for
    /// room to hold the reply, say). `model` is the version that answered.
    fn respond(self, model: &Model, id: Option<&str>, outcome: Result<Answer, JobError>);
}

/// Why a job got no answer.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The model could not answer this request.
    #[error(transparent)]
    Answer(#[from] AnswerError),
    #[error("deadline exceeded after {waited_ms} ms in the queue; not computed")]
    DeadlineExceeded { waited_ms: u128 },
    #[error("the daemon is stopping; not computed")]
    ShuttingDown,
}

impl JobError {
    /// The reply's error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            JobError::Answer(e) => e.code(),
            JobError::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
            JobError::ShuttingDown => ErrorCode::ShuttingDown,
        }
    }
}

/// One accepted request, checked against its model and waiting for a worker.
pub struct Job<R> {
    pub model: Arc<Model>,
    pub id: Option<String>,
    pub inputs: PreparedInputs,
    pub reply: R,
    pub received: Instant,
    /// Past this instant nobody waits for the answer: reply `deadline_exceeded` instead of computing.
    pub deadline: Option<Instant>,
    /// The request's tracing span (request id, model), entered by the worker.
    pub span: tracing::Span,
    /// Its share of `requests.max_queued_bytes`, given back when the job is dropped.
    pub budget: OwnedSemaphorePermit,
}

/// One served model: its queue and how many jobs its workers finished.
struct Served<R> {
    model: Arc<Model>,
    /// `None` once shutdown began. Dropping the last sender is what stops the workers: they
    /// finish what the queue holds, then see it closed.
    queue: Option<Sender<Box<Job<R>>>>,
    /// To see what waits.
    jobs: crossbeam_channel::Receiver<Box<Job<R>>>,
    finished: Arc<AtomicU64>,
}

/// Why a job was not queued. The job comes back so that the caller can answer it.
pub enum Rejected<R> {
    /// The model's queue is full.
    Busy(Box<Job<R>>),
    /// The daemon is stopping.
    ShuttingDown(Box<Job<R>>),
    /// The model was unloaded between the job's checking and its queueing.
    Unloaded(Box<Job<R>>),
}

/// Default sizing for the worker pools; a model's `[serving]` section overrides it.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub workers_per_model: usize,
    pub queue_capacity: usize,
    /// Threads a request may use when it is computed alone (`requests.lone_request_threads`);
    /// 1 keeps every request on its worker's thread.
    pub lone_request_threads: usize,
}

/// Handle to every model's queue. Cheap to clone; [`Scheduler::shutdown`] drains and joins.
pub struct Scheduler<R> {
    inner: Arc<Inner<R>>,
}

impl<R> Clone for Scheduler<R> {
    fn clone(&self) -> Self {
        Scheduler { inner: self.inner.clone() }
    }
}

struct Inner<R> {
    /// What is served, by model name. Submissions hold the read lock, so no job can slip into a
    /// queue after it was closed (at shutdown) or replaced (a new version).
    served: RwLock<HashMap<String, Served<R>>>,
    /// Every inference thread started and not joined yet (those of replaced versions included).
    workers: std::sync::Mutex<Vec<(String, JoinHandle<()>)>>,
    /// Set at shutdown: jobs still queued after this instant are answered `shutting_down`.
    drain_until: OnceLock<Instant>,
    /// Workers computing right now, all models together.
    computing: AtomicUsize,
    /// tract's thread pool for a request computed alone; `None` when that is off.
    lone: Option<Executor>,
    pool: PoolConfig,
}

impl<R: Responder> Scheduler<R> {
    /// Starts the worker threads for every model of the repository.
    pub fn start(repository: &ModelRepository, pool: PoolConfig) -> Scheduler<R> {
        let lone = (pool.lone_request_threads > 1)
            .then(|| Executor::multithread_with_name(pool.lone_request_threads, "infer-lone"));
        let scheduler = Scheduler {
            inner: Arc::new(Inner {
                served: RwLock::new(HashMap::new()),
                workers: Default::default(),
                drain_until: OnceLock::new(),
                computing: AtomicUsize::new(0),
                lone,
                pool,
            }),
        };
        for model in repository.models() {
            scheduler.serve(model.clone());
        }
        scheduler
    }

    /// Serves `model` from now on: its inference threads start, and it takes the place of the
    /// model of the same name, if any, which is returned. Jobs queued for the replaced version
    /// are computed by it; its threads end when its queue is empty.
    pub fn serve(&self, model: Arc<Model>) -> Option<Arc<Model>> {
        let pool = self.inner.pool;
        let queue_capacity = model.serving().queue_capacity.unwrap_or(pool.queue_capacity);
        let worker_count = model.serving().workers.unwrap_or(pool.workers_per_model);
        tracing::info!(model = %model.name(), version = %model.version(), workers = worker_count, queue_capacity, "starting inference threads");
        let (tx, rx) = crossbeam_channel::bounded(queue_capacity);
        let finished = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::with_capacity(worker_count);
        for index in 0..worker_count {
            let worker = worker::Worker {
                model: model.clone(),
                jobs: rx.clone(),
                inner: self.inner.clone(),
                finished: finished.clone(),
            };
            let handle = std::thread::Builder::new()
                .name(format!("infer-{}-{index}", model.name()))
                .spawn(move || worker.run())
                .expect("spawning an inference thread");
            workers.push((model.name().to_string(), handle));
        }
        {
            let mut all = self.inner.workers.lock().expect("worker lock");
            all.retain(|(_, handle)| !handle.is_finished());
            all.extend(workers);
        }
        let stopping = self.is_stopping();
        let served = Served { model: model.clone(), queue: (!stopping).then_some(tx), jobs: rx, finished };
        let replaced = self.inner.served.write().expect("queue lock").insert(model.name().to_string(), served);
        replaced.map(|old| old.model)
    }

    /// Stops serving `name`: new requests for it are refused as for an unknown model; the ones
    /// queued are computed. Returns the model that was served.
    pub fn unload(&self, name: &str) -> Option<Arc<Model>> {
        self.inner.served.write().expect("queue lock").remove(name).map(|old| old.model)
    }

    /// The model served as `name`.
    pub fn model(&self, name: &str) -> Option<Arc<Model>> {
        self.inner.served.read().expect("queue lock").get(name).map(|s| s.model.clone())
    }

    /// Every model served, by name.
    pub fn models(&self) -> Vec<Arc<Model>> {
        let served = self.inner.served.read().expect("queue lock");
        let mut models: Vec<Arc<Model>> = served.values().map(|s| s.model.clone()).collect();
        models.sort_by(|a, b| a.name().cmp(b.name()));
        models
    }

    /// The names of the models served, sorted.
    pub fn names(&self) -> Vec<String> {
        self.models().iter().map(|m| m.name().to_string()).collect()
    }

    /// Queues a job without waiting. A job checked against a version that was replaced since is
    /// queued all the same: the worker computes it with the model it was checked against.
    pub fn submit(&self, job: Job<R>) -> Result<(), Rejected<R>> {
        let served = self.inner.served.read().expect("queue lock");
        let Some(model) = served.get(job.model.name()) else {
            return Err(Rejected::Unloaded(Box::new(job)));
        };
        let Some(queue) = &model.queue else {
            return Err(Rejected::ShuttingDown(Box::new(job)));
        };
        match queue.try_send(Box::new(job)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => Err(Rejected::Busy(job)),
            Err(TrySendError::Disconnected(job)) => Err(Rejected::ShuttingDown(job)),
        }
    }

    /// Whether [`Scheduler::shutdown`] has begun.
    pub fn is_stopping(&self) -> bool {
        self.inner.drain_until.get().is_some()
    }

    /// How many requests wait in `model`'s queue.
    pub fn queued(&self, model: &str) -> Option<usize> {
        self.inner.served.read().expect("queue lock").get(model).map(|s| s.jobs.len())
    }

    /// Models whose queue holds jobs although their workers finished none since the previous
    /// call: stuck, as far as the watchdog is concerned. `seen` carries the counts between calls.
    pub fn stalled_models(&self, seen: &mut HashMap<String, u64>) -> Vec<String> {
        let served = self.inner.served.read().expect("queue lock");
        let mut stalled = Vec::new();
        for (name, model) in served.iter() {
            let finished = model.finished.load(Ordering::Relaxed);
            let before = seen.insert(name.clone(), finished);
            if !model.jobs.is_empty() && before == Some(finished) {
                stalled.push(name.clone());
            }
        }
        stalled.sort();
        stalled
    }

    /// Stops taking jobs, lets the workers finish what is queued (computing until `grace` has
    /// passed, answering `shutting_down` after that) and joins them. Blocking: call it from a
    /// blocking context.
    pub fn shutdown(&self, grace: Duration) {
        let _ = self.inner.drain_until.set(Instant::now() + grace);
        for served in self.inner.served.write().expect("queue lock").values_mut() {
            served.queue = None;
        }
        let workers = std::mem::take(&mut *self.inner.workers.lock().expect("worker lock"));
        for (model, handle) in workers {
            if handle.join().is_err() {
                tracing::error!(%model, "an inference thread panicked");
            }
        }
    }
}

impl<R> Inner<R> {
    fn draining_past_grace(&self) -> bool {
        self.drain_until.get().is_some_and(|until| Instant::now() > *until)
    }
}
