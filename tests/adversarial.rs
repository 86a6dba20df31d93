//! What a hostile or careless client sends, against the real daemon and a real Mosquitto: every
//! message gets one clear reply (or is ignored and counted), and the daemon keeps its broker
//! connection throughout. Each case here once cost the daemon its connection, or a reply.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use serde_json::{json, Value};

fn reply_json(publish: &Publish) -> Value {
    serde_json::from_slice(&publish.payload).unwrap_or_else(|e| panic!("reply is not JSON ({e})"))
}

fn correlation(publish: &Publish) -> Option<String> {
    let data = publish.properties.as_ref()?.correlation_data.clone()?;
    Some(String::from_utf8_lossy(&data).into_owned())
}

/// The daemon connected once and never lost the connection: a protocol violation in anything it
/// published would have made Mosquitto close it.
fn assert_never_reconnected(daemon: &Daemon) {
    let log = daemon.log();
    for link in ["device", "fleet"] {
        let connects = log.matches(&format!("connected to broker link={link}")).count();
        assert_eq!(connects, 1, "the {link} connection was made {connects} times; log:\n{log}");
    }
    assert!(!log.contains("broker connection failed"), "lost the connection; log:\n{log}");
}

/// The next message, or `None` when nothing comes within `wait`.
async fn next_within(client: &mut V5Client, wait: Duration) -> Option<Publish> {
    tokio::time::timeout(wait, client.next()).await.ok()
}

/// The daemon's latest retained stats (`Null` before the first).
fn stats(broker: &Broker, daemon: &Daemon) -> Value {
    retained(broker, &format!("edgeinfer/{}/stats", daemon.device)).unwrap_or_default()
}

