//! Operating boards over MQTT (issue 13): signed packages deployed with `edgeinfer fleet deploy`
//! to real daemons on a real Mosquitto, under load; refusals; rollback; restarts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::*;
use edgeinfer::package::sha256_hex;
use serde_json::Value;
use tempfile::TempDir;

fn edgeinfer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_edgeinfer")).args(args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A key pair made with `edgeinfer keygen`, in its own directory.
struct Keys {
    dir: TempDir,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let out = edgeinfer(&["keygen", dir.path().join("key").to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
        Keys { dir }
    }

    fn private(&self) -> PathBuf {
        self.dir.path().join("key")
    }

    fn public(&self) -> PathBuf {
        self.dir.path().join("key.pub")
    }
}

/// The `[admin]` section of a board trusting `keys`, with its state under `state`.
fn admin_toml(keys: &Keys, state: &Path) -> String {
    format!(
        "[admin]\nenabled = true\ntrusted_keys = [\"{}\"]\nstate_dir = \"{}\"\n",
        keys.public().display(),
        state.display()
    )
}

/// A copy of the shipped digits model's files, to package as another version.
fn digits_copy() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in ["model.onnx", "model.toml", "labels.txt"] {
        std::fs::copy(shipped_models().join("digits").join(file), dir.path().join(file)).unwrap();
    }
    dir
}

fn example_request() -> PathBuf {
    shipped_models().join("digits/example-request.json")
}

/// `edgeinfer package` of `dir` as digits `version`, signed with `key`, with the example request
/// recorded as its check when `golden`.
fn package(dir: &Path, version: &str, key: &Path, golden: bool, into: &Path) -> PathBuf {
    let output = into.join(format!("digits-{version}.tar"));
    let mut args = vec![
        "package".to_string(),
        dir.display().to_string(),
        "--name".into(),
        "digits".into(),
        "--version".into(),
        version.into(),
        "--key".into(),
        key.display().to_string(),
        "-o".into(),
        output.display().to_string(),
    ];
    if golden {
        args.extend(["--golden".into(), example_request().display().to_string()]);
    }
    let out = edgeinfer(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{out:?}");
    output
}

fn fleet_deploy(broker: &Broker, package: &Path, targets: &[&str]) -> Output {
    let mut args = vec!["fleet", "deploy", package.to_str().unwrap(), "--broker"];
    let url = broker.url();
    args.push(&url);
    args.extend_from_slice(targets);
    edgeinfer(&args)
}

/// The version of digits that answers the example request on `device`.
fn served_version(broker: &Broker, device: &str) -> String {
    let out = edgeinfer(&[
        "request",
        "digits",
        "--input",
        example_request().to_str().unwrap(),
        "--broker",
        &broker.url(),
        "--device",
        device,
    ]);
    let reply: Value = serde_json::from_str(&stdout(&out)).unwrap_or_else(|_| panic!("{out:?}"));
    reply["model_version"].as_str().unwrap_or_else(|| panic!("no model_version in {reply}")).to_string()
}

/// `edgeinfer loadgen` on the fleet topic at `rate` requests per second, in the background.
fn background_load(broker: &Broker, rate: u32, seconds: f64) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
        .args(["loadgen", "digits", "--fleet", "--json", "--timeout-ms", "15000", "--broker", &broker.url()])
        .args(["--rate", &rate.to_string(), "--seconds", &seconds.to_string(), "-i"])
        .arg(example_request())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// The load's report, once it is over.
fn load_report(load: std::process::Child) -> Value {
    let out = load.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_str(&stdout(&out)).unwrap()
}

/// Every request of the load was answered with a result.
fn assert_all_answered(report: &Value) {
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent > 0, "{report}");
    assert_eq!(report["outcomes"], serde_json::json!({"ok": sent}), "every request answered with a result: {report}");
}

/// One admin operation with `mosquitto_rr`, a client that is not ours.
fn admin_rr(broker: &Broker, device: &str, op: &str, payload: &str) -> Value {
    let out = Command::new("mosquitto_rr")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", &format!("edgeinfer/{device}/admin/{op}")])
        .args(["-e", "test/admin/replies", "-m", payload, "-W", "20"])
        .output()
        .unwrap();
    serde_json::from_str(&stdout(&out)).unwrap_or_else(|_| panic!("no admin reply: {out:?}"))
}

