//! The daemon as a user meets it: a real Mosquitto, the built binary as a process, real models,
//! and real MQTT clients (rumqttc v5 and v3.1.1, mosquitto_rr, mosquitto_sub).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use edgeinfer::client::Requester;
use edgeinfer::config::Config;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::{json, Value};

fn requester_config(broker: &Broker) -> Config {
    let mut config = Config::default();
    config.broker.url = broker.url();
    config.finalize().unwrap()
}

async fn request_json(requester: &Requester, topic: &str, payload: String) -> Value {
    let reply = requester.request(topic, payload.into_bytes(), None, PATIENCE).await.unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

fn assert_probabilities_match(reply: &Value, expected: &[f32]) {
    let got = output_data(reply, "probabilities");
    assert_eq!(got.len(), expected.len());
    assert_eq!(argmax(&got), argmax(expected), "argmax differs: {got:?} vs {expected:?}");
    for (g, e) in got.iter().zip(expected) {
        assert!((g - e).abs() <= 1e-5, "probability {g} vs onnxruntime {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v5_request_gets_its_reply_on_the_response_topic_with_its_correlation_data() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "");
    let golden = digits_golden();
    let mut client = V5Client::connect(&broker, &["test/replies"]).await;

    let payload = digits_request("r-1", &golden.inputs[0]);
    client.publish(&daemon.infer_topic("digits"), payload, request_props("test/replies", b"\x00corr\xff")).await;
    let reply = client.next().await;

    assert_eq!(reply.topic, "test/replies");
    let props = reply.properties.unwrap();
    assert_eq!(props.correlation_data.as_deref(), Some(&b"\x00corr\xff"[..]));
    assert_eq!(props.content_type.as_deref(), Some("application/json"));
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["id"], "r-1");
    assert_eq!(v["model_name"], "digits");
    assert_eq!(v["outputs"].as_array().unwrap().len(), 2, "both outputs unless a filter is given");
    assert_probabilities_match(&v, &golden.probabilities[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mqtt_311_client_gets_its_reply_at_parameters_reply_to() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "");
    let golden = digits_golden();

    let mut options = rumqttc::MqttOptions::new("test-311", "127.0.0.1", broker.port);
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 16);
    client.subscribe("legacy/replies", rumqttc::QoS::AtLeastOnce).await.unwrap();
    let request = json!({
        "parameters": {"reply_to": "legacy/replies", "id": "old-1"},
        "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": golden.inputs[3]}],
        "outputs": [{"name": "probabilities"}]
    });
    let mut sent = false;
    let reply = tokio::time::timeout(PATIENCE, async {
        loop {
            match eventloop.poll().await.unwrap() {
                rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)) if !sent => {
                    sent = true;
                    let topic = daemon.infer_topic("digits");
                    client.publish(topic, rumqttc::QoS::AtLeastOnce, false, request.to_string()).await.unwrap();
                }
                rumqttc::Event::Incoming(rumqttc::Packet::Publish(p)) => return p,
                _ => {}
            }
        }
    })
    .await
    .expect("a reply on legacy/replies");

    assert_eq!(reply.topic, "legacy/replies");
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["id"], "old-1");
    assert_eq!(v["outputs"].as_array().unwrap().len(), 1, "the outputs filter keeps only probabilities");
    assert_probabilities_match(&v, &golden.probabilities[3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_metadata_are_retained_and_replies_without_a_reply_topic_go_to_result() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "");

    let status = retained(&broker, &format!("edgeinfer/{}/status", daemon.device)).unwrap();
    assert_eq!(status["state"], "online");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["models"], json!(["digits"]));
    let metadata = retained(&broker, &format!("edgeinfer/{}/models/digits", daemon.device)).unwrap();
    assert_eq!(metadata["name"], "digits");
    assert_eq!(metadata["inputs"], json!([{"name": "pixels", "datatype": "FP32", "shape": [-1, 64]}]));
    assert_eq!(metadata["outputs"][1], json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}));
    assert_eq!(metadata["labels"].as_array().unwrap().len(), 10);

    let result_topic = format!("edgeinfer/{}/models/digits/result", daemon.device);
    let mut client = V5Client::connect(&broker, &[&result_topic]).await;
    let golden = digits_golden();
    client
        .publish(&daemon.infer_topic("digits"), digits_request("nowhere", &golden.inputs[1]), Default::default())
        .await;
    let reply = client.next().await;
    assert_eq!(reply.topic, result_topic);
    let v: Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(v["id"], "nowhere");
    assert_probabilities_match(&v, &golden.probabilities[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_request_gets_an_error_naming_it_and_the_next_good_one_is_served() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "[requests]\nmax_payload_bytes = 65536\n");
    let mut client = V5Client::connect(&broker, &["test/errors"]).await;
    let digits = daemon.infer_topic("digits");
    let pixels = vec![1.0f32; 64];
    let input = |name: &str, shape: Value, datatype: &str, data: Value| json!({"name": name, "shape": shape, "datatype": datatype, "data": data});
    let request = |id: &str, inputs: Vec<Value>| json!({"id": id, "inputs": inputs}).to_string();

    // (id, topic, payload, bytes after a binary header, expected code, expected words in the error)
    type Case<'a> = (&'a str, String, String, Option<usize>, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("truncated", digits.clone(), "{\"id\":\"truncated\",\"inputs\":[".into(), None, "bad_request", "malformed request JSON"),
        ("malformed", digits.clone(), json!({"id": "malformed", "inputs": "pixels"}).to_string(), None, "bad_request", "malformed request JSON"),
        ("unknown-model", daemon.infer_topic("nope"), request("unknown-model", vec![input("pixels", json!([1, 64]), "FP32", json!(pixels))]), None, "unknown_model", "unknown model \"nope\""),
        ("missing", digits.clone(), request("missing", vec![input("image", json!([1, 64]), "FP32", json!(pixels))]), None, "bad_request", "missing input \"pixels\""),
        ("extra", digits.clone(), request("extra", vec![input("pixels", json!([1, 64]), "FP32", json!(pixels)), input("mask", json!([1]), "FP32", json!([1]))]), None, "bad_request", "unknown input \"mask\""),
        ("dtype", digits.clone(), request("dtype", vec![input("pixels", json!([1, 64]), "INT32", json!(vec![1; 64]))]), None, "bad_request", "must be FP32, the request sent INT32"),
        ("shape", digits.clone(), request("shape", vec![input("pixels", json!([1, 63]), "FP32", json!(vec![1.0; 63]))]), None, "bad_request", "has shape [1, 63]"),
        ("length", digits.clone(), request("length", vec![input("pixels", json!([1, 64]), "FP32", json!(vec![1.0; 10]))]), None, "bad_request", "needs 64 values, data has 10"),
        ("no-inputs", digits.clone(), json!({"id": "no-inputs", "inputs": []}).to_string(), None, "bad_request", "no inputs"),
        ("output", digits.clone(), json!({"id": "output", "inputs": [input("pixels", json!([1, 64]), "FP32", json!(pixels))], "outputs": [{"name": "embedding"}]}).to_string(), None, "bad_request", "unknown output \"embedding\""),
        ("too-large", digits.clone(), format!("{{\"id\":\"too-large\",\"pad\":\"{}\"}}", "x".repeat(100_000)), None, "too_large", "over the 65536 byte limit"),
        ("binary-short", digits.clone(), json!({"id": "binary-short", "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}]}).to_string(), Some(100), "bad_request", "binary inputs need 256 bytes"),
        ("binary-size", digits.clone(), json!({"id": "binary-size", "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 100}}]}).to_string(), Some(100), "bad_request", "binary_data_size is 100 bytes"),
    ];
    for (id, topic, json, binary, code, message) in cases {
        let mut payload = json.clone().into_bytes();
        let mut props = request_props("test/errors", id.as_bytes());
        if let Some(extra) = binary {
            props.user_properties.push(("inference-header-content-length".into(), json.len().to_string()));
            payload.extend(std::iter::repeat_n(0u8, extra));
        }
        client.publish(&topic, payload, props).await;
        let reply = client.next().await;
        assert_eq!(reply.properties.unwrap().correlation_data.as_deref(), Some(id.as_bytes()), "{id}");
        let v: Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(v["code"], code, "{id}: {v}");
        let error = v["error"].as_str().unwrap();
        assert!(error.contains(message), "{id}: error {error:?} should mention {message:?}");
        // Where the payload is not even JSON (or too large to read) only the correlation data identifies it.
        if id != "too-large" && id != "truncated" {
            assert_eq!(v["id"], id, "the error echoes the request id");
        }
    }
    let log = daemon.log();
    assert!(log.contains("request refused") && log.contains("id=dtype"), "warn lines name the request:\n{log}");

    let golden = digits_golden();
    client.publish(&digits, digits_request("good", &golden.inputs[2]), request_props("test/errors", b"good")).await;
    let v: Value = serde_json::from_slice(&client.next().await.payload).unwrap();
    assert_eq!(v["id"], "good");
    assert_probabilities_match(&v, &golden.probabilities[2]);
}

/// Every held-out sample through MQTT, JSON and binary, against onnxruntime's outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digits_answers_through_mqtt_equal_onnxruntime_on_the_held_out_split() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "");
    let golden = digits_golden();
    assert_eq!(golden.inputs.len(), 360);
    let requester = Requester::connect(&requester_config(&broker), PATIENCE).await.unwrap();
    let topic = daemon.infer_topic("digits");

    for (i, pixels) in golden.inputs.iter().enumerate() {
        let v = request_json(&requester, &topic, digits_request(&i.to_string(), pixels)).await;
        assert_probabilities_match(&v, &golden.probabilities[i]);
        let logits = output_data(&v, "logits");
        for (g, e) in logits.iter().zip(&golden.logits[i]) {
            assert!((g - e).abs() <= 1e-4, "sample {i}: logit {g} vs {e}");
        }
    }

    // Binary extension, built here by hand from the protocol's description: a JSON header, then
    // the FP32 values little-endian; binary outputs asked for.
    for (i, pixels) in golden.inputs.iter().enumerate() {
        let header = json!({
            "id": format!("bin-{i}"),
            "parameters": {"binary_data_output": true},
            "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}],
            "outputs": [{"name": "probabilities"}]
        })
        .to_string();
        let mut payload = header.clone().into_bytes();
        payload.extend(pixels.iter().flat_map(|p| p.to_le_bytes()));
        let reply = requester.request(&topic, payload, Some(header.len()), PATIENCE).await.unwrap();
        let header_len = reply.header_len.expect("a binary reply carries its header length");
        let head: Value = serde_json::from_slice(&reply.payload[..header_len]).unwrap();
        assert_eq!(head["id"], format!("bin-{i}"));
        assert_eq!(head["outputs"][0]["parameters"]["binary_data_size"], 40);
        let probs: Vec<f32> =
            reply.payload[header_len..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(probs.len(), 10);
        assert_eq!(argmax(&probs), argmax(&golden.probabilities[i]));
        for (g, e) in probs.iter().zip(&golden.probabilities[i]) {
            assert!((g - e).abs() <= 1e-5, "binary sample {i}: {g} vs {e}");
        }
    }
    requester.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_get_json_and_binary_answers() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "");
    let golden = digits_golden();
    let port = broker.port.to_string();
    let topic = daemon.infer_topic("digits");
    let example = shipped_models().join("digits/example-request.json");

    // mosquitto_rr 2.0.11 sends an empty payload with -f or -s; -m works for JSON.
    let out = Command::new("mosquitto_rr")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", &topic, "-e", "rr/json", "-W", "10", "-m"])
        .arg(std::fs::read_to_string(&example).unwrap())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], "example-1");
    assert_probabilities_match(&v, &golden.probabilities[0]);

    // Binary payloads hold NUL bytes, which -m cannot carry: mosquitto_pub -f sends the file with
    // the header length as a user property, and mosquitto_sub prints the reply.
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"id":"rr-bin","parameters":{"binary_data_output":true},"inputs":[{"name":"pixels","shape":[1,64],"datatype":"FP32","parameters":{"binary_data_size":256}}]}"#;
    let mut payload = header.as_bytes().to_vec();
    payload.extend(golden.inputs[0].iter().flat_map(|p| p.to_le_bytes()));
    let file = dir.path().join("request.bin");
    std::fs::write(&file, payload).unwrap();
    let sub = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port, "-t", "pub/bin", "-C", "1", "-W", "10", "-N"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    mosquitto_pub_binary(&broker, &topic, &file, header.len(), Some("pub/bin"));
    let out = sub.wait_with_output().unwrap();
    assert!(out.status.success(), "no binary reply within 10 s");
    let mut stream = serde_json::Deserializer::from_slice(&out.stdout).into_iter::<Value>();
    let head = stream.next().unwrap().unwrap();
    let body = &out.stdout[stream.byte_offset()..];
    assert_eq!(head["id"], "rr-bin");
    let sizes: Vec<u64> = head["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["parameters"]["binary_data_size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [40, 40]);
    assert_eq!(body.len(), 80);
    let probs: Vec<f32> = body[40..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    for (g, e) in probs.iter().zip(&golden.probabilities[0]) {
        assert!((g - e).abs() <= 1e-5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_subcommand_prints_the_reply_json_and_binary() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "");
    let golden = digits_golden();
    for binary in [false, true] {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_edgeinfer"));
        cmd.args(["request", "digits", "--broker", &broker.url(), "--device", &daemon.device, "--input"])
            .arg(shipped_models().join("digits/example-request.json"));
        if binary {
            cmd.arg("--binary");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_probabilities_match(&v, &golden.probabilities[0]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_broker_is_killed_and_restarted_the_daemon_answers_again_by_itself() {
    let mut broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "");
    let golden = digits_golden();
    let topic = daemon.infer_topic("digits");
    {
        let requester = Requester::connect(&requester_config(&broker), PATIENCE).await.unwrap();
        let v = request_json(&requester, &topic, digits_request("before", &golden.inputs[0])).await;
        assert_probabilities_match(&v, &golden.probabilities[0]);
    }

    broker.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart();
    let restarted = Instant::now();

    let requester = Requester::connect(&requester_config(&broker), PATIENCE).await.unwrap();
    let answered = loop {
        let payload = digits_request("after", &golden.inputs[5]).into_bytes();
        if let Ok(reply) = requester.request(&topic, payload, None, Duration::from_millis(500)).await {
            break serde_json::from_slice::<Value>(&reply.payload).unwrap();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "no answer 10 s after the broker came back:\n{}",
            daemon.log()
        );
    };
    assert_probabilities_match(&answered, &golden.probabilities[5]);
    let status = retained(&broker, &format!("edgeinfer/{}/status", daemon.device)).unwrap();
    assert_eq!(status["state"], "online", "status republished on reconnect to a broker that forgot it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_started_before_its_broker_connects_when_the_broker_comes() {
    let port = free_port();
    let daemon = Daemon::spawn(&format!("mqtt://127.0.0.1:{port}"), &digits_repository(), "");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let broker = Broker::start_on(port);
    daemon.wait_online(&broker);
    let requester = Requester::connect(&requester_config(&broker), PATIENCE).await.unwrap();
    let golden = digits_golden();
    let v = request_json(&requester, &daemon.infer_topic("digits"), digits_request("late", &golden.inputs[7])).await;
    assert_probabilities_match(&v, &golden.probabilities[7]);
    assert!(daemon.log().contains("broker connection failed"), "the wait for the broker is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_publishes_stopped_and_exits_zero_and_a_crash_leaves_offline() {
    let broker = Broker::start();
    let mut daemon = Daemon::start(&broker, &digits_repository(), "");
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status:?}; log:\n{}", daemon.log());
    let retained_status = retained(&broker, &format!("edgeinfer/{}/status", daemon.device)).unwrap();
    assert_eq!(
        retained_status["state"],
        "stopped",
        "{retained_status}\ndaemon:\n{}\nbroker:\n{}",
        daemon.log(),
        broker.log()
    );

    let mut crashed = Daemon::start(&broker, &digits_repository(), "");
    crashed.kill();
    let topic = format!("edgeinfer/{}/status", crashed.device);
    wait_until("the Last Will says offline", || retained(&broker, &topic).is_some_and(|s| s["state"] == "offline"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_model_is_reported_by_name_and_the_others_still_serve() {
    let models = models_dir_with(&["digits"]);
    write_file(&models.path().join("broken/model.onnx"), b"this is not a protobuf");
    write_file(
        &models.path().join("wrongtoml/model.onnx"),
        &std::fs::read(shipped_models().join("digits/model.onnx")).unwrap(),
    );
    write_file(
        &models.path().join("wrongtoml/model.toml"),
        b"[[inputs]]\nname = \"image\"\ndatatype = \"FP32\"\nshape = [1, 64]\n",
    );
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, models.path(), "");

    let status = retained(&broker, &format!("edgeinfer/{}/status", daemon.device)).unwrap();
    assert_eq!(status["models"], json!(["digits"]));
    let log = daemon.log();
    assert!(log.contains("model \"broken\": tract cannot parse the ONNX file"), "{log}");
    assert!(log.contains("model \"wrongtoml\": model.toml declares input \"image\""), "{log}");

    let requester = Requester::connect(&requester_config(&broker), PATIENCE).await.unwrap();
    let v = request_json(&requester, &daemon.infer_topic("broken"), digits_request("b", &[0.0; 64])).await;
    assert_eq!(v["code"], "unknown_model");
    let golden = digits_golden();
    let v = request_json(&requester, &daemon.infer_topic("digits"), digits_request("d", &golden.inputs[9])).await;
    assert_probabilities_match(&v, &golden.probabilities[9]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_boards_in_one_fleet_group_share_the_fleet_topic() {
    let broker = Broker::start();
    let a = Daemon::start(&broker, &digits_repository(), "");
    let b = Daemon::start(&broker, &digits_repository(), "");
    let requester = Requester::connect(&requester_config(&broker), PATIENCE).await.unwrap();
    let golden = digits_golden();
    for i in 0..40 {
        let v = request_json(
            &requester,
            "edgeinfer/fleet/models/digits/infer",
            digits_request(&format!("f{i}"), &golden.inputs[i]),
        )
        .await;
        assert_eq!(v["id"], format!("f{i}"));
        assert_probabilities_match(&v, &golden.probabilities[i]);
    }
    let answered = |d: &Daemon| d.log().matches("answered").count();
    assert_eq!(answered(&a) + answered(&b), 40, "each fleet request is answered exactly once");
    assert!(answered(&a) > 0 && answered(&b) > 0, "both boards took work: {} / {}", answered(&a), answered(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_request_is_answered_deadline_exceeded_without_computing() {
    let broker = Broker::start();
    // One worker and a request that sits behind a large batch: its 1 ms timeout passes in the queue.
    let daemon = Daemon::start(&broker, &digits_repository(), "[requests]\nworkers = 1\n");
    let mut client = V5Client::connect(&broker, &["test/deadline"]).await;
    let topic = daemon.infer_topic("digits");
    let rows = 50_000;
    let big = json!({"id": "big", "inputs": [{"name": "pixels", "shape": [rows, 64], "datatype": "FP32", "parameters": {"binary_data_size": rows * 256}}]}).to_string();
    let mut payload = big.clone().into_bytes();
    payload.extend(std::iter::repeat_n(0u8, rows * 256));
    let mut props = request_props("test/deadline", b"big");
    props.user_properties.push(("inference-header-content-length".into(), big.len().to_string()));
    for i in 0..3 {
        client
            .publish(
                &topic,
                Bytes::from(payload.clone()),
                PublishProperties { correlation_data: Some(Bytes::from(format!("big{i}"))), ..props.clone() },
            )
            .await;
    }
    let late = json!({"id": "late", "parameters": {"timeout_ms": 1}, "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": vec![0.0; 64]}]});
    client.publish(&topic, late.to_string(), request_props("test/deadline", b"late")).await;
    let mut codes = Vec::new();
    for _ in 0..4 {
        let v: Value = serde_json::from_slice(&client.next().await.payload).unwrap();
        if v["id"] == "late" {
            codes.push(v["code"].clone());
        }
    }
    assert_eq!(codes, [json!("deadline_exceeded")]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_busy_at_once_and_every_request_gets_exactly_one_reply() {
    // The model's own [serving] section sets one worker and a queue of one; the daemon's defaults
    // (a worker per core, 64 queued) would not overflow.
    let models = models_dir_with(&["digits"]);
    let manifest = models.path().join("digits/model.toml");
    let toml = std::fs::read_to_string(&manifest).unwrap() + "\n[serving]\nworkers = 1\nqueue_capacity = 1\n";
    std::fs::write(&manifest, toml).unwrap();
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, models.path(), "[requests]\nstats_interval_secs = 1\n");
    assert!(daemon.log().contains("model=digits version=1 workers=1 queue_capacity=1"), "{}", daemon.log());
    let mut client = V5Client::connect(&broker, &["test/busy"]).await;
    let topic = daemon.infer_topic("digits");
    let rows = 20_000;
    let header = json!({"inputs": [{"name": "pixels", "shape": [rows, 64], "datatype": "FP32", "parameters": {"binary_data_size": rows * 256}}]}).to_string();
    let mut payload = header.clone().into_bytes();
    payload.extend(std::iter::repeat_n(0u8, rows * 256));
    let payload = Bytes::from(payload);
    // Enough that some arrive while the worker computes, even on a loaded machine (10 once did not).
    let sent = 20;
    for i in 0..sent {
        let mut props = request_props("test/busy", format!("{i}").as_bytes());
        props.user_properties.push(("inference-header-content-length".into(), header.len().to_string()));
        client.publish(&topic, payload.clone(), props).await;
    }
    let mut seen = std::collections::BTreeSet::new();
    let mut busy = 0;
    for _ in 0..sent {
        let reply = client.next().await;
        let correlation = reply.properties.unwrap().correlation_data.unwrap();
        assert!(seen.insert(correlation.clone()), "a second reply for {correlation:?}");
        let v: Value = serde_json::from_slice(&reply.payload).unwrap();
        match v["code"].as_str() {
            None => assert_eq!(v["outputs"][0]["shape"], json!([rows, 10])),
            Some("busy") => busy += 1,
            Some(other) => panic!("unexpected error {other}: {v}"),
        }
    }
    assert_eq!(seen.len(), sent);
    assert!(busy > 0, "a queue of one behind one worker must overflow with {sent} large requests");
    let v = retained(&broker, &format!("edgeinfer/{}/status", daemon.device)).unwrap();
    assert_eq!(v["state"], "online");

    // The retained counts (published every second here) say the same as the replies did.
    let stats_topic = format!("edgeinfer/{}/stats", daemon.device);
    let mut last = Value::Null;
    wait_until("the published counts include every reply", || {
        last = retained(&broker, &stats_topic).unwrap_or_default();
        last["models"]["digits"]["requests"] == sent
    });
    let digits = &last["models"]["digits"];
    assert_eq!(digits["errors"]["busy"], busy, "{last}");
    assert_eq!(digits["answered"], sent - busy, "{last}");
    assert_eq!(digits["queued"], 0, "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_broker_gone_still_exits_zero() {
    let mut broker = Broker::start();
    let mut daemon = Daemon::start(&broker, &digits_repository(), "");
    broker.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = daemon.terminate();
    assert!(status.success(), "exit status {status:?}; log:\n{}", daemon.log());
    assert!(daemon.log().contains("stopping anyway"), "{}", daemon.log());
}

/// Dynamic batching: requests of 1 to 4 rows, all in flight at once to one worker that batches
/// up to 16 rows. Every reply holds exactly its own rows, equal to onnxruntime's, and batches of
/// more than one request did run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_requests_each_get_their_own_rows_equal_to_onnxruntime() {
    let models = models_dir_with(&["digits"]);
    let manifest = models.path().join("digits/model.toml");
    let mut toml = std::fs::read_to_string(&manifest).unwrap();
    toml.push_str("\n[serving]\nworkers = 1\nqueue_capacity = 512\nmax_batch_size = 16\nmax_queue_delay_us = 2000\n");
    std::fs::write(&manifest, toml).unwrap();
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, models.path(), "");
    let golden = digits_golden();
    let requester = std::sync::Arc::new(Requester::connect(&requester_config(&broker), PATIENCE).await.unwrap());
    let topic = daemon.infer_topic("digits");

    let mut chunks = Vec::new();
    let mut start = 0;
    while start < golden.inputs.len() {
        let rows = (chunks.len() % 4 + 1).min(golden.inputs.len() - start);
        chunks.push(start..start + rows);
        start += rows;
    }
    let request_count = chunks.len();
    let mut requests = tokio::task::JoinSet::new();
    for rows in chunks {
        let pixels: Vec<f32> = golden.inputs[rows.clone()].iter().flatten().copied().collect();
        let payload = json!({
            "id": format!("rows-{}-{}", rows.start, rows.end),
            "inputs": [{"name": "pixels", "shape": [rows.len(), 64], "datatype": "FP32", "data": pixels}],
            "outputs": [{"name": "probabilities"}]
        });
        let (requester, topic) = (requester.clone(), topic.clone());
        requests.spawn(async move {
            let reply = requester.request(&topic, payload.to_string().into_bytes(), None, PATIENCE).await.unwrap();
            (rows, serde_json::from_slice::<Value>(&reply.payload).unwrap())
        });
    }
    let mut answered = 0;
    while let Some(done) = requests.join_next().await {
        let (rows, reply) = done.unwrap();
        assert_eq!(reply["id"], format!("rows-{}-{}", rows.start, rows.end), "{reply}");
        assert_eq!(reply["outputs"][0]["shape"], json!([rows.len(), 10]), "{reply}");
        let got = output_data(&reply, "probabilities");
        for (row, sample) in rows.clone().enumerate() {
            let own = &got[row * 10..row * 10 + 10];
            assert_eq!(argmax(own), argmax(&golden.probabilities[sample]), "sample {sample}");
            for (g, e) in own.iter().zip(&golden.probabilities[sample]) {
                assert!((g - e).abs() <= 1e-5, "sample {sample} in a batch: {g} vs onnxruntime {e}");
            }
        }
        answered += rows.len();
    }
    assert_eq!(answered, golden.inputs.len());
    let log = daemon.log();
    let sizes: Vec<usize> = log
        .lines()
        .filter(|l| l.contains("answered"))
        .filter_map(|l| l.split("batch=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(sizes.len(), request_count, "one answered line per request:\n{log}");
    assert!(sizes.iter().any(|&s| s > 1), "no request ran in a batch of more than one: {sizes:?}");
}
