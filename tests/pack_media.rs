//! Images and audio in, answers out, through the real daemon and broker: the pack's PP-OCR
//! recogniser and direction classifier, and silero VAD streamed through a session. The answers
//! are compared with onnxruntime's on the same data (`tests/fixtures/pack/`, made by
//! `models/make_pack_goldens.py`); the model files come from `python3 models/fetch.py`.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde_json::Value;

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/pack")
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn reply_json(publish: &Publish) -> Value {
    let header_len = publish
        .properties
        .as_ref()
        .and_then(|p| p.user_properties.iter().find(|(k, _)| k == "inference-header-content-length"))
        .map(|(_, v)| v.parse().unwrap());
    edgeinfer::protocol::decode_reply(&publish.payload, header_len).unwrap()
}

fn correlation(publish: &Publish) -> String {
    let data = publish.properties.as_ref().and_then(|p| p.correlation_data.clone()).expect("correlation data");
    String::from_utf8(data.to_vec()).unwrap()
}

/// Publishes every request, then collects the replies by correlation id.
async fn ask_all(
    client: &mut V5Client,
    requests: Vec<(String, String, Vec<u8>, PublishProperties)>,
) -> HashMap<String, Value> {
    let count = requests.len();
    for (topic, _, payload, props) in requests {
        client.publish(&topic, payload, props).await;
    }
    let mut replies = HashMap::new();
    while replies.len() < count {
        let publish = client.next().await;
        replies.insert(correlation(&publish), reply_json(&publish));
    }
    replies
}

