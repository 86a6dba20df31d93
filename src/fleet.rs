//! The operator's side of the admin topics (`edgeinfer fleet`): every board's retained status,
//! one admin operation on one board, and a package sent to a board in resumable chunks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use serde_json::{json, Value};

use crate::client::{ClientError, RequestMeta, Requester};
use crate::config::Config;
use crate::mqtt::options::mqtt_options;
use crate::mqtt::Topics;
use crate::package;

/// Chunks a board is sent before the first of them is answered.
const WINDOW: usize = 8;
/// Offer/chunk rounds before a deployment to a board gives up (each resends only what is missing).
const ROUNDS: usize = 4;

/// Why an operation on a board failed.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{device}: {error}")]
    Board { device: String, error: String },
    #[error("{device}: the reply is not an admin reply: {payload}")]
    BadReply { device: String, payload: String },
    #[error("{device}: still missing chunks after {ROUNDS} rounds")]
    Incomplete { device: String },
}

/// A board as its retained topics show it.
#[derive(Debug, Clone, Default)]
pub struct Board {
    pub device: String,
    /// `online`, `offline`, `stopped`.
    pub state: String,
    /// The daemon's version.
    pub version: String,
    /// Model name -> version served.
    pub models: BTreeMap<String, String>,
    /// The last stats published, if any.
    pub stats: Option<Value>,
}

