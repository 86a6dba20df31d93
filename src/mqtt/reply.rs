//! Where a request's reply goes, and the limits every reply is held to before it is published.
//!
//! Mosquitto closes the connection of a client that publishes a packet over its maximum size,
//! and with it every request in flight; a batch or an output list can make a reply far larger
//! than its request. So each reply is measured against `requests.max_reply_bytes` and the
//! broker's Maximum Packet Size (from its CONNACK) and becomes a `too_large` error when over.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};

use super::publisher::{Command, Outgoing};
use super::redelivery::{Delivery, Recent};
use crate::model::{Answer, AnswerError, Model};
use crate::protocol::request::HEADER_LENGTH_PROPERTY;
use crate::protocol::{encode_error, encode_response, EncodedReply, ErrorCode};
use crate::report::Report;
use crate::scheduler::{JobError, Responder};
use crate::stats::Counters;
use crate::untrusted::Untrusted;

/// MQTT's own limit on a packet (the largest Remaining Length, plus its fixed header).
const MQTT_MAX_PACKET: usize = 268_435_455 + 5;

/// The size limits of replies, shared by everything that answers.
#[derive(Debug)]
pub struct ReplyLimits {
    max_reply_bytes: usize,
    /// The broker's Maximum Packet Size from its latest CONNACK; 0 while it named none.
    broker_max_packet: AtomicU32,
    /// Bytes of computed replies not yet handed to the MQTT client (`requests.max_pending_reply_bytes`).
    pending: Arc<Semaphore>,
}

impl ReplyLimits {
    pub fn new(max_reply_bytes: usize, max_pending_reply_bytes: usize) -> ReplyLimits {
        let permits = max_pending_reply_bytes.min(Semaphore::MAX_PERMITS).min(u32::MAX as usize);
        ReplyLimits {
            max_reply_bytes,
            broker_max_packet: AtomicU32::new(0),
            pending: Arc::new(Semaphore::new(permits)),
        }
    }

    /// Called on every CONNACK: the broker may name a Maximum Packet Size, and a new broker
    /// (or the same one, reconfigured) may name another.
    pub fn set_broker_max_packet(&self, size: Option<u32>) {
        self.broker_max_packet.store(size.unwrap_or(0), Ordering::Relaxed);
    }

    /// The largest packet the daemon may publish now.
    fn max_packet(&self) -> usize {
        match self.broker_max_packet.load(Ordering::Relaxed) {
            0 => MQTT_MAX_PACKET,
            n => n as usize,
        }
    }

    /// Waits (blocking the calling thread, which must not be one of the async runtime's) until
    /// `bytes` of reply may be held, then holds them until the permit is dropped.
    pub fn hold_blocking(&self, runtime: &tokio::runtime::Handle, bytes: usize) -> OwnedSemaphorePermit {
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX).clamp(1, self.max_reply_bytes as u32);
        runtime.block_on(self.pending.clone().acquire_many_owned(permits)).expect("the reply budget is never closed")
    }
}

/// The way to the publisher task, shared by everything that replies: the dispatcher (async) and
/// the inference threads (blocking, and holding reply bytes under `requests.max_pending_reply_bytes`).
#[derive(Debug)]
pub struct Outbox {
    commands: mpsc::Sender<Command>,
    limits: Arc<ReplyLimits>,
    /// The async runtime, for the inference threads' waits on async primitives.
    runtime: tokio::runtime::Handle,
}

impl Outbox {
    /// Call it from within the async runtime.
    pub fn new(commands: mpsc::Sender<Command>, limits: Arc<ReplyLimits>) -> Outbox {
        Outbox { commands, limits, runtime: tokio::runtime::Handle::current() }
    }

    /// Queues a reply, waiting for room: under a flood, replies wait (and with them their
    /// requests' acknowledgements, so the broker holds the next ones) rather than being dropped.
    pub async fn send(&self, command: Command) {
        if self.commands.send(command).await.is_err() {
            tracing::debug!("reply dropped: publisher stopped");
        }
    }

    /// [`send`](Outbox::send) from a thread outside the async runtime, once the reply budget
    /// has room for the reply's bytes.
    pub(crate) fn send_blocking(&self, mut command: Command) {
        if let Command::Publish(out) = &mut command {
            out.held = Some(self.limits.hold_blocking(&self.runtime, out.payload.len()));
        }
        if self.commands.blocking_send(command).is_err() {
            tracing::error!("reply lost: the publisher has stopped");
        }
    }
}

/// The acknowledgement a QoS 1 (or 2) request is owed. The daemon sends it only once the reply is
/// handed to the MQTT client: until then the broker counts the request against the Receive
/// Maximum (so it holds the backlog, not the daemon) and, with a persistent session, delivers it
/// again to the next connection if the daemon dies first.
#[derive(Debug, Clone)]
pub struct Ack {
    /// The connection the request came in on: the acknowledgement must go back on it.
    client: AsyncClient,
    pkid: u16,
    qos: QoS,
    /// The request, as [`Recent`] remembers it.
    delivery: Delivery,
}

impl Ack {
    /// `None` for QoS 0, which has no acknowledgement.
    pub fn of(publish: &Publish, client: &AsyncClient) -> Option<Ack> {
        (publish.qos != QoS::AtMostOnce).then(|| Ack {
            client: client.clone(),
            pkid: publish.pkid,
            qos: publish.qos,
            delivery: Delivery::of(publish),
        })
    }

    /// Sends the acknowledgement and marks the request answered in `recent`, so that a
    /// redelivery of it is only acknowledged again (never left waiting for an ack that went out).
    pub async fn send(self, recent: &Recent) {
        let mut request = Publish::new("", self.qos, Bytes::new(), None);
        request.pkid = self.pkid;
        if let Err(e) = self.client.ack(&request).await {
            tracing::debug!(error = %e, "acknowledgement not sent: MQTT client is gone");
        }
        recent.answered(self.delivery);
    }
}

