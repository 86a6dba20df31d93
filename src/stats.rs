//! What became of the requests, per model: answered, and refused by error code. Operators read
//! it from the retained `<base>/<device>/stats` topic (`requests.stats_interval_secs`) and from
//! the last log line at shutdown; a fleet dashboard can sum it over boards.
//!
//! Every reply passes through [`crate::mqtt::reply::ReplyTo`], which counts it here, so the counts
//! add up to the requests received. Requests for models this board does not serve share one
//! bucket: names from the network never grow the table.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::protocol::ErrorCode;

/// Why a request got no reply at all. Each is logged and counted: nothing accepted disappears
/// without a trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// A retained message: the broker redelivers it on every subscribe, so it is never computed.
    Retained,
    /// No topic the daemon may publish a reply to.
    NoReplyTopic,
    /// A QoS 0 request that arrived while the daemon was holding its maximum of unread ones.
    Overloaded,
}

impl Unanswered {
    const ALL: [Unanswered; 3] = [Unanswered::Retained, Unanswered::NoReplyTopic, Unanswered::Overloaded];

    fn as_str(self) -> &'static str {
        match self {
            Unanswered::Retained => "retained",
            Unanswered::NoReplyTopic => "no_reply_topic",
            Unanswered::Overloaded => "qos0_overloaded",
        }
    }
}

/// The upper bounds of the latency histograms' buckets, in seconds (a last bucket takes the rest):
/// fixed, so that boards of a fleet can be summed bucket by bucket.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Where an answered request's time went, as [`Timings`] measure it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// From arrival to an inference thread taking it.
    Queue,
    /// Image decoding and resizing, audio framing, on the inference thread.
    Preprocess,
    /// tract's run.
    Inference,
    /// Computed outputs (labels, detections, text) and picking the outputs asked for.
    Postprocess,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Queue, Stage::Preprocess, Stage::Inference, Stage::Postprocess];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Preprocess => "preprocess",
            Stage::Inference => "inference",
            Stage::Postprocess => "postprocess",
        }
    }
}

/// How long each stage of one answered request took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    pub queue: Duration,
    pub preprocess: Duration,
    pub inference: Duration,
    pub postprocess: Duration,
}

impl Timings {
    fn of(&self, stage: Stage) -> Duration {
        match stage {
            Stage::Queue => self.queue,
            Stage::Preprocess => self.preprocess,
            Stage::Inference => self.inference,
            Stage::Postprocess => self.postprocess,
        }
    }
}

/// Counts per bucket of [`LATENCY_BUCKETS`] (not cumulative), and the sum.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        let bucket = LATENCY_BUCKETS.iter().position(|&le| seconds <= le).unwrap_or(LATENCY_BUCKETS.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(value.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    /// Per-bucket counts (the last is above every bound) and the sum in seconds.
    pub fn read(&self) -> (Vec<u64>, f64) {
        let counts = self.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        (counts, self.sum_ns.load(Ordering::Relaxed) as f64 * 1e-9)
    }
}

/// One model's counts; cheap to share with every reply for that model.
#[derive(Debug, Default)]
pub struct Counters {
    answered: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    unanswered: [AtomicU64; Unanswered::ALL.len()],
    panics: AtomicU64,
    latency: [Histogram; Stage::ALL.len()],
}

