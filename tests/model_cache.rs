//! The model cache (`models.cache_dir`): a model loaded through its cache file answers exactly as the
//! one loaded from ONNX, and a cache file that is corrupt, stale or foreign never stops a model from
//! loading: it is loaded from ONNX and the file is rewritten.
//!
//! The pack models need `python3 models/fetch.py` (see tests/pack_models.rs).

mod common;

use std::path::{Path, PathBuf};

use common::*;
use edgeinfer::model::{Model, ModelCache};
use ndarray_npy::ReadNpyExt;
use tract_core::ndarray::ArrayD;
use tract_core::prelude::*;

const HOW: &str = "run `python3 models/fetch.py` first (after `pip install -r models/requirements.txt`)";

fn cache_file(cache: &ModelCache, model: &str) -> PathBuf {
    cache.dir().join(format!("{model}.nnef-cache"))
}

/// Whether the model's cache file is there and valid for its current files (a load would use it).
fn cache_hits(cache: &ModelCache, model: &str, dir: &Path) -> bool {
    cache.entry(model, &dir.join("model.onnx")).expect("the model's files hash").load().is_some()
}

/// The model's outputs for `inputs`, as f32 values.
fn outputs(model: &Model, inputs: TVec<TValue>) -> Vec<Vec<f32>> {
    model
        .run(inputs)
        .unwrap()
        .iter()
        .map(|t| t.cast_to::<f32>().unwrap().to_plain_array_view::<f32>().unwrap().iter().copied().collect())
        .collect()
}

/// Loads `model` from `dir` without a cache, then twice through a fresh cache (the first load writes
/// the file, the second reads it), and checks that both cached loads give the uncached metadata and
/// outputs for `inputs`.
fn assert_cached_load_answers_the_same(model: &str, dir: &Path, inputs: TVec<TValue>) {
    let uncached = Model::load(model, dir, None).unwrap();
    let want = outputs(&uncached, inputs.clone());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(cache_dir.path());
    assert!(!cache_hits(&cache, model, dir));

    let writing = Model::load(model, dir, Some(&cache)).unwrap();
    assert!(cache_file(&cache, model).is_file(), "{model}: no cache file written");
    assert!(cache_hits(&cache, model, dir), "{model}: the cache file just written is not used");
    let reading = Model::load(model, dir, Some(&cache)).unwrap();

    for (what, loaded) in [("writing the cache", &writing), ("read from the cache", &reading)] {
        assert_eq!(loaded.metadata(), uncached.metadata(), "{model} {what}: metadata");
        let got = outputs(loaded, inputs.clone());
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.len(), w.len());
            let max_abs = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            eprintln!("{model} {what}: max |cached - uncached| = {max_abs:e}");
            assert_eq!(g, w, "{model} {what}: outputs differ from the uncached model's");
        }
    }
    let leftovers: Vec<_> = std::fs::read_dir(cache_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, [format!("{model}.nnef-cache")], "only the cache file stays in the directory");
}

fn digits_inputs() -> TVec<TValue> {
    let pixels: Vec<f32> = (0..64).map(|i| ((i * 7) % 17) as f32).collect();
    tvec![Tensor::from_shape(&[1, 64], &pixels).unwrap().into_tvalue()]
}

fn pack_model(model: &str) -> (PathBuf, TVec<TValue>) {
    let dir = repo_root().join("target/pack-random").join(model);
    assert!(dir.join("model.onnx").is_file(), "{} is missing: {HOW}", dir.display());
    let file = repo_root().join(format!("tests/fixtures/{model}_random_input.npy"));
    let input = ArrayD::<f32>::read_npy(std::fs::File::open(file).unwrap()).unwrap();
    (dir, tvec![Tensor::from(input).into_tvalue()])
}

#[test]
fn digits_from_the_cache_answers_as_from_onnx() {
    assert_cached_load_answers_the_same("digits", &shipped_models().join("digits"), digits_inputs());
}

#[test]
fn squeezenet_from_the_cache_answers_as_from_onnx() {
    let (dir, inputs) = pack_model("squeezenet");
    assert_cached_load_answers_the_same("squeezenet", &dir, inputs);
}

/// resnet50's input and output names (`gpu_0/data_0`, `gpu_0/softmax_1`) are not NNEF identifiers.
#[test]
fn resnet50_from_the_cache_answers_as_from_onnx_with_its_names() {
    let (dir, inputs) = pack_model("resnet50");
    assert_cached_load_answers_the_same("resnet50", &dir, inputs);
}

