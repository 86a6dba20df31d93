//! `metrics.listen` (issue 13): the Prometheus endpoint, read with the Prometheus project's own
//! Python parser, counts exactly the replies a client received; the retained stats topic carries
//! the same latency histograms.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// Every sample of the endpoint, `name{label=value,...}` -> value, parsed by `prometheus_client`.
fn scrape(port: u16) -> BTreeMap<String, f64> {
    let script = r#"
import json, sys, urllib.request
from prometheus_client.openmetrics.parser import text_string_to_metric_families
response = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics")
assert response.headers["Content-Type"].startswith("application/openmetrics-text"), response.headers["Content-Type"]
samples = {}
for family in text_string_to_metric_families(response.read().decode()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        samples[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(samples))
"#;
    let out = Command::new("python3").args(["-c", script, &port.to_string()]).output().unwrap();
    assert!(out.status.success(), "the parser refused the endpoint (pip install -r models/requirements.txt): {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prometheus_endpoint_counts_the_replies_the_client_received() {
    let broker = Broker::start();
    let port = free_port();
    let daemon = Daemon::start(
        &broker,
        &digits_repository(),
        &format!("[requests]\nstats_interval_secs = 1\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut client = V5Client::connect(&broker, &["test/metrics"]).await;
    let pixels = digits_golden().inputs[0].clone();
    let mut received: BTreeMap<(String, String), u64> = BTreeMap::new();
    let requests: Vec<(String, String)> = (0..25)
        .map(|i| (daemon.infer_topic("digits"), digits_request(&i.to_string(), &pixels)))
        .chain((0..3).map(|i| (daemon.infer_topic("digits"), format!("{{\"id\":\"bad{i}\",\"inputs\":["))))
        .chain((0..2).map(|i| (daemon.infer_topic("nope"), digits_request(&format!("nope{i}"), &pixels))))
        .collect();
    for (i, (topic, payload)) in requests.iter().enumerate() {
        client.publish(topic, payload.clone(), request_props("test/metrics", &i.to_be_bytes())).await;
    }
    for _ in &requests {
        let reply: Value = serde_json::from_slice(&client.next().await.payload).unwrap();
        let kind = reply["code"].as_str().unwrap_or("answered").to_string();
        *received.entry((reply["model_name"].as_str().unwrap().to_string(), kind)).or_default() += 1;
    }
    assert_eq!(received[&("digits".into(), "answered".into())], 25, "{received:?}");

    let device = &daemon.device;
    let samples = scrape(port);
    // `labels` as `k=v,...`; the device's is added, and the keys sorted as `scrape` writes them.
    let sample = |name: &str, labels: &str| -> f64 {
        let device = format!("device={device}");
        let mut all: Vec<&str> = labels.split(',').chain([device.as_str()]).collect();
        all.sort();
        let key = format!("{name}{{{}}}", all.join(","));
        *samples.get(&key).unwrap_or_else(|| panic!("no {key} in {samples:#?}"))
    };
    assert_eq!(sample("edgeinfer_answered_total", "model=digits"), 25.0);
    assert_eq!(sample("edgeinfer_errors_total", "code=bad_request,model=digits"), 3.0);
    assert_eq!(sample("edgeinfer_errors_total", "code=unknown_model,model="), 2.0);
    assert_eq!(sample("edgeinfer_panics_total", "model=digits"), 0.0);
    assert_eq!(sample("edgeinfer_queued", "model=digits"), 0.0);
    for stage in ["queue", "preprocess", "inference", "postprocess"] {
        let count = sample("edgeinfer_latency_seconds_count", &format!("model=digits,stage={stage}"));
        assert_eq!(count, 25.0, "{stage}: one observation per answer");
        let all = sample("edgeinfer_latency_seconds_bucket", &format!("le=+Inf,model=digits,stage={stage}"));
        assert_eq!(all, 25.0, "{stage}: the +Inf bucket holds them all");
    }
    assert!(sample("edgeinfer_latency_seconds_sum", "model=digits,stage=inference") > 0.0);

    // The retained stats topic carries the same histograms, bucket for bucket.
    wait_until("the stats show every answer", || {
        retained(&broker, &format!("edgeinfer/{device}/stats")).is_some_and(|s| s["models"]["digits"]["answered"] == 25)
    });
    let stats = retained(&broker, &format!("edgeinfer/{device}/stats")).unwrap();
    let latency = &stats["models"]["digits"]["latency_ms"];
    let counts: Vec<u64> =
        latency["inference"]["counts"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap()).collect();
    assert_eq!(counts.iter().sum::<u64>(), 25, "{latency}");
    assert_eq!(counts.len(), latency["le_ms"].as_array().unwrap().len() + 1);
    let mut cumulative = 0;
    for (bound, count) in latency["le_ms"].as_array().unwrap().iter().zip(&counts) {
        cumulative += count;
        let le = bound.as_f64().unwrap() / 1e3;
        let le = if le >= 1.0 { format!("{le:.1}") } else { format!("{le}") };
        let scraped = sample("edgeinfer_latency_seconds_bucket", &format!("le={le},model=digits,stage=inference"));
        assert_eq!(scraped, cumulative as f64, "bucket le={le}");
    }
    assert_eq!(stats["other"]["errors"], json!({"unknown_model": 2}));

    let not_found = Command::new("python3")
        .args(["-c", &format!("import urllib.request\ntry:\n urllib.request.urlopen('http://127.0.0.1:{port}/other')\nexcept Exception as e: print(e.code)")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&not_found.stdout).trim(), "404");
}

#[test]
fn home_assistant_discovery_describes_the_board_and_each_model() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "[metrics]\nhomeassistant = true\n");
    let id = &daemon.device;
    let status = retained(&broker, &format!("homeassistant/sensor/{id}_status/config")).expect("the status sensor");
    assert_eq!(status["state_topic"], format!("edgeinfer/{}/status", daemon.device));
    let answered =
        retained(&broker, &format!("homeassistant/sensor/{id}_digits_answered/config")).expect("a sensor per model");
    assert_eq!(answered["state_topic"], format!("edgeinfer/{}/stats", daemon.device));
    assert_eq!(answered["value_template"], "{{ value_json.models['digits'].answered }}");
    assert_eq!(answered["device"]["identifiers"], json!([format!("edgeinfer_{id}")]));
    assert!(retained(&broker, &format!("homeassistant/sensor/{id}_digits_errors/config")).is_some());

    let plain = Daemon::start(&broker, &digits_repository(), "");
    assert!(
        retained(&broker, &format!("homeassistant/sensor/{}_status/config", plain.device)).is_none(),
        "off by default"
    );

    // A model that leaves (here: its directory, then SIGHUP) takes its sensors and metadata along.
    let models = models_dir_with(&["digits"]);
    let leaving = Daemon::start(&broker, models.path(), "[metrics]\nhomeassistant = true\n");
    let sensor = format!("homeassistant/sensor/{}_digits_answered/config", leaving.device);
    let metadata = format!("edgeinfer/{}/models/digits", leaving.device);
    assert!(retained(&broker, &sensor).is_some() && retained(&broker, &metadata).is_some());
    std::fs::remove_dir_all(models.path().join("digits")).unwrap();
    leaving.signal("HUP");
    wait_until("the sensor config is cleared", || retained(&broker, &sensor).is_none());
    assert!(retained(&broker, &metadata).is_none(), "the model's retained metadata is cleared too");
    let status = retained(&broker, &format!("edgeinfer/{}/status", leaving.device)).unwrap();
    assert_eq!(status["models"], json!([]), "{status}");
}