impl Counters {
    pub fn answered(&self) {
        self.answered.fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, code: ErrorCode) {
        self.errors[code as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn unanswered(&self, why: Unanswered) {
        self.unanswered[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A request answered `internal` because code under the model panicked (counted there too).
    pub fn panicked(&self) {
        self.panics.fetch_add(1, Ordering::Relaxed);
    }

    /// Where an answered request's time went.
    pub fn observe(&self, timings: &Timings) {
        for stage in Stage::ALL {
            self.latency[stage as usize].observe(timings.of(stage));
        }
    }

    pub fn answered_count(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Refusals by error code, the codes with none left out.
    pub fn errors(&self) -> BTreeMap<&'static str, u64> {
        ErrorCode::ALL
            .iter()
            .map(|&code| (code.as_str(), self.errors[code as usize].load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    /// Requests with no reply, by reason, the reasons with none left out.
    pub fn unanswered_counts(&self) -> BTreeMap<&'static str, u64> {
        Unanswered::ALL
            .iter()
            .map(|&why| (why.as_str(), self.unanswered[why as usize].load(Ordering::Relaxed)))
            .filter(|&(_, n)| n > 0)
            .collect()
    }

    pub fn panics(&self) -> u64 {
        self.panics.load(Ordering::Relaxed)
    }

    pub fn latency(&self, stage: Stage) -> &Histogram {
        &self.latency[stage as usize]
    }

    fn snapshot(&self, gauges: Gauges) -> ModelSnapshot {
        let (errors, unanswered) = (self.errors(), self.unanswered_counts());
        let answered = self.answered.load(Ordering::Relaxed);
        let latency_ms = (answered > 0).then(|| {
            let mut stages = BTreeMap::new();
            for stage in Stage::ALL {
                let (counts, sum) = self.latency(stage).read();
                stages.insert(stage.as_str(), StageSnapshot { counts, sum_ms: sum * 1e3 });
            }
            LatencySnapshot { le_ms: LATENCY_BUCKETS.iter().map(|s| s * 1e3).collect(), stages }
        });
        let requests = answered + errors.values().sum::<u64>() + unanswered.values().sum::<u64>();
        ModelSnapshot {
            requests,
            answered,
            errors,
            unanswered,
            panics: self.panics.load(Ordering::Relaxed),
            queued: gauges.queued,
            sessions: gauges.sessions,
            latency_ms,
        }
    }
}

/// The latency histograms as the stats topic carries them: the buckets' upper bounds, then per
/// stage the count in each bucket (one more than bounds: the last is above them all) and the sum.
#[derive(Serialize)]
struct LatencySnapshot {
    le_ms: Vec<f64>,
    #[serde(flatten)]
    stages: BTreeMap<&'static str, StageSnapshot>,
}

#[derive(Serialize)]
struct StageSnapshot {
    counts: Vec<u64>,
    sum_ms: f64,
}

/// Every model's counters: the models served at start, and those deployed since (a model's
/// counts go on across its versions, and stay after it is unloaded).
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    models: RwLock<BTreeMap<String, Arc<Counters>>>,
    other: Arc<Counters>,
}

#[derive(Serialize)]
struct ModelSnapshot {
    requests: u64,
    answered: u64,
    errors: BTreeMap<&'static str, u64>,
    /// Requests that got no reply, by reason (see [`Unanswered`]).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    unanswered: BTreeMap<&'static str, u64>,
    panics: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    queued: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sessions: Option<usize>,
    /// Answered requests' time by stage; absent before the first answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<LatencySnapshot>,
}

/// A model's current levels, read when the stats are published.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    /// Requests waiting in the model's queue.
    pub queued: Option<usize>,
    /// Live streaming sessions (models with `[session]`).
    pub sessions: Option<usize>,
}

#[derive(Serialize)]
struct Snapshot<'a> {
    device: &'a str,
    uptime_secs: u64,
    models: BTreeMap<&'a str, ModelSnapshot>,
    /// Requests for models this board does not serve (all answered `unknown_model`), and requests
    /// refused before their model was known.
    other: ModelSnapshot,
}

impl Stats {
    pub fn new(models: &[String]) -> Stats {
        Stats {
            started: Instant::now(),
            models: RwLock::new(models.iter().map(|m| (m.clone(), Arc::default())).collect()),
            other: Arc::default(),
        }
    }

    /// The counters a reply for `model` goes to.
    pub fn for_model(&self, model: &str) -> Arc<Counters> {
        self.models.read().expect("stats lock").get(model).unwrap_or(&self.other).clone()
    }

    /// Counts `model`'s requests on their own from now on (a model deployed after start). Only
    /// names of models that loaded come here, never names from requests.
    pub fn add_model(&self, model: &str) {
        self.models.write().expect("stats lock").entry(model.to_string()).or_default();
    }

    /// Every model's counters, by name, and those of requests for no model served.
    pub fn models(&self) -> (Vec<(String, Arc<Counters>)>, Arc<Counters>) {
        let models = self.models.read().expect("stats lock");
        (models.iter().map(|(n, c)| (n.clone(), c.clone())).collect(), self.other.clone())
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The JSON published at the stats topic; `gauges` gives each model's current levels.
    pub fn to_json(&self, device: &str, gauges: impl Fn(&str) -> Gauges) -> Vec<u8> {
        let models = self.models.read().expect("stats lock");
        let snapshot = Snapshot {
            device,
            uptime_secs: self.started.elapsed().as_secs(),
            models: models.iter().map(|(name, c)| (name.as_str(), c.snapshot(gauges(name)))).collect(),
            other: self.other.snapshot(Gauges::default()),
        };
        serde_json::to_vec(&snapshot).expect("stats serialise")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_up_and_unknown_models_share_one_bucket() {
        let stats = Stats::new(&["digits".to_string()]);
        let digits = stats.for_model("digits");
        digits.answered();
        digits.answered();
        digits.refused(ErrorCode::Busy);
        stats.for_model("nope").refused(ErrorCode::UnknownModel);
        stats.for_model("other-nope").refused(ErrorCode::UnknownModel);
        digits.unanswered(Unanswered::Retained);
        digits.panicked();
        let v: serde_json::Value =
            serde_json::from_slice(&stats.to_json("pi", |_| Gauges { queued: Some(3), sessions: Some(2) })).unwrap();
        assert_eq!(v["models"]["digits"]["requests"], 4);
        assert_eq!(v["models"]["digits"]["unanswered"]["retained"], 1);
        assert_eq!(v["models"]["digits"]["panics"], 1);
        assert_eq!(v["models"]["digits"]["answered"], 2);
        assert_eq!(v["models"]["digits"]["errors"]["busy"], 1);
        assert_eq!(v["models"]["digits"]["queued"], 3);
        assert_eq!(v["models"]["digits"]["sessions"], 2);
        assert_eq!(v["other"]["errors"]["unknown_model"], 2);
        assert_eq!(v["models"].as_object().unwrap().len(), 1);
    }

    #[test]
    fn error_codes_index_their_counters() {
        for (index, code) in ErrorCode::ALL.iter().enumerate() {
            assert_eq!(*code as usize, index, "{}", code.as_str());
        }
        for (index, why) in Unanswered::ALL.iter().enumerate() {
            assert_eq!(*why as usize, index, "{}", why.as_str());
        }
    }
}
