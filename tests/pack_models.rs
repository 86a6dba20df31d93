//! The real-model pack (`python3 models/fetch.py`): real networks through the edgeinfer binary.
//!
//! The shipped squeezenet/resnet50 are the onnx package's light files, whose weights are constant,
//! so the numbers are checked on random-weight copies (`target/pack-random/`, made by fetch.py with
//! models/randomize.py) against onnxruntime's answers (`tests/fixtures/<name>_random_*`, made by
//! models/make_goldens.py). Missing files fail the tests, saying how to make them.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use serde_json::Value;
use tract_core::ndarray::{concatenate, s, ArrayD, Axis};

/// Every output element must satisfy |tract - onnxruntime| <= TOLERANCE * max |onnxruntime| over
/// that output. Measured on x86-64 (tract 0.23, onnxruntime 1.32, one thread): 3.5e-7 for
/// squeezenet and 1.3e-6 for resnet50, whose scores reach 6e4.
const TOLERANCE: f64 = 1e-5;

const HOW: &str = "run `python3 models/fetch.py` first (after `pip install -r models/requirements.txt`)";

fn random_models() -> PathBuf {
    repo_root().join("target/pack-random")
}

fn require(path: &Path) {
    assert!(path.is_file(), "{} is missing: {HOW}", path.display());
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().expect("sha256sum (coreutils)");
    assert!(out.status.success(), "sha256sum {}", path.display());
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// The golden file of a random-weight model, after checking that the copy on disk is the one the
/// goldens were made from.
fn golden(model: &str) -> Value {
    let golden = golden_file(model);
    let onnx = random_models().join(model).join("model.onnx");
    require(&onnx);
    require(&random_models().join(model).join("model.toml"));
    assert_eq!(
        sha256(&onnx),
        golden["model_sha256"].as_str().unwrap(),
        "{} is not the random-weight copy the goldens were made from: {HOW} (it remakes it; numpy and onnx \
         must be the versions in models/requirements.txt)",
        onnx.display()
    );
    golden
}

fn fixture_input(model: &str) -> PathBuf {
    repo_root().join(format!("tests/fixtures/{model}_random_input.npy"))
}

/// `edgeinfer infer MODEL --models DIR --input FILE`, its reply as JSON.
fn infer(model: &str, models: &Path, input: &Path) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
        .args(["infer", model, "--models"])
        .arg(models)
        .arg("--input")
        .arg(input)
        .output()
        .unwrap();
    assert!(out.status.success(), "edgeinfer infer {model}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn golden_output<'a>(golden: &'a Value, transform: &str, name: &str) -> &'a Value {
    let case = golden["cases"].as_array().unwrap().iter().find(|c| c["transform"] == transform).unwrap();
    &case["outputs"][name]
}

/// Checks `got` against onnxruntime's `want` within [`TOLERANCE`], and shows the difference.
fn assert_close(what: &str, got: &[f32], want: &Value) {
    let want: Vec<f64> = want["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(got.len(), want.len(), "{what}: number of values");
    let scale = want.iter().fold(0f64, |m, w| m.max(w.abs()));
    let max_abs = got.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0f64, f64::max);
    let relative = max_abs / scale;
    eprintln!("{what}: max |tract - onnxruntime| = {max_abs:.3e}, {relative:.3e} of the largest value {scale:.4e}");
    assert!(relative <= TOLERANCE, "{what}: tract differs from onnxruntime by {max_abs:e} ({relative:e} of {scale:e})");
}

fn output_shape(reply: &Value, name: &str) -> Vec<u64> {
    let out = reply["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap();
    out["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap()).collect()
}

#[test]
fn random_squeezenet_matches_onnxruntime_alone_and_in_a_batch_of_two() {
    let golden = golden("squeezenet");
    let output = "softmaxout_1";
    let reply = infer("squeezenet", &random_models(), &fixture_input("squeezenet"));
    assert_eq!(output_shape(&reply, output), [1, 1000, 1, 1]);
    assert_close("squeezenet", &output_data(&reply, output), golden_output(&golden, "none", output));

    // The batch: the input, then the input mirrored along its width.
    let input = ArrayD::<f32>::read_npy(std::fs::File::open(fixture_input("squeezenet")).unwrap()).unwrap();
    let mirrored = input.slice(s![.., .., .., ..;-1]).to_owned().into_dyn();
    let batch = concatenate(Axis(0), &[input.view(), mirrored.view()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("batch.npy");
    batch.write_npy(std::fs::File::create(&file).unwrap()).unwrap();
    let reply = infer("squeezenet", &random_models(), &file);
    assert_eq!(output_shape(&reply, output), [2, 1000, 1, 1]);
    let data = output_data(&reply, output);
    assert_close("squeezenet batch[0]", &data[..1000], golden_output(&golden, "none", output));
    assert_close("squeezenet batch[1] (mirrored)", &data[1000..], golden_output(&golden, "flip_w", output));
}

#[test]
fn random_resnet50_matches_onnxruntime() {
    let golden = golden("resnet50");
    let output = "gpu_0/softmax_1";
    let reply = infer("resnet50", &random_models(), &fixture_input("resnet50"));
    assert_eq!(output_shape(&reply, output), [1, 1000]);
    assert_close("resnet50", &output_data(&reply, output), golden_output(&golden, "none", output));
}

#[test]
fn the_shipped_light_squeezenet_loads_and_answers() {
    let onnx = shipped_models().join("squeezenet/model.onnx");
    require(&onnx);
    let golden = golden_file("squeezenet");
    assert_eq!(
        sha256(&onnx),
        golden["original_sha256"].as_str().unwrap(),
        "{}: not the pinned file: {HOW}",
        onnx.display()
    );

    let out = Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
        .args(["models", "--models"])
        .arg(shipped_models())
        .output()
        .unwrap();
    assert!(out.status.success(), "edgeinfer models: {}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let squeezenet = listed.as_array().unwrap().iter().find(|m| m["name"] == "squeezenet").expect("squeezenet listed");
    assert_eq!(squeezenet["inputs"][0]["name"], "data_0");
    assert_eq!(squeezenet["inputs"][0]["shape"], serde_json::json!([-1, 3, 224, 224]));
    assert_eq!(squeezenet["outputs"][0]["shape"], serde_json::json!([-1, 1000, 1, 1]));

    // Constant weights: an answer that is a softmax over 1000 classes, whatever it says.
    let reply = infer("squeezenet", &shipped_models(), &fixture_input("squeezenet"));
    let probs = output_data(&reply, "softmaxout_1");
    assert_eq!(probs.len(), 1000);
    let sum: f32 = probs.iter().sum();
    assert!((sum - 1.0).abs() < 1e-4 && probs.iter().all(|p| (0.0..=1.0).contains(p)), "not a softmax: sum {sum}");
}

/// The golden file alone, not yet checked against the random-weight copy.
fn golden_file(model: &str) -> Value {
    let file = repo_root().join(format!("tests/fixtures/{model}_random_golden.json"));
    serde_json::from_str(&std::fs::read_to_string(file).unwrap()).unwrap()
}
