//! `edgeinfer serve`: wires the data path together and takes it apart cleanly.
//!
//! ```text
//! broker -> Connection (poll, route) -> Dispatcher (decode, check) -> Scheduler queue per model
//!        <- publisher task <------------ reply channel <------------- worker threads (tract)
//! ```
//!
//! Shutdown (SIGTERM, Ctrl-C): unsubscribe, refuse new requests, let the workers finish what was
//! accepted (within `shutdown_grace_ms`), publish `stopped`, disconnect.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::LastWill;
use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, EventLoop};
use tokio::sync::{mpsc, watch, Semaphore};

use crate::config::Config;
use crate::dispatch::{count_overload, Dispatcher};
use crate::model::repository::RepositoryError;
use crate::model::{ModelCache, ModelRepository};
use crate::mqtt::connection::{Connection, Incoming, OnConnect};
use crate::mqtt::options::{mqtt_options, SetupError};
use crate::mqtt::publisher::{self, Command, Outgoing};
use crate::mqtt::redelivery::Recent;
use crate::mqtt::reply::ReplyLimits;
use crate::mqtt::topics::ReplyRules;
use crate::mqtt::{status, Topics};
use crate::scheduler::{PoolConfig, Scheduler};
use crate::stats::{Gauges, Stats};
use crate::systemd;

/// The Receive Maximum the broker is given: it sends at most this many QoS 1 requests that the
/// daemon has not acknowledged, so at most this many wait between the connection and the
/// dispatcher (each may be as large as the packet limit).
const RECEIVE_MAXIMUM: u16 = 16;
/// Replies computed but not yet handed to the MQTT client.
const REPLY_CAPACITY: usize = 1024;
/// rumqttc's own request channel.
const CLIENT_CAPACITY: usize = 1024;
/// How long the broker gets to take the final `stopped` status and DISCONNECT.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Mqtt(#[from] SetupError),
}

