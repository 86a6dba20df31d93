//! `edgeinfer loadgen`: MQTT end to end against a running daemon (or any responder speaking the
//! same topics and payloads): closed loop with N requests in flight, or open loop at a fixed rate.
//! Reports throughput, latency percentiles and every outcome by kind; nothing is left uncounted.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use clap::Args;
use edgeinfer::client::{ClientError, Reply, RequestMeta, Requester};
use serde::Serialize;

use super::ConfigArgs;

#[derive(Debug, Args)]
pub struct LoadgenArgs {
    /// Model name
    model: String,
    #[command(flatten)]
    config: ConfigArgs,
    /// The request to send, over and over: OIP JSON, or a .png/.jpg image sent as it is (what a
    /// camera board sends)
    #[arg(long, short = 'i', value_name = "FILE")]
    input: PathBuf,
    /// Send the input file as it is with this Content Type (`audio/pcm;format=s16le;rate=16000`,
    /// say) [default: by the file's extension for images, else an OIP JSON request]
    #[arg(long, value_name = "TYPE", conflicts_with = "binary")]
    content_type: Option<String>,
    /// Send to the fleet topic instead of --device
    #[arg(long)]
    fleet: bool,
    /// Closed loop: this many requests in flight at all times
    #[arg(long, default_value_t = 1, conflicts_with = "rate")]
    concurrency: usize,
    /// Open loop: start this many requests per second, whatever the replies do
    #[arg(long)]
    rate: Option<f64>,
    /// Seconds of measurement
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Send the inputs as raw bytes (binary tensor extension) and ask for binary outputs
    #[arg(long)]
    binary: bool,
    /// A request with no reply after this long counts as a timeout
    #[arg(long, value_name = "MS", default_value_t = 5_000)]
    timeout_ms: u64,
    /// Before measuring, retry one request until it is answered (for up to this many seconds) and
    /// report when (Unix time) the first answer came: start-to-first-answer for a fresh server
    #[arg(long, value_name = "SECS")]
    wait_ready: Option<f64>,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Default, Serialize)]
struct LoadResult {
    mode: String,
    seconds: f64,
    sent: usize,
    answered: usize,
    throughput_per_s: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    /// "ok", an error reply's `code`, "timeout" or "closed" -> count.
    outcomes: BTreeMap<String, usize>,
    /// The `model_version` of each answer -> count: how a rollout went from one version to the next.
    model_versions: BTreeMap<String, usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    first_answer_unix_ms: Option<u128>,
}

#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    outcomes: BTreeMap<String, usize>,
    model_versions: BTreeMap<String, usize>,
}

impl Tally {
    fn record(&mut self, started: Instant, outcome: Result<Reply, ClientError>) {
        let kind = match outcome {
            Ok(reply) => {
                self.latencies.push(started.elapsed());
                let (kind, version) = reply_kind(&reply);
                if let Some(version) = version {
                    *self.model_versions.entry(version).or_default() += 1;
                }
                kind
            }
            Err(ClientError::Timeout(_)) => "timeout".into(),
            Err(_) => "closed".into(),
        };
        *self.outcomes.entry(kind).or_default() += 1;
    }
}

/// "ok" for a result, else the error reply's code; and the version that answered.
fn reply_kind(reply: &Reply) -> (String, Option<String>) {
    #[derive(serde::Deserialize)]
    struct Probe {
        code: Option<String>,
        error: Option<serde::de::IgnoredAny>,
        model_version: Option<String>,
    }
    let header = &reply.payload[..reply.header_len.unwrap_or(reply.payload.len()).min(reply.payload.len())];
    match serde_json::from_slice::<Probe>(header) {
        Ok(Probe { code: Some(code), .. }) => (code, None),
        Ok(Probe { error: Some(_), .. }) => ("error".into(), None),
        Ok(probe) => ("ok".into(), probe.model_version),
        Err(_) => ("unreadable".into(), None),
    }
}

