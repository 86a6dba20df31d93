//! One inference thread: take a job (or, with dynamic batching, a batch of queued jobs), run it
//! unless its time is up, send the replies.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use tract_linalg::multithread::multithread_tract_scope;

use super::{Inner, Job, JobError, Responder};
use crate::model::{Answer, AnswerError, Model, PreparedInputs};
use crate::panics::panic_message;
use crate::untrusted::Untrusted;

pub(super) struct Worker<R> {
    /// The version this worker was started for; a job may carry the one before (see
    /// [`Scheduler::submit`](super::Scheduler::submit)).
    pub model: Arc<Model>,
    pub jobs: Receiver<Box<Job<R>>>,
    pub inner: Arc<Inner<R>>,
    /// Counts finished jobs, for the watchdog.
    pub finished: Arc<AtomicU64>,
}

/// Counts a worker as computing until dropped (a panic included).
struct Computing<'a>(&'a AtomicUsize);

impl Drop for Computing<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What one gathering round took off the queue.
struct Gathered<R> {
    batch: Vec<Job<R>>,
    /// A job that did not fit in the batch: it starts the next one.
    left_over: Option<Box<Job<R>>>,
}

impl<R: Responder> Worker<R> {
    /// Warms up, then answers jobs until the queue is closed (the daemon stops, or a new version
    /// took this one's place) and empty.
    pub fn run(self) {
        match std::panic::catch_unwind(AssertUnwindSafe(|| self.model.warm_up())) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::error!(model = %self.model.name(), error = %format!("{e:#}"), "warm-up run failed in an inference thread")
            }
            Err(panic) => {
                tracing::error!(model = %self.model.name(), panic = %panic_message(panic.as_ref()), "warm-up run panicked in an inference thread")
            }
        }
        let mut next = None;
        loop {
            let first = match next.take() {
                Some(job) => job,
                None => match self.jobs.recv() {
                    Ok(job) => job,
                    Err(_) => return,
                },
            };
            let gathered = self.gather(*first);
            let count = gathered.batch.len() as u64;
            self.answer(gathered.batch);
            self.finished.fetch_add(count, Ordering::Relaxed);
            next = gathered.left_over;
        }
    }

    /// Adds queued jobs to `first` while they fit in `max_batch_size` rows, waiting up to
    /// `max_queue_delay_us` for more. Without batching, the batch is `first` alone. A batch is
    /// of one model version.
    fn gather(&self, first: Job<R>) -> Gathered<R> {
        let model = first.model.clone();
        let max_rows = model.max_batch_size();
        let mut rows = first.inputs.rows();
        let mut gathered = Gathered { batch: vec![first], left_over: None };
        if max_rows <= 1 {
            return gathered;
        }
        let delay = Duration::from_micros(model.serving().max_queue_delay_us.unwrap_or(0));
        let until = Instant::now() + delay;
        while rows < max_rows {
            let job = match self.jobs.try_recv() {
                Ok(job) => job,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    match self.jobs.recv_timeout(until.saturating_duration_since(Instant::now())) {
                        Ok(job) => job,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            if rows + job.inputs.rows() > max_rows || !Arc::ptr_eq(&job.model, &model) {
                gathered.left_over = Some(job);
                break;
            }
            rows += job.inputs.rows();
            gathered.batch.push(*job);
        }
        gathered
    }

    /// Answers every job of a batch: expired and (past the shutdown grace) late ones with an
    /// error, the rest computed in one run.
    fn answer(&self, batch: Vec<Job<R>>) {
        let Some(model) = batch.first().map(|job| job.model.clone()) else {
            return;
        };
        let name = model.name();
        let mut runnable = Vec::with_capacity(batch.len());
        for job in batch {
            match self.refusal(&job) {
                Some(error) => {
                    let _span = job.span.enter();
                    job.reply.respond(&model, job.id.as_deref(), Err(error));
                }
                None => runnable.push(job),
            }
        }
        if runnable.is_empty() {
            return;
        }
        let size = runnable.len();
        let mut requests = Vec::with_capacity(size);
        let mut jobs = Vec::with_capacity(size);
        for job in runnable {
            let Job { id, inputs, reply, received, span, budget, .. } = job;
            requests.push(inputs);
            jobs.push((id, reply, received, span, budget));
        }
        let computing_from = Instant::now();
        let answers = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            tests::maybe_inject_panic(&jobs.iter().map(|j| j.0.as_deref()).collect::<Vec<_>>());
            self.compute(&model, requests)
        })) {
            Ok(answers) => answers,
            Err(panic) => {
                let message = panic_message(panic.as_ref());
                let ids: Vec<String> =
                    jobs.iter().map(|j| Untrusted(j.0.as_deref().unwrap_or("")).to_string()).collect();
                tracing::error!(model = %name, ids = ?ids, panic = %message, "panic while answering; each request gets an internal error and the worker goes on");
                jobs.iter().map(|_| Err(AnswerError::Panicked(message.clone()))).collect()
            }
        };
        for ((id, reply, received, span, _budget), mut answer) in jobs.into_iter().zip(answers) {
            let _span = span.enter();
            if let Ok(answer) = &mut answer {
                answer.timings.queue = computing_from.saturating_duration_since(received);
                tracing::debug!(us = received.elapsed().as_micros() as u64, batch = size, "answered");
            }
            reply.respond(&model, id.as_deref(), answer.map_err(JobError::from));
        }
    }

    /// Runs the model on a batch: on tract's thread pool when it is a lone request (nothing else
    /// queued for this model, no other worker computing), else on this thread alone. Deciding
    /// per run is what makes both cases fast: a lone frame gets every idle core, and under load
    /// one core per request wastes nothing on splitting the work.
    fn compute(&self, model: &Model, requests: Vec<PreparedInputs>) -> Vec<Result<Answer, AnswerError>> {
        let others = self.inner.computing.fetch_add(1, Ordering::SeqCst);
        let _computing = Computing(&self.inner.computing);
        match &self.inner.lone {
            Some(pool) if others == 0 && requests.len() == 1 && self.jobs.is_empty() => {
                multithread_tract_scope(pool.clone(), || model.answer_batch(requests))
            }
            _ => model.answer_batch(requests),
        }
    }

    /// Why a job must not be computed: its deadline passed while it waited, or the daemon is
    /// stopping and its grace time is over.
    fn refusal(&self, job: &Job<R>) -> Option<JobError> {
        if job.deadline.is_some_and(|d| Instant::now() > d) {
            return Some(JobError::DeadlineExceeded { waited_ms: job.received.elapsed().as_millis() });
        }
        if self.inner.draining_past_grace() {
            return Some(JobError::ShuttingDown);
        }
        None
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Mutex;

    use tokio::sync::Semaphore;
    use tract_core::prelude::{tvec, IntoTValue, Tensor};

    use super::super::{PoolConfig, Scheduler};
    use super::*;
    use crate::model::ModelRepository;
    use crate::mqtt::publisher::Command;
    use crate::mqtt::reply::{Outbox, ReplyLimits, ReplyTo};
    use crate::protocol::{decode_request, ErrorCode};

    /// Requests with this id panic inside the worker's answering, as a bug in tract would.
    static PANIC_ON: Mutex<Option<&'static str>> = Mutex::new(None);

    pub(super) fn maybe_inject_panic(ids: &[Option<&str>]) {
        let target = *PANIC_ON.lock().unwrap();
        if let Some(target) = target.filter(|t| ids.contains(&Some(*t))) {
            panic!("injected panic for {target}");
        }
    }

    /// The shipped digits model, alone in a repository.
    fn digits() -> ModelRepository {
        let dir = tempfile::tempdir().unwrap();
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        std::os::unix::fs::symlink(root.join("models/digits"), dir.path().join("digits")).unwrap();
        let (repository, failures) = ModelRepository::load(dir.path(), None).unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        repository
    }

    /// The digits model again, with dynamic batching on: up to 4 rows, gathered for up to 300 ms.
    fn batched_digits() -> (tempfile::TempDir, ModelRepository) {
        let dir = tempfile::tempdir().unwrap();
        let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/digits");
        let model = dir.path().join("digits");
        std::fs::create_dir(&model).unwrap();
        for file in ["model.onnx", "labels.txt"] {
            std::os::unix::fs::symlink(shipped.join(file), model.join(file)).unwrap();
        }
        let mut toml = std::fs::read_to_string(shipped.join("model.toml")).unwrap();
        toml.push_str("\n[serving]\nmax_batch_size = 4\nmax_queue_delay_us = 300000\n");
        std::fs::write(model.join("model.toml"), toml).unwrap();
        let (repository, failures) = ModelRepository::load(dir.path(), None).unwrap();
        assert!(failures.is_empty(), "{failures:?}");
        (dir, repository)
    }

    /// A scheduler of one worker per model, `queue` jobs deep, whose replies go to a channel of
    /// `replies` places; with a reply topic for its jobs.
    fn start(
        repository: &ModelRepository,
        queue: usize,
        replies: usize,
    ) -> (Scheduler<ReplyTo>, tokio::sync::mpsc::Receiver<Command>, ReplyTo) {
        let (tx, rx) = tokio::sync::mpsc::channel(replies);
        let limits = Arc::new(ReplyLimits::new(1 << 20, 1 << 20));
        let pool = PoolConfig { workers_per_model: 1, queue_capacity: queue, lone_request_threads: 2 };
        (Scheduler::start(repository, pool), rx, reply_to(Outbox::new(tx, limits)))
    }

    /// The daemon's own responder, publishing to a channel the test reads.
    fn reply_to(outbox: Outbox) -> ReplyTo {
        ReplyTo {
            topic: "t".into(),
            correlation: None,
            qos: rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            counts: Arc::default(),
            outbox: Arc::new(outbox),
            ack: None,
        }
    }

    fn job<R: Clone>(repository: &ModelRepository, id: &str, reply: &R) -> Job<R> {
        rows_job(repository, id, reply, &[1.0; 64])
    }

    /// A job of `pixels.len() / 64` rows.
    fn rows_job<R: Clone>(repository: &ModelRepository, id: &str, reply: &R, pixels: &[f32]) -> Job<R> {
        let model = repository.get("digits").unwrap().clone();
        let json = format!(
            r#"{{"id":"{id}","inputs":[{{"name":"pixels","shape":[{},64],"datatype":"FP32","data":{pixels:?}}}]}}"#,
            pixels.len() / 64
        );
        let mut request = decode_request(json.as_bytes(), None).unwrap();
        let inputs = model.prepare(&mut request).unwrap();
        Job {
            model,
            id: Some(id.into()),
            inputs,
            reply: reply.clone(),
            received: Instant::now(),
            deadline: None,
            span: tracing::Span::none(),
            budget: Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap(),
        }
    }

    fn reply_json(command: Command) -> serde_json::Value {
        let Command::Publish(out) = command else { panic!("a publish") };
        serde_json::from_slice(&out.payload).unwrap()
    }

    /// A responder that is not MQTT at all: what the scheduler hands over, and nothing else.
    #[derive(Clone)]
    struct Collect(std::sync::mpsc::Sender<Collected>);

    /// A job's id, and its output names or error code.
    type Collected = (Option<String>, Result<Vec<String>, ErrorCode>);

    impl Responder for Collect {
        fn respond(self, model: &Model, id: Option<&str>, outcome: Result<crate::model::Answer, JobError>) {
            assert_eq!(model.name(), "digits");
            let outcome = outcome.map(|a| a.outputs.iter().map(|o| o.name.clone()).collect()).map_err(|e| e.code());
            self.0.send((id.map(String::from), outcome)).unwrap();
        }
    }

    #[test]
    fn each_job_gets_one_outcome_from_the_scheduler_alone() {
        let repository = digits();
        let (tx, rx) = std::sync::mpsc::channel();
        let responder = Collect(tx);
        let scheduler = Scheduler::start(
            &repository,
            PoolConfig { workers_per_model: 1, queue_capacity: 4, lone_request_threads: 1 },
        );
        let mut late = job(&repository, "late", &responder);
        late.deadline = Some(Instant::now());
        std::thread::sleep(Duration::from_millis(2));
        assert!(scheduler.submit(late).is_ok());
        assert!(scheduler.submit(job(&repository, "fine", &responder)).is_ok());
        let first = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(first, (Some("late".into()), Err(ErrorCode::DeadlineExceeded)));
        let (id, outcome) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(id.as_deref(), Some("fine"));
        assert_eq!(outcome.unwrap().len(), 2, "what digits answers by default");
        scheduler.shutdown(Duration::from_secs(1));
        assert!(rx.try_recv().is_err(), "exactly one outcome per job");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_panic_becomes_an_internal_error_and_the_worker_goes_on() {
        let repository = digits();
        let (scheduler, mut rx, reply) = start(&repository, 4, 8);
        *PANIC_ON.lock().unwrap() = Some("boom");
        assert!(scheduler.submit(job(&repository, "boom", &reply)).is_ok());
        let first = reply_json(rx.recv().await.unwrap());
        assert_eq!(first["code"], "internal", "{first}");
        assert!(first["error"].as_str().unwrap().contains("injected panic for boom"), "{first}");
        assert!(scheduler.submit(job(&repository, "fine", &reply)).is_ok());
        let second = reply_json(rx.recv().await.unwrap());
        assert_eq!(second["id"], "fine");
        assert_eq!(second["outputs"].as_array().map(Vec::len), Some(2), "{second}");
        tokio::task::spawn_blocking(move || scheduler.shutdown(Duration::from_secs(1))).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_batch_is_gathered_up_to_max_batch_size_and_each_request_gets_its_own_rows() {
        let (_dir, repository) = batched_digits();
        let model = repository.get("digits").unwrap().clone();
        // What each request's rows give when run alone.
        let rows: Vec<Vec<f32>> = (0..5).map(|r| (0..64).map(|i| ((i * (r + 1)) % 17) as f32).collect()).collect();
        let alone: Vec<Vec<f32>> = rows
            .iter()
            .map(|row| {
                let input = Tensor::from_shape(&[1, 64], row).unwrap().into_tvalue();
                crate::tensors::elements::<f32>(&model.run(tvec![input]).unwrap()[0]).unwrap().to_vec()
            })
            .collect();
        let (scheduler, mut rx, reply) = start(&repository, 8, 8);
        // 1 + 2 rows fit in 4, the next 2 rows do not: two runs, gathered while the first waits
        // out max_queue_delay_us.
        let jobs = [("one", &rows[0..1]), ("two", &rows[1..3]), ("three", &rows[3..5])]
            .map(|(id, rows)| rows_job(&repository, id, &reply, &rows.concat()));
        for job in jobs {
            assert!(scheduler.submit(job).is_ok());
        }
        let mut logits = std::collections::HashMap::new();
        for _ in 0..3 {
            let v = reply_json(rx.recv().await.unwrap());
            let out = &v["outputs"][0];
            assert_eq!(out["name"], "logits", "{v}");
            let data: Vec<f32> = out["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            assert_eq!(out["shape"][1], 10);
            assert_eq!(data.len(), out["shape"][0].as_u64().unwrap() as usize * 10, "{v}");
            logits.insert(v["id"].as_str().unwrap().to_string(), data);
        }
        let close = |got: &[f32], want: &[f32]| got.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-4);
        assert!(close(&logits["one"], &alone[0]), "{:?} vs {:?}", logits["one"], alone[0]);
        assert!(close(&logits["two"], &[alone[1].clone(), alone[2].clone()].concat()));
        assert!(close(&logits["three"], &[alone[3].clone(), alone[4].clone()].concat()));
        tokio::task::spawn_blocking(move || scheduler.shutdown(Duration::from_secs(1))).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn an_expired_job_is_answered_deadline_exceeded_without_computing() {
        let repository = digits();
        let (scheduler, mut rx, reply) = start(&repository, 4, 8);
        let mut late = job(&repository, "late", &reply);
        late.deadline = Some(Instant::now());
        std::thread::sleep(Duration::from_millis(2));
        assert!(scheduler.submit(late).is_ok());
        let v = reply_json(rx.recv().await.unwrap());
        assert_eq!((v["id"].as_str(), v["code"].as_str()), (Some("late"), Some("deadline_exceeded")), "{v}");
        assert!(v["error"].as_str().unwrap().contains("not computed"), "{v}");
        assert!(v.get("outputs").is_none(), "{v}");
        tokio::task::spawn_blocking(move || scheduler.shutdown(Duration::from_secs(1))).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn jobs_still_queued_past_the_shutdown_grace_are_answered_shutting_down() {
        let repository = digits();
        // Room for one reply: the worker blocks on the second until the test reads, with the
        // last two jobs still queued.
        let (scheduler, mut rx, reply) = start(&repository, 8, 1);
        for id in ["a", "b", "c", "d"] {
            assert!(scheduler.submit(job(&repository, id, &reply)).is_ok());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stopping = tokio::task::spawn_blocking(move || scheduler.shutdown(Duration::ZERO));
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut codes = Vec::new();
        for _ in 0..4 {
            let v = reply_json(rx.recv().await.unwrap());
            codes.push((v["id"].as_str().unwrap().to_string(), v["code"].as_str().unwrap_or("ok").to_string()));
        }
        stopping.await.unwrap();
        let want = [("a", "ok"), ("b", "ok"), ("c", "shutting_down"), ("d", "shutting_down")];
        assert_eq!(codes, want.map(|(id, code)| (id.to_string(), code.to_string())));
    }
}
