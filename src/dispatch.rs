//! From an incoming MQTT message to a queued job, or to an immediate error reply.
//!
//! Every refusal happens here, before any inference: a retained message, a reply topic the daemon
//! may not publish to, oversized payload, undecodable request, unknown model, inputs the model
//! cannot take, full queue. Each gets a reply naming the problem (or, with no topic to reply to,
//! a count) and a warning line; nothing here waits on anything but the decoder and room for the
//! error reply.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::AsyncClient;
use tokio::sync::{mpsc, Semaphore};

use crate::admin::AdminRequest;
use crate::model::InputError;
use crate::mqtt::connection::Incoming;
use crate::mqtt::publisher::Command;
use crate::mqtt::redelivery::{Delivery, Recent, Seen};
use crate::mqtt::reply::{Ack, Outbox, ReplyTo};
use crate::mqtt::topics::{check_topic_syntax, ReplyRules, Topics};
use crate::protocol::request::{decode_request, header_length_from_properties, RequestIdentity};
use crate::protocol::{decode_media, DecodeError, ErrorCode};
use crate::scheduler::{Job, Rejected, Scheduler};
use crate::stats::{Stats, Unanswered};
use crate::untrusted::{self, Untrusted};

/// The longest request id the daemon echoes: ids are for matching replies, not for payloads.
const MAX_ID_BYTES: usize = 1024;

/// Turns request messages into jobs.
pub struct Dispatcher {
    pub topics: Topics,
    pub reply_rules: ReplyRules,
    pub outbox: Arc<Outbox>,
    pub scheduler: Scheduler<ReplyTo>,
    pub max_payload_bytes: usize,
    pub default_timeout: Option<Duration>,
    /// Bytes of input tensors that queued jobs may hold in total (one permit per byte).
    pub budget: Arc<Semaphore>,
    pub stats: Arc<Stats>,
    /// Payload bytes of QoS 0 requests waiting in the channel (the connection counts them up).
    pub qos0_waiting: Arc<AtomicUsize>,
    /// The broker keeps the daemon's session across connections (`broker.session_expiry_secs`):
    /// requests that come in while it stops are left unacknowledged for the next start.
    pub persistent_session: bool,
    /// QoS 1 requests accepted recently, to know the broker's redeliveries.
    pub recent: Arc<Recent>,
    /// The admin thread's queue, when `admin.enabled`.
    pub admin: Option<mpsc::Sender<AdminRequest>>,
}

/// What became of a message's acknowledgement.
enum Acked {
    /// It travels with the reply (sent once the reply is).
    WithReply,
    /// No reply will come: acknowledge now.
    Now,
    /// Not here: the request is being answered already (that reply acknowledges it), or it is
    /// left unacknowledged for the broker to deliver again to the next connection.
    Never,
}

/// Why a request is answered without being queued; each decides its reply's code.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error("payload of {size} bytes is over the {limit} byte limit (requests.max_payload_bytes)")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// Request-checking code panicked: a bug, contained to this request.
    #[error("the request could not be checked ({0}); please report this")]
    Panicked(String),
    #[error("the request id is {0} bytes; at most {MAX_ID_BYTES} are accepted")]
    IdTooLong(usize),
    #[error("unknown model \"{name}\"; this device serves {served:?}")]
    UnknownModel { name: String, served: Vec<String> },
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("the daemon holds its maximum of queued request bytes; retry later ({0} bytes asked)")]
    QueuedBytes(usize),
    #[error("model \"{0}\" is busy: its queue is full; retry later")]
    QueueFull(String),
    #[error("the daemon is stopping and takes no new requests")]
    ShuttingDown,
    /// The reply topic the client named, and why the daemon may not publish there.
    #[error("{0}")]
    ReplyTopic(String),
}

impl Refusal {
    /// The reply's error code.
    fn code(&self) -> ErrorCode {
        match self {
            Refusal::PayloadTooLarge { .. } => ErrorCode::TooLarge,
            Refusal::Decode(e) => e.code(),
            Refusal::Panicked(_) => ErrorCode::Internal,
            Refusal::IdTooLong(_) | Refusal::ReplyTopic(_) => ErrorCode::BadRequest,
            Refusal::UnknownModel { .. } => ErrorCode::UnknownModel,
            Refusal::Input(e) => e.code(),
            Refusal::QueuedBytes(_) | Refusal::QueueFull(_) => ErrorCode::Busy,
            Refusal::ShuttingDown => ErrorCode::ShuttingDown,
        }
    }