/// Every board's retained status and stats under `topics.base`, read for `wait`.
pub async fn boards(config: &Config, wait: Duration) -> Result<Vec<Board>, ClientError> {
    let topics = Topics::from_config(config);
    let client_id = format!("edgeinfer-fleet-{}", std::process::id());
    let options = mqtt_options(config, &client_id)?;
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut found: BTreeMap<String, Board> = BTreeMap::new();
    let mut connected = false;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let event = match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => break,
            Ok(event) => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connected = true;
                let client = client.clone();
                let filters = [topics.all_status(), topics.all_stats()];
                tokio::spawn(async move {
                    for filter in filters {
                        let _ = client.subscribe(filter, QoS::AtLeastOnce).await;
                    }
                });
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                let Ok(body) = serde_json::from_slice::<Value>(&p.payload) else { continue };
                let mut levels = topic.rsplitn(3, '/');
                let (Some(kind), Some(device)) = (levels.next(), levels.next()) else { continue };
                let board = found
                    .entry(device.to_string())
                    .or_insert_with(|| Board { device: device.into(), ..Default::default() });
                match kind {
                    "status" => {
                        board.state = body["state"].as_str().unwrap_or_default().to_string();
                        board.version = body["version"].as_str().unwrap_or_default().to_string();
                        board.models = body["versions"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(m, v)| (m.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect();
                    }
                    _ => board.stats = Some(body),
                }
            }
            Ok(_) => {}
            Err(_) if !connected => {
                return Err(ClientError::NoBroker { broker: config.broker.url.clone(), timeout: wait });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let _ = client.disconnect().await;
    Ok(found.into_values().filter(|b| !b.state.is_empty()).collect())
}

/// A connection that sends admin operations to boards.
pub struct Operator {
    requester: Arc<Requester>,
    topics: Topics,
    timeout: Duration,
}

impl Operator {
    /// Connects; each operation waits up to `timeout` for its reply.
    pub async fn connect(config: &Config, timeout: Duration) -> Result<Operator, ClientError> {
        let requester = Requester::connect(config, Duration::from_secs(10)).await?;
        Ok(Operator { requester: Arc::new(requester), topics: Topics::from_config(config), timeout })
    }

    /// Runs `op` on `device` and returns the reply's `data` (a health report that is not
    /// healthy, or any `"status":"error"`, is an error).
    pub async fn op(&self, device: &str, op: &str, request: &Value) -> Result<Value, FleetError> {
        self.op_with_timeout(device, op, request, self.timeout).await
    }

    async fn send(
        &self,
        device: &str,
        op: &str,
        payload: Vec<u8>,
        meta: RequestMeta,
        timeout: Duration,
    ) -> Result<Bytes, FleetError> {
        let topic = self.topics.admin(device, op);
        Ok(self.requester.request_with(&topic, payload, meta, timeout).await?.payload)
    }

    /// Sends `package` to `device` in chunks of `chunk_bytes` (the board says which it lacks, so
    /// an interrupted deployment resumes) and has it installed and activated; `progress` is told
    /// the bytes the board holds. Returns the board's activation report.
    pub async fn deploy(
        &self,
        device: &str,
        package: &[u8],
        chunk_bytes: u64,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<Value, FleetError> {
        let sha256 = package::sha256_hex(package);
        let offer = json!({"sha256": sha256, "size": package.len(), "chunk_bytes": chunk_bytes});
        let size = package.len() as u64;
        // The bytes the board holds while `missing` chunks are still to come.
        let held = |missing: u64| size.saturating_sub(missing * chunk_bytes);
        for _ in 0..ROUNDS {
            // Installing, loading and checking the model happen in the reply to the last offer.
            let reply =
                self.op_with_timeout(device, "deploy", &offer, self.timeout.max(Duration::from_secs(120))).await?;
            let Some(missing) = reply["missing"].as_array() else {
                progress(size);
                return Ok(reply);
            };
            let missing: Vec<u64> = missing.iter().filter_map(Value::as_u64).collect();
            progress(held(missing.len() as u64));
            let mut sent = 0u64;
            for window in missing.chunks(WINDOW) {
                let mut sends = tokio::task::JoinSet::new();
                for &index in window {
                    let start = (index * chunk_bytes).min(size) as usize;
                    let end = ((index + 1) * chunk_bytes).min(size) as usize;
                    let meta = RequestMeta {
                        user_properties: vec![("sha256".into(), sha256.clone()), ("index".into(), index.to_string())],
                        ..Default::default()
                    };
                    let (requester, topic, payload) =
                        (self.requester.clone(), self.topics.admin(device, "chunk"), package[start..end].to_vec());
                    let (device, timeout) = (device.to_string(), self.timeout);
                    sends.spawn(async move {
                        let reply = requester.request_with(&topic, payload, meta, timeout).await?;
                        admin_reply(&device, reply.payload)
                    });
                }
                while let Some(result) = sends.join_next().await {
                    result.expect("a chunk task does not panic")?;
                }
                sent += window.len() as u64;
                progress(held(missing.len() as u64 - sent));
            }
        }
        Err(FleetError::Incomplete { device: device.into() })
    }

    async fn op_with_timeout(
        &self,
        device: &str,
        op: &str,
        request: &Value,
        timeout: Duration,
    ) -> Result<Value, FleetError> {
        let payload = serde_json::to_vec(request).expect("JSON serialises");
        admin_reply(device, self.send(device, op, payload, RequestMeta::default(), timeout).await?)
    }

    pub async fn close(self) {
        if let Ok(requester) = Arc::try_unwrap(self.requester) {
            requester.close().await;
        }
    }
}

/// The `data` of an admin reply, or its error.
fn admin_reply(device: &str, payload: Bytes) -> Result<Value, FleetError> {
    let bad = || FleetError::BadReply {
        device: device.into(),
        payload: String::from_utf8_lossy(&payload).chars().take(200).collect(),
    };
    let reply: Value = serde_json::from_slice(&payload).map_err(|_| bad())?;
    match reply["status"].as_str() {
        Some("ok") => Ok(reply["data"].clone()),
        Some("error") => Err(FleetError::Board {
            device: device.into(),
            error: match (&reply["error"], &reply["data"]) {
                (Value::String(e), Value::Null) => e.clone(),
                (Value::String(e), data) => format!("{e}: {data}"),
                _ => reply.to_string(),
            },
        }),
        _ => Err(bad()),
    }
}
