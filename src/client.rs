//! A request/response client over MQTT v5: what `edgeinfer request` uses, and what any Rust
//! program on the network can use to call a board.
//!
//! One connection, one private reply topic, many requests in flight matched by Correlation Data.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::mqtt::options::{mqtt_options, SetupError};
use crate::protocol::request::{header_length_from_properties, HEADER_LENGTH_PROPERTY};

/// A raw reply: the payload and, for binary replies, the JSON header length.
#[derive(Debug, Clone)]
pub struct Reply {
    pub payload: Bytes,
    pub header_len: Option<usize>,
}

/// Why a request got no reply.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("no connection to the broker at {broker} within {timeout:?} (is it running? see README: Quick start)")]
    NoBroker { broker: String, timeout: Duration },
    #[error("no reply within {0:?} (is the daemon running, with this device id and model?)")]
    Timeout(Duration),
    #[error("the MQTT connection closed")]
    Closed,
}

type Pending = Arc<Mutex<HashMap<Bytes, oneshot::Sender<Reply>>>>;

/// What a request carries besides its payload.
#[derive(Debug, Default, Clone)]
pub struct RequestMeta {
    /// The binary extension's JSON header length.
    pub header_len: Option<usize>,
    /// A media payload's Content Type (`image/png`, `audio/pcm;format=s16le;rate=16000`).
    pub content_type: Option<String>,
    /// A media request's parameters (`id`, `session`, `timeout_ms`, `outputs`).
    pub user_properties: Vec<(String, String)>,
}

/// A connected requester.
pub struct Requester {
    client: AsyncClient,
    reply_topic: String,
    pending: Pending,
    next_id: AtomicU64,
    poller: tokio::task::JoinHandle<()>,
}

impl Requester {
    /// Connects to the broker of `config` and subscribes to a private reply topic.
    pub async fn connect(config: &Config, timeout: Duration) -> Result<Requester, ClientError> {
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        );
        let client_id = format!("edgeinfer-client-{unique}");
        let reply_topic = format!("{}/clients/{unique}/reply", config.topics.base);
        let mut options = mqtt_options(config, &client_id)?;
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let pending: Pending = Arc::default();
        let (ready_tx, mut ready) = watch::channel(false);
        let poller = {
            let pending = pending.clone();
            let client = client.clone();
            let reply_topic = reply_topic.clone();
            tokio::spawn(async move {
                loop {
                    match eventloop.poll().await {
                        Ok(Event::Incoming(Packet::ConnAck(_))) => {
                            let client = client.clone();
                            let topic = reply_topic.clone();
                            tokio::spawn(async move { client.subscribe(topic, QoS::AtLeastOnce).await });
                        }
                        Ok(Event::Incoming(Packet::SubAck(_))) => {
                            ready_tx.send_replace(true);
                        }
                        Ok(Event::Incoming(Packet::Publish(p))) => {
                            let props = p.properties.unwrap_or_default();
                            let Some(correlation) = props.correlation_data else {
                                continue;
                            };
                            let header_len = header_length_from_properties(&props.user_properties).and_then(Result::ok);
                            let waiter = pending.lock().expect("pending lock").remove(&correlation);
                            if let Some(waiter) = waiter {
                                let _ = waiter.send(Reply { payload: p.payload, header_len });
                            }
                        }
                        // `close` sent DISCONNECT: once it is written, the connection is done.
                        Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => break,
                        Ok(_) => {}
                        Err(e) => {
                            ready_tx.send_replace(false);
                            tracing::debug!(error = %e, "requester connection failed; retrying");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        };
        let connected = tokio::time::timeout(timeout, ready.wait_for(|r| *r)).await;
        if !matches!(connected, Ok(Ok(_))) {
            poller.abort();
            return Err(ClientError::NoBroker { broker: config.broker.url.clone(), timeout });
        }
        Ok(Requester { client, reply_topic, pending, next_id: AtomicU64::new(1), poller })
    }

    /// Publishes one request to `topic` and waits for its reply.
    pub async fn request(
        &self,
        topic: &str,
        payload: Vec<u8>,
        header_len: Option<usize>,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        self.request_with(topic, payload, RequestMeta { header_len, ..Default::default() }, timeout).await
    }

    /// Publishes one request with its properties (binary header length, media Content Type,
    /// User Properties) and waits for its reply.
    pub async fn request_with(
        &self,
        topic: &str,
        payload: Vec<u8>,
        meta: RequestMeta,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let correlation = Bytes::from(self.next_id.fetch_add(1, Ordering::Relaxed).to_be_bytes().to_vec());
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending lock").insert(correlation.clone(), tx);
        let mut props = PublishProperties {
            response_topic: Some(self.reply_topic.clone()),
            correlation_data: Some(correlation.clone()),
            message_expiry_interval: Some(timeout.as_secs().max(1) as u32),
            ..Default::default()
        };
        if let Some(len) = meta.header_len {
            props.user_properties.push((HEADER_LENGTH_PROPERTY.into(), len.to_string()));
        }
        props.content_type = meta.content_type;
        props.user_properties.extend(meta.user_properties);
        let sent = self.client.publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props).await;
        let result = match sent {
            Err(_) => Err(ClientError::Closed),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(_)) => Err(ClientError::Closed),
                Err(_) => Err(ClientError::Timeout(timeout)),
            },
        };
        self.pending.lock().expect("pending lock").remove(&correlation);
        result
    }

    /// Disconnects politely.
    pub async fn close(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.poller).await;
    }
}