pub fn run(args: LoadgenArgs) -> anyhow::Result<()> {
    let config = args.config.load(None)?;
    let input = std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let media = args.content_type.clone().or_else(|| super::image_content_type(&args.input).map(String::from));
    let (payload, meta) = match media {
        Some(content_type) => (input, RequestMeta { content_type: Some(content_type), ..Default::default() }),
        None => {
            let (payload, header_len) = super::request_payload(input, args.binary)?;
            (payload, RequestMeta { header_len, ..Default::default() })
        }
    };
    let topic = super::request_topic(&config, &args.model, args.fleet);
    let timeout = Duration::from_millis(args.timeout_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        let requester = Arc::new(Requester::connect(&config, timeout).await?);
        let first_answer_unix_ms = match args.wait_ready {
            Some(secs) => Some(wait_ready(&requester, &topic, &payload, &meta, secs).await?),
            None => None,
        };
        let mut result = drive(&args, requester.clone(), topic, payload, meta, timeout).await;
        result.first_answer_unix_ms = first_answer_unix_ms;
        if let Ok(requester) = Arc::try_unwrap(requester) {
            requester.close().await;
        }
        anyhow::Ok(result)
    })?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&result)?)?;
    } else {
        outln!("mode        {} for {:.1} s", result.mode, result.seconds)?;
        outln!(
            "sent        {}  answered {}  ({:.1} answers/s)",
            result.sent,
            result.answered,
            result.throughput_per_s
        )?;
        outln!(
            "latency     p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            result.p50_ms,
            result.p90_ms,
            result.p99_ms,
            result.max_ms
        )?;
        outln!("outcomes    {:?}", result.outcomes)?;
        outln!("versions    {:?}", result.model_versions)?;
    }
    Ok(())
}

async fn wait_ready(
    requester: &Requester,
    topic: &str,
    payload: &[u8],
    meta: &RequestMeta,
    secs: f64,
) -> anyhow::Result<u128> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    // A request sent before the server subscribed is lost, so retry often at first; each try then
    // waits twice as long (up to 2 s), so that a server slower than one try does not fall ever
    // further behind answering the earlier tries, whose answers this loop no longer waits for.
    let mut wait = Duration::from_millis(50);
    loop {
        let reply = requester.request_with(topic, payload.to_vec(), meta.clone(), wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
        if let Ok(reply) = reply {
            if reply_kind(&reply).0 == "ok" {
                return Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis());
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "no answer from {topic} within {secs} s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn drive(
    args: &LoadgenArgs,
    requester: Arc<Requester>,
    topic: String,
    payload: Vec<u8>,
    meta: RequestMeta,
    timeout: Duration,
) -> LoadResult {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let phase = Duration::from_secs_f64(args.seconds);
    let begin = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let one = {
        let (requester, topic, payload, tally) = (requester.clone(), topic.clone(), payload.clone(), tally.clone());
        move || {
            let (requester, topic, payload, tally) = (requester.clone(), topic.clone(), payload.clone(), tally.clone());
            let meta = meta.clone();
            async move {
                let started = Instant::now();
                let outcome = requester.request_with(&topic, payload, meta, timeout).await;
                tally.lock().expect("tally lock").record(started, outcome);
            }
        }
    };
    let (mode, sent) = match args.rate {
        Some(rate) => {
            let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut sent = 0;
            while begin.elapsed() < phase {
                ticker.tick().await;
                tasks.spawn(one());
                sent += 1;
            }
            (format!("open loop at {rate} req/s"), sent)
        }
        None => {
            let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            for _ in 0..args.concurrency.max(1) {
                let (one, sent) = (one.clone(), sent.clone());
                tasks.spawn(async move {
                    while begin.elapsed() < phase {
                        sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        one().await;
                    }
                });
            }
            while tasks.join_next().await.is_some() {}
            (format!("closed loop, {} in flight", args.concurrency), sent.load(std::sync::atomic::Ordering::Relaxed))
        }
    };
    while tasks.join_next().await.is_some() {}
    let elapsed = begin.elapsed().as_secs_f64();
    let mut tally = std::mem::take(&mut *tally.lock().expect("tally lock"));
    tally.latencies.sort();
    LoadResult {
        mode,
        seconds: elapsed,
        sent,
        answered: tally.latencies.len(),
        throughput_per_s: tally.latencies.len() as f64 / elapsed,
        p50_ms: super::percentile_ms(&tally.latencies, 0.50),
        p90_ms: super::percentile_ms(&tally.latencies, 0.90),
        p99_ms: super::percentile_ms(&tally.latencies, 0.99),
        max_ms: super::percentile_ms(&tally.latencies, 1.0),
        outcomes: tally.outcomes,
        model_versions: tally.model_versions,
        first_answer_unix_ms: None,
    }
}