/// Where and how a reply goes: the topic was checked when the request came in.
#[derive(Debug, Clone)]
pub struct ReplyTo {
    pub topic: String,
    pub correlation: Option<Bytes>,
    pub qos: QoS,
    /// Where this reply is counted: every request gets exactly one reply, so counting replies
    /// counts requests.
    pub counts: Arc<Counters>,
    pub outbox: Arc<Outbox>,
    /// Sent after the reply (see [`Ack`]).
    pub ack: Option<Ack>,
}

/// An inference thread's answer becomes this reply: encoded there (not on the async runtime),
/// measured against the limits, and queued for the publisher.
impl Responder for ReplyTo {
    fn respond(self, model: &Model, id: Option<&str>, outcome: Result<Answer, JobError>) {
        if let Err(JobError::Answer(AnswerError::Panicked(_))) = &outcome {
            self.counts.panicked();
        }
        let (version, model) = (Some(model.version()), model.name());
        let command = match outcome {
            Ok(answer) => match encode_response(model, version, id, answer.parameters.as_ref(), &answer.tensors()) {
                Ok(encoded) => {
                    self.counts.observe(&answer.timings);
                    self.result(id, model, encoded)
                }
                Err(e) => self.error(id, model, ErrorCode::Internal, &e.to_string()),
            },
            Err(e) => self.error(id, model, e.code(), &Report(&e).to_string()),
        };
        self.outbox.send_blocking(command);
    }
}

impl ReplyTo {
    /// The reply carrying an encoded inference result, or a `too_large` error in its place when
    /// it would be over a limit.
    pub fn result(&self, id: Option<&str>, model: &str, reply: EncodedReply) -> Command {
        let size = self.packet_size(reply.payload.len(), reply.header_len);
        let limits = &self.outbox.limits;
        let limit = limits.max_reply_bytes.min(limits.max_packet());
        if size > limit {
            let message = format!(
                "the reply would be {size} bytes, over this daemon's limit of {limit} (requests.max_reply_bytes, \
                 or the broker's maximum packet size); ask for fewer outputs or send a smaller batch"
            );
            return self.error(id, model, ErrorCode::TooLarge, &message);
        }
        self.counts.answered();
        self.publish(reply.payload, reply.header_len)
    }

    /// An error reply, with the warning line every refused request gets.
    pub fn error(&self, id: Option<&str>, model: &str, code: ErrorCode, message: &str) -> Command {
        tracing::warn!(code = code.as_str(), error = %Untrusted(message), "request refused");
        self.counts.refused(code);
        self.publish(encode_error(id, model, code, message), None)
    }

    /// Bytes of the PUBLISH packet for a payload of `payload` bytes: fixed header, topic, packet
    /// id, properties (what [`Outgoing`] sets), payload. An upper bound by a few bytes.
    fn packet_size(&self, payload: usize, header_len: Option<usize>) -> usize {
        let string = |len: usize| 1 + 2 + len;
        let mut properties = string("application/octet-stream".len()) + 2;
        properties += self.correlation.as_ref().map_or(0, |c| string(c.len()));
        if let Some(len) = header_len {
            properties += string(HEADER_LENGTH_PROPERTY.len()) + 2 + len.to_string().len();
        }
        5 + 2 + self.topic.len() + 2 + 4 + properties + payload
    }

    fn publish(&self, payload: Vec<u8>, header_len: Option<usize>) -> Command {
        Command::Publish(Outgoing {
            topic: self.topic.clone(),
            payload,
            header_len,
            correlation: self.correlation.clone(),
            qos: self.qos,
            retain: false,
            held: None,
            ack: self.ack.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_to(max_reply_bytes: usize) -> ReplyTo {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let _entered = runtime.enter();
        let limits = Arc::new(ReplyLimits::new(max_reply_bytes, max_reply_bytes));
        ReplyTo {
            topic: "clients/1/reply".into(),
            correlation: Some(Bytes::from_static(b"c")),
            qos: QoS::AtLeastOnce,
            counts: Arc::default(),
            outbox: Arc::new(Outbox::new(mpsc::channel(1).0, limits)),
            ack: None,
        }
    }

    fn payload_of(command: Command) -> serde_json::Value {
        let Command::Publish(out) = command else { panic!("not a publish") };
        serde_json::from_slice(&out.payload).unwrap_or(serde_json::Value::Null)
    }

    #[test]
    fn a_reply_over_the_limit_becomes_too_large() {
        let to = reply_to(4096);
        let small = EncodedReply { payload: vec![b'x'; 1000], header_len: None };
        assert_eq!(payload_of(to.result(Some("a"), "m", small)), serde_json::Value::Null, "sent as it is");
        let big = EncodedReply { payload: vec![b'x'; 4096], header_len: None };
        let error = payload_of(to.result(Some("b"), "m", big));
        assert_eq!(error["code"], "too_large", "{error}");
        assert_eq!(error["id"], "b");
    }

    #[test]
    fn the_brokers_maximum_packet_size_counts_too() {
        let to = reply_to(1 << 20);
        to.outbox.limits.set_broker_max_packet(Some(2000));
        let reply = EncodedReply { payload: vec![b'x'; 1990], header_len: None };
        assert_eq!(payload_of(to.result(None, "m", reply))["code"], "too_large");
        to.outbox.limits.set_broker_max_packet(None);
        let reply = EncodedReply { payload: vec![b'x'; 1990], header_len: None };
        assert_eq!(payload_of(to.result(None, "m", reply)), serde_json::Value::Null);
    }
}
