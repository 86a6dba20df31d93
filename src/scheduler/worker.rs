//! One inference thread: take a job, run it unless its time is up, send the reply.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;

use super::{Inner, Job, Task};
use crate::model::Model;
use crate::mqtt::publisher::Command;
use crate::protocol::ErrorCode;

pub(super) struct Worker {
    pub model: Arc<Model>,
    pub jobs: Receiver<Task>,
    pub inner: Arc<Inner>,
    /// Counts finished jobs, for the watchdog.
    pub finished: Arc<AtomicU64>,
}

impl Worker {
    pub fn run(self) {
        while let Ok(Task::Run(job)) = self.jobs.recv() {
            let reply = self.answer(*job);
            if self.inner.replies.blocking_send(reply).is_err() {
                tracing::error!(model = %self.model.name(), "reply lost: the publisher has stopped");
            }
            self.finished.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn answer(&self, job: Job) -> Command {
        let _span = job.span.enter();
        let name = self.model.name();
        let id = job.id.as_deref();
        if job.deadline.is_some_and(|d| Instant::now() > d) {
            let waited = job.received.elapsed().as_millis();
            let message = format!("deadline exceeded after {waited} ms in the queue; not computed");
            return job.reply.error(id, name, ErrorCode::DeadlineExceeded, &message);
        }
        if self.inner.draining_past_grace() {
            return job.reply.error(id, name, ErrorCode::ShuttingDown, "the daemon is stopping; not computed");
        }
        match self.model.answer(id, job.inputs) {
            Ok(encoded) => {
                tracing::debug!(us = job.received.elapsed().as_micros() as u64, "answered");
                job.reply.result(encoded)
            }
            Err(e) => job.reply.error(id, name, ErrorCode::Internal, &e.to_string()),
        }
    }
}
