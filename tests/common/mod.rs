//! The test harness: a private Mosquitto on a free loopback port and the built daemon as a real
//! process, each cleaned up when dropped. Tests read like what a user would do.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tempfile::TempDir;

/// How long a test waits for something that should happen in milliseconds before it gives up.
pub const PATIENCE: Duration = Duration::from_secs(20);

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Mosquitto broker of the test's own, on 127.0.0.1 only.
pub struct Broker {
    pub port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Broker {
    pub fn start() -> Broker {
        Self::start_with("")
    }

    /// Starts a broker on a given port, for a daemon that was started first.
    pub fn start_on(port: u16) -> Broker {
        Self::launch_new(port, "")
    }

    /// Starts a broker with extra `mosquitto.conf` lines (auth, limits).
    pub fn start_with(extra_conf: &str) -> Broker {
        Self::launch_new(free_port(), extra_conf)
    }

    /// Starts a broker whose only listener takes `listener_conf` (TLS files, auth) and no anonymous default.
    pub fn start_tls(listener_conf: &str) -> Broker {
        Self::launch_conf(free_port(), |port| {
            format!("per_listener_settings false\nlistener {port} 127.0.0.1\n{listener_conf}set_tcp_nodelay true\npersistence false\n")
        })
    }

    /// Starts a broker on `port` with exactly the given `mosquitto.conf` (auth, ACLs).
    pub fn start_conf_on(port: u16, conf: &str) -> Broker {
        Self::launch_conf(port, |_| conf.to_string())
    }

    /// Starts a broker that keeps its state on disk (`persistence true`), saving every second, so
    /// that a restart, even after `kill -9`, brings back sessions and queued messages.
    pub fn start_persistent() -> Broker {
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto started as root drops to its own user, which must be able to write here.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port();
        let conf = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence true\n\
             persistence_location {}/\nautosave_interval 1\nmax_queued_messages 0\n",
            dir.path().display()
        );
        std::fs::write(dir.path().join("mosquitto.conf"), conf).unwrap();
        let mut broker = Broker { port, dir, child: None };
        broker.launch();
        broker
    }

    /// Stops the broker the way its service manager would (SIGTERM: it saves its state first).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
    }

    /// Starts the stopped or killed broker again, with the same config and state directory.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "the broker is still running");
        self.launch();
    }

    fn launch_new(port: u16, extra_conf: &str) -> Broker {
        Self::launch_conf(port, |port| {
            format!("listener {port} 127.0.0.1\nallow_anonymous true\nset_tcp_nodelay true\npersistence false\n{extra_conf}\n")
        })
    }

    fn launch_conf(port: u16, conf: impl Fn(u16) -> String) -> Broker {
        let dir = tempfile::tempdir().unwrap();
        let mut broker = Broker { port, dir, child: None };
        let conf = conf(port);
        std::fs::write(broker.dir.path().join("mosquitto.conf"), conf).unwrap();
        broker.launch();
        broker
    }

    fn launch(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("mosquitto.log")).unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto must be installed (apt-get install mosquitto)");
        self.child = Some(child);
        wait_until("the broker listens", || {
            TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], self.port)), Duration::from_millis(100))
                .is_ok()
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Kills the broker hard (`kill -9`): no goodbye to anyone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port, with nothing retained.
    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The built `edgeinfer serve`, with a config file written from the given TOML.
pub struct Daemon {
    pub device: String,
    pub dir: TempDir,
    child: Option<Child>,
}

impl Daemon {
    /// Starts the daemon on `models` with `extra_toml` appended to a config naming the broker and
    /// a unique device id. Does not wait for it to be ready.
    pub fn spawn(broker_url: &str, models: &Path, extra_toml: &str) -> Daemon {
        Self::spawn_with_broker_section(broker_url, models, "", extra_toml)
    }

    /// Like [`Daemon::spawn`], with extra environment variables (systemd's NOTIFY_SOCKET, ...).
    pub fn spawn_with_env(broker_url: &str, models: &Path, extra_toml: &str, env: &[(&str, &str)]) -> Daemon {
        Self::launch(Self::new_device(), broker_url, models, "", "", extra_toml, env)
    }

    /// Like [`Daemon::spawn`], with extra keys in the `[broker]` section (TLS, credentials).
    pub fn spawn_with_broker_section(broker_url: &str, models: &Path, broker_keys: &str, extra_toml: &str) -> Daemon {
        Self::launch(Self::new_device(), broker_url, models, broker_keys, "", extra_toml, &[])
    }