    /// The error reply carrying it.
    fn reply(&self, to: &ReplyTo, id: Option<&str>, model: &str) -> Command {
        to.error(id, model, self.code(), &self.to_string())
    }
}

/// Where a request's reply can go.
enum Route {
    To(ReplyTo),
    /// The client named a reply topic the daemon may not publish to: the refusal goes to the
    /// model's result topic instead.
    Refused(ReplyTo, String),
    /// Not even the result topic is a valid topic (a hostile model name in the request topic).
    Nowhere(String),
}

impl Dispatcher {
    /// Handles messages until the connection task closes the channel. A QoS 1 request is
    /// acknowledged once its reply has been handed to the MQTT client, so the broker's Receive
    /// Maximum window keeps waiting requests in the broker rather than in this process.
    pub async fn run(self, mut requests: mpsc::UnboundedReceiver<Incoming>) {
        while let Some(Incoming { publish, client }) = requests.recv().await {
            let acked = self.handle(&publish, &client).await;
            if publish.qos == QoS::AtMostOnce {
                self.qos0_waiting.fetch_sub(publish.payload.len(), Ordering::Relaxed);
            } else if let (Acked::Now, Some(ack)) = (acked, Ack::of(&publish, &client)) {
                // Marked answered too: a retained or unroutable request redelivered later must be
                // acknowledged again, not taken for one still being answered.
                ack.send(&self.recent).await;
            }
        }
    }

    async fn handle(&self, publish: &Publish, client: &AsyncClient) -> Acked {
        let received = Instant::now();
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            return Acked::Now;
        };
        if let (Some(op), Some(admin)) = (self.topics.admin_op_of(topic), &self.admin) {
            self.admin_request(op, publish, admin).await;
            return Acked::Now;
        }
        let Some(model_name) = self.topics.model_of(topic) else {
            tracing::debug!(topic = %Untrusted(topic), "ignored a message on a topic that is not a request topic");
            return Acked::Now;
        };
        let span = tracing::info_span!("request", model = %Untrusted(model_name), id = tracing::field::Empty);
        let _entered = span.enter();
        if publish.qos != QoS::AtMostOnce {
            let delivery = Delivery::of(publish);
            match publish.dup.then(|| self.recent.seen(delivery)).flatten() {
                Some(Seen::Answered) => {
                    tracing::info!("redelivered request was answered already; acknowledged again");
                    return Acked::Now;
                }
                Some(Seen::InProgress) => {
                    tracing::info!("redelivered request is being answered already");
                    return Acked::Never;
                }
                None => self.recent.accepted(delivery),
            }
        }
        if publish.retain {
            // The broker hands a retained message to every new subscription, so computing it
            // would answer it again on every reconnect, for ever.
            tracing::warn!("ignored a retained request (publish requests without the retain flag)");
            self.stats.for_model(model_name).unanswered(Unanswered::Retained);
            return Acked::Now;
        }
        let props = publish.properties.clone().unwrap_or_default();
        let qos = if publish.qos == QoS::AtMostOnce { QoS::AtMostOnce } else { QoS::AtLeastOnce };
        let request = Request { props: &props, model: model_name, qos, ack: Ack::of(publish, client) };

