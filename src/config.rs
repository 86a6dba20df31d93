//! The daemon's configuration: one TOML file, every key with a default, validated before anything
//! starts so that a typo fails at start with the key's name rather than at 3 a.m. on a board.
//!
//! Precedence: command-line flags over the config file over the defaults below.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The whole configuration tree, as in `systemd/edgeinfer.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerConfig,
    pub topics: TopicsConfig,
    pub models: ModelsConfig,
    pub requests: RequestsConfig,
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
}

/// How to reach and authenticate to the MQTT broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// `mqtt://host:port` (plain TCP, default port 1883) or `mqtts://host:port` (TLS, default 8883).
    pub url: String,
    /// MQTT client id; default `edgeinfer-<device>`. Must be unique per broker.
    pub client_id: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Read the password from this file instead (e.g. a systemd credential), trailing newline removed.
    pub password_file: Option<PathBuf>,
    /// PEM CA bundle to verify the broker; without it, `mqtts://` uses the system's trust store.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for brokers that require mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub keep_alive_secs: u64,
    /// How long the broker keeps the daemon's session (its subscriptions and the QoS 1 requests
    /// that arrive meanwhile) after the connection is gone: a broker restart, a network outage or
    /// a restart of the daemon then loses no request. 0 = a clean session on every connection.
    pub session_expiry_secs: u32,
    /// Reconnect backoff: starts at the minimum, doubles on each failure, capped at the maximum.
    pub reconnect_min_ms: u64,
    pub reconnect_max_ms: u64,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: None,
            username: None,
            password: None,
            password_file: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            keep_alive_secs: 30,
            session_expiry_secs: 600,
            reconnect_min_ms: 100,
            reconnect_max_ms: 5_000,
        }
    }
}

/// The topic scheme: `<base>/<device>/...` for this board, `<base>/fleet/...` shared by the fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    pub base: String,
    /// This board's id in topics; default: the hostname.
    pub device: Option<String>,
    /// Shared-subscription group for `<base>/fleet/models/<model>/infer`; empty turns the fleet topic off.
    pub fleet_group: String,
    /// Reply topics under `<base>/` are refused (a client could otherwise make the board publish
    /// onto its own status or another board's request topics) except under `<base>/<prefix>` for
    /// these prefixes. The default is where `edgeinfer request` and `loadgen` listen.
    pub allowed_reply_prefixes: Vec<String>,
    /// Fleet requests this board holds at once (the Receive Maximum of its fleet connection): what
    /// is stranded, at most, when a board dies with requests of the fleet in hand.
    pub fleet_receive_maximum: u16,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        TopicsConfig {
            base: "edgeinfer".into(),
            device: None,
            fleet_group: "edgeinfer".into(),
            allowed_reply_prefixes: vec!["clients/".into()],
            fleet_receive_maximum: 8,
        }
    }
}

/// Where the models are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelsConfig {
    /// One sub-directory per model: `<name>/model.onnx` and an optional `<name>/model.toml`.
    pub repository: PathBuf,
    /// Where loaded models are cached in tract's NNEF form, so that a restart skips the ONNX parsing
    /// and graph simplification. Unset or `""`: no cache. Off by default because it pays only for
    /// some models (bench/RESULTS.md, "Cold start"); the unit's CacheDirectory= is
    /// `/var/cache/edgeinfer`.
    pub cache_dir: Option<PathBuf>,
}

impl Default for ModelsConfig {
    fn default() -> Self {
        ModelsConfig { repository: PathBuf::from("models"), cache_dir: None }
    }
}

impl ModelsConfig {
    /// The model cache directory in use (after [`Config::finalize`]), `None` when the cache is off.
    pub fn cache_dir(&self) -> Option<&Path> {
        self.cache_dir.as_deref().filter(|dir| !dir.as_os_str().is_empty())
    }
}

