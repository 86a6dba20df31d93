//! The systemd notify protocol for real: the test owns a NOTIFY_SOCKET datagram socket, starts the
//! daemon with it (and WATCHDOG_USEC), and reads what arrives.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The service manager's end: a datagram socket read continuously, as systemd does (a socket
/// left unread would fill and make the daemon's sends block).
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    received: std::sync::mpsc::Receiver<(Instant, String)>,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let (tx, received) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                for line in String::from_utf8_lossy(&buf[..n]).lines() {
                    if tx.send((Instant::now(), line.to_string())).is_err() {
                        return;
                    }
                }
            }
        });
        NotifySocket { _dir: dir, path, received }
    }

    /// Every line received within `within`.
    fn drain(&self, within: Duration) -> Vec<String> {
        self.drain_timed(within).into_iter().map(|(_, line)| line).collect()
    }

    /// Every line received within `within`, with the time it arrived.
    fn drain_timed(&self, within: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + within;
        let mut lines = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.received.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => break,
            }
        }
        lines
    }

    /// Forgets what arrived so far.
    fn clear(&self) {
        while self.received.try_recv().is_ok() {}
    }

    /// Reads until a line equal to `wanted` arrives; returns everything read.
    fn until(&self, wanted: &str) -> Vec<String> {
        self.until_prefix(wanted)
    }

    /// Reads until a line starting with `wanted` arrives; returns everything read.
    fn until_prefix(&self, wanted: &str) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut lines: Vec<String> = Vec::new();
        while !lines.iter().any(|l| l.starts_with(wanted)) {
            assert!(Instant::now() < deadline, "no {wanted} in {lines:?}");
            lines.extend(self.drain(Duration::from_millis(100)));
        }
        lines
    }
}

fn spawn_notifying(broker_url: &str, notify: &NotifySocket, watchdog_usec: u64, extra_toml: &str) -> Daemon {
    spawn_notifying_on(&digits_repository(), broker_url, notify, watchdog_usec, extra_toml)
}

fn spawn_notifying_on(
    models: &std::path::Path,
    broker_url: &str,
    notify: &NotifySocket,
    watchdog_usec: u64,
    extra_toml: &str,
) -> Daemon {
    Daemon::spawn_with_env(
        broker_url,
        models,
        extra_toml,
        &[("NOTIFY_SOCKET", notify.path.to_str().unwrap()), ("WATCHDOG_USEC", &watchdog_usec.to_string())],
    )
}