/// Runs the daemon until `shutdown` completes, then stops cleanly.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    systemd::status("loading models");
    crate::model::image::DecodeBudget::configure(
        config.requests.max_image_pixels,
        config.requests.max_decode_bytes as u64,
    );
    let cache = config.models.cache_dir().map(ModelCache::new);
    match &cache {
        Some(cache) => tracing::info!(dir = %cache.dir().display(), "model cache on"),
        None => tracing::info!("model cache off (set models.cache_dir)"),
    }
    let (repository, failures) = ModelRepository::load(&config.models.repository, cache.as_ref())?;
    for failure in &failures {
        tracing::error!("{failure}; the other models still serve");
    }
    if repository.is_empty() {
        tracing::warn!(repository = %config.models.repository.display(), "no model loaded; every request will be refused");
    }
    let topics = Topics::from_config(&config);
    let device = config.device().to_string();
    let mut options = mqtt_options(&config, &config.client_id())?;
    // MQTT's own flow control: the broker sends at most this many unacknowledged QoS 1 requests.
    options.set_manual_acks(true);
    options.set_receive_maximum(Some(RECEIVE_MAXIMUM));
    let persistent_session = config.broker.session_expiry_secs > 0;
    if persistent_session {
        options.set_clean_start(false);
        options.set_session_expiry_interval(Some(config.broker.session_expiry_secs));
    }
    options.set_last_will(LastWill::new(topics.status(), status::offline(&device), QoS::AtLeastOnce, true, None));
    let (client, eventloop) = AsyncClient::new(options, CLIENT_CAPACITY);

    let mut retained = vec![(topics.status(), status::online(&device, &repository.names()))];
    for model in repository.models() {
        let metadata = serde_json::to_vec(model.metadata()).expect("metadata serialises");
        retained.push((topics.metadata(model.name()), metadata));
    }
    let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
    let (connected, connected_rx) = watch::channel(false);
    let stats = Arc::new(Stats::new(&repository.names()));
    let reply_limits =
        Arc::new(ReplyLimits::new(config.requests.max_reply_bytes, config.requests.max_pending_reply_bytes));
    let qos0_waiting = Arc::default();
    let links = Links {
        requests: inbound_tx,
        qos0_waiting: Arc::clone(&qos0_waiting),
        qos0_limit: config.requests.max_payload_bytes.saturating_mul(2),
        on_overload: {
            let (topics, stats) = (topics.clone(), stats.clone());
            Arc::new(move |publish: &Publish| count_overload(&topics, &stats, publish))
        },
        reply_limits: reply_limits.clone(),
        backoff_min: Duration::from_millis(config.broker.reconnect_min_ms),
        backoff_max: Duration::from_millis(config.broker.reconnect_max_ms),
        broker: config.broker.url.clone(),
    };
    // A persistent session for the board's own topics, but the fleet's shared subscription on a
    // clean connection of its own: Mosquitto keeps handing an offline persistent member its share
    // of a shared subscription, so a dead board would hold fleet requests until it came back
    // (tests/faults.rs measures both).
    let fleet_filter = topics.fleet_filter().filter(|_| persistent_session);
    let device_filters = match fleet_filter {
        Some(_) => vec![topics.device_filter()],
        None => topics.request_filters(),
    };
    let connection =
        tokio::spawn(links.connection("device", eventloop, &client, device_filters.clone(), retained, connected));
    let fleet = match fleet_filter {
        Some(filter) => {
            let mut options = mqtt_options(&config, &format!("{}-fleet", config.client_id()))?;
            options.set_manual_acks(true);
            options.set_receive_maximum(Some(config.topics.fleet_receive_maximum));
            let (fleet_client, eventloop) = AsyncClient::new(options, CLIENT_CAPACITY);
            let filters = vec![filter.clone()];
            let task = tokio::spawn(links.connection(
                "fleet",
                eventloop,
                &fleet_client,
                filters,
                vec![],
                watch::channel(false).0,
            ));
            Some((fleet_client, task, filter))
        }
        None => None,
    };

    let (replies, replies_rx) = mpsc::channel(REPLY_CAPACITY);
    let recent = Arc::new(Recent::default());
    let publisher = tokio::spawn(publisher::run(client.clone(), replies_rx, recent.clone()));
    let pool =
        PoolConfig { workers_per_model: config.workers_per_model(), queue_capacity: config.requests.queue_capacity };
    let scheduler = Scheduler::start(&repository, pool, replies.clone(), reply_limits.clone());
    let default_timeout = Some(config.requests.default_timeout_ms).filter(|&ms| ms > 0).map(Duration::from_millis);
    tokio::spawn(
        Dispatcher {
            topics: topics.clone(),
            reply_rules: ReplyRules::from_config(&config),
            reply_limits,
            repository: repository.clone(),
            scheduler: scheduler.clone(),
            replies: replies.clone(),
            max_payload_bytes: config.requests.max_payload_bytes,
            default_timeout,
            budget: Arc::new(Semaphore::new(config.requests.max_queued_bytes.min(u32::MAX as usize))),
            stats: stats.clone(),
            qos0_waiting,
            persistent_session,
            recent,
        }
        .run(inbound_rx),
    );
    let stats_message = {
        let (stats, scheduler, topic, device) = (stats.clone(), scheduler.clone(), topics.stats(), device.clone());
        let repository = repository.clone();
        move || {
            let gauges = |model: &str| Gauges {
                queued: scheduler.queued(model),
                sessions: repository.get(model).and_then(|m| m.sessions()),
            };
            retained_message(topic.clone(), stats.to_json(&device, gauges))
        }
    };
    if config.requests.stats_interval_secs > 0 {
        let interval = Duration::from_secs(config.requests.stats_interval_secs);
        let (replies, stats_message) = (replies.clone(), stats_message.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            loop {
                ticks.tick().await;
                if replies.send(stats_message()).await.is_err() {
                    break;
                }
            }
        });
    }
    let serving = format!("serving {} model(s) as {device} on {}", repository.names().len(), config.broker.url);
    tokio::spawn(report_connection(connected_rx, serving, config.broker.url.clone()));
    if let Some(interval) = systemd::watchdog_interval() {
        let scheduler = scheduler.clone();
        // A thread of its own: the notify send is a blocking socket call, and the watchdog must
        // keep judging even when the async runtime is the part that is stuck.
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watchdog(interval, scheduler))
            .expect("spawning the watchdog thread");
    }
    tracing::info!(
        device = %device,
        models = ?repository.names(),
        workers_per_model = pool.workers_per_model,
        broker = %config.broker.url,
        "serving"
    );

    shutdown.await;
    systemd::stopping();
    tracing::info!("stopping: no new requests; finishing accepted ones");
    // With a persistent session the board's own subscription stays, so the broker keeps what
    // comes in while the daemon restarts; the fleet's requests go to the other boards meanwhile.
    match &fleet {
        Some((fleet_client, _, filter)) => {
            let _ = fleet_client.try_unsubscribe(filter.clone());
        }
        None if !persistent_session => {
            for filter in device_filters {
                let _ = client.try_unsubscribe(filter);
            }
        }
        None => {}
    }
    let grace = Duration::from_millis(config.requests.shutdown_grace_ms);
    let draining = scheduler.clone();
    let drained = tokio::task::spawn_blocking(move || draining.shutdown(grace));
    if tokio::time::timeout(grace + DISCONNECT_TIMEOUT, drained).await.is_err() {
        tracing::error!("inference threads did not finish in time; stopping without them");
    }
    let final_stats = stats_message();
    if let Command::Publish(stats) = &final_stats {
        tracing::info!(stats = %String::from_utf8_lossy(&stats.payload), "request counts");
    }
    // Bounded: with the broker gone the reply channel may be full and never drain.
    let goodbye = async {
        let _ = replies.send(final_stats).await;
        let _ = replies.send(retained_message(topics.status(), status::stopped(&device))).await;
        let _ = replies.send(Command::Disconnect).await;
        drop(replies);
        if let Some((fleet_client, task, _)) = fleet {
            let _ = fleet_client.disconnect().await;
            let _ = task.await;
        }
        connection.await
    };
    match tokio::time::timeout(DISCONNECT_TIMEOUT, goodbye).await {
        Ok(_) => tracing::info!("stopped"),
        Err(_) => tracing::warn!("broker did not take the final status in time; stopping anyway"),
    }
    publisher.abort();
    Ok(())
}