    /// Like [`Daemon::spawn_with_broker_section`], with a device id of the test's choosing (one
    /// that a broker's ACL names, say).
    pub fn spawn_as(device: &str, broker_url: &str, models: &Path, broker_keys: &str) -> Daemon {
        Self::launch(device.to_string(), broker_url, models, broker_keys, "", "", &[])
    }

    /// Like [`Daemon::start`], with extra keys in the `[topics]` section.
    pub fn start_with_topics(broker: &Broker, models: &Path, topics_keys: &str, extra_toml: &str) -> Daemon {
        let daemon = Self::launch(Self::new_device(), &broker.url(), models, "", topics_keys, extra_toml, &[]);
        daemon.wait_online(broker);
        daemon
    }

    /// A device id no other daemon of the test run has.
    fn new_device() -> String {
        format!("test-{}", free_port())
    }

    fn launch(
        device: String,
        broker_url: &str,
        models: &Path,
        broker_keys: &str,
        topics_keys: &str,
        extra_toml: &str,
        env: &[(&str, &str)],
    ) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let config = format!(
            "[broker]\nurl = \"{broker_url}\"\nreconnect_max_ms = 500\n{broker_keys}\n[topics]\ndevice = \"{device}\"\n{topics_keys}\n\n\
             [models]\nrepository = \"{}\"\n\n{extra_toml}\n",
            models.display()
        );
        std::fs::write(dir.path().join("edgeinfer.toml"), config).unwrap();
        let child = Self::run_in(dir.path(), env);
        Daemon { device, dir, child: Some(child) }
    }

    fn run_in(dir: &Path, env: &[(&str, &str)]) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("daemon.log")).unwrap();
        Command::new(env!("CARGO_BIN_EXE_edgeinfer"))
            .args(["serve", "--config"])
            .arg(dir.join("edgeinfer.toml"))
            .env("RUST_LOG", "info,edgeinfer=debug")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Starts the daemon again, with the same config (device id, client id), after it stopped
    /// or was killed; its log goes on in the same file.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "the daemon is still running");
        self.child = Some(Self::run_in(self.dir.path(), &[]));
    }

    /// Sends a signal (`STOP`, `CONT`, ...) to the daemon's process.
    pub fn signal(&self, signal: &str) {
        let pid = self.pid().to_string();
        assert!(Command::new("kill").args([&format!("-{signal}"), &pid]).status().unwrap().success());
    }

    /// Starts the daemon and waits until its retained status says `online`.
    pub fn start(broker: &Broker, models: &Path, extra_toml: &str) -> Daemon {
        let daemon = Daemon::spawn(&broker.url(), models, extra_toml);
        daemon.wait_online(broker);
        daemon
    }

    pub fn wait_online(&self, broker: &Broker) {
        self.wait_online_with(|topic| retained(broker, topic));
    }

    /// Waits for `online`, reading the retained status with `read` (for brokers that need TLS or a login).
    pub fn wait_online_with(&self, read: impl Fn(&str) -> Option<Value>) {
        let topic = format!("edgeinfer/{}/status", self.device);
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = read(&topic) {
                if status["state"] == "online" {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "daemon never came online; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the daemon without letting it say goodbye (`kill -9`).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn infer_topic(&self, model: &str) -> String {
        format!("edgeinfer/{}/models/{model}/infer", self.device)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The retained message on `topic`, read with `mosquitto_sub` (a real third-party client).
pub fn retained(broker: &Broker, topic: &str) -> Option<Value> {
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", topic, "-C", "1", "-W", "1", "--retained-only"])
        .output()
        .expect("mosquitto_sub must be installed (apt-get install mosquitto-clients)");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().next()?;
    serde_json::from_str(line).ok()
}

/// The model repository shipped in the repo.
pub fn shipped_models() -> PathBuf {
    repo_root().join("models")
}

/// A repository holding only the shipped `digits` (a link to it): what the daemon tests serve,
/// whether or not the model pack (`models/fetch.py`) is there too.
pub fn digits_repository() -> PathBuf {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("target/test-models");
        std::fs::create_dir_all(&dir).unwrap();
        match std::os::unix::fs::symlink(shipped_models().join("digits"), dir.join("digits")) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("linking {}: {e}", dir.join("digits").display()),
        }
        dir
    })
    .clone()
}

/// What to do when a model of the pack is missing.
pub const FETCH_FIRST: &str = "run `python3 models/fetch.py` first (after `pip install -r models/requirements.txt`)";

/// A models directory holding copies of the named pack models, after checking they were fetched.
pub fn pack(models: &[&str]) -> TempDir {
    for model in models {
        let onnx = shipped_models().join(model).join("model.onnx");
        assert!(onnx.is_file(), "{} is missing: {FETCH_FIRST}", onnx.display());
    }
    models_dir_with(models)
}

