//! The one task that publishes: replies from the workers and the dispatcher, status at shutdown.
//!
//! Publishing from the task that polls the event loop can deadlock rumqttc (the publish waits for
//! room in a channel that only the poll loop empties), so every publish goes through here.

use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::redelivery::Recent;
use super::reply::Ack;
use crate::protocol::request::HEADER_LENGTH_PROPERTY;
use crate::untrusted::Untrusted;

/// A message to publish.
#[derive(Debug)]
pub struct Outgoing {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Set when binary tensor data follows a JSON header of this many bytes.
    pub header_len: Option<usize>,
    /// MQTT v5 Correlation Data from the request, returned unchanged.
    pub correlation: Option<Bytes>,
    pub qos: QoS,
    pub retain: bool,
    /// The reply's share of `requests.max_pending_reply_bytes`, given back once the MQTT client
    /// has taken the message.
    pub held: Option<OwnedSemaphorePermit>,
    /// The request's acknowledgement, sent right after its reply.
    pub ack: Option<Ack>,
}

impl Outgoing {
    fn properties(&self) -> PublishProperties {
        let mut props = PublishProperties {
            correlation_data: self.correlation.clone(),
            content_type: Some(
                if self.header_len.is_some() { "application/octet-stream" } else { "application/json" }.into(),
            ),
            ..Default::default()
        };
        if let Some(len) = self.header_len {
            props.user_properties.push((HEADER_LENGTH_PROPERTY.to_string(), len.to_string()));
        } else {
            props.payload_format_indicator = Some(1);
        }
        props
    }
}

/// What the publisher task is asked to do, in order.
#[derive(Debug)]
pub enum Command {
    Publish(Outgoing),
    /// Send MQTT DISCONNECT after everything queued before it, then end the task.
    Disconnect,
}

/// Publishes commands until a `Disconnect` or until every sender is gone. Each request whose
/// reply and acknowledgement went out is marked answered in `recent`.
pub async fn run(client: AsyncClient, mut commands: mpsc::Receiver<Command>, recent: Arc<Recent>) {
    while let Some(command) = commands.recv().await {
        match command {
            Command::Publish(out) => {
                let props = out.properties();
                let Outgoing { topic, payload, qos, retain, held, ack, .. } = out;
                if let Err(e) = client.publish_with_properties(topic.clone(), qos, retain, payload, props).await {
                    tracing::warn!(topic = %Untrusted(&topic), error = %e, "reply not published: MQTT client is gone");
                }
                drop(held);
                if let Some(ack) = ack {
                    ack.send(&recent).await;
                }
            }
            Command::Disconnect => {
                if let Err(e) = client.disconnect().await {
                    tracing::debug!(error = %e, "disconnect not sent");
                }
                break;
            }
        }
    }
}