/// Operating the board over MQTT (README: "Operating a fleet"): model deployments, version
/// switches, health checks. Off by default; who may publish to the admin topics is the broker's
/// ACL's business, and every deployment must be signed by a trusted key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Subscribe to `<base>/<device>/admin/+` and `<base>/fleet/admin/+`.
    pub enabled: bool,
    /// Public keys (`edgeinfer keygen` writes `KEY.pub`) whose signatures deployments may carry.
    pub trusted_keys: Vec<PathBuf>,
    /// Deployed model versions, the active one per model, and packages being received: under
    /// the unit's StateDirectory= (`/var/lib/edgeinfer`), beside the read-only model repository.
    pub state_dir: PathBuf,
    /// The largest package accepted; a package being received takes this much disk at most, and
    /// a board holds at most two versions of a model besides.
    pub max_package_bytes: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: false,
            trusted_keys: Vec::new(),
            state_dir: PathBuf::from("/var/lib/edgeinfer/deployed"),
            max_package_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Numbers for monitoring systems, beside the retained stats topic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve Prometheus' text format at `http://<listen>/metrics`, e.g. `127.0.0.1:9108`. Unset: off.
    pub listen: Option<std::net::SocketAddr>,
    /// Publish Home Assistant MQTT discovery configs (retained) for each model's request rate and
    /// the board's status.
    pub homeassistant: bool,
}

/// Limits on requests: what is accepted, how much may wait, how long the daemon waits at shutdown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RequestsConfig {
    /// Larger requests are refused with a `too_large` error; also sizes the MQTT packet limit.
    pub max_payload_bytes: usize,
    /// Requests waiting per model; beyond this a request is answered `busy` at once.
    pub queue_capacity: usize,
    /// Input tensor bytes held by accepted, unanswered requests, all models together; beyond this
    /// a request is answered `busy`. With the queue limits, this bounds the daemon's memory.
    pub max_queued_bytes: usize,
    /// Inference threads per model; 0 = one per CPU core.
    pub workers: usize,
    /// Deadline for requests that carry none (no Message Expiry, no `timeout_ms`); 0 = none.
    pub default_timeout_ms: u64,
    /// At shutdown, queued requests still get computed for this long; later ones get `shutting_down`.
    pub shutdown_grace_ms: u64,
    /// Every this many seconds the request counts are published, retained, at
    /// `<base>/<device>/stats`; 0 = never (they are still logged at shutdown).
    pub stats_interval_secs: u64,
    /// A reply larger than this (or than the broker's maximum packet size) is replaced by a
    /// `too_large` error: a batch or an output list can make a reply much larger than its request.
    pub max_reply_bytes: usize,
    /// Reply bytes computed but not yet handed to the broker connection, all models together;
    /// when it is full, inference threads wait, queues fill and new requests wait in the broker.
    pub max_pending_reply_bytes: usize,
    /// Largest image accepted, in pixels (width x height); a 16-megapixel camera frame fits.
    pub max_image_pixels: u64,
    /// Memory that image decoding may use at once, all inference threads together: a decode
    /// waits for its share (its pixels x bytes per decoded pixel), so decompression bombs cannot
    /// multiply by the number of threads.
    pub max_decode_bytes: usize,
    /// Threads that one request may use when it is the only one being computed (its model's
    /// queue empty, no other model computing): 0 = one per core, 1 = never more than one. A
    /// camera board usually sends one frame and waits, so a lone request spreads its matrix
    /// products over the idle cores; under load each request keeps to one core, which is what
    /// gives the most throughput.
    pub lone_request_threads: usize,
}

impl Default for RequestsConfig {
    fn default() -> Self {
        RequestsConfig {
            max_payload_bytes: 16 * 1024 * 1024,
            queue_capacity: 64,
            max_queued_bytes: 64 * 1024 * 1024,
            workers: 0,
            default_timeout_ms: 0,
            shutdown_grace_ms: 5_000,
            stats_interval_secs: 30,
            max_reply_bytes: 16 * 1024 * 1024,
            max_pending_reply_bytes: 64 * 1024 * 1024,
            max_image_pixels: 16 * 1024 * 1024,
            max_decode_bytes: 256 * 1024 * 1024,
            lone_request_threads: 0,
        }
    }
}

/// The configuration is unusable; the message names the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config key {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