        if publish.payload.len() > self.max_payload_bytes {
            let refusal = Refusal::PayloadTooLarge { size: publish.payload.len(), limit: self.max_payload_bytes };
            return self.refuse(&request, &RequestIdentity::default(), refusal).await;
        }
        let decode = || match decode_media(props.content_type.as_deref(), &publish.payload, &props.user_properties) {
            Some(media) => Ok(media),
            None => header_length_from_properties(&props.user_properties)
                .transpose()
                .map(|header_len| decode_request(&publish.payload, header_len)),
        };
        let decoded = match contained(decode) {
            Ok(Ok(decoded)) => decoded,
            Ok(Err(e)) => return self.refuse(&request, &RequestIdentity::default(), e.into()).await,
            Err(bug) => return self.refuse(&request, &RequestIdentity::default(), bug).await,
        };
        let mut decoded = match decoded {
            Ok(decoded) => decoded,
            Err(mut failure) => {
                let too_long = check_id(&mut failure.identity);
                if let Some(id) = &failure.identity.id {
                    span.record("id", tracing::field::display(Untrusted(id)));
                }
                let refusal = too_long.unwrap_or(Refusal::Decode(failure.error));
                return self.refuse(&request, &failure.identity, refusal).await;
            }
        };
        if let Some(refusal) = check_id(&mut decoded.identity) {
            return self.refuse(&request, &decoded.identity, refusal).await;
        }
        let identity = decoded.identity.clone();
        if let Some(id) = &identity.id {
            span.record("id", tracing::field::display(Untrusted(id)));
        }
        let reply = match self.route(&request, &identity) {
            Route::To(reply) => reply,
            unroutable => return self.unroutable(unroutable, &identity, model_name).await,
        };
        if self.persistent_session && self.scheduler.is_stopping() {
            tracing::info!("request left to the broker for the next start: the daemon is stopping");
            return Acked::Never;
        }
        let refuse = |refusal: Refusal| refusal.reply(&reply, identity.id.as_deref(), model_name);
        let unknown =
            || Refusal::UnknownModel { name: Untrusted(model_name).to_string(), served: self.scheduler.names() };
        let Some(model) = self.scheduler.model(model_name) else {
            return self.send(refuse(unknown())).await;
        };
        let mut inputs = match contained(|| model.prepare(&mut decoded)) {
            Ok(Ok(inputs)) => inputs,
            Ok(Err(e)) => return self.send(refuse(e.into())).await,
            Err(bug) => return self.send(refuse(bug)).await,
        };
        // A session belongs to the client that started it, known to the daemon by its reply topic.
        inputs.session_owner = reply.topic.clone();
        let bytes = inputs.queued_bytes();
        let permits = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        let Ok(budget) = self.budget.clone().try_acquire_many_owned(permits) else {
            return self.send(refuse(Refusal::QueuedBytes(bytes))).await;
        };
        let expiry = props.message_expiry_interval.map(|s| Duration::from_secs(s.into()));
        let model_default = model.serving().default_timeout_ms.map(Duration::from_millis).or(self.default_timeout);
        let timeout = [expiry, decoded.timeout, model_default].into_iter().flatten().min();
        let job = Job {
            model: model.clone(),
            id: identity.id.clone(),
            inputs,
            reply,
            received,
            deadline: timeout.map(|t| received + t),
            span: span.clone(),
            budget,
        };
        match self.scheduler.submit(job) {
            Ok(()) => Acked::WithReply,
            Err(Rejected::Busy(job)) => {
                self.send(Refusal::QueueFull(model_name.into()).reply(&job.reply, job.id.as_deref(), model_name)).await
            }
            Err(Rejected::ShuttingDown(job)) => {
                self.send(Refusal::ShuttingDown.reply(&job.reply, job.id.as_deref(), model_name)).await
            }
            Err(Rejected::Unloaded(job)) => self.send(unknown().reply(&job.reply, job.id.as_deref(), model_name)).await,
        }
    }

    /// Hands an admin message to the admin thread (acknowledged at once: operations are
    /// idempotent, and a client that gets no reply asks again).
    async fn admin_request(&self, op: &str, publish: &Publish, admin: &mpsc::Sender<AdminRequest>) {
        if publish.retain {
            // A retained operation would be carried out again on every reconnect.
            tracing::warn!(op = %Untrusted(op), "ignored a retained admin message (publish it without the retain flag)");
            return;
        }
        let request = AdminRequest { op: op.to_string(), publish: publish.clone() };
        if let Err(tokio::sync::mpsc::error::TrySendError::Full(_)) = admin.try_send(request) {
            tracing::warn!(op = %Untrusted(op), "admin message refused: {} are waiting already", crate::admin::QUEUE);
            if let Some(busy) = crate::admin::busy(&self.topics, &self.reply_rules, op, publish) {
                self.outbox.send(busy).await;
            }
        }
    }

    /// Answers a request that will not be computed, on its reply topic if that is one the daemon
    /// may use, else with why that topic was refused.
    async fn refuse(&self, request: &Request<'_>, identity: &RequestIdentity, refusal: Refusal) -> Acked {
        match self.route(request, identity) {
            Route::To(reply) => self.send(refusal.reply(&reply, identity.id.as_deref(), request.model)).await,
            unroutable => self.unroutable(unroutable, identity, request.model).await,
        }
    }

    /// Answers a request whose reply topic was refused, on the result topic, or counts it when
    /// there is no topic at all.
    async fn unroutable(&self, route: Route, identity: &RequestIdentity, model: &str) -> Acked {
        match route {
            Route::To(_) => unreachable!("a routable request"),
            Route::Refused(reply, why) => {
                self.send(Refusal::ReplyTopic(why).reply(&reply, identity.id.as_deref(), model)).await
            }
            Route::Nowhere(why) => {
                tracing::warn!(why = %why, "request not answered: there is no valid topic to reply to");
                self.stats.for_model(model).unanswered(Unanswered::NoReplyTopic);
                Acked::Now
            }
        }
    }

    /// The Response Topic (MQTT v5), else `parameters.reply_to` (3.1.1 clients), else the model's
    /// result topic; a topic the client chose is checked against the reply rules first.
    fn route(&self, request: &Request<'_>, identity: &RequestIdentity) -> Route {
        let reply = |topic: String| ReplyTo {
            topic,
            correlation: request.props.correlation_data.clone(),
            qos: request.qos,
            counts: self.stats.for_model(request.model),
            outbox: self.outbox.clone(),
            ack: request.ack.clone(),
        };
        let result = self.topics.result(request.model);
        let chosen = match (&request.props.response_topic, &identity.reply_to) {
            (Some(topic), _) => Some(("Response Topic", topic)),
            (None, Some(topic)) => Some(("parameters.reply_to", topic)),
            (None, None) => None,
        };
        let refusal = match chosen {
            Some((what, topic)) => match self.reply_rules.check(topic) {
                Ok(()) => return Route::To(reply(topic.clone())),
                Err(e) => Some(format!("{what} \"{}\" refused: it {e}", Untrusted(topic))),
            },
            None => None,
        };
        if let Err(e) = check_topic_syntax(&result) {
            let why = refusal.unwrap_or_else(|| format!("the result topic {e}"));
            return Route::Nowhere(why);
        }
        match refusal {
            Some(why) => Route::Refused(reply(result), why),
            None => Route::To(reply(result)),
        }
    }

    /// Queues a reply, waiting for room: under a flood, error replies wait (and with them this
    /// request's acknowledgement, so the broker holds the next ones) rather than being dropped.
    async fn send(&self, command: Command) -> Acked {
        self.outbox.send(command).await;
        Acked::WithReply
    }
}

