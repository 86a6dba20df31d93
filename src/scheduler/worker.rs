//! One inference thread: take a job (or, with dynamic batching, a batch of queued jobs), run it
//! unless its time is up, send the replies.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, TryRecvError};

use super::{Inner, Job, Task};
use crate::model::{AnswerError, Model};
use crate::mqtt::publisher::Command;
use crate::protocol::ErrorCode;

pub(super) struct Worker {
    pub model: Arc<Model>,
    pub jobs: Receiver<Task>,
    pub inner: Arc<Inner>,
    /// Counts finished jobs, for the watchdog.
    pub finished: Arc<AtomicU64>,
}

/// What one gathering round took off the queue.
struct Gathered {
    batch: Vec<Job>,
    /// A job that did not fit in the batch: it starts the next one.
    left_over: Option<Box<Job>>,
    /// The stop marker came (it is queued behind every job, so nothing is left over): finish
    /// the batch, then exit.
    stop: bool,
}

impl Worker {
    pub fn run(self) {
        if let Err(e) = self.model.warm_up() {
            tracing::error!(model = %self.model.name(), error = %format!("{e:#}"), "warm-up run failed in an inference thread");
        }
        let mut next = None;
        loop {
            let first = match next.take() {
                Some(job) => job,
                None => match self.jobs.recv() {
                    Ok(Task::Run(job)) => job,
                    Ok(Task::Stop) | Err(_) => return,
                },
            };
            let gathered = self.gather(first);
            self.complete(gathered.batch);
            if gathered.stop {
                return;
            }
            next = gathered.left_over;
        }
    }

    /// Answers a batch and hands the replies to the publisher.
    fn complete(&self, batch: Vec<Job>) {
        let count = batch.len() as u64;
        for reply in self.answer(batch) {
            if self.inner.replies.blocking_send(reply).is_err() {
                tracing::error!(model = %self.model.name(), "reply lost: the publisher has stopped");
            }
        }
        self.finished.fetch_add(count, Ordering::Relaxed);
    }

    /// Adds queued jobs to `first` while they fit in `max_batch_size` rows, waiting up to
    /// `max_queue_delay_us` for more. Without batching, the batch is `first` alone.
    fn gather(&self, first: Box<Job>) -> Gathered {
        let max_rows = self.model.max_batch_size();
        let mut rows = first.inputs.rows();
        let mut gathered = Gathered { batch: vec![*first], left_over: None, stop: false };
        if max_rows <= 1 {
            return gathered;
        }
        let delay = Duration::from_micros(self.model.serving().max_queue_delay_us.unwrap_or(0));
        let until = Instant::now() + delay;
        while rows < max_rows {
            let task = match self.jobs.try_recv() {
                Ok(task) => task,
                Err(TryRecvError::Disconnected) => break,
                Err(TryRecvError::Empty) => {
                    match self.jobs.recv_timeout(until.saturating_duration_since(Instant::now())) {
                        Ok(task) => task,
                        Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
                    }
                }
            };
            match task {
                Task::Stop => {
                    gathered.stop = true;
                    break;
                }
                Task::Run(job) if rows + job.inputs.rows() > max_rows => {
                    gathered.left_over = Some(job);
                    break;
                }
                Task::Run(job) => {
                    rows += job.inputs.rows();
                    gathered.batch.push(*job);
                }
            }
        }
        gathered
    }

    /// Replies to every job of a batch: expired and (past the shutdown grace) late ones with an
    /// error, the rest computed in one run.
    fn answer(&self, batch: Vec<Job>) -> Vec<Command> {
        let name = self.model.name();
        let mut replies = Vec::with_capacity(batch.len());
        let mut runnable = Vec::with_capacity(batch.len());
        for job in batch {
            match self.refusal(&job) {
                Some(reply) => replies.push(reply),
                None => runnable.push(job),
            }
        }
        if runnable.is_empty() {
            return replies;
        }
        let size = runnable.len();
        let mut requests = Vec::with_capacity(size);
        let mut jobs = Vec::with_capacity(size);
        for job in runnable {
            let Job { id, inputs, reply, received, span, budget, .. } = job;
            requests.push(inputs);
            jobs.push((id, reply, received, span, budget));
        }
        let answers = self.model.answer_batch(jobs.iter().map(|j| j.0.as_deref()).zip(requests).collect());
        for ((id, reply, received, span, _budget), answer) in jobs.iter().zip(answers) {
            let _span = span.enter();
            replies.push(match answer {
                Ok(encoded) => {
                    tracing::debug!(us = received.elapsed().as_micros() as u64, batch = size, "answered");
                    reply.result(encoded)
                }
                Err(AnswerError::Input(e)) => reply.error(id.as_deref(), name, ErrorCode::BadRequest, &e.to_string()),
                Err(e) => reply.error(id.as_deref(), name, ErrorCode::Internal, &e.to_string()),
            });
        }
        replies
    }

    /// The error reply for a job that must not be computed: its deadline passed while it waited,
    /// or the daemon is stopping and its grace time is over.
    fn refusal(&self, job: &Job) -> Option<Command> {
        let _span = job.span.enter();
        let (id, name) = (job.id.as_deref(), self.model.name());
        if job.deadline.is_some_and(|d| Instant::now() > d) {
            let waited = job.received.elapsed().as_millis();
            let message = format!("deadline exceeded after {waited} ms in the queue; not computed");
            return Some(job.reply.error(id, name, ErrorCode::DeadlineExceeded, &message));
        }
        if self.inner.draining_past_grace() {
            return Some(job.reply.error(id, name, ErrorCode::ShuttingDown, "the daemon is stopping; not computed"));
        }
        None
    }
}
