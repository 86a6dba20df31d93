//! `metrics.listen`: the numbers of the stats topic for a Prometheus scraper, as OpenMetrics text
//! at `http://<listen>/metrics`, each series labelled with `model` and `device`.
//!
//! The counts are read from [`Stats`] at each scrape, so the endpoint and the retained stats
//! topic can never disagree. The server is a thread of its own answering one request at a time:
//! a scrape every few seconds is all it is for, and a slow scraper cannot hold up inference.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::stats::{Counters, Stage, Stats, LATENCY_BUCKETS};

/// What the endpoint reads at each scrape.
pub(crate) struct Source {
    pub stats: Arc<Stats>,
    pub device: String,
    pub queued: Queued,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("device", &self.device).finish_non_exhaustive()
    }
}

/// The endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("metrics.listen {addr}: {message} (is another process listening there?)")]
pub struct ListenError {
    addr: SocketAddr,
    message: String,
}

/// Starts serving `/metrics` on `addr`.
pub(crate) fn serve(addr: SocketAddr, source: Source) -> Result<(), ListenError> {
    let server = tiny_http::Server::http(addr).map_err(|e| ListenError { addr, message: e.to_string() })?;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(source));
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let response = match request.url() {
                    "/metrics" => {
                        let mut text = String::new();
                        prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String");
                        let content_type = tiny_http::Header::from_bytes(
                            "Content-Type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )
                        .expect("a valid header");
                        tiny_http::Response::from_string(text).with_header(content_type)
                    }
                    _ => tiny_http::Response::from_string("only /metrics is served here\n").with_status_code(404),
                };
                if let Err(e) = request.respond(response) {
                    tracing::debug!(error = %e, "metrics scrape: could not answer");
                }
            }
        })
        .expect("spawning the metrics thread");
    tracing::info!(%addr, "metrics on http://{addr}/metrics");
    Ok(())
}

/// Label values as the text format wants them (the encoder writes them as they are).
fn escaped(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A series' labels: device and model, and maybe one more (code, reason, stage).
type Labels = Vec<(&'static str, String)>;

/// The requests waiting in a model's queue now.
pub(crate) type Queued = Box<dyn Fn(&str) -> Option<usize> + Send + Sync>;

/// Writes one counter family: for each model, the values `values` gives, each under the
/// model's labels plus its own extra label, if any.
fn counters(
    encoder: &mut DescriptorEncoder<'_>,
    (name, help): (&str, &str),
    labelled: &[(Labels, Arc<Counters>)],
    values: impl Fn(&Counters) -> Vec<(Option<(&'static str, String)>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, model) in labelled {
        for (extra, n) in values(model) {
            let mut labels = labels.clone();
            labels.extend(extra);
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
    }
    Ok(())
}

impl Collector for Source {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (models, other) = self.stats.models();
        let device = escaped(&self.device);
        let model_labels = |name: &str| -> Labels { vec![("device", device.clone()), ("model", escaped(name))] };
        let labelled: Vec<(Labels, Arc<Counters>)> = models
            .iter()
            .map(|(name, counters)| (model_labels(name), counters.clone()))
            .chain(std::iter::once((model_labels(""), other)))
            .collect();
        counters(&mut encoder, ("edgeinfer_answered", "Requests answered with a result"), &labelled, |c| {
            vec![(None, c.answered_count())]
        })?;
        counters(&mut encoder, ("edgeinfer_errors", "Requests answered with an error, by code"), &labelled, |c| {
            c.errors().into_iter().map(|(code, n)| (Some(("code", code.to_string())), n)).collect()
        })?;
        let unanswered = (
            "edgeinfer_unanswered",
            "Requests that got no reply, by reason (retained, no reply topic, QoS 0 overload)",
        );
        counters(&mut encoder, unanswered, &labelled, |c| {
            c.unanswered_counts().into_iter().map(|(why, n)| (Some(("reason", why.to_string())), n)).collect()
        })?;
        counters(&mut encoder, ("edgeinfer_panics", "Requests whose answering panicked"), &labelled, |c| {
            vec![(None, c.panics())]
        })?;
        let mut family = encoder.encode_descriptor(
            "edgeinfer_queued",
            "Requests waiting in the model's queue",
            None,
            MetricType::Gauge,
        )?;
        for (name, _) in &models {
            if let Some(queued) = (self.queued)(name) {
                ConstGauge::new(queued as i64).encode(family.encode_family(&model_labels(name))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "edgeinfer_latency_seconds",
            "Answered requests' time by stage: queue wait, pre-processing, inference, post-processing",
            None,
            MetricType::Histogram,
        )?;
        for (name, counters) in &models {
            for stage in Stage::ALL {
                let (counts, sum) = counters.latency(stage).read();
                // f64::MAX is how the encoder spells the +Inf bucket.
                let buckets: Vec<(f64, u64)> =
                    LATENCY_BUCKETS.iter().copied().chain([f64::MAX]).zip(counts.iter().copied()).collect();
                let mut labels = model_labels(name);
                labels.push(("stage", stage.as_str().into()));
                family.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                    sum,
                    counts.iter().sum(),
                    &buckets,
                    None,
                )?;
            }
        }
        let uptime = ConstGauge::new(self.stats.uptime().as_secs() as i64);
        let family = encoder.encode_descriptor(
            "edgeinfer_uptime_seconds",
            "Seconds since the daemon started",
            None,
            uptime.metric_type(),
        )?;
        uptime.encode(family)?;
        Ok(())
    }
}
