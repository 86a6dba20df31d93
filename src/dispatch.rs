//! From an incoming MQTT message to a queued job, or to an immediate error reply.
//!
//! Every refusal happens here, before any inference: oversized payload, undecodable request,
//! unknown model, inputs the model cannot take, full queue. Each gets a reply naming the problem
//! (and a warning line); nothing here waits on anything but the decoder.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, Semaphore};

use crate::model::ModelRepository;
use crate::mqtt::publisher::Command;
use crate::mqtt::topics::{is_valid_reply_topic, Topics};
use crate::protocol::request::{decode_request, header_length_from_properties, RequestIdentity};
use crate::protocol::{decode_media, ErrorCode};
use crate::scheduler::{Job, Rejected, ReplyTo, Scheduler};
use crate::stats::Stats;

/// Turns request messages into jobs.
pub struct Dispatcher {
    pub client: AsyncClient,
    pub topics: Topics,
    pub repository: ModelRepository,
    pub scheduler: Scheduler,
    pub replies: mpsc::Sender<Command>,
    pub max_payload_bytes: usize,
    pub default_timeout: Option<Duration>,
    /// Bytes of input tensors that queued jobs may hold in total (one permit per byte).
    pub budget: Arc<Semaphore>,
    pub stats: Arc<Stats>,
}

impl Dispatcher {
    /// Handles messages until the connection task closes the channel. A QoS 1 request is
    /// acknowledged once it has been queued or answered, so the broker's Receive Maximum window
    /// keeps unread requests in the broker rather than in this process.
    pub async fn run(self, mut requests: mpsc::Receiver<Publish>) {
        while let Some(publish) = requests.recv().await {
            self.handle(&publish);
            if publish.qos != QoS::AtMostOnce && self.client.try_ack(&publish).is_err() {
                // The client's channel is full of replies; acknowledge as soon as there is room,
                // without holding up the next request.
                let client = self.client.clone();
                tokio::spawn(async move { client.ack(&publish).await });
            }
        }
    }

    fn handle(&self, publish: &Publish) {
        let received = Instant::now();
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            return;
        };
        let Some(model_name) = self.topics.model_of(topic) else {
            tracing::debug!(%topic, "ignored a message on a topic that is not a request topic");
            return;
        };
        let span = tracing::info_span!("request", model = %model_name, id = tracing::field::Empty);
        let _entered = span.enter();
        let props = publish.properties.clone().unwrap_or_default();
        let qos = if publish.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        let refuse = |identity: &RequestIdentity, code: ErrorCode, message: &str| {
            let reply = self.reply_to(&props, identity, model_name, qos);
            self.send_now(reply.error(identity.id.as_deref(), model_name, code, message));
        };

        if publish.payload.len() > self.max_payload_bytes {
            let message = format!(
                "payload of {} bytes is over the {} byte limit (requests.max_payload_bytes)",
                publish.payload.len(),
                self.max_payload_bytes
            );
            return refuse(&RequestIdentity::default(), ErrorCode::TooLarge, &message);
        }
        let decoded = match decode_media(props.content_type.as_deref(), &publish.payload, &props.user_properties) {
            Some(media) => media,
            None => match header_length_from_properties(&props.user_properties).transpose() {
                Ok(header_len) => decode_request(&publish.payload, header_len),
                Err(e) => return refuse(&RequestIdentity::default(), ErrorCode::BadRequest, &e.to_string()),
            },
        };
        let mut request = match decoded {
            Ok(request) => request,
            Err(failure) => {
                if let Some(id) = &failure.identity.id {
                    span.record("id", tracing::field::display(id));
                }
                return refuse(&failure.identity, ErrorCode::BadRequest, &failure.error.to_string());
            }
        };
        let identity = request.identity.clone();
        if let Some(id) = &identity.id {
            span.record("id", tracing::field::display(id));
        }
        let Some(model) = self.repository.get(model_name) else {
            let message = format!("unknown model \"{model_name}\"; this device serves {:?}", self.repository.names());
            return refuse(&identity, ErrorCode::UnknownModel, &message);
        };
        let inputs = match model.prepare(&mut request) {
            Ok(inputs) => inputs,
            Err(e) => return refuse(&identity, ErrorCode::BadRequest, &e.to_string()),
        };
        let bytes = inputs.queued_bytes();
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        let Ok(budget) = self.budget.clone().try_acquire_many_owned(permits) else {
            let message =
                format!("the daemon holds its maximum of queued request bytes; retry later ({bytes} bytes asked)");
            return refuse(&identity, ErrorCode::Busy, &message);
        };
        let expiry = props.message_expiry_interval.map(|s| Duration::from_secs(s.into()));
        let model_default = model.serving().default_timeout_ms.map(Duration::from_millis).or(self.default_timeout);
        let timeout = [expiry, request.timeout, model_default].into_iter().flatten().min();
        let job = Job {
            model: model.clone(),
            id: identity.id.clone(),
            inputs,
            reply: self.reply_to(&props, &identity, model_name, qos),
            received,
            deadline: timeout.map(|t| received + t),
            span: span.clone(),
            budget,
        };
        match self.scheduler.submit(job) {
            Ok(()) => {}
            Err(Rejected::Busy(job)) => {
                let message = format!("model \"{model_name}\" is busy: its queue is full; retry later");
                self.send_now(job.reply.error(job.id.as_deref(), model_name, ErrorCode::Busy, &message));
            }
            Err(Rejected::ShuttingDown(job)) => {
                let message = "the daemon is stopping and takes no new requests";
                self.send_now(job.reply.error(job.id.as_deref(), model_name, ErrorCode::ShuttingDown, message));
            }
        }
    }

    /// The Response Topic (MQTT v5), else `parameters.reply_to` (3.1.1 clients), else the model's
    /// result topic.
    fn reply_to(&self, props: &PublishProperties, identity: &RequestIdentity, model: &str, qos: QoS) -> ReplyTo {
        let topic = props
            .response_topic
            .clone()
            .or_else(|| identity.reply_to.clone().filter(|t| is_valid_reply_topic(t)))
            .unwrap_or_else(|| self.topics.result(model));
        ReplyTo { topic, correlation: props.correlation_data.clone(), qos, counts: self.stats.for_model(model) }
    }

    /// Error replies never wait: if the publisher is this far behind, the reply is dropped and
    /// the warning logged already is all that remains of it.
    fn send_now(&self, command: Command) {
        match self.replies.try_send(command) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                tracing::error!("error reply dropped: outgoing queue is full")
            }
            Err(TrySendError::Closed(_)) => {
                tracing::debug!("error reply dropped: publisher stopped")
            }
        }
    }
}
