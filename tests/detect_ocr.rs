//! Finding and reading text in whole frames, through the real daemon and broker: `ppocr_det`
//! (PP-OCRv4's DBNet detector) and the `ppocr` pipeline (detect, crop, orient, read), compared
//! with what RapidOCR's own Python pipeline found and read in the same frames
//! (`tests/fixtures/detect/ocr/`, made by `models/make_ocr_fixtures.py`). Model files come from
//! `python3 models/fetch.py`.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use common::*;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde_json::Value;

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/detect/ocr")
}

fn reference() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join("rapidocr.json")).unwrap()).unwrap()
}

fn reply_json(publish: &Publish) -> Value {
    edgeinfer::protocol::decode_reply(&publish.payload, None).unwrap()
}

fn correlation(publish: &Publish) -> String {
    let data = publish.properties.as_ref().and_then(|p| p.correlation_data.clone()).expect("correlation data");
    String::from_utf8(data.to_vec()).unwrap()
}

/// Publishes every request, then collects the replies by correlation id.
async fn ask_all(client: &mut V5Client, requests: Vec<(String, Vec<u8>, PublishProperties)>) -> HashMap<String, Value> {
    let count = requests.len();
    for (topic, payload, props) in requests {
        client.publish(&topic, payload, props).await;
    }
    let mut replies = HashMap::new();
    while replies.len() < count {
        let publish = client.next().await;
        replies.insert(correlation(&publish), reply_json(&publish));
    }
    replies
}

fn output<'a>(reply: &'a Value, name: &str) -> &'a Value {
    let outputs = reply["outputs"].as_array().unwrap_or_else(|| panic!("no outputs in {reply}"));
    outputs.iter().find(|o| o["name"] == name).unwrap_or_else(|| panic!("no {name} in {reply}"))
}