#[test]
fn a_canary_deployment_reaches_every_board_under_load_and_no_request_fails() {
    let broker = Broker::start();
    let keys = Keys::new();
    let states: Vec<TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let boards: Vec<Daemon> =
        states.iter().map(|s| Daemon::start(&broker, &digits_repository(), &admin_toml(&keys, s.path()))).collect();
    for board in &boards {
        assert_eq!(served_version(&broker, &board.device), "1");
    }
    let work = tempfile::tempdir().unwrap();
    let new = digits_copy();
    let package = package(new.path(), "2", &keys.private(), true, work.path());

    let load = background_load(&broker, 200, 8.0);
    std::thread::sleep(Duration::from_millis(2500));
    let deployed = fleet_deploy(&broker, &package, &["--all", "--canary", "1"]);
    let report = load_report(load);
    let text = stdout(&deployed);
    println!("{text}");
    assert!(deployed.status.success(), "{deployed:?}");
    let phase = |name: &str| text.lines().filter(|l| l.starts_with(name)).count();
    assert_eq!(phase("canary "), 1, "one canary: {text}");
    assert_eq!(phase("rollout "), 2, "then the two others: {text}");
    assert!(text.contains("1 check(s) passed"), "{text}");

    println!("load during the rollout: {report}");
    assert_all_answered(&report);
    let versions = report["model_versions"].as_object().unwrap();
    assert!(versions.contains_key("1") && versions.contains_key("2"), "the swap happened under load: {report}");
    for board in &boards {
        assert_eq!(served_version(&broker, &board.device), "2", "{}", board.log());
    }
    let status = edgeinfer(&["fleet", "status", "--broker", &broker.url(), "--json"]);
    let status: Value = serde_json::from_str(&stdout(&status)).unwrap();
    assert_eq!(status.as_array().unwrap().len(), 3, "{status}");
    for board in status.as_array().unwrap() {
        assert_eq!(board["models"]["digits"], "2", "{status}");
        assert_eq!(board["state"], "online");
    }
}

