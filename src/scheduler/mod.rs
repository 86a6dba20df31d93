//! Scheduling: a bounded queue per model and a pool of inference threads per model.
//!
//! The MQTT side never waits for inference: it puts a checked request on the model's queue, or
//! answers `busy` at once when the queue is full. Workers are plain threads (tract is CPU-bound
//! and synchronous); each takes jobs in arrival order, drops those whose deadline has passed, runs
//! the model and hands the encoded reply to the publisher.

mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use crate::model::{Model, ModelRepository, PreparedInputs};
use crate::mqtt::publisher::Command;
use crate::mqtt::reply::{ReplyLimits, ReplyTo};

/// One accepted request, checked against its model and waiting for a worker.
pub struct Job {
    pub model: Arc<Model>,
    pub id: Option<String>,
    pub inputs: PreparedInputs,
    pub reply: ReplyTo,
    pub received: Instant,
    /// Past this instant nobody waits for the answer: reply `deadline_exceeded` instead of computing.
    pub deadline: Option<Instant>,
    /// The request's tracing span (request id, model), entered by the worker.
    pub span: tracing::Span,
    /// Its share of `requests.max_queued_bytes`, given back when the job is dropped.
    pub budget: OwnedSemaphorePermit,
}

struct ModelProgress {
    name: String,
    queue: crossbeam_channel::Receiver<Task>,
    finished: Arc<AtomicU64>,
}

enum Task {
    Run(Box<Job>),
    Stop,
}

/// Why a job was not queued. The job comes back so that the caller can answer it.
pub enum Rejected {
    /// The model's queue is full.
    Busy(Box<Job>),
    /// The daemon is stopping.
    ShuttingDown(Box<Job>),
}

/// Default sizing for the worker pools; a model's `[serving]` section overrides it.
#[derive(Debug, Clone, Copy)]
pub struct PoolConfig {
    pub workers_per_model: usize,
    pub queue_capacity: usize,
}

/// Handle to every model's queue. Cheap to clone; [`Scheduler::shutdown`] drains and joins.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` once shutdown began. Submissions hold the read lock, so no job can slip into a
    /// queue behind the stop markers.
    queues: RwLock<Option<HashMap<String, Sender<Task>>>>,
    workers: std::sync::Mutex<Vec<(String, JoinHandle<()>)>>,
    /// Set at shutdown: jobs still queued after this instant are answered `shutting_down`.
    drain_until: OnceLock<Instant>,
    /// Per model: its queue (to see what waits) and how many jobs its workers finished.
    progress: std::sync::Mutex<Vec<ModelProgress>>,
    replies: mpsc::Sender<Command>,
    /// Bounds the reply bytes waiting for the publisher; workers wait for room.
    reply_limits: Arc<ReplyLimits>,
    /// The async runtime, for the workers' waits on async primitives.
    runtime: tokio::runtime::Handle,
}

impl Scheduler {
    /// Starts the worker threads for every model of the repository. Call it from within the
    /// async runtime.
    pub fn start(
        repository: &ModelRepository,
        pool: PoolConfig,
        replies: mpsc::Sender<Command>,
        reply_limits: Arc<ReplyLimits>,
    ) -> Scheduler {
        let inner = Arc::new(Inner {
            queues: RwLock::new(Some(HashMap::new())),
            workers: Default::default(),
            drain_until: OnceLock::new(),
            progress: Default::default(),
            replies,
            reply_limits,
            runtime: tokio::runtime::Handle::current(),
        });
        let mut queues = HashMap::new();
        let mut workers = Vec::new();
        let mut progress = Vec::new();
        for model in repository.models() {
            let queue_capacity = model.serving().queue_capacity.unwrap_or(pool.queue_capacity);
            let worker_count = model.serving().workers.unwrap_or(pool.workers_per_model);
            tracing::info!(model = %model.name(), workers = worker_count, queue_capacity, "starting inference threads");
            let (tx, rx) = crossbeam_channel::bounded(queue_capacity);
            let finished = Arc::new(AtomicU64::new(0));
            progress.push(ModelProgress {
                name: model.name().to_string(),
                queue: rx.clone(),
                finished: finished.clone(),
            });
            for index in 0..worker_count {
                let worker = worker::Worker {
                    model: model.clone(),
                    jobs: rx.clone(),
                    inner: inner.clone(),
                    finished: finished.clone(),
                };
                let handle = std::thread::Builder::new()
                    .name(format!("infer-{}-{index}", model.name()))
                    .spawn(move || worker.run())
                    .expect("spawning an inference thread");
                workers.push((model.name().to_string(), handle));
            }
            queues.insert(model.name().to_string(), tx);
        }
        *inner.queues.write().expect("queue lock") = Some(queues);
        *inner.workers.lock().expect("worker lock") = workers;
        *inner.progress.lock().expect("progress lock") = progress;
        Scheduler { inner }
    }

    /// Queues a job without waiting.
    pub fn submit(&self, job: Job) -> Result<(), Rejected> {
        let queues = self.inner.queues.read().expect("queue lock");
        let Some(queue) = queues.as_ref().and_then(|q| q.get(job.model.name())) else {
            return Err(Rejected::ShuttingDown(Box::new(job)));
        };
        match queue.try_send(Task::Run(Box::new(job))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(Task::Run(job))) => Err(Rejected::Busy(job)),
            Err(TrySendError::Disconnected(Task::Run(job))) => Err(Rejected::ShuttingDown(job)),
            Err(_) => unreachable!("only Run tasks are submitted"),
        }
    }

    /// Whether [`Scheduler::shutdown`] has begun.
    pub fn is_stopping(&self) -> bool {
        self.inner.drain_until.get().is_some()
    }

    /// How many requests wait in `model`'s queue.
    pub fn queued(&self, model: &str) -> Option<usize> {
        let progress = self.inner.progress.lock().expect("progress lock");
        progress.iter().find(|p| p.name == model).map(|p| p.queue.len())
    }

    /// Models whose queue holds jobs although their workers finished none since the previous
    /// call: stuck, as far as the watchdog is concerned. `seen` carries the counts between calls.
    pub fn stalled_models(&self, seen: &mut HashMap<String, u64>) -> Vec<String> {
        let progress = self.inner.progress.lock().expect("progress lock");
        let mut stalled = Vec::new();
        for model in progress.iter() {
            let finished = model.finished.load(Ordering::Relaxed);
            let before = seen.insert(model.name.clone(), finished);
            if !model.queue.is_empty() && before == Some(finished) {
                stalled.push(model.name.clone());
            }
        }
        stalled
    }

    /// Stops taking jobs, lets the workers finish what is queued (computing until `grace` has
    /// passed, answering `shutting_down` after that) and joins them. Blocking: call it from a
    /// blocking context.
    pub fn shutdown(&self, grace: Duration) {
        let _ = self.inner.drain_until.set(Instant::now() + grace);
        let queues = self.inner.queues.write().expect("queue lock").take().unwrap_or_default();
        let workers = std::mem::take(&mut *self.inner.workers.lock().expect("worker lock"));
        for (model, queue) in &queues {
            let count = workers.iter().filter(|(m, _)| m == model).count();
            for _ in 0..count {
                // Blocks only while the queue is full; workers are draining it.
                let _ = queue.send(Task::Stop);
            }
        }
        for (model, handle) in workers {
            if handle.join().is_err() {
                tracing::error!(%model, "an inference thread panicked");
            }
        }
    }
}

impl Inner {
    fn draining_past_grace(&self) -> bool {
        self.drain_until.get().is_some_and(|until| Instant::now() > *until)
    }
}