/// An output's rows of `width` numbers.
fn rows(reply: &Value, name: &str, width: usize) -> Vec<Vec<f64>> {
    let data: Vec<f64> = output(reply, name)["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
    data.chunks(width).map(<[f64]>::to_vec).collect()
}

fn texts(reply: &Value) -> Vec<String> {
    output(reply, "text")["data"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn as_box(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn iou(a: &[f64], b: &[f64]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area = |r: &[f64]| (r[2] - r[0]) * (r[3] - r[1]);
    inter / (area(a) + area(b) - inter)
}

/// The index and IoU of the box in `boxes` that overlaps `target` most.
fn best_match(target: &[f64], boxes: &[Vec<f64>]) -> Option<(usize, f64)> {
    boxes.iter().map(|b| iou(target, b)).enumerate().max_by(|a, b| a.1.total_cmp(&b.1))
}

fn without_spaces(text: &str) -> String {
    text.chars().filter(|c| !c.is_whitespace()).collect()
}

fn content_type(file: &str) -> &'static str {
    if file.ends_with(".png") {
        "image/png"
    } else {
        "image/jpeg"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_frames_over_mqtt_find_and_read_the_lines_rapidocr_finds_and_reads() {
    let reference = reference();
    let scenes = reference["scenes"].as_array().unwrap();
    let broker = Broker::start();
    let models = pack(&["ppocr_det", "ppocr_cls", "ppocr_rec"]);
    std::fs::create_dir(models.path().join("ppocr")).unwrap();
    std::fs::copy(shipped_models().join("ppocr/model.toml"), models.path().join("ppocr/model.toml")).unwrap();
    let daemon =
        Daemon::start(&broker, models.path(), "[requests]\nqueue_capacity = 128\ndefault_timeout_ms = 600000\n");
    let mut client = V5Client::connect(&broker, &["replies/ocr"]).await;

    let mut requests = Vec::new();
    for scene in scenes {
        let file = scene["file"].as_str().unwrap();
        let bytes = std::fs::read(fixtures().join(file)).unwrap();
        for model in ["ppocr", "ppocr_det"] {
            let id = format!("{model}/{file}");
            requests.push((
                daemon.infer_topic(model),
                bytes.clone(),
                media_props("replies/ocr", &id, content_type(file), &[]),
            ));
        }
    }
    let replies = ask_all(&mut client, requests).await;

    let (mut lines, mut same_text, mut exact, mut boxes_checked, mut boxes_close) = (0, 0, 0, 0, 0);
    let mut worst_iou = 1.0f64;
    for scene in scenes {
        let file = scene["file"].as_str().unwrap();
        // The detector alone: the same regions as RapidOCR's detector, box for box.
        let det = &replies[&format!("ppocr_det/{file}")];
        let found = rows(det, "boxes", 4);
        let expected = scene["det"].as_array().unwrap();
        assert_eq!(
            found.len(),
            expected.len(),
            "{file}: {} regions, RapidOCR found {}: {det}",
            found.len(),
            expected.len()
        );
        for region in expected {
            let want = as_box(&region["box"]);
            let (_, overlap) = best_match(&want, &found).unwrap();
            worst_iou = worst_iou.min(overlap);
            boxes_checked += 1;
            if overlap >= 0.9 {
                boxes_close += 1;
            } else {
                eprintln!("{file}: RapidOCR's region {want:?} overlaps ours by IoU {overlap:.3}: {found:?}");
            }
            assert!(overlap >= 0.8, "{file}: RapidOCR's region {want:?} overlaps ours by IoU {overlap:.3}: {found:?}");
        }
        assert_eq!(rows(det, "polygons", 8).len(), found.len());

        // The pipeline: each line RapidOCR read, read the same, in a box that overlaps.
        let reply = &replies[&format!("ppocr/{file}")];
        let read = texts(reply);
        let boxes = rows(reply, "boxes", 4);
        assert_eq!(read.len(), boxes.len(), "{file}: {reply}");
        assert_eq!(output(reply, "confidence")["data"].as_array().unwrap().len(), read.len());
        for line in scene["lines"].as_array().unwrap() {
            lines += 1;
            let want = as_box(&line["box"]);
            let text = line["text"].as_str().unwrap();
            match best_match(&want, &boxes) {
                Some((i, overlap)) if overlap >= 0.8 => {
                    // RapidOCR's own pipeline loses most spaces between words that the same
                    // recogniser keeps on the daemon's crops ("METER004512kWh" for "METER 004512
                    // kWh"): the text is compared without spaces, and exact matches are counted.
                    if without_spaces(&read[i]) == without_spaces(text) {
                        same_text += 1;
                    } else {
                        eprintln!("{file}: read {:?}, RapidOCR {text:?}", read[i]);
                    }
                    exact += usize::from(read[i] == text);
                }
                other => panic!("{file}: no box for RapidOCR's line {text:?} {want:?} (best {other:?}): {boxes:?}"),
            }
        }
    }
    eprintln!(
        "ppocr: {same_text}/{lines} lines read as RapidOCR read them but for spaces ({exact} with the same spaces); \
         ppocr_det: {boxes_close}/{boxes_checked} regions within IoU 0.9 of RapidOCR's, worst {worst_iou:.3}"
    );
    // The detector's map comes from a frame resized by fast_image_resize, RapidOCR's by OpenCV:
    // where a region's edge sits at the binarisation threshold, a grey level moves it a pixel.
    assert!(boxes_close * 100 >= boxes_checked * 95, "{boxes_close}/{boxes_checked} regions within IoU 0.9");
    assert!(lines >= 30, "the fixture set has {lines} lines");
    assert!(same_text * 100 >= lines * 95, "{same_text}/{lines} lines equal to RapidOCR's text");
    drop(daemon);
}

/// A PNG file's signature and header chunk claiming `width` x `height`, and no pixels.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
            }
        }
        !crc
    }
    let mut chunk = b"IHDR".to_vec();
    chunk.extend(width.to_be_bytes());
    chunk.extend(height.to_be_bytes());
    chunk.extend([8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(13u32.to_be_bytes());
    png.extend(&chunk);
    png.extend(crc32(&chunk).to_be_bytes());
    png
}

fn png_of(image: &image::RgbImage) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A request of the bad-frames test: id, topic, payload, Content Type, User Properties.
type Case<'a> = (&'a str, &'a str, Vec<u8>, &'a str, Vec<(&'a str, &'a str)>);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_with_nothing_to_find_or_too_much_get_clear_answers_and_the_daemon_keeps_serving() {
    let reference = reference();
    let six = reference["scenes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["lines"].as_array().unwrap().len() >= 6)
        .expect("a scene with six lines")
        .clone();
    let scene = std::fs::read(fixtures().join(six["file"].as_str().unwrap())).unwrap();
    let broker = Broker::start();
    let models = pack(&["ppocr_det", "ppocr_cls", "ppocr_rec"]);
    std::fs::create_dir(models.path().join("ppocr")).unwrap();
    std::fs::copy(shipped_models().join("ppocr/model.toml"), models.path().join("ppocr/model.toml")).unwrap();
    let daemon = Daemon::start(&broker, models.path(), "[requests]\ndefault_timeout_ms = 600000\n");
    let mut client = V5Client::connect(&broker, &["replies/bad"]).await;
    let (det, ppocr) = (daemon.infer_topic("ppocr_det"), daemon.infer_topic("ppocr"));

    // A frame of small dark blobs everywhere: many candidate regions.
    let blobs = image::RgbImage::from_fn(1280, 720, |x, y| {
        if x % 12 < 6 && y % 14 < 9 {
            image::Rgb([20, 20, 20])
        } else {
            image::Rgb([250, 250, 250])
        }
    });
    let zeros = vec!["0"; 3 * 64 * 64].join(",");
    let tensor_request =
        format!(r#"{{"inputs":[{{"name":"x","shape":[1,3,64,64],"datatype":"FP32","data":[{zeros}]}}]}}"#);
    let cases: Vec<Case> = vec![
        ("one pixel", &ppocr, png_of(&image::RgbImage::new(1, 1)), "image/png", vec![]),
        (
            "blank",
            &ppocr,
            png_of(&image::RgbImage::from_pixel(1280, 720, image::Rgb([200, 210, 220]))),
            "image/png",
            vec![],
        ),
        ("huge header", &ppocr, png_header(20000, 20000), "image/png", vec![]),
        ("huge header det", &det, png_header(20000, 20000), "image/png", vec![]),
        ("capped", &ppocr, scene.clone(), "image/jpeg", vec![("max_detections", "2")]),
        ("strict", &det, scene.clone(), "image/jpeg", vec![("score", "1.5")]),
        ("not a number", &det, scene.clone(), "image/jpeg", vec![("score", "high")]),
        ("blobs", &det, png_of(&blobs), "image/png", vec![("max_detections", "50")]),
        ("a tensor", &ppocr, tensor_request.into_bytes(), "application/json", vec![]),
        ("after", &ppocr, scene.clone(), "image/jpeg", vec![]),
    ];
    for (id, topic, payload, content_type, user) in &cases {
        client.publish(topic, payload.clone(), media_props("replies/bad", id, content_type, user)).await;
    }
    let mut replies = HashMap::new();
    while replies.len() < cases.len() {
        let publish = client.next().await;
        replies.insert(correlation(&publish), reply_json(&publish));
    }
    for id in ["one pixel", "blank"] {
        let reply = &replies[id];
        assert!(reply.get("error").is_none(), "{id}: {reply}");
        assert_eq!(texts(reply), Vec::<String>::new(), "{id}: {reply}");
        assert_eq!(output(reply, "boxes")["shape"], serde_json::json!([0, 4]), "{id}: {reply}");
    }
    for id in ["huge header", "huge header det"] {
        assert_eq!(replies[id]["code"], "too_large", "{id}: {}", replies[id]);
        assert!(replies[id]["error"].as_str().unwrap().contains("20000x20000"), "{}", replies[id]);
    }
    let capped = &replies["capped"];
    assert!(texts(capped).len() <= 2, "{capped}");
    assert!(capped["parameters"]["detections_capped"]["candidates"].as_u64().unwrap() > 2, "{capped}");
    assert_eq!(replies["strict"]["code"], "bad_request", "{}", replies["strict"]);
    assert!(replies["strict"]["error"].as_str().unwrap().contains("parameters.score"), "{}", replies["strict"]);
    assert_eq!(replies["not a number"]["code"], "bad_request", "{}", replies["not a number"]);
    let blobs = &replies["blobs"];
    assert!(blobs.get("error").is_none(), "{blobs}");
    assert!(rows(blobs, "boxes", 4).len() <= 50, "{blobs}");
    eprintln!("blobs: {} regions, {}", rows(blobs, "boxes", 4).len(), blobs["parameters"]);
    assert_eq!(replies["a tensor"]["code"], "bad_request", "{}", replies["a tensor"]);
    assert!(replies["a tensor"]["error"].as_str().unwrap().contains("PNG or JPEG"), "{}", replies["a tensor"]);
    assert!(texts(&replies["after"]).len() >= 6, "{}", replies["after"]);
    drop(daemon);
}