fn strings(reply: &Value, output: &str) -> Vec<String> {
    let outputs = reply["outputs"].as_array().unwrap_or_else(|| panic!("no outputs in {reply}"));
    let out = outputs.iter().find(|o| o["name"] == output).unwrap_or_else(|| panic!("no {output} in {reply}"));
    assert_eq!(out["datatype"], "BYTES", "{out}");
    out["data"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_line_images_over_mqtt_read_and_orient_like_onnxruntime() {
    let ocr = fixture_json("ocr.json");
    let broker = Broker::start();
    let models = pack(&["ppocr_rec", "ppocr_cls"]);
    // Every request is published at once: let them all queue (the default queue would answer busy).
    let daemon = Daemon::start(&broker, models.path(), "[requests]\nqueue_capacity = 128\n");
    let mut client = V5Client::connect(&broker, &["replies/ocr"]).await;
    let lines = ocr["lines"].as_array().unwrap();

    let mut requests = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        for (form, content_type) in [("png", "image/png"), ("jpeg", "image/jpeg")] {
            let bytes = std::fs::read(fixtures().join(line[form].as_str().unwrap())).unwrap();
            for model in ["ppocr_rec", "ppocr_cls"] {
                let id = format!("{model}/{form}/{i}");
                let props = media_props("replies/ocr", &id, content_type, &[("id", &id)]);
                requests.push((daemon.infer_topic(model), id, bytes.clone(), props));
            }
        }
        let rotated = std::fs::read(fixtures().join(line["png_180"].as_str().unwrap())).unwrap();
        let id = format!("ppocr_cls/png_180/{i}");
        requests.push((
            daemon.infer_topic("ppocr_cls"),
            id.clone(),
            rotated,
            media_props("replies/ocr", &id, "image/png", &[]),
        ));
    }
    let replies = ask_all(&mut client, requests).await;

    let mut same_as_onnxruntime = 0;
    let mut same_as_rendered = 0;
    let mut total = 0;
    for (i, line) in lines.iter().enumerate() {
        for form in ["png", "jpeg"] {
            let reply = &replies[&format!("ppocr_rec/{form}/{i}")];
            assert_eq!(reply["id"], format!("ppocr_rec/{form}/{i}"));
            let text = &strings(reply, "text")[0];
            let confidence = output_data(reply, "confidence")[0];
            let reference = &line["rec"][form];
            total += 1;
            if text == reference["text"].as_str().unwrap() {
                same_as_onnxruntime += 1;
                let want = reference["confidence"].as_f64().unwrap() as f32;
                assert!(
                    (confidence - want).abs() < 0.01,
                    "line {i} {form}: confidence {confidence}, onnxruntime {want}"
                );
            } else {
                eprintln!("line {i} {form}: edgeinfer read {text:?}, onnxruntime {:?}", reference["text"]);
            }
            if text == line["text"].as_str().unwrap() {
                same_as_rendered += 1;
            }
            // The classifier, upright, and its answer for the same line turned upside down.
            let cls = &replies[&format!("ppocr_cls/{form}/{i}")];
            assert_eq!(
                strings(cls, "labels")[0],
                line["cls"][form]["label"].as_str().unwrap(),
                "line {i} {form}: {cls}"
            );
            assert_eq!(output_data(cls, "scores").len(), 2);
        }
        let rotated = &replies[&format!("ppocr_cls/png_180/{i}")];
        assert_eq!(
            strings(rotated, "labels")[0],
            line["cls"]["png_180"]["label"].as_str().unwrap(),
            "line {i}: {rotated}"
        );
    }
    eprintln!(
        "ppocr_rec: {same_as_onnxruntime}/{total} lines read as onnxruntime read them, {same_as_rendered}/{total} as rendered"
    );
    // Resizing (fast_image_resize vs Pillow) and JPEG decoding (zune-jpeg vs libjpeg-turbo) may
    // move a pixel level here and there, which can flip a character on a hard line.
    assert!(same_as_onnxruntime * 10 >= total * 9, "{same_as_onnxruntime}/{total} equal to onnxruntime's text");
    assert!(same_as_rendered * 10 >= total * 9, "{same_as_rendered}/{total} equal to the rendered text");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_in_the_protocols_bytes_form_reads_the_same_as_the_raw_payload() {
    let ocr = fixture_json("ocr.json");
    let line = &ocr["lines"][0];
    let png = std::fs::read(fixtures().join(line["png"].as_str().unwrap())).unwrap();
    let broker = Broker::start();
    let models = pack(&["ppocr_rec"]);
    let daemon = Daemon::start(&broker, models.path(), "");
    let mut client = V5Client::connect(&broker, &["replies/bytes"]).await;
    // An MQTT 3.1.1 client can send this too: no properties, the binary data right after the JSON.
    let header = serde_json::json!({
        "id": "bytes-form",
        "parameters": {"reply_to": "replies/bytes"},
        "inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": png.len() + 4}}],
        "outputs": [{"name": "text"}, {"name": "softmax_11.tmp_0", "parameters": {"binary_data": true}}]
    });
    let mut payload = serde_json::to_vec(&header).unwrap();
    payload.extend_from_slice(&(png.len() as u32).to_le_bytes());
    payload.extend_from_slice(&png);
    client.publish(&daemon.infer_topic("ppocr_rec"), payload, PublishProperties::default()).await;
    let reply = reply_json(&client.next().await);
    assert_eq!(reply["id"], "bytes-form");
    assert_eq!(strings(&reply, "text"), [line["rec"]["png"]["text"].as_str().unwrap()]);
    // The raw output came along because it was asked for: [1, steps, 6625] probabilities.
    let raw = output_data(&reply, "softmax_11.tmp_0");
    assert_eq!(raw.len(), 40 * 6625, "{}", reply["outputs"][1]["shape"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_media_requests_get_clear_errors_and_the_daemon_keeps_serving() {
    let ocr = fixture_json("ocr.json");
    let png = std::fs::read(fixtures().join(ocr["lines"][0]["png"].as_str().unwrap())).unwrap();
    let broker = Broker::start();
    let models = pack(&["ppocr_rec", "silero_vad"]);
    let digits = shipped_models().join("digits");
    std::os::unix::fs::symlink(&digits, models.path().join("digits")).unwrap();
    let daemon = Daemon::start(&broker, models.path(), "");
    let mut client = V5Client::connect(&broker, &["replies/bad"]).await;
    let frame: Vec<u8> = vec![0; 512 * 2];
    let long_session = "s".repeat(200);
    // (id, model, payload, Content Type, user properties, words the error must contain; "" for an answer)
    type Case<'a> = (&'a str, &'a str, Vec<u8>, &'a str, Vec<(&'a str, &'a str)>, &'a str);
    let cases: Vec<Case> = vec![
        ("truncated", "ppocr_rec", png[..png.len() / 3].to_vec(), "image/png", vec![], "cannot decode the PNG"),
        ("gif", "ppocr_rec", b"GIF89a......".to_vec(), "image/png", vec![], "neither PNG nor JPEG"),
        ("audio-to-ocr", "ppocr_rec", frame.clone(), "audio/pcm", vec![], "does not take audio samples"),
        ("image-to-digits", "digits", png.clone(), "image/png", vec![], "does not take an image"),
        ("rate", "silero_vad", frame.clone(), "audio/pcm;rate=8000", vec![], "8000 Hz"),
        ("partial", "silero_vad", vec![0; 700 * 2], "audio/pcm", vec![("session", "p")], "700 samples"),
        ("format", "silero_vad", frame.clone(), "audio/pcm;format=mulaw", vec![], "s16le or f32le"),
        ("long-session", "silero_vad", frame.clone(), "audio/pcm", vec![("session", &long_session)], "1 to 128 bytes"),
        ("good", "ppocr_rec", png.clone(), "image/png", vec![], ""),
    ];
    let mut requests = Vec::new();
    for (id, model, payload, content_type, user, _) in &cases {
        let props = media_props("replies/bad", id, content_type, user);
        requests.push((daemon.infer_topic(model), id.to_string(), payload.clone(), props));
    }
    let replies = ask_all(&mut client, requests).await;
    for (id, _, _, _, _, error) in &cases {
        let reply = &replies[*id];
        if error.is_empty() {
            assert!(reply.get("error").is_none(), "{id}: {reply}");
            continue;
        }
        assert_eq!(reply["code"], "bad_request", "{id}: {reply}");
        let message = reply["error"].as_str().unwrap();
        assert!(message.contains(error), "{id}: {message}");
    }
    assert!(daemon.log().contains("request refused"), "every refusal is logged");
    // A session request that failed did not start the session: its first good chunk starts it.
    let mut props = media_props("replies/bad", "after-partial", "audio/pcm", &[("session", "p")]);
    props.user_properties.push(("id".into(), "after-partial".into()));
    client.publish(&daemon.infer_topic("silero_vad"), frame, props).await;
    let reply = reply_json(&client.next().await);
    assert_eq!(reply["parameters"]["session_started"], true, "{reply}");
}

/// The WAV's samples (16-bit mono PCM), from its `data` chunk.
fn wav_samples(path: &Path) -> Vec<i16> {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..4], b"RIFF");
    let mut at = 12;
    while at + 8 <= bytes.len() {
        let id = &bytes[at..at + 4];
        let len = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().unwrap()) as usize;
        if id == b"data" {
            return bytes[at + 8..at + 8 + len].chunks_exact(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
        }
        at += 8 + len + (len & 1);
    }
    panic!("no data chunk in {}", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wav_streamed_through_a_vad_session_gives_onnxruntimes_probabilities() {
    let vad = fixture_json("vad.json");
    let samples = wav_samples(&fixtures().join(vad["wav"].as_str().unwrap()));
    assert_eq!(samples.len() as u64, vad["samples"].as_u64().unwrap());
    let broker = Broker::start();
    let models = pack(&["silero_vad"]);
    let daemon = Daemon::start(&broker, models.path(), "");
    let mut client = V5Client::connect(&broker, &["replies/vad"]).await;
    let chunks = vad["chunks"].as_array().unwrap();
    let frame = vad["frame"].as_u64().unwrap() as usize;

    // All chunks at once, as a microphone would: the session's one worker takes them in order.
    let mut requests = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let start = chunk["start"].as_u64().unwrap() as usize;
        let frames = chunk["frames"].as_u64().unwrap() as usize;
        let mut pcm: Vec<i16> = samples[start..(start + frames * frame).min(samples.len())].to_vec();
        pcm.resize(frames * frame, 0);
        let payload: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        let id = format!("{i:03}");
        let props = media_props("replies/vad", &id, "audio/pcm;format=s16le;rate=16000", &[("session", "wav-1")]);
        requests.push((daemon.infer_topic("silero_vad"), id, payload, props));
    }
    let replies = ask_all(&mut client, requests).await;

    let mut worst = 0f32;
    let mut speech_frames = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let reply = &replies[&format!("{i:03}")];
        assert_eq!(reply["parameters"]["session"], "wav-1", "{reply}");
        assert_eq!(reply["parameters"].get("session_started").is_some(), i == 0, "chunk {i}: {reply}");
        let got = output_data(reply, "speech_probs");
        let want: Vec<f32> =
            chunk["speech_probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32).collect();
        assert_eq!(got.len(), want.len(), "chunk {i}");
        for (f, (g, w)) in got.iter().zip(&want).enumerate() {
            worst = worst.max((g - w).abs());
            assert!((g - w).abs() <= 1e-4, "chunk {i} frame {f}: edgeinfer {g}, onnxruntime {w}");
            if *g > 0.5 {
                speech_frames.push(chunk["start"].as_u64().unwrap() as usize + f * frame);
            }
        }
    }
    eprintln!("silero_vad: {} chunks, largest difference from onnxruntime {worst:e}", chunks.len());
    // Speech is found, and only where the speech is.
    let rate = vad["sample_rate"].as_f64().unwrap();
    let (start, end) = (vad["speech_start_s"].as_f64().unwrap(), vad["speech_end_s"].as_f64().unwrap());
    assert!(speech_frames.len() > 50, "speech found in {} frames", speech_frames.len());
    for at in &speech_frames {
        let t = *at as f64 / rate;
        assert!(t >= start - 0.1 && t <= end + 0.3, "speech at {t:.3} s, outside [{start}, {end}]");
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_abandoned_sessions_stay_within_the_session_cap() {
    let broker = Broker::start();
    let models = pack(&["silero_vad"]);
    // The shipped model.toml with a smaller cap, so the test crosses it ten times over.
    let toml_path = models.path().join("silero_vad/model.toml");
    let toml = std::fs::read_to_string(&toml_path).unwrap().replace("max_sessions = 1000", "max_sessions = 500");
    assert!(toml.contains("max_sessions = 500"));
    std::fs::write(&toml_path, toml).unwrap();
    let daemon = Daemon::start(&broker, models.path(), "[requests]\nstats_interval_secs = 1\n");
    let mut client = V5Client::connect(&broker, &["replies/sessions"]).await;
    let frame: Bytes = Bytes::from(vec![0u8; 512 * 2]);
    let topic = daemon.infer_topic("silero_vad");
    let send = |i: usize| {
        let props = media_props("replies/sessions", &i.to_string(), "audio/pcm", &[("session", &format!("mic-{i}"))]);
        (topic.clone(), props)
    };

    // Open sessions in windows of 100 in flight (the queue holds 256).
    let mut rss_at_cap = 0;
    for window in (0..10_000).collect::<Vec<_>>().chunks(100) {
        for &i in window {
            let (topic, props) = send(i);
            client.publish(&topic, frame.clone(), props).await;
        }
        for _ in window {
            let reply = reply_json(&client.next().await);
            assert!(reply.get("error").is_none(), "{reply}");
        }
        if window[0] == 1000 {
            rss_at_cap = rss_kib(daemon.pid());
        }
    }
    let rss_after = rss_kib(daemon.pid());
    eprintln!("RSS with 500 sessions after 1,100 opened: {rss_at_cap} KiB; after 10,000: {rss_after} KiB");
    // Each session holds 2 x 512 bytes of state and 256 bytes of context: 500 of them are under a
    // megabyte. Growth past the cap would be 9,000 more sessions, ~12 MB.
    assert!(rss_after < rss_at_cap + 6 * 1024, "RSS grew from {rss_at_cap} KiB to {rss_after} KiB");

    // An evicted session's client is told so (evictions are remembered, as many as the cap).
    let (topic, props) = send(9_000);
    client.publish(&topic, frame.clone(), props).await;
    let reply = reply_json(&client.next().await);
    assert_eq!(reply["parameters"]["session_evicted"], "max_sessions", "{reply}");
    wait_until("stats show the capped session count", || {
        retained(&broker, &format!("edgeinfer/{}/stats", daemon.device)).is_some_and(|s| {
            s["models"]["silero_vad"]["sessions"] == 500 && s["models"]["silero_vad"]["answered"] == 10_001
        })
    });
}

/// silero's op18 "ifless" export decides on the sample rate with an `If` that tract can only fold
/// when `sr` is a constant ([[inputs]] value) and the file's value_info is ignored; it runs one
/// frame per call. With that model.toml it streams the same probabilities as the sequence export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silero_op18_with_a_constant_sample_rate_streams_like_the_sequence_export() {
    let staged = shipped_models().join(".staged/silero_vad/variants/silero_vad_op18_ifless.onnx");
    assert!(staged.is_file(), "{} is missing: {FETCH_FIRST}", staged.display());
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().join("silero_op18");
    std::fs::create_dir(&dir).unwrap();
    std::fs::copy(&staged, dir.join("model.onnx")).unwrap();
    let toml = r#"
        ignore_value_info = true
        [[inputs]]
        name = "input"
        datatype = "FP32"
        shape = [1, 576]
        [[inputs]]
        name = "state"
        datatype = "FP32"
        shape = [2, 1, 128]
        [[inputs]]
        name = "sr"
        datatype = "INT64"
        shape = []
        value = [16000]
        [preprocess]
        kind = "audio"
        input = "input"
        sample_rate = 16000
        frame = 512
        context = 64
        [session]
        state = [{ input = "state", output = "stateN" }]
        [serving]
        queue_capacity = 512
    "#;
    std::fs::write(dir.join("model.toml"), toml).unwrap();
    let vad = fixture_json("vad.json");
    let samples = wav_samples(&fixtures().join(vad["wav"].as_str().unwrap()));
    let broker = Broker::start();
    let daemon = Daemon::start(&broker, models.path(), "");
    let mut client = V5Client::connect(&broker, &["replies/op18"]).await;

    let want: Vec<f32> = vad["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["speech_probs"].as_array().unwrap().iter().map(|p| p.as_f64().unwrap() as f32))
        .collect();
    let mut requests = Vec::new();
    for (i, frame) in samples.chunks(512).enumerate() {
        let mut pcm = frame.to_vec();
        pcm.resize(512, 0);
        let payload: Vec<u8> = pcm.iter().flat_map(|s| s.to_le_bytes()).collect();
        let id = format!("{i:04}");
        let props = media_props("replies/op18", &id, "audio/pcm;rate=16000", &[("session", "op18")]);
        requests.push((daemon.infer_topic("silero_op18"), id, payload, props));
    }
    assert_eq!(requests.len(), want.len());
    let replies = ask_all(&mut client, requests).await;
    let mut worst = 0f32;
    for (i, w) in want.iter().enumerate() {
        let got = output_data(&replies[&format!("{i:04}")], "output");
        worst = worst.max((got[0] - w).abs());
        assert!((got[0] - w).abs() <= 1e-4, "frame {i}: op18 {}, sequence export (onnxruntime) {w}", got[0]);
    }
    eprintln!("silero op18_ifless, {} frames: largest difference from the sequence export {worst:e}", want.len());
    // The constant input is not part of the contract clients see.
    let metadata = retained(&broker, &format!("edgeinfer/{}/models/silero_op18", daemon.device)).unwrap();
    let inputs: Vec<&str> =
        metadata["inputs"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(inputs, ["input"], "{metadata}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgen_sends_an_image_file_as_it_is_and_every_answer_is_a_result() {
    let broker = Broker::start();
    let models = pack(&["ppocr_rec"]);
    let daemon = Daemon::start(&broker, models.path(), "");
    let line = fixtures().join("ocr/00.jpg");
    let loadgen = |extra: &[&str]| -> Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
            .args(["loadgen", "ppocr_rec", "--broker", &broker.url(), "--device", &daemon.device, "--json"])
            .args(extra)
            .arg("-i")
            .arg(&line)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let result = loadgen(&["--concurrency", "2", "--seconds", "1"]);
    let outcomes = result["outcomes"].as_object().unwrap();
    assert_eq!(outcomes.keys().collect::<Vec<_>>(), ["ok"], "a JPEG is a request, not JSON: {result}");
    assert!(result["answered"].as_u64().unwrap() > 0, "{result}");
    // The same file with a Content Type the daemon refuses: every answer names it.
    let result = loadgen(&["--seconds", "0.3", "--content-type", "image/gif"]);
    assert_eq!(result["outcomes"].as_object().unwrap().keys().collect::<Vec<_>>(), ["bad_request"], "{result}");
}