/// The parts of an incoming message that decide where its reply goes.
struct Request<'a> {
    props: &'a PublishProperties,
    model: &'a str,
    qos: QoS,
    ack: Option<Ack>,
}

/// Runs request-checking code so that a bug in it (a panic) costs this request an `internal`
/// reply, not the dispatcher: a panic here would otherwise end the task every request goes through.
fn contained<T>(check: impl FnOnce() -> T) -> Result<T, Refusal> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)).map_err(|panic| {
        let message = crate::panics::panic_message(panic.as_ref());
        tracing::error!(panic = %Untrusted(&message), "panic while checking a request; it gets an internal error, the daemon goes on");
        Refusal::Panicked(message)
    })
}

/// Refuses ids too long to echo: the id is dropped from the identity (the reply cannot carry it).
fn check_id(identity: &mut RequestIdentity) -> Option<Refusal> {
    let len = identity.id.as_ref().map_or(0, String::len);
    (len > MAX_ID_BYTES).then(|| {
        identity.id = None;
        Refusal::IdTooLong(len)
    })
}

/// Logs and counts a QoS 0 request that arrived while too many were waiting (it has no
/// acknowledgement to hold back, so the broker cannot be asked to keep it).
/// The warning is logged at most once a second, with the count since the last one.
pub fn count_overload(topics: &Topics, stats: &Stats, publish: &Publish) {
    static SINCE_LOGGED: AtomicUsize = AtomicUsize::new(0);
    static LAST_LOGGED: std::sync::Mutex<Option<Instant>> = std::sync::Mutex::new(None);
    let topic = String::from_utf8_lossy(&publish.topic);
    stats.for_model(topics.model_of(&topic).unwrap_or("")).unanswered(Unanswered::Overloaded);
    let dropped = SINCE_LOGGED.fetch_add(1, Ordering::Relaxed) + 1;
    let mut last = LAST_LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
        *last = Some(Instant::now());
        SINCE_LOGGED.store(0, Ordering::Relaxed);
        tracing::warn!(
            topic = %untrusted::lossy(&publish.topic),
            dropped,
            "QoS 0 requests dropped: too many waiting; publish with QoS 1 for flow control"
        );
    }
}