fn digits_json(id: &str) -> String {
    digits_request(id, &digits_golden().inputs[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_reply_topics_are_refused_on_the_result_topic_and_the_connection_stays() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "[requests]\nstats_interval_secs = 1\n");
    let result = format!("edgeinfer/{}/models/digits/result", daemon.device);
    let mut client = V5Client::connect(&broker, &[&result, "ok/replies", "#"]).await;
    let topic = daemon.infer_topic("digits");

    let reply_to_cases = ["x/\u{1}", "\u{7f}", "\u{85}", "\u{fffe}", "\u{10ffff}", "a/#", "a/+/b", "$SYS/x"];
    for (n, reply_to) in reply_to_cases.iter().enumerate() {
        let request = json!({"id": format!("r{n}"), "parameters": {"reply_to": reply_to}, "inputs": []});
        client.publish(&topic, request.to_string(), PublishProperties::default()).await;
    }
    let own = ["", "edgeinfer/x/status", "edgeinfer/other/models/digits/infer", "edgeinfer/fleet/models/digits/infer"];
    let own_status = format!("edgeinfer/{}/status", daemon.device);
    let mut response_topic_cases: Vec<&str> = own.to_vec();
    response_topic_cases.extend([own_status.as_str(), "$share/g/x", "a/#"]);
    for (n, response_topic) in response_topic_cases.iter().enumerate() {
        let props = request_props(response_topic, format!("p{n}").as_bytes());
        client.publish(&topic, digits_json(&format!("p{n}")), props).await;
    }
    let expected = reply_to_cases.len() + response_topic_cases.len();
    let mut seen = HashSet::new();
    while seen.len() < expected {
        let publish = client.next().await;
        let on = String::from_utf8_lossy(&publish.topic).into_owned();
        if publish.retain || on == topic || on.ends_with("/stats") {
            continue;
        }
        assert_eq!(on, result, "every refusal goes to the result topic, nowhere else");
        let reply = reply_json(&publish);
        assert_eq!(reply["code"], "bad_request", "{reply}");
        let error = reply["error"].as_str().unwrap();
        let id = reply["id"].as_str().unwrap().to_string();
        let what = if id.starts_with('r') { "parameters.reply_to" } else { "Response Topic" };
        assert!(error.starts_with(what) && error.contains("refused"), "{error}");
        seen.insert(id);
    }
    // The daemon's own topics are untouched and a good request still gets its answer.
    assert_eq!(retained(&broker, &own_status).unwrap()["state"], "online");
    client.publish(&topic, digits_json("good"), request_props("ok/replies", b"good")).await;
    loop {
        let publish = client.next().await;
        if publish.topic == topic.as_bytes() {
            continue;
        }
        if correlation(&publish).as_deref() == Some("good") {
            let reply = reply_json(&publish);
            assert!(reply["outputs"].is_array(), "{reply}");
            break;
        }
    }
    wait_until("the stats count every refusal", || {
        stats(&broker, &daemon)["models"]["digits"]["errors"]["bad_request"].as_u64() == Some(expected as u64)
    });
    assert_never_reconnected(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_too_long_to_answer_on_is_counted_not_published() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "[requests]\nstats_interval_secs = 1\n");
    let mut client = V5Client::connect(&broker, &["ok/replies"]).await;
    let prefix = format!("edgeinfer/{}/models/", daemon.device);
    let model = "m".repeat(65_535 - prefix.len() - "/infer".len());
    let topic = format!("{prefix}{model}/infer");
    assert_eq!(topic.len(), 65_535);
    client.publish(&topic, digits_json("long"), PublishProperties::default()).await;
    wait_until("the request is counted as unanswerable", || {
        stats(&broker, &daemon)["other"]["unanswered"]["no_reply_topic"] == 1
    });
    // With a reply topic of its own, the same request is answered: unknown model.
    client.publish(&topic, digits_json("long2"), request_props("ok/replies", b"long2")).await;
    let reply = reply_json(&client.next().await);
    assert_eq!(reply["code"], "unknown_model", "{reply}");
    assert!(reply["error"].as_str().unwrap().len() < 4096, "the model name is cut in the message");
    assert_never_reconnected(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_requests_are_never_computed_even_across_reconnects() {
    let broker = Broker::start();
    let models = digits_repository();
    let mut daemon = Daemon::spawn(&broker.url(), &models, "[requests]\nstats_interval_secs = 1\n");
    let topic = daemon.infer_topic("digits");
    let client = V5Client::connect(&broker, &[]).await;
    // The poison of issue 9 and a benign request, both retained before the daemon subscribes.
    let poison = r#"{"parameters":{"reply_to":"x/\u0001"},"inputs":[]}"#;
    client.client.publish(topic.clone(), QoS::AtLeastOnce, true, poison.as_bytes().to_vec()).await.unwrap();
    let benign_topic = format!("edgeinfer/{}/models/nope/infer", daemon.device);
    let benign = json!({"id": "benign", "parameters": {"reply_to": "ok/retained"}, "inputs": []}).to_string();
    client.client.publish(benign_topic, QoS::AtLeastOnce, true, benign.into_bytes()).await.unwrap();
    let mut listener = V5Client::connect(&broker, &["ok/retained"]).await;
    daemon.wait_online(&broker);
    wait_until("both retained requests are counted", || {
        let s = stats(&broker, &daemon);
        s["models"]["digits"]["unanswered"]["retained"] == 1 && s["other"]["unanswered"]["retained"] == 1
    });
    assert!(next_within(&mut listener, Duration::from_millis(500)).await.is_none(), "a retained request was answered");
    assert_never_reconnected(&daemon);
    daemon.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_over_the_reply_limit_become_too_large_and_duplicate_outputs_are_refused() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "[requests]\nmax_reply_bytes = 2048\n");
    let mut client = V5Client::connect(&broker, &["ok/replies"]).await;
    let topic = daemon.infer_topic("digits");
    let rows: Vec<Vec<f32>> = digits_golden().inputs.iter().take(20).cloned().collect();
    let batch =
        json!({"id": "batch", "inputs": [{"name": "pixels", "shape": [20, 64], "datatype": "FP32", "data": rows}]});
    client.publish(&topic, batch.to_string(), request_props("ok/replies", b"batch")).await;
    let reply = reply_json(&client.next().await);
    assert_eq!(reply["code"], "too_large", "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("requests.max_reply_bytes"), "{reply}");

    let twice = json!({"id": "twice", "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32",
        "data": digits_golden().inputs[0]}], "outputs": [{"name": "logits"}, {"name": "probabilities"}, {"name": "logits"}]});
    client.publish(&topic, twice.to_string(), request_props("ok/replies", b"twice")).await;
    let reply = reply_json(&client.next().await);
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("\"logits\" is requested more than once"), "{reply}");
    assert_never_reconnected(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_brokers_maximum_packet_size_is_respected() {
    // Mosquitto names its max_packet_size in CONNACK; a larger publish would cost the connection.
    // A 3.5 kB text line asking for the recogniser's raw probabilities (40 x 6625 floats) makes a
    // reply of about 3 MB.
    let broker = Broker::start_with("max_packet_size 1000000\n");
    let models = pack(&["ppocr_rec"]);
    let daemon = Daemon::start(&broker, models.path(), "");
    let mut client = V5Client::connect(&broker, &["ok/replies"]).await;
    let line = std::fs::read(repo_root().join("tests/fixtures/pack/ocr/00.png")).unwrap();
    let topic = daemon.infer_topic("ppocr_rec");
    let raw = media_props("ok/replies", "raw", "image/png", &[("outputs", "softmax_11.tmp_0")]);
    client.publish(&topic, line.clone(), raw).await;
    let reply = reply_json(&client.next().await);
    assert_eq!(reply["code"], "too_large", "{}", &reply.to_string()[..200.min(reply.to_string().len())]);
    assert!(reply["error"].as_str().unwrap().contains("limit of 1000000"), "{reply}");
    assert!(daemon.log().contains("max_packet_size=Some(1000000)"), "read from CONNACK");
    client.publish(&topic, line, media_props("ok/replies", "text", "image/png", &[])).await;
    let reply = reply_json(&client.next().await);
    assert_eq!(reply["outputs"][0]["name"], "text", "{reply}");
    assert_never_reconnected(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_ids_and_names_are_refused_and_logged_short() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "");
    let mut client = V5Client::connect(&broker, &["ok/replies"]).await;
    let topic = daemon.infer_topic("digits");
    let big = "i".repeat(4 << 20);
    let long_id = json!({"id": big, "inputs": []}).to_string();
    client.publish(&topic, long_id, request_props("ok/replies", b"id")).await;
    let reply = reply_json(&client.next().await);
    assert_eq!(reply["code"], "bad_request", "{reply}");
    assert!(reply.get("id").is_none() && reply["error"].as_str().unwrap().contains("request id is"), "{reply}");
    let long_name = json!({"id": "n", "inputs": [{"name": big, "shape": [1], "datatype": "FP32", "data": [0]}]});
    client.publish(&topic, long_name.to_string(), request_props("ok/replies", b"name")).await;
    let publish = client.next().await;
    assert!(publish.payload.len() < 4096, "an error reply stays small: {}", publish.payload.len());
    assert_eq!(reply_json(&publish)["code"], "bad_request");
    let log = daemon.log();
    assert!(log.len() < 64 * 1024, "attacker strings are cut in the log: {} bytes", log.len());
    assert_never_reconnected(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_the_model_cannot_take_is_named() {
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, &digits_repository(), "");
    let mut client = V5Client::connect(&broker, &["ok/replies"]).await;
    let topic = daemon.infer_topic("digits");
    let cases = [
        ("audio/wav", b"RIFF\x24\0\0\0WAVEfmt ".to_vec(), "WAV file is not readable"),
        ("audio/pcm;rate=16000;channels=2", vec![0; 8], "only mono audio"),
        ("image/gif", b"GIF89a".to_vec(), "\"image/gif\" is not accepted"),
        ("audio/pcm;rate=16000", vec![0; 8], "does not take audio samples"),
    ];
    for (content_type, payload, _) in &cases {
        let mut props = request_props("ok/replies", content_type.as_bytes());
        props.content_type = Some(content_type.to_string());
        client.publish(&topic, payload.clone(), props).await;
    }
    for _ in 0..cases.len() {
        let publish = client.next().await;
        let which = correlation(&publish).unwrap();
        let (_, _, expected) = cases.iter().find(|c| c.0 == which).unwrap();
        let reply = reply_json(&publish);
        assert_eq!(reply["code"], "bad_request", "{which}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains(expected), "{which}: {reply}");
    }
    assert_never_reconnected(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_qos1_flood_of_bad_requests_gets_every_reply() {
    const CLIENTS: usize = 4;
    const EACH: usize = 2_500;
    // Mosquitto queues at most 1000 QoS 1 messages per client by default and drops the rest; the
    // daemon's flow control keeps the flood in the broker, so the broker must be let to hold it.
    let broker = Broker::start_with("max_queued_messages 0\n");
    let daemon = Daemon::start(&broker, &digits_repository(), "");
    let topic = daemon.infer_topic("digits");
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let reply = format!("flood/{c}");
        let mut client = V5Client::connect(&broker, &[&reply]).await;
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            let sender = client.client.clone();
            let reply_topic = reply.clone();
            let publisher = tokio::spawn(async move {
                for i in 0..EACH {
                    let props = PublishProperties {
                        response_topic: Some(reply_topic.clone()),
                        correlation_data: Some(Bytes::from(i.to_string())),
                        ..Default::default()
                    };
                    let bad = format!(r#"{{"id":"{i}","inputs":[{{"name":"nope"}}]}}"#);
                    sender.publish_with_properties(&topic, QoS::AtLeastOnce, false, bad, props).await.unwrap();
                }
            });
            let mut seen = HashSet::new();
            while seen.len() < EACH {
                let Ok(publish) = tokio::time::timeout(Duration::from_secs(15), client.next()).await else {
                    break;
                };
                assert_eq!(reply_json(&publish)["code"], "bad_request");
                assert!(seen.insert(correlation(&publish).unwrap()), "a request was answered twice");
            }
            publisher.await.unwrap();
            seen.len()
        }));
    }
    let mut answered = 0;
    for task in tasks {
        answered += task.await.unwrap();
    }
    assert_eq!(answered, CLIENTS * EACH, "log:\n{}", daemon.log());
    assert!(!daemon.log().contains("dropped"), "no reply was dropped");
    assert_never_reconnected(&daemon);
}

/// An all-zero PNG: a few hundred kB that decode to `width * height * 4` bytes.
fn zero_png(width: u32, height: u32) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image::RgbaImage::new(width, height).write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// Peak resident memory of a process (VmHWM), in MB.
fn peak_rss_mb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decompression_bombs_wait_for_the_shared_decode_budget_or_are_refused() {
    let broker = Broker::start();
    let models = pack(&["ppocr_rec"]);
    // Eight threads, so that without the shared budget eight bombs would decode at once.
    let daemon = Daemon::start(&broker, models.path(), "[requests]\nworkers = 8\n");
    let mut client = V5Client::connect(&broker, &["ok/bombs"]).await;
    let topic = daemon.infer_topic("ppocr_rec");
    let before = peak_rss_mb(daemon.pid());

    let huge = zero_png(8192, 8192);
    client.publish(&topic, huge, media_props("ok/bombs", "huge", "image/png", &[])).await;
    let reply = reply_json(&client.next().await);
    assert_eq!(reply["code"], "too_large", "{reply}");
    assert!(reply["error"].as_str().unwrap().contains("requests.max_image_pixels"), "{reply}");

    // 4096 x 4096 RGBA: 64 MiB decoded plus its 48 MiB RGB copy, so the default 256 MiB budget holds
    // two at a time; the others wait for room (or, after two seconds, are answered busy).
    let bomb = zero_png(4096, 4096);
    assert!(bomb.len() < 1_000_000, "{}", bomb.len());
    for n in 0..8 {
        client.publish(&topic, bomb.clone(), media_props("ok/bombs", &format!("b{n}"), "image/png", &[])).await;
    }
    let mut outcomes = Vec::new();
    for _ in 0..8 {
        let reply = reply_json(&client.next().await);
        outcomes.push(if reply["outputs"].is_array() { "answered".to_string() } else { reply["code"].to_string() });
    }
    assert!(outcomes.iter().all(|o| o == "answered" || o == "\"busy\""), "{outcomes:?}");
    assert!(outcomes.iter().any(|o| o == "answered"), "{outcomes:?}");
    let peak = peak_rss_mb(daemon.pid());
    eprintln!("peak RSS {before} MB at start, {peak} MB after the bombs; outcomes {outcomes:?}");
    // The decode budget (256 MiB) bounds what the bombs add, whatever the thread count; eight
    // concurrent decodes would add about 900 MB.
    assert!(peak < before + 256 + 128, "peak RSS {peak} MB, {before} MB before the bombs");
    assert_never_reconnected(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_belongs_to_the_client_that_started_it() {
    let broker = Broker::start();
    let models = pack(&["silero_vad"]);
    let daemon = Daemon::start(&broker, models.path(), "");
    let mut client = V5Client::connect(&broker, &["alice/vad", "mallory/vad"]).await;
    let topic = daemon.infer_topic("silero_vad");
    let chunk = vec![0u8; 512 * 2];
    let pcm = "audio/pcm;format=s16le;rate=16000";
    let mut ask = async |reply: &str, n: &str| {
        client.publish(&topic, chunk.clone(), media_props(reply, n, pcm, &[("session", "mic")])).await;
        let publish = client.next().await;
        assert_eq!(String::from_utf8_lossy(&publish.topic), reply);
        reply_json(&publish)["parameters"].clone()
    };
    assert_eq!(ask("alice/vad", "1").await["session_started"], true);
    // Another client using the same id gets a session of its own: it neither continues nor resets alice's.
    assert_eq!(ask("mallory/vad", "2").await["session_started"], true);
    let third = ask("alice/vad", "3").await;
    assert!(third.get("session_started").is_none(), "alice's session continues: {third}");
    assert_never_reconnected(&daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_flood_from_many_clients_keeps_memory_bounded_and_answers_every_qos1_request_once() {
    const CLIENTS: usize = 20;
    const EACH: usize = 250;
    let broker = Broker::start_with("max_queued_messages 0\n");
    let daemon = Daemon::start(&broker, &digits_repository(), "[requests]\nstats_interval_secs = 1\n");
    let topic = daemon.infer_topic("digits");
    let request = digits_json("flood");
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let reply = format!("mixed/{c}");
        let mut client = V5Client::connect(&broker, &[&reply]).await;
        let (topic, request) = (topic.clone(), request.clone());
        tasks.push(tokio::spawn(async move {
            let sender = client.client.clone();
            let reply_topic = reply.clone();
            let publisher = tokio::spawn(async move {
                for i in 0..EACH {
                    for (qos, tag) in [(QoS::AtLeastOnce, "q1"), (QoS::AtMostOnce, "q0")] {
                        let props = PublishProperties {
                            response_topic: Some(reply_topic.clone()),
                            correlation_data: Some(Bytes::from(format!("{tag}-{i}"))),
                            ..Default::default()
                        };
                        sender.publish_with_properties(&topic, qos, false, request.clone(), props).await.unwrap();
                    }
                }
            });
            let (mut qos1, mut qos0) = (HashSet::new(), 0);
            // Until every QoS 1 reply is in, then what QoS 0 replies still come.
            let idle = |qos1: &HashSet<String>| Duration::from_secs(if qos1.len() < EACH { 15 } else { 2 });
            while let Ok(publish) = tokio::time::timeout(idle(&qos1), client.next()).await {
                let reply = reply_json(&publish);
                assert!(reply["outputs"].is_array() || reply["code"] == "busy", "{reply}");
                let id = correlation(&publish).unwrap();
                if id.starts_with("q1") {
                    assert!(qos1.insert(id), "a QoS 1 request was answered twice");
                } else {
                    qos0 += 1;
                }
            }
            publisher.await.unwrap();
            (qos1.len(), qos0)
        }));
    }
    let (mut qos1, mut qos0) = (0, 0);
    for task in tasks {
        let (one, zero) = task.await.unwrap();
        qos1 += one;
        qos0 += zero;
    }
    let peak = peak_rss_mb(daemon.pid());
    let counts = stats(&broker, &daemon);
    let overloaded = counts["models"]["digits"]["unanswered"]["qos0_overloaded"].as_u64().unwrap_or(0);
    eprintln!(
        "{CLIENTS} clients x {EACH} QoS 1 + {EACH} QoS 0: QoS 1 answered {qos1}, QoS 0 answered {qos0}, \
         QoS 0 dropped and counted {overloaded}; peak RSS {peak} MB"
    );
    assert_eq!(qos1, CLIENTS * EACH, "every QoS 1 request answered once");
    assert!(qos0 as u64 + overloaded <= (CLIENTS * EACH) as u64);
    assert!(peak < 300, "peak RSS {peak} MB");
    assert_never_reconnected(&daemon);
}