#[test]
fn ready_only_once_the_broker_is_there_then_watchdog_pings_and_stopping_on_sigterm() {
    let notify = NotifySocket::new();
    let port = free_port();
    let mut daemon = spawn_notifying(&format!("mqtt://127.0.0.1:{port}"), &notify, 400_000, "");

    let before_broker = notify.drain(Duration::from_millis(1500));
    assert!(before_broker.contains(&"STATUS=loading models".to_string()), "{before_broker:?}");
    assert!(
        before_broker.iter().any(|l| l.starts_with("STATUS=waiting for broker at mqtt://127.0.0.1")),
        "{before_broker:?}"
    );
    assert!(!before_broker.contains(&"READY=1".to_string()), "READY before the broker: {before_broker:?}");

    let broker = Broker::start_on(port);
    let lines = notify.until("READY=1");
    assert!(lines.iter().any(|l| l.starts_with("STATUS=serving 1 model(s)")), "{lines:?}");
    let pings = notify.drain(Duration::from_secs(1)).iter().filter(|l| *l == "WATCHDOG=1").count();
    assert!(pings >= 3, "an idle, healthy daemon pings every 200 ms: {pings} in 1 s");

    let status = daemon.terminate();
    assert!(status.success());
    let last = notify.drain(Duration::from_millis(300));
    assert!(last.contains(&"STOPPING=1".to_string()), "{last:?}");
    drop(broker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchdog_pings_stop_while_workers_with_queued_jobs_make_no_progress() {
    let notify = NotifySocket::new();
    let broker = Broker::start();
    // One worker on one thread, 20 ms watchdog: a queue of resnet50 frames keeps it busy for many
    // watchdog periods. (Large digits batches once did, but decoding them in a test build took about
    // as long as computing them, so on a quiet machine the queue was often empty while it computed.)
    let models = pack(&["resnet50"]);
    let daemon = spawn_notifying_on(
        models.path(),
        &broker.url(),
        &notify,
        20_000,
        "[requests]\nworkers = 1\nlone_request_threads = 1\n",
    );
    daemon.wait_online(&broker);
    notify.until("READY=1");

    // Six frames published back to back from one client: a frame arrives and is checked in a few
    // milliseconds and takes over 100 ms to compute, so five wait while one is computed.
    let frame = json!({"inputs": [{"name": "gpu_0/data_0", "shape": [1, 3, 224, 224], "datatype": "FP32", "data": vec![0.5f32; 3 * 224 * 224]}], "outputs": [{"name": "gpu_0/softmax_1"}]}).to_string();
    let client = V5Client::connect(&broker, &["test/watchdog"]).await;
    notify.clear();
    let sent = 6;
    for i in 0..sent {
        let props = request_props("test/watchdog", format!("{i}").as_bytes());
        client.publish(&daemon.infer_topic("resnet50"), frame.clone(), props).await;
    }
    // Every ping until all are answered.
    let deadline = Instant::now() + PATIENCE;
    let mut pings = Vec::new();
    while daemon.log().matches("answered").count() < sent {
        assert!(Instant::now() < deadline, "not all answered:\n{}\nbroker:\n{}", daemon.log(), broker.log());
        let lines = notify.drain_timed(Duration::from_millis(100));
        pings.extend(lines.into_iter().filter(|(_, l)| l == "WATCHDOG=1").map(|(at, _)| at));
    }
    // A healthy daemon pings every 10 ms; a stalled one withholds pings while jobs wait and none
    // finishes (over 100 ms per resnet50 frame on one thread of a test build).
    let longest_gap = pings.windows(2).map(|pair| pair[1] - pair[0]).max().unwrap_or_default();
    assert!(
        longest_gap >= Duration::from_millis(100),
        "pings never stopped for 10 periods: longest gap {longest_gap:?}"
    );
    wait_until("pings resume once the work is done", || {
        notify.drain(Duration::from_millis(300)).iter().filter(|l| *l == "WATCHDOG=1").count() >= 5
    });
    let log = daemon.log();
    assert!(log.contains("stalled=[\"resnet50\"]"), "{log}");
    assert!(log.contains("watchdog: making progress again"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_daemon_stops_pinging_and_resumes_by_itself() {
    // SIGSTOP freezes every thread, the watchdog's too: systemd sees no ping and, past WatchdogSec,
    // restarts the daemon (its persistent session keeps what arrives meanwhile). A shorter freeze
    // ends by itself.
    let notify = NotifySocket::new();
    let broker = Broker::start();
    let daemon = spawn_notifying(&broker.url(), &notify, 400_000, "");
    daemon.wait_online(&broker);
    notify.until("READY=1");
    let mut client = V5Client::connect(&broker, &["test/frozen"]).await;
    daemon.signal("STOP");
    notify.clear();
    let frozen = notify.drain(Duration::from_millis(1500));
    assert!(!frozen.contains(&"WATCHDOG=1".to_string()), "pinged while frozen: {frozen:?}");
    let golden = digits_golden();
    client
        .publish(
            &daemon.infer_topic("digits"),
            digits_request("f", &golden.inputs[0]),
            request_props("test/frozen", b"f"),
        )
        .await;
    daemon.signal("CONT");
    let reply: Value = serde_json::from_slice(&client.next().await.payload).unwrap();
    assert!(reply["outputs"].is_array(), "{reply}");
    wait_until("pings resume", || notify.drain(Duration::from_millis(500)).contains(&"WATCHDOG=1".to_string()));
}

/// The shipped unit, pointed at the built binary, verifies clean and scores <= 2.0 in
/// `systemd-analyze security` (lower is better).
#[test]
fn the_unit_file_verifies_and_is_hardened() {
    let unit = std::fs::read_to_string(repo_root().join("systemd/edgeinfer.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edgeinfer.service");
    std::fs::write(&path, unit.replace("/usr/bin/edgeinfer", env!("CARGO_BIN_EXE_edgeinfer"))).unwrap();

    let verify =
        Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path).output().expect("systemd-analyze");
    let complaints = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && complaints.trim().is_empty(), "systemd-analyze verify: {complaints}");

    let security = Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&security.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for edgeinfer.service: ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure score in:\n{text}"));
    println!("systemd-analyze security exposure: {score}");
    assert!(score <= 2.0, "exposure {score} > 2.0:\n{text}");
    for directive in ["Type=notify", "WatchdogSec=", "NoNewPrivileges=yes", "ProtectSystem=strict", "User=edgeinfer"] {
        assert!(unit.contains(directive), "{directive} missing from the unit");
    }
}