/// What every MQTT connection of the daemon shares: where requests go, the limits, the backoff.
struct Links {
    requests: mpsc::UnboundedSender<Incoming>,
    qos0_waiting: Arc<AtomicUsize>,
    qos0_limit: usize,
    on_overload: Arc<dyn Fn(&Publish) + Send + Sync>,
    reply_limits: Arc<ReplyLimits>,
    backoff_min: Duration,
    backoff_max: Duration,
    broker: String,
}

impl Links {
    /// The event loop of one connection, subscribing to `filters` and publishing `retained` on
    /// every CONNACK.
    fn connection(
        &self,
        link: &'static str,
        eventloop: EventLoop,
        client: &AsyncClient,
        filters: Vec<String>,
        retained: Vec<(String, Vec<u8>)>,
        connected: watch::Sender<bool>,
    ) -> impl Future<Output = ()> {
        Connection {
            link,
            eventloop,
            client: client.clone(),
            on_connect: OnConnect { filters, retained },
            requests: self.requests.clone(),
            qos0_waiting: self.qos0_waiting.clone(),
            qos0_limit: self.qos0_limit,
            on_overload: self.on_overload.clone(),
            reply_limits: self.reply_limits.clone(),
            connected,
            backoff_min: self.backoff_min,
            backoff_max: self.backoff_max,
            broker: self.broker.clone(),
        }
        .run()
    }
}

fn retained_message(topic: String, payload: Vec<u8>) -> Command {
    Command::Publish(Outgoing {
        topic,
        payload,
        header_len: None,
        correlation: None,
        qos: QoS::AtLeastOnce,
        retain: true,
        held: None,
        ack: None,
    })
}

/// READY=1 on the first connection (the models are loaded by then), and a status line that says
/// whether the broker is there, for `systemctl status`.
async fn report_connection(mut connected: watch::Receiver<bool>, serving: String, broker: String) {
    systemd::status(&format!("waiting for broker at {broker}"));
    let mut ready = false;
    while connected.changed().await.is_ok() {
        if *connected.borrow_and_update() {
            if ready {
                systemd::status(&serving);
            } else {
                systemd::ready(&serving);
                ready = true;
            }
        } else {
            systemd::status(&format!("broker at {broker} lost; reconnecting"));
        }
    }
}

/// Pings the systemd watchdog while the daemon makes progress: no model has jobs waiting while
/// its workers finish none. A wedged daemon stops pinging and systemd restarts it. (The MQTT loop
/// awaits nothing but the broker, so it cannot wedge on the daemon's own work.)
fn watchdog(interval: Duration, scheduler: Scheduler) {
    let mut seen = HashMap::new();
    let mut healthy = true;
    loop {
        std::thread::sleep(interval);
        let stalled = scheduler.stalled_models(&mut seen);
        if stalled.is_empty() {
            systemd::watchdog();
            if !healthy {
                tracing::info!("watchdog: making progress again");
            }
            healthy = true;
        } else if healthy {
            tracing::error!(stalled = ?stalled, "watchdog: no progress; not pinging systemd");
            healthy = false;
        }
    }
}