#[test]
fn a_corrupt_cache_file_falls_back_to_onnx_and_is_rewritten() {
    let dir = shipped_models().join("digits");
    let want = outputs(&Model::load("digits", &dir, None).unwrap(), digits_inputs());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(cache_dir.path());
    Model::load("digits", &dir, Some(&cache)).unwrap();
    let good = std::fs::read(cache_file(&cache, "digits")).unwrap();

    let mut flipped = good.clone();
    let last = flipped.len() / 2;
    flipped[last..].iter_mut().for_each(|b| *b = !*b);
    let mut bad_length = good.clone();
    bad_length[25..29].copy_from_slice(&u32::MAX.to_le_bytes());
    for (what, bytes) in [
        ("empty", Vec::new()),
        ("not ours", b"hello".to_vec()),
        ("truncated", good[..good.len() / 2].to_vec()),
        ("second half flipped", flipped),
        ("huge header length", bad_length),
    ] {
        std::fs::write(cache_file(&cache, "digits"), &bytes).unwrap();
        assert!(!cache_hits(&cache, "digits", &dir), "{what}: used");
        let model = Model::load("digits", &dir, Some(&cache)).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(outputs(&model, digits_inputs()), want, "{what}");
        assert!(cache_hits(&cache, "digits", &dir), "{what}: not rewritten");
    }
}

#[test]
fn a_symlink_in_the_cache_directory_is_replaced_not_followed() {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(cache_dir.path());
    std::os::unix::fs::symlink(&victim, cache_file(&cache, "digits")).unwrap();
    let dir = shipped_models().join("digits");
    Model::load("digits", &dir, Some(&cache)).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"keep me");
    assert!(cache_file(&cache, "digits").symlink_metadata().unwrap().is_file());
    assert!(cache_hits(&cache, "digits", &dir));
}

#[test]
fn a_changed_model_toml_makes_the_cache_stale() {
    let repo = models_dir_with(&["digits"]);
    let dir = repo.path().join("digits");
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(cache_dir.path());
    Model::load("digits", &dir, Some(&cache)).unwrap();
    assert!(cache_hits(&cache, "digits", &dir));

    let manifest = dir.join("model.toml");
    let mut text = std::fs::read_to_string(&manifest).unwrap();
    text.push_str("\n# edited\n");
    std::fs::write(&manifest, text).unwrap();
    assert!(!cache_hits(&cache, "digits", &dir), "a cache file for the old model.toml is used");
    Model::load("digits", &dir, Some(&cache)).unwrap();
    assert!(cache_hits(&cache, "digits", &dir), "not rewritten for the new model.toml");
}

#[test]
fn a_name_that_is_no_model_name_gets_no_cache_file() {
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = ModelCache::new(cache_dir.path());
    let onnx = shipped_models().join("digits/model.onnx");
    assert!(cache.entry("../escape", &onnx).is_none());
    assert!(cache.entry("digits", &onnx).is_some());
}

/// With `models.cache_dir` set, the daemon caches there, and the next start loads from the file.
#[test]
fn the_daemon_caches_in_cache_dir_and_restarts_from_it() {
    let broker = Broker::start();
    let cache_dir = tempfile::tempdir().unwrap();
    // The config's [models] table ends the generated config, so this key lands in it.
    let key = format!("cache_dir = \"{}\"\n", cache_dir.path().display());
    for start in ["first", "second"] {
        let mut daemon = Daemon::spawn(&broker.url(), &digits_repository(), &key);
        daemon.wait_online(&broker);
        daemon.terminate();
        let log = daemon.log();
        assert!(log.contains("model cache on"), "{start} start:\n{log}");
        assert!(cache_dir.path().join("digits.nnef-cache").is_file(), "{start} start:\n{log}");
        let (written, hit) = (log.contains("model cache: written"), log.contains("model cache: hit"));
        assert_eq!((written, hit), (start == "first", start == "second"), "{start} start:\n{log}");
    }
}

/// The cache is opt-in: unset (even under systemd, which sets `$CACHE_DIRECTORY`) means no cache.
#[test]
fn the_cache_is_off_unless_cache_dir_is_set() {
    let cache_dir = tempfile::tempdir().unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let effective = |config: &str| {
        let file = config_dir.path().join("c.toml");
        std::fs::write(&file, config).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
            .args(["serve", "--print-config", "--config"])
            .arg(&file)
            .env("CACHE_DIRECTORY", cache_dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: toml::Value = toml::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
        v["models"].get("cache_dir").and_then(|d| d.as_str()).map(str::to_string)
    };
    assert_eq!(effective(""), None);
    assert_eq!(effective("[models]\ncache_dir = \"\"\n"), Some(String::new()));
    let set = format!("[models]\ncache_dir = \"{}\"\n", cache_dir.path().display());
    assert_eq!(effective(&set), Some(cache_dir.path().to_str().unwrap().to_string()));
}