#[test]
fn refused_packages_leave_the_old_version_serving_without_a_failed_request() {
    let broker = Broker::start();
    let (keys, stranger) = (Keys::new(), Keys::new());
    let state = tempfile::tempdir().unwrap();
    let board = Daemon::start(&broker, &digits_repository(), &admin_toml(&keys, state.path()));
    let work = tempfile::tempdir().unwrap();

    let corrupt = digits_copy();
    std::fs::write(corrupt.path().join("model.onnx"), b"\x08\x07not a protobuf at all").unwrap();
    let corrupt = package(corrupt.path(), "3", &keys.private(), false, work.path());

    // A check that the model cannot pass: its own answer, one probability moved by 0.5.
    let wrong = digits_copy();
    let models = shipped_models();
    let answer = edgeinfer(&[
        "infer",
        "digits",
        "--models",
        models.to_str().unwrap(),
        "-i",
        example_request().to_str().unwrap(),
    ]);
    let answer: Value = serde_json::from_str(&stdout(&answer)).unwrap();
    let mut probabilities = output_data(&answer, "probabilities");
    probabilities[0] += 0.5;
    let request: Value = serde_json::from_slice(&std::fs::read(example_request()).unwrap()).unwrap();
    let golden =
        serde_json::json!([{"request": request, "outputs": [{"name": "probabilities", "data": probabilities}]}]);
    std::fs::write(wrong.path().join("golden.json"), serde_json::to_vec(&golden).unwrap()).unwrap();
    let wrong = package(wrong.path(), "4", &keys.private(), false, work.path());

    let foreign = package(digits_copy().path(), "5", &stranger.private(), false, work.path());

    let good = package(digits_copy().path(), "6", &keys.private(), false, work.path());
    let bytes = std::fs::read(&good).unwrap();
    let truncated = work.path().join("truncated.tar");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    // One byte of model.onnx's data changed after signing (its tar header names it; data follows).
    let mut flipped = bytes.clone();
    let header = flipped.windows(11).position(|w| w == b"model.onnx\0").unwrap();
    flipped[header + 512 + 100] ^= 0xff;
    let tampered = work.path().join("tampered.tar");
    std::fs::write(&tampered, &flipped).unwrap();

    let load = background_load(&broker, 100, 10.0);
    let device = ["--boards", board.device.as_str()];
    for (package, reason) in [
        (&corrupt, "was not activated"),
        (&wrong, "its checks failed"),
        (&foreign, "not in admin.trusted_keys"),
        (&truncated, "the package was refused"),
        (&tampered, "the package was refused"),
    ] {
        let out = fleet_deploy(&broker, package, &device);
        let text = stdout(&out);
        println!("{}: {text}", package.display());
        assert!(!out.status.success(), "{} must be refused: {text}", package.display());
        assert!(text.contains(reason), "{}: the reason \"{reason}\" in {text}", package.display());
        assert!(text.contains("FAILED"), "{text}");
        assert_eq!(served_version(&broker, &board.device), "1", "the old version serves on");
    }
    let report = load_report(load);
    println!("load during the refusals: {report}");
    assert_all_answered(&report);
    assert_eq!(report["model_versions"], serde_json::json!({"1": report["sent"]}));

    // Damaged in transit: chunks of the wrong length are refused; the right length with the
    // wrong bytes makes the whole package fail its sha256, and it must be sent again.
    let offer =
        serde_json::json!({"sha256": sha256_hex(&bytes), "size": bytes.len(), "chunk_bytes": bytes.len()}).to_string();
    let reply = admin_rr(&broker, &board.device, "deploy", &offer);
    assert_eq!(reply["data"]["missing"], serde_json::json!([0]), "{reply}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut client = runtime.block_on(V5Client::connect(&broker, &["test/admin/chunks"]));
    let mut chunk = |payload: &[u8]| -> Value {
        let mut props = request_props("test/admin/chunks", b"c");
        props.user_properties = vec![("sha256".into(), sha256_hex(&bytes)), ("index".into(), "0".into())];
        runtime.block_on(async {
            client.publish(&format!("edgeinfer/{}/admin/chunk", board.device), payload.to_vec(), props).await;
            serde_json::from_slice(&client.next().await.payload).unwrap()
        })
    };
    let short = chunk(&bytes[..bytes.len() / 2]);
    assert!(short["error"].as_str().unwrap().contains("bytes;"), "a short chunk is refused: {short}");
    let mut garbled = bytes.clone();
    garbled[700] ^= 1;
    let garbled = chunk(&garbled);
    assert_eq!(garbled["data"]["missing"], 0, "{garbled}");
    let reply = admin_rr(&broker, &board.device, "deploy", &offer);
    assert!(reply["error"].as_str().unwrap().contains("corrupted or truncated in transit"), "{reply}");

    // Refusals leave nothing stuck: the good package deploys.
    let out = fleet_deploy(&broker, &good, &device);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(served_version(&broker, &board.device), "6");
    let log = board.log();
    assert!(log.contains("refused"), "each refusal is logged");
    assert_eq!(std::fs::read_dir(state.path().join("staging")).unwrap().count(), 0, "nothing half-unpacked is left");
    assert_eq!(std::fs::read_dir(state.path().join("incoming")).unwrap().count(), 0, "no refused package kept");
}

#[test]
fn rollback_switches_at_once_and_a_restart_serves_the_version_last_activated() {
    let broker = Broker::start();
    let keys = Keys::new();
    let state = tempfile::tempdir().unwrap();
    let mut board = Daemon::start(&broker, &digits_repository(), &admin_toml(&keys, state.path()));
    let work = tempfile::tempdir().unwrap();
    let v2 = package(digits_copy().path(), "2", &keys.private(), true, work.path());
    let v3 = package(digits_copy().path(), "3", &keys.private(), true, work.path());
    let device = board.device.clone();
    let targets = ["--boards", device.as_str()];

    assert!(fleet_deploy(&broker, &v2, &targets).status.success());
    assert_eq!(served_version(&broker, &device), "2");
    let started = Instant::now();
    let out = edgeinfer(&["fleet", "rollback", "digits", "--boards", &device, "--broker", &broker.url()]);
    let rollback_ms = started.elapsed().as_millis();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(served_version(&broker, &device), "1");
    println!("rollback, command start to reply: {rollback_ms} ms ({})", stdout(&out).trim());

    assert!(fleet_deploy(&broker, &v3, &targets).status.success());
    assert_eq!(served_version(&broker, &device), "3");
    let models = admin_rr(&broker, &device, "models", "{}");
    assert_eq!(models["status"], "ok", "{models}");
    let digits = &models["data"][0];
    assert_eq!((digits["name"].as_str(), digits["version"].as_str()), (Some("digits"), Some("3")), "{models}");
    assert_eq!(digits["held"], serde_json::json!(["3"]), "version 2 is two activations old: deleted");
    assert_eq!(digits["previous"], "repository");
    assert_eq!(digits["sha256"].as_str().map(str::len), Some(64));

    board.terminate();
    board.relaunch();
    board.wait_online(&broker);
    assert_eq!(served_version(&broker, &device), "3", "a restart serves the version last activated");

    let unloaded = admin_rr(&broker, &device, "unload", r#"{"model":"digits"}"#);
    assert_eq!(unloaded["status"], "ok", "{unloaded}");
    let refused = edgeinfer(&[
        "request",
        "digits",
        "-i",
        example_request().to_str().unwrap(),
        "--broker",
        &broker.url(),
        "--device",
        &device,
    ]);
    assert!(stdout(&refused).contains("unknown_model"), "{refused:?}");
    board.terminate();
    board.relaunch();
    board.wait_online(&broker);
    let health = admin_rr(&broker, &device, "health", "{}");
    assert_eq!(health["data"]["models"], serde_json::json!({}), "still unloaded after a restart: {health}");
    let activated = admin_rr(&broker, &device, "activate", r#"{"model":"digits","version":"3"}"#);
    assert_eq!(activated["status"], "ok", "{activated}");
    assert_eq!(served_version(&broker, &device), "3");
    let health = admin_rr(&broker, &device, "health", "{}");
    assert_eq!(
        (health["status"].as_str(), health["data"]["models"]["digits"]["ok"].as_bool()),
        (Some("ok"), Some(true))
    );

    for (payload, says) in [
        (r#"{"model":"../../etc","version":"3"}"#, "no model"),
        (r#"{"model":"digits","version":"../3"}"#, "not a version name"),
        (r#"{"model":"digits","version":"9"}"#, "no version 9"),
        (r#"{"model":"digits"}"#, "give \"version\""),
        ("not json", "not valid JSON"),
    ] {
        let reply = admin_rr(&broker, &device, "activate", payload);
        assert_eq!(reply["status"], "error", "{payload}: {reply}");
        assert!(reply["error"].as_str().unwrap().contains(says), "{payload}: \"{says}\" in {reply}");
    }
    let unknown = admin_rr(&broker, &device, "format-disk", "{}");
    assert!(unknown["error"].as_str().unwrap().contains("unknown operation"), "{unknown}");
    assert_eq!(served_version(&broker, &device), "3", "still serving after the bad operations");
}

#[test]
fn admin_topics_are_not_listened_to_unless_enabled() {
    let broker = Broker::start();
    let board = Daemon::start(&broker, &digits_repository(), "");
    let out = Command::new("mosquitto_rr")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &broker.port.to_string(),
            "-t",
            &format!("edgeinfer/{}/admin/models", board.device),
        ])
        .args(["-e", "test/admin/replies", "-m", "{}", "-W", "2"])
        .output()
        .unwrap();
    assert!(out.stdout.is_empty(), "no reply from a board without admin.enabled: {out:?}");
    assert_eq!(served_version(&broker, &board.device), "1");
}

#[test]
fn sighup_serves_the_repository_as_edited_and_keeps_serving_through_a_bad_edit() {
    let broker = Broker::start();
    let models = models_dir_with(&["digits"]);
    let board = Daemon::start(&broker, models.path(), "");
    assert_eq!(served_version(&broker, &board.device), "1");
    let toml = models.path().join("digits/model.toml");
    let original = std::fs::read_to_string(&toml).unwrap();
    std::fs::write(&toml, format!("version = \"7\"\n{original}")).unwrap();
    board.signal("HUP");
    wait_until("the edited model is served", || served_version(&broker, &board.device) == "7");

    board.signal("HUP");
    wait_until("a reload with nothing changed", || board.log().matches("SIGHUP: repository reloaded").count() == 2);
    assert!(board.log().contains("reloaded=0 failed=0"), "an unchanged model is not reloaded: {}", board.log());

    std::fs::write(&toml, format!("version = \"8\"\n[nonsense]\n{original}")).unwrap();
    board.signal("HUP");
    wait_until("the bad edit is refused", || board.log().contains("reload failed"));
    assert_eq!(served_version(&broker, &board.device), "7", "the version served before goes on serving");
}
