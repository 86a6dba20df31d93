//! The command line as a user types it: models, infer, inspect, serve --print-config.

mod common;

use std::process::{Command, Output};

use common::*;
use serde_json::Value;

fn edgeinfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgeinfer")).args(args).current_dir(repo_root()).output().unwrap()
}

fn stdout_json(out: &Output) -> Value {
    assert!(out.status.success(), "failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn models_prints_oip_metadata_for_the_shipped_models() {
    let v = stdout_json(&edgeinfer(&["models"]));
    let digits = &v.as_array().unwrap()[0];
    assert_eq!(digits["name"], "digits");
    assert_eq!(digits["platform"], "onnx_tract");
    assert_eq!(digits["inputs"][0]["shape"], serde_json::json!([-1, 64]));
    assert_eq!(digits["labels"][7], "7");
}

#[test]
fn infer_runs_the_example_request_locally() {
    let v = stdout_json(&edgeinfer(&["infer", "digits", "--input", "models/digits/example-request.json"]));
    let golden = digits_golden();
    assert_eq!(v["id"], "example-1");
    let probs = output_data(&v, "probabilities");
    assert_eq!(argmax(&probs), argmax(&golden.probabilities[0]));
    for (g, e) in probs.iter().zip(&golden.probabilities[0]) {
        assert!((g - e).abs() <= 1e-5);
    }
}

/// A NumPy v1.0 file written by hand from the format's description: magic, header dict, data.
fn write_npy(path: &std::path::Path, shape: &[usize], values: &[f32]) {
    let dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}), }}",
        shape.iter().map(|d| format!("{d},")).collect::<String>()
    );
    let mut header = dict.into_bytes();
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header);
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn infer_takes_a_npy_array_for_a_single_input_model() {
    let golden = digits_golden();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("two.npy");
    let rows: Vec<f32> = golden.inputs[10].iter().chain(&golden.inputs[11]).copied().collect();
    write_npy(&file, &[2, 64], &rows);
    let v = stdout_json(&edgeinfer(&["infer", "digits", "--input", file.to_str().unwrap()]));
    let probs = output_data(&v, "probabilities");
    assert_eq!(probs.len(), 20, "a batch of two");
    assert_eq!(argmax(&probs[..10]), argmax(&golden.probabilities[10]));
    assert_eq!(argmax(&probs[10..]), argmax(&golden.probabilities[11]));
}

#[test]
fn infer_explains_a_request_the_model_cannot_take() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.json");
    std::fs::write(&file, r#"{"inputs":[{"name":"pixels","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}"#)
        .unwrap();
    let out = edgeinfer(&["infer", "digits", "--input", file.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("input \"pixels\" has shape [1, 8]"), "{stderr}");
    let out = edgeinfer(&["infer", "../etc", "--input", file.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a valid model name"));
}

#[test]
fn inspect_shows_operators_and_whether_tract_loads_the_file() {
    let out = edgeinfer(&["inspect", "models/digits/model.onnx"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("pixels FLOAT [N, 64]"), "{text}");
    assert!(text.contains("Gemm") && text.contains("Softmax"), "{text}");
    assert!(text.contains("tract: loads and runs"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.onnx");
    std::fs::write(&junk, b"\x08\x07garbage").unwrap();
    let out = edgeinfer(&["inspect", junk.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn print_config_shows_defaults_file_values_and_flag_overrides() {
    let out = edgeinfer(&[
        "serve",
        "--print-config",
        "--config",
        "systemd/edgeinfer.toml",
        "--broker",
        "mqtts://broker.lan:8884",
        "--device",
        "pi-7",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(v["broker"]["url"].as_str(), Some("mqtts://broker.lan:8884"));
    assert_eq!(v["topics"]["device"].as_str(), Some("pi-7"));
    assert_eq!(v["broker"]["client_id"].as_str(), Some("edgeinfer-pi-7"));
    assert_eq!(v["requests"]["max_payload_bytes"].as_integer(), Some(16 * 1024 * 1024));
}

#[test]
fn the_example_config_lists_exactly_the_defaults() {
    let shipped = edgeinfer::config::Config::from_file(&repo_root().join("systemd/edgeinfer.toml")).unwrap();
    assert_eq!(shipped, edgeinfer::config::Config::default());
}

#[test]
fn a_typo_in_the_config_fails_at_start_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.toml");
    std::fs::write(&file, "[requests]\nqueue_capacty = 3\n").unwrap();
    let out = edgeinfer(&["serve", "--config", file.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("queue_capacty"));
}

#[test]
fn batching_a_model_without_a_batch_dimension_fails_at_load_naming_the_key() {
    let models = models_dir_with(&["digits"]);
    let manifest = models.path().join("digits/model.toml");
    let toml = std::fs::read_to_string(&manifest).unwrap().replace("shape = [-1, 64]", "shape = [1, 64]");
    std::fs::write(&manifest, format!("{toml}\n[serving]\nmax_batch_size = 8\n")).unwrap();
    let out = edgeinfer(&["models", "--models", models.path().to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("serving.max_batch_size needs a batch dimension"), "{stderr}");
    assert!(stderr.contains("input \"pixels\" has shape [1, 64]"), "{stderr}");
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    // `edgeinfer infer ... | head -c 0`: the pipe is closed before the answer is written.
    let mut child = Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
        .args(["infer", "digits", "--input", "models/digits/example-request.json"])
        .current_dir(repo_root())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn bench_profile_shares_an_inference_among_the_plans_operators() {
    let models = repo_root().join("models");
    let out = edgeinfer(&[
        "bench",
        "digits",
        "--models",
        models.to_str().unwrap(),
        "--profile",
        "--seconds",
        "0.2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let operators = v["operators"].as_array().unwrap();
    let ops: Vec<&str> = operators.iter().map(|o| o["op"].as_str().unwrap()).collect();
    assert!(ops.contains(&"OptMatMul"), "digits is matrix products: {ops:?}");
    let shares: f64 = operators.iter().map(|o| o["share"].as_f64().unwrap()).sum();
    assert!((shares - 1.0).abs() < 1e-6, "the shares add up: {shares}");
    assert!(v["runs"].as_u64().unwrap() >= 5);
    assert!(v["ms_in_nodes_per_run"].as_f64().unwrap() <= v["ms_per_run"].as_f64().unwrap());
    let slowest = v["slowest_nodes"].as_array().unwrap();
    assert!(!slowest.is_empty() && slowest.len() <= 10);
    let times: Vec<f64> = slowest.iter().map(|n| n["ms_per_run"].as_f64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] >= w[1]), "slowest first: {times:?}");
}