/// The largest payload MQTT can carry in one packet (268,435,455 bytes less the fixed header).
const MQTT_MAX_PAYLOAD: usize = 256 * 1024 * 1024 - 1024;

impl Config {
    /// Reads a config file; every key left out keeps its default, an unknown key is an error.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), message: e.to_string() })
    }

    /// Fills in the defaults that depend on the machine (device id, client id) and checks every key.
    pub fn finalize(mut self) -> Result<Config, ConfigError> {
        if self.topics.device.is_none() {
            let host = gethostname::gethostname().to_string_lossy().into_owned();
            self.topics.device = Some(sanitize_topic_level(&host));
        }
        if self.broker.client_id.is_none() {
            self.broker.client_id = Some(self.client_id());
        }
        self.validate()?;
        Ok(self)
    }

    /// This board's id in topics (after [`Config::finalize`]).
    pub fn device(&self) -> &str {
        self.topics.device.as_deref().unwrap_or("edgeinfer")
    }

    /// The MQTT client id: `broker.client_id`, else `edgeinfer-<device>`.
    pub fn client_id(&self) -> String {
        self.broker.client_id.clone().unwrap_or_else(|| format!("edgeinfer-{}", self.device()))
    }

    /// The broker password, from the config or from `password_file`.
    pub fn broker_password(&self) -> Result<Option<String>, ConfigError> {
        match (&self.broker.password, &self.broker.password_file) {
            (Some(p), _) => Ok(Some(p.clone())),
            (None, Some(file)) => std::fs::read_to_string(file)
                .map(|p| Some(p.trim_end_matches(['\n', '\r']).to_string()))
                .map_err(|source| ConfigError::Read { path: file.clone(), source }),
            (None, None) => Ok(None),
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: String| Err(ConfigError::Invalid { key, message });
        let endpoint = BrokerEndpoint::parse(&self.broker.url)
            .map_err(|message| ConfigError::Invalid { key: "broker.url", message })?;
        let b = &self.broker;
        if !endpoint.tls && (b.ca_file.is_some() || b.client_cert.is_some() || b.client_key.is_some()) {
            return invalid("broker.url", "TLS files are set but the URL is mqtt://; use mqtts://".into());
        }
        if b.client_cert.is_some() != b.client_key.is_some() {
            return invalid("broker.client_cert", "client_cert and client_key go together".into());
        }
        if b.password.is_some() && b.password_file.is_some() {
            return invalid("broker.password_file", "set password or password_file, not both".into());
        }
        if (b.password.is_some() || b.password_file.is_some()) && b.username.is_none() {
            return invalid("broker.username", "a password needs a username".into());
        }
        if b.client_id.as_deref().is_some_and(|id| id.is_empty() || id.len() > 128) {
            return invalid("broker.client_id", "must be 1 to 128 characters".into());
        }
        if !(5..=65_535).contains(&b.keep_alive_secs) {
            return invalid("broker.keep_alive_secs", format!("{} is outside 5..=65535", b.keep_alive_secs));
        }
        if b.reconnect_min_ms == 0 || b.reconnect_min_ms > b.reconnect_max_ms {
            return invalid("broker.reconnect_min_ms", "must be at least 1 and at most broker.reconnect_max_ms".into());
        }
        if !is_topic_level(&self.topics.base) {
            return invalid(
                "topics.base",
                format!("\"{}\" must be one topic level without + # / or $", self.topics.base),
            );
        }
        if !is_topic_level(self.device()) || self.device() == "fleet" {
            return invalid(
                "topics.device",
                format!("\"{}\" must be one topic level without + # / or $, and not \"fleet\"", self.device()),
            );
        }
        if !self.topics.fleet_group.is_empty() && !is_topic_level(&self.topics.fleet_group) {
            return invalid("topics.fleet_group", format!("\"{}\" must be one topic level", self.topics.fleet_group));
        }
        for prefix in &self.topics.allowed_reply_prefixes {
            let first = prefix.split('/').next().unwrap_or_default();
            if prefix.contains(['+', '#', '\0']) || first == self.device() || first == crate::mqtt::topics::FLEET {
                return invalid(
                    "topics.allowed_reply_prefixes",
                    format!(
                        "\"{prefix}\" must not hold wildcards nor start with this device's id or \"fleet\" \
                         (replies would land on the daemon's own topics)"
                    ),
                );
            }
        }
        if self.topics.fleet_receive_maximum == 0 {
            return invalid("topics.fleet_receive_maximum", "must be at least 1".into());
        }
        let r = &self.requests;
        if r.max_reply_bytes < 1024 || r.max_reply_bytes > MQTT_MAX_PAYLOAD {
            return invalid("requests.max_reply_bytes", format!("must be between 1024 and {MQTT_MAX_PAYLOAD}"));
        }
        if r.max_pending_reply_bytes < r.max_reply_bytes {
            return invalid("requests.max_pending_reply_bytes", "must be at least requests.max_reply_bytes".into());
        }
        if r.max_image_pixels == 0 {
            return invalid("requests.max_image_pixels", "must be at least 1".into());
        }
        if r.max_decode_bytes < 16 * 1024 * 1024 {
            return invalid("requests.max_decode_bytes", "must be at least 16 MiB".into());
        }
        if r.max_payload_bytes == 0 || r.max_payload_bytes > MQTT_MAX_PAYLOAD {
            return invalid("requests.max_payload_bytes", format!("must be between 1 and {MQTT_MAX_PAYLOAD}"));
        }
        if r.max_queued_bytes < r.max_payload_bytes {
            return invalid("requests.max_queued_bytes", "must be at least requests.max_payload_bytes".into());
        }
        if r.queue_capacity == 0 {
            return invalid("requests.queue_capacity", "must be at least 1".into());
        }
        if let Some(dir) = self.models.cache_dir() {
            if !dir.is_dir() {
                return invalid(
                    "models.cache_dir",
                    format!(
                        "{} is not a directory (create it, or set \"\" to turn the model cache off)",
                        dir.display()
                    ),
                );
            }
        }
        if r.workers > 256 {
            return invalid("requests.workers", "at most 256 (0 = one per core)".into());
        }
        let a = &self.admin;
        if a.enabled && a.trusted_keys.is_empty() {
            return invalid(
                "admin.trusted_keys",
                "admin.enabled needs at least one public key to check deployments against (edgeinfer keygen)".into(),
            );
        }
        for key in &a.trusted_keys {
            if let Err(e) = crate::package::PublicKey::read(key) {
                return invalid("admin.trusted_keys", e.to_string());
            }
        }
        if a.enabled && a.max_package_bytes < 1024 {
            return invalid("admin.max_package_bytes", "must be at least 1024".into());
        }
        if r.lone_request_threads > 256 {
            return invalid("requests.lone_request_threads", "at most 256 (0 = one per core, 1 = off)".into());
        }
        Ok(())
    }

    /// The effective configuration as TOML, for `--print-config`. The password is masked.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.broker.password.is_some() {
            shown.broker.password = Some("********".into());
        }
        toml::to_string_pretty(&shown).expect("the config tree serialises")
    }

    /// Worker threads per model, resolving 0 to the number of cores.
    pub fn workers_per_model(&self) -> usize {
        match self.requests.workers {
            0 => cores(),
            n => n,
        }
    }

    /// `requests.lone_request_threads`, 0 resolved to the number of cores.
    pub fn lone_request_threads(&self) -> usize {
        match self.requests.lone_request_threads {
            0 => cores(),
            n => n,
        }
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Host, port and transport from a broker URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerEndpoint {
    pub host: String,
    pub port: u16,
    pub tls: bool,
}

impl BrokerEndpoint {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]`.
    pub fn parse(url: &str) -> Result<BrokerEndpoint, String> {
        let parsed =
            url::Url::parse(url).map_err(|e| format!("\"{url}\" is not a URL ({e}); e.g. mqtt://127.0.0.1:1883"))?;
        let tls = match parsed.scheme() {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => return Err(format!("scheme \"{other}\" is not supported; use mqtt:// or mqtts://")),
        };
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("\"{url}\" has no host"))?
            .trim_matches(['[', ']'])
            .to_string();
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err("put credentials in broker.username / broker.password, not in the URL".into());
        }
        let port = parsed.port().unwrap_or(if tls { 8883 } else { 1883 });
        Ok(BrokerEndpoint { host, port, tls })
    }
}

fn is_topic_level(s: &str) -> bool {
    !s.is_empty() && !s.starts_with('$') && !s.contains(['/', '+', '#', '\0'])
}

/// Hostnames are nearly always valid topic levels; this keeps the rare odd one from breaking topics.
fn sanitize_topic_level(s: &str) -> String {
    let cleaned: String = s.chars().map(|c| if matches!(c, '/' | '+' | '#' | '$' | '\0') { '_' } else { c }).collect();
    if cleaned.is_empty() {
        "edgeinfer".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Config::from_file(&path)?.finalize()
    }

    #[test]
    fn empty_file_gives_defaults_with_machine_ids() {
        let c = parse("").unwrap();
        assert_eq!(c.broker.url, "mqtt://127.0.0.1:1883");
        assert_eq!(c.requests.max_payload_bytes, 16 * 1024 * 1024);
        assert!(c.topics.device.is_some());
        assert_eq!(c.broker.client_id.as_deref(), Some(format!("edgeinfer-{}", c.device()).as_str()));
    }

    #[test]
    fn unknown_keys_name_the_key() {
        let err = parse("[broker]\nurl = \"mqtt://x\"\nusr = \"a\"").unwrap_err();
        assert!(err.to_string().contains("usr"), "{err}");
        let err = parse("[brokr]\n").unwrap_err();
        assert!(err.to_string().contains("brokr"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_key() {
        for (text, key) in [
            ("[broker]\nurl = \"http://x\"", "broker.url"),
            ("[broker]\nurl = \"mqtt://x\"\nca_file = \"/ca.pem\"", "broker.url"),
            ("[broker]\nclient_cert = \"c\"\nurl = \"mqtts://x\"", "broker.client_cert"),
            ("[broker]\npassword = \"p\"", "broker.username"),
            ("[topics]\nbase = \"a/b\"", "topics.base"),
            ("[topics]\ndevice = \"fleet\"", "topics.device"),
            ("[topics]\nfleet_group = \"g+\"", "topics.fleet_group"),
            ("[requests]\nmax_payload_bytes = 0", "requests.max_payload_bytes"),
            ("[requests]\nqueue_capacity = 0", "requests.queue_capacity"),
            ("[requests]\nmax_reply_bytes = 10", "requests.max_reply_bytes"),
            ("[requests]\nmax_pending_reply_bytes = 1024", "requests.max_pending_reply_bytes"),
            ("[topics]\ndevice = \"pi\"\nallowed_reply_prefixes = [\"pi/\"]", "topics.allowed_reply_prefixes"),
            ("[topics]\nallowed_reply_prefixes = [\"fleet/x\"]", "topics.allowed_reply_prefixes"),
            ("[models]\ncache_dir = \"/nonexistent/edgeinfer-cache\"", "models.cache_dir"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.to_string().contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn broker_urls_parse_with_default_ports() {
        assert_eq!(
            BrokerEndpoint::parse("mqtt://localhost").unwrap(),
            BrokerEndpoint { host: "localhost".into(), port: 1883, tls: false }
        );
        assert_eq!(
            BrokerEndpoint::parse("mqtts://[::1]:9000").unwrap(),
            BrokerEndpoint { host: "::1".into(), port: 9000, tls: true }
        );
        assert!(BrokerEndpoint::parse("mqtt://u:p@host").is_err());
    }

    #[test]
    fn print_config_masks_the_password() {
        let c = parse("[broker]\nusername = \"u\"\npassword = \"secret\"").unwrap();
        assert!(!c.to_toml().contains("secret"));
        assert_eq!(toml::from_str::<Config>(&c.to_toml()).unwrap().broker.username.as_deref(), Some("u"));
    }
}
