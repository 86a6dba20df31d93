//! Faces and objects, through the real daemon and broker: SCRFD (the `scrfd` package's model)
//! against the package's own Python decoding on onnxruntime (`tests/fixtures/detect/scrfd/`, made
//! by `models/make_scrfd_fixtures.py`), and the YOLO decoders on the synthetic v8/v5-layout graphs
//! against a numpy reference of the same decode and NMS (`models/yolo_synthetic/reference.py`).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::*;
use rumqttc::v5::mqttbytes::v5::Publish;
use serde_json::Value;

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/detect")
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn correlation(publish: &Publish) -> String {
    let data = publish.properties.as_ref().and_then(|p| p.correlation_data.clone()).expect("correlation data");
    String::from_utf8(data.to_vec()).unwrap()
}

fn output<'a>(reply: &'a Value, name: &str) -> &'a Value {
    let outputs = reply["outputs"].as_array().unwrap_or_else(|| panic!("no outputs in {reply}"));
    outputs.iter().find(|o| o["name"] == name).unwrap_or_else(|| panic!("no {name} in {reply}"))
}

fn numbers(reply: &Value, name: &str) -> Vec<f64> {
    output(reply, name)["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

fn numbers_of(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|x| {
            x.as_array().map_or_else(|| vec![x.as_f64().unwrap()], |a| a.iter().map(|y| y.as_f64().unwrap()).collect())
        })
        .collect()
}

fn iou(a: &[f64], b: &[f64]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
}

fn content_type(file: &str) -> &'static str {
    if file.ends_with(".png") {
        "image/png"
    } else {
        "image/jpeg"
    }
}

/// Sends each (model, image file) once and returns the replies by "model/file".
async fn ask(broker: &Broker, daemon: &Daemon, requests: &[(String, String)]) -> HashMap<String, Value> {
    let mut client = V5Client::connect(broker, &["replies/detect"]).await;
    for (model, file) in requests {
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        let id = format!("{model}/{file}");
        client
            .publish(&daemon.infer_topic(model), bytes, media_props("replies/detect", &id, content_type(file), &[]))
            .await;
    }
    let mut replies = HashMap::new();
    while replies.len() < requests.len() {
        let publish = client.next().await;
        replies.insert(correlation(&publish), edgeinfer::protocol::decode_reply(&publish.payload, None).unwrap());
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrfd_finds_the_faces_the_packages_own_code_finds() {
    let reference = json(&fixtures().join("scrfd/reference.json"));
    let images = reference["images"].as_array().unwrap();
    let broker = Broker::start();
    let models = pack(&["scrfd"]);
    let daemon =
        Daemon::start(&broker, models.path(), "[requests]\nqueue_capacity = 64\ndefault_timeout_ms = 600000\n");
    let requests: Vec<(String, String)> =
        images.iter().map(|i| ("scrfd".to_string(), format!("scrfd/{}", i["file"].as_str().unwrap()))).collect();
    let replies = ask(&broker, &daemon, &requests).await;
    let (mut faces, mut worst_iou, mut worst_score, mut worst_point) = (0, 1.0f64, 0.0f64, 0.0f64);
    for image in images {
        let file = image["file"].as_str().unwrap();
        let reply = &replies[&format!("scrfd/scrfd/{file}")];
        let boxes: Vec<Vec<f64>> = numbers(reply, "boxes").chunks(4).map(<[f64]>::to_vec).collect();
        let scores = numbers(reply, "scores");
        let points = numbers(reply, "keypoints");
        let expected = image["faces"].as_array().unwrap();
        assert_eq!(
            boxes.len(),
            expected.len(),
            "{file}: {} faces, the package found {}: {reply}",
            boxes.len(),
            expected.len()
        );
        assert_eq!(output(reply, "keypoints")["shape"], serde_json::json!([boxes.len(), 5, 2]));
        for face in expected {
            let want = numbers_of(&face["box"]);
            let (i, overlap) =
                boxes.iter().map(|b| iou(&want, b)).enumerate().max_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
            faces += 1;
            worst_iou = worst_iou.min(overlap);
            let score_gap = (scores[i] - face["score"].as_f64().unwrap()).abs();
            worst_score = worst_score.max(score_gap);
            let want_points = numbers_of(&face["keypoints"]);
            let gap =
                want_points.iter().zip(&points[i * 10..i * 10 + 10]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            worst_point = worst_point.max(gap);
            assert!(overlap >= 0.95, "{file}: face {want:?} overlaps ours by IoU {overlap:.3}: {boxes:?}");
            assert!(score_gap <= 1e-3, "{file}: score {} against the package's {}", scores[i], face["score"]);
        }
    }
    eprintln!("scrfd: {faces} faces, worst IoU {worst_iou:.4}, worst score gap {worst_score:.2e}, worst keypoint gap {worst_point:.2} px");
    assert!(faces >= 30, "{faces} faces in the fixture set");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yolo_heads_of_both_layouts_decode_like_the_numpy_reference() {
    let reference = json(&fixtures().join("yolo/reference.json"));
    let images = reference["images"].as_array().unwrap();
    let broker = Broker::start();
    let models = tempfile::tempdir().unwrap();
    for version in ["v8", "v5"] {
        let to = models.path().join(format!("yolo_{version}"));
        std::fs::create_dir(&to).unwrap();
        for file in ["model.onnx", "model.toml", "labels.txt"] {
            std::fs::copy(shipped_models().join("yolo_synthetic").join(version).join(file), to.join(file)).unwrap();
        }
    }
    let daemon = Daemon::start(&broker, models.path(), "[requests]\nqueue_capacity = 64\n");
    let requests: Vec<(String, String)> = images
        .iter()
        .map(|i| (format!("yolo_{}", i["model"].as_str().unwrap()), i["file"].as_str().unwrap().to_string()))
        .collect();
    let replies = ask(&broker, &daemon, &requests).await;
    let mut detections = 0;
    for (image, (model, file)) in images.iter().zip(&requests) {
        let reply = &replies[&format!("{model}/{file}")];
        let boxes = numbers(reply, "boxes");
        let scores = numbers(reply, "scores");
        let labels: Vec<&str> =
            output(reply, "labels")["data"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
        let expected = image["detections"].as_array().unwrap();
        assert_eq!(scores.len(), expected.len(), "{model} {file}: {reply}");
        // Same detections in the same order (score, then candidate index).
        for (i, want) in expected.iter().enumerate() {
            assert_eq!(labels[i], want["label"].as_str().unwrap(), "{model} {file} #{i}");
            assert!(
                (scores[i] - want["score"].as_f64().unwrap()).abs() < 1e-4,
                "{model} {file} #{i}: {} vs {}",
                scores[i],
                want["score"]
            );
            let want_box = numbers_of(&want["box"]);
            for (got, want) in boxes[i * 4..i * 4 + 4].iter().zip(&want_box) {
                assert!(
                    (got - want).abs() < 1e-2,
                    "{model} {file} #{i}: {:?} vs {want_box:?}",
                    &boxes[i * 4..i * 4 + 4]
                );
            }
            detections += 1;
        }
    }
    eprintln!("yolo: {detections} detections equal to the reference's");
    drop(daemon);
}