/// Properties of a media request (an image or audio as the whole payload, parameters in User
/// Properties), from a v5 requester.
pub fn media_props(reply: &str, correlation: &str, content_type: &str, user: &[(&str, &str)]) -> PublishProperties {
    let mut props = request_props(reply, correlation.as_bytes());
    props.content_type = Some(content_type.to_string());
    props.user_properties = user.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    props
}

/// A model repository of the test's own, with copies of shipped models and anything else added.
pub fn models_dir_with(models: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    for model in models {
        let from = shipped_models().join(model);
        let to = dir.path().join(model);
        std::fs::create_dir(&to).unwrap();
        for entry in std::fs::read_dir(&from).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
            }
        }
    }
    dir
}

pub fn write_file(path: &Path, contents: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::File::create(path).unwrap().write_all(contents).unwrap();
}

/// A plain MQTT v5 client for tests that look at protocol details (properties, QoS).
pub struct V5Client {
    pub client: AsyncClient,
    incoming: tokio::sync::mpsc::UnboundedReceiver<Publish>,
}

impl V5Client {
    pub async fn connect(broker: &Broker, subscribe: &[&str]) -> V5Client {
        let mut options = MqttOptions::new(format!("test-v5-{}", free_port()), "127.0.0.1", broker.port);
        options.set_max_packet_size(Some(64 * 1024 * 1024));
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        options.set_network_options(network);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        let (subscribed_tx, mut subscribed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(event) = eventloop.poll().await {
                match event {
                    Event::Incoming(Packet::Publish(p)) => {
                        let _ = tx.send(p);
                    }
                    Event::Incoming(Packet::SubAck(_)) => {
                        let _ = subscribed_tx.send(());
                    }
                    _ => {}
                }
            }
        });
        for filter in subscribe {
            client.subscribe(*filter, QoS::AtLeastOnce).await.unwrap();
            tokio::time::timeout(PATIENCE, subscribed.recv()).await.expect("SUBACK").unwrap();
        }
        V5Client { client, incoming }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>, props: PublishProperties) {
        self.client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload.into(), props).await.unwrap();
    }

    pub async fn next(&mut self) -> Publish {
        tokio::time::timeout(PATIENCE, self.incoming.recv()).await.expect("a message in time").unwrap()
    }
}

/// Request properties of a v5 requester.
pub fn request_props(reply_topic: &str, correlation: &[u8]) -> PublishProperties {
    PublishProperties {
        response_topic: Some(reply_topic.to_string()),
        correlation_data: Some(Bytes::copy_from_slice(correlation)),
        ..Default::default()
    }
}

/// The digits goldens computed by onnxruntime (models/digits/build.py).
pub struct Golden {
    pub inputs: Vec<Vec<f32>>,
    pub probabilities: Vec<Vec<f32>>,
    pub logits: Vec<Vec<f32>>,
}

pub fn digits_golden() -> Golden {
    let text = std::fs::read_to_string(repo_root().join("tests/fixtures/digits_golden.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let rows = |key: &str| -> Vec<Vec<f32>> {
        v[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect()
    };
    Golden { inputs: rows("inputs"), probabilities: rows("probabilities"), logits: rows("logits") }
}

pub fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

/// The `data` of the named output in a decoded reply, as f32.
pub fn output_data(reply: &Value, name: &str) -> Vec<f32> {
    let outputs = reply["outputs"].as_array().unwrap_or_else(|| panic!("no outputs in {reply}"));
    let out = outputs.iter().find(|o| o["name"] == name).unwrap_or_else(|| panic!("no output {name} in {reply}"));
    out["data"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

pub fn digits_request(id: &str, pixels: &[f32]) -> String {
    serde_json::json!({
        "id": id,
        "inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": pixels}]
    })
    .to_string()
}

/// Publishes a binary-extension request file with `mosquitto_pub` over MQTT v5, its JSON header
/// length in the `inference-header-content-length` user property.
pub fn mosquitto_pub_binary(
    broker: &Broker,
    topic: &str,
    file: &Path,
    header_len: usize,
    response_topic: Option<&str>,
) {
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", "127.0.0.1", "-p", &broker.port.to_string(), "-t", topic, "-V", "mqttv5"]);
    if let Some(reply) = response_topic {
        cmd.args(["-D", "publish", "response-topic", reply]);
    }
    cmd.args(["-D", "publish", "user-property", "inference-header-content-length", &header_len.to_string()]);
    let status = cmd.arg("-f").arg(file).status().expect("mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed");
}
