//! The MQTT event loop: it only routes. Incoming requests go to the dispatcher; every CONNACK
//! (re)subscribes and republishes the retained status and metadata; failures back off.
//!
//! rumqttc reconnects by being polled again, immediately and forever, and forgets subscriptions
//! across connections: the backoff and the resubscription are ours.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, Publish, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use rumqttc::Outgoing;
use tokio::sync::{mpsc, watch};

use super::reply::ReplyLimits;
use crate::untrusted;

/// A request as it came in, with the connection it came in on (its acknowledgement goes back there).
#[derive(Debug)]
pub struct Incoming {
    pub publish: Publish,
    pub client: AsyncClient,
}

/// The retained messages to publish on a connection: device status, then each model's metadata,
/// as they are at that moment (models change with deployments).
pub type Retained = Arc<dyn Fn() -> Vec<(String, Vec<u8>)> + Send + Sync>;

/// What to (re)establish on every successful connection.
pub struct OnConnect {
    /// Request (and admin) subscriptions.
    pub filters: Vec<String>,
    pub retained: Retained,
}

/// Owns the event loop until the client disconnects.
pub struct Connection {
    /// Which of the daemon's connections this is, for the log: `device` or `fleet`.
    pub link: &'static str,
    pub eventloop: EventLoop,
    pub client: AsyncClient,
    pub on_connect: OnConnect,
    /// Incoming request publishes, to the dispatcher. The loop never waits on the dispatcher: it
    /// must go on polling, since that is also what sends the replies and acknowledgements the
    /// dispatcher may be waiting to queue. The channel is bounded all the same: QoS 1 requests by
    /// the Receive Maximum the broker honours, QoS 0 ones by `qos0_limit`.
    pub requests: mpsc::UnboundedSender<Incoming>,
    /// Payload bytes of the QoS 0 requests in the channel; the dispatcher counts them down.
    pub qos0_waiting: Arc<AtomicUsize>,
    /// At most this many bytes of QoS 0 requests wait for the dispatcher. QoS 1 requests need no
    /// such limit: the broker sends at most Receive Maximum of them before the daemon acknowledges.
    /// The dispatcher answers a backlog fast (`busy` when the queues are full), so a generous limit
    /// loses few replies.
    pub qos0_limit: usize,
    /// Told of each QoS 0 request dropped because `qos0_limit` bytes were waiting.
    pub on_overload: Arc<dyn Fn(&Publish) + Send + Sync>,
    /// Learns the broker's Maximum Packet Size from every CONNACK.
    pub reply_limits: Arc<ReplyLimits>,
    /// `true` while connected: readiness and the systemd status follow it.
    pub connected: watch::Sender<bool>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub broker: String,
}

impl Connection {
    /// Polls until the client has sent DISCONNECT and the broker has closed the connection.
    /// Never returns because the broker is away.
    pub async fn run(mut self) {
        let mut backoff = self.backoff_min;
        let mut failures_in_a_row = 0u32;
        let mut disconnecting = false;
        loop {
            let event = self.eventloop.poll().await;
            if disconnecting {
                // After DISCONNECT, read until the broker closes: the acknowledgements of the last
                // publishes (the final status among them) must find the socket open. Mosquitto
                // before 2.0.22 treats a PUBACK it cannot send as a lost client and publishes the
                // Last Will ("offline") over "stopped".
                match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        tracing::warn!(topic = %untrusted::lossy(&p.topic), "request arrived while stopping; not answered")
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
                continue;
            }
            match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    let max_packet = ack.properties.as_ref().and_then(|p| p.max_packet_size);
                    self.reply_limits.set_broker_max_packet(max_packet);
                    tracing::info!(link = %self.link, broker = %self.broker, session_present = ack.session_present, max_packet_size = ?max_packet, "connected to broker");
                    backoff = self.backoff_min;
                    failures_in_a_row = 0;
                    self.connected.send_replace(true);
                    self.resubscribe();
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if publish.qos == QoS::AtMostOnce {
                        let size = publish.payload.len();
                        if self.qos0_waiting.load(Ordering::Relaxed) + size > self.qos0_limit {
                            (self.on_overload)(&publish);
                            continue;
                        }
                        self.qos0_waiting.fetch_add(size, Ordering::Relaxed);
                    }
                    if self.requests.send(Incoming { publish, client: self.client.clone() }).is_err() {
                        tracing::debug!("request dropped: dispatcher has stopped");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    for code in &ack.return_codes {
                        if !matches!(code, SubscribeReasonCode::Success(_)) {
                            tracing::error!(reason = ?code, "broker refused a request subscription (check its ACL)");
                        }
                    }
                }
                Ok(Event::Incoming(Packet::Disconnect(d))) => {
                    tracing::warn!(reason = ?d.reason_code, "broker sent DISCONNECT");
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                    self.connected.send_replace(false);
                    disconnecting = true;
                }
                Ok(_) => {}
                Err(e) => {
                    self.connected.send_replace(false);
                    failures_in_a_row += 1;
                    let undelivered = self.eventloop.pending.len();
                    // The first failure after a good connection is worth a warning; repeats while
                    // the broker stays away are logged at a slower, capped rate by the backoff.
                    tracing::warn!(
                        link = %self.link,
                        broker = %self.broker,
                        error = %e,
                        retry_in_ms = backoff.as_millis() as u64,
                        attempt = failures_in_a_row,
                        pending_publishes = undelivered,
                        "broker connection failed"
                    );
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.backoff_max);
                }
            }
        }
    }

    /// Subscribes and republishes from a separate task: awaiting the client inside the poll loop
    /// would deadlock if its request channel were full (rumqtt issue #263).
    fn resubscribe(&self) {
        let client = self.client.clone();
        let filters = self.on_connect.filters.clone();
        let retained = (self.on_connect.retained)();
        tokio::spawn(async move {
            for filter in filters {
                if let Err(e) = client.subscribe(filter.clone(), QoS::AtLeastOnce).await {
                    tracing::error!(%filter, error = %e, "could not subscribe");
                }
            }
            for (topic, payload) in retained {
                if let Err(e) = client.publish(topic.clone(), QoS::AtLeastOnce, true, payload).await {
                    tracing::warn!(%topic, error = %e, "could not publish retained message");
                }
            }
        });
    }
}
