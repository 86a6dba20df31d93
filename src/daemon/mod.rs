//! `edgeinfer serve`: wires the data path together and takes it apart cleanly.
//!
//! ```text
//! broker -> Connection (poll, route) -> Dispatcher (decode, check) -> Scheduler queue per model
//!        <- publisher task <------------ reply channel <------------- worker threads (tract)
//! ```
//!
//! Shutdown (SIGTERM, Ctrl-C): unsubscribe, refuse new requests, let the workers finish what was
//! accepted (within `shutdown_grace_ms`), publish `stopped`, disconnect.

mod links;
mod reload;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Publish;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::admin::store::{Store, StoreError};
use crate::admin::{Admin, AdminRequest, Announce, Change};
use crate::config::Config;
use crate::dispatch::{count_overload, Dispatcher};
use crate::model::repository::RepositoryError;
use crate::model::{Model, ModelCache, ModelRepository};
use crate::mqtt::connection::Retained;
use crate::mqtt::options::SetupError;
use crate::mqtt::publisher::{self, Command, Outgoing};
use crate::mqtt::redelivery::Recent;
use crate::mqtt::reply::{Outbox, ReplyLimits, ReplyTo};
use crate::mqtt::topics::ReplyRules;
use crate::mqtt::{status, Topics};
use crate::package::{PackageError, PublicKey};
use crate::report::Report;
use crate::scheduler::{PoolConfig, Scheduler};
use crate::stats::{Gauges, Stats};
use crate::systemd;
use links::{Broker, Links};
use reload::Reloader;

/// Replies computed but not yet handed to the MQTT client.
const REPLY_CAPACITY: usize = 1024;
/// How long the broker gets to take the final `stopped` status and DISCONNECT.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error(transparent)]
    Mqtt(#[from] SetupError),
    #[error("admin.state_dir: {0}")]
    State(#[from] StoreError),
    #[error("admin.trusted_keys: {0}")]
    Key(#[from] PackageError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::ListenError),
    #[error("installing the SIGHUP handler: {0}")]
    Signal(#[source] std::io::Error),
}

/// Runs the daemon until `shutdown` completes, then stops cleanly.
pub async fn serve(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let cache = config.models.cache_dir().map(ModelCache::new);
    let mut repository = load_models(&config, cache.as_ref())?;
    let store = match config.admin.enabled {
        true => {
            let store = Store::open(&config.admin.state_dir)?;
            crate::admin::restore(&mut repository, &store, &config.models.repository, cache.as_ref());
            Some(store)
        }
        false => None,
    };
    let topics = Topics::from_config(&config);
    let device = config.device().to_string();
    let stats = Arc::new(Stats::new(&repository.names()));
    let reply_limits =
        Arc::new(ReplyLimits::new(config.requests.max_reply_bytes, config.requests.max_pending_reply_bytes));
    let pool = PoolConfig {
        workers_per_model: config.workers_per_model(),
        queue_capacity: config.requests.queue_capacity,
        lone_request_threads: config.lone_request_threads(),
    };
    let scheduler = Scheduler::start(&repository, pool);

    let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
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
    let (connected, connected_rx) = watch::channel(false);
    let retained: Retained = {
        let (topics, device, scheduler) = (topics.clone(), device.clone(), scheduler.clone());
        let homeassistant = config.metrics.homeassistant;
        Arc::new(move || {
            let models = scheduler.models();
            let mut retained = retained_at_connect(&topics, &device, &models);
            if homeassistant {
                retained.extend(crate::mqtt::homeassistant::discovery(&topics, &device, &models));
            }
            retained
        })
    };
    let admin_filters = if store.is_some() { topics.admin_filters() } else { Vec::new() };
    let broker = Broker::connect(&config, &topics, &links, retained.clone(), admin_filters, connected)?;

    let (replies, replies_rx) = mpsc::channel(REPLY_CAPACITY);
    let recent = Arc::new(Recent::default());
    let publisher = tokio::spawn(publisher::run(broker.client.clone(), replies_rx, recent.clone()));
    let outbox = Arc::new(Outbox::new(replies.clone(), reply_limits));
    let default_timeout = Some(config.requests.default_timeout_ms).filter(|&ms| ms > 0).map(Duration::from_millis);
    let swapping = Swapping {
        scheduler: scheduler.clone(),
        stats: stats.clone(),
        announce: announcer(&config, &topics, retained, &replies),
        changes: Arc::default(),
    };
    reload_on_sighup(&config, store.clone(), cache.clone(), swapping.clone()).map_err(ServeError::Signal)?;
    let admin = match store {
        Some(store) => Some(start_admin(&config, store, cache, &topics, &outbox, swapping)?),
        None => None,
    };
    tokio::spawn(
        Dispatcher {
            topics: topics.clone(),
            reply_rules: ReplyRules::from_config(&config),
            outbox,
            scheduler: scheduler.clone(),
            max_payload_bytes: config.requests.max_payload_bytes,
            default_timeout,
            budget: Arc::new(Semaphore::new(config.requests.max_queued_bytes.min(u32::MAX as usize))),
            stats: stats.clone(),
            qos0_waiting,
            persistent_session: broker.persistent_session(),
            recent,
            admin,
        }
        .run(inbound_rx),
    );
    let stats_message = {
        let (stats, scheduler, topic, device) = (stats.clone(), scheduler.clone(), topics.stats(), device.clone());
        move || {
            let gauges = |model: &str| Gauges {
                queued: scheduler.queued(model),
                sessions: scheduler.model(model).and_then(|m| m.sessions()),
            };
            retained_message(topic.clone(), stats.to_json(&device, gauges))
        }
    };
    if let Some(addr) = config.metrics.listen {
        let scheduler = scheduler.clone();
        let source = crate::metrics::Source {
            stats: stats.clone(),
            device: device.clone(),
            queued: Box::new(move |model| scheduler.queued(model)),
        };
        crate::metrics::serve(addr, source)?;
    }
    if config.requests.stats_interval_secs > 0 {
        let interval = Duration::from_secs(config.requests.stats_interval_secs);
        tokio::spawn(publish_every(interval, replies.clone(), stats_message.clone()));
    }
    let serving = format!("serving {} model(s) as {device} on {}", scheduler.names().len(), config.broker.url);
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
        models = ?scheduler.names(),
        workers_per_model = pool.workers_per_model,
        lone_request_threads = pool.lone_request_threads,
        broker = %config.broker.url,
        "serving"
    );

    shutdown.await;
    systemd::stopping();
    tracing::info!("stopping: no new requests; finishing accepted ones");
    broker.stop_taking_requests();
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
        broker.closed().await
    };
    match tokio::time::timeout(DISCONNECT_TIMEOUT, goodbye).await {
        Ok(()) => tracing::info!("stopped"),
        Err(_) => tracing::warn!("broker did not take the final status in time; stopping anyway"),
    }
    publisher.abort();
    Ok(())
}

/// Loads every model of the repository. A model that fails is logged and left out: the others
/// still serve.
fn load_models(config: &Config, cache: Option<&ModelCache>) -> Result<ModelRepository, RepositoryError> {
    systemd::status("loading models");
    crate::model::image::DecodeBudget::configure(
        config.requests.max_image_pixels,
        config.requests.max_decode_bytes as u64,
    );
    match cache {
        Some(cache) => tracing::info!(dir = %cache.dir().display(), "model cache on"),
        None => tracing::info!("model cache off (set models.cache_dir)"),
    }
    let (repository, failures) = ModelRepository::load(&config.models.repository, cache)?;
    for failure in &failures {
        tracing::error!("{}; the other models still serve", Report(failure));
    }
    if repository.is_empty() {
        tracing::warn!(repository = %config.models.repository.display(), "no model loaded; every request will be refused");
    }
    Ok(repository)
}

/// What the two ways of changing the served models (admin operations, SIGHUP) share.
#[derive(Clone)]
struct Swapping {
    scheduler: Scheduler<ReplyTo>,
    stats: Arc<Stats>,
    announce: Announce,
    /// Held while the served models change: one change at a time.
    changes: Arc<std::sync::Mutex<()>>,
}

/// Republishes what the board publishes retained at every connection (status, metadata, Home
/// Assistant configs) after the served models changed; an unloaded model's retained messages are
/// cleared first.
fn announcer(config: &Config, topics: &Topics, retained: Retained, replies: &mpsc::Sender<Command>) -> Announce {
    let (topics, device, replies) = (topics.clone(), config.device().to_string(), replies.clone());
    let homeassistant = config.metrics.homeassistant;
    Arc::new(move |change: Change<'_>| {
        let mut messages = Vec::new();
        // An empty retained message deletes the retained one (MQTT's way).
        if let Change::Unloaded(name) = change {
            messages.push(retained_message(topics.metadata(name), Vec::new()));
            if homeassistant {
                let configs = crate::mqtt::homeassistant::model_configs(&device, name);
                messages.extend(configs.into_iter().map(|topic| retained_message(topic, Vec::new())));
            }
        }
        messages.extend(retained().into_iter().map(|(topic, payload)| retained_message(topic, payload)));
        for message in messages {
            let _ = replies.blocking_send(message);
        }
    })
}

/// Reloads the repository's changed models on every SIGHUP, on a thread of its own.
fn reload_on_sighup(
    config: &Config,
    store: Option<Store>,
    cache: Option<ModelCache>,
    swapping: Swapping,
) -> std::io::Result<()> {
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut reloader = Reloader {
        repository: config.models.repository.clone(),
        cache,
        store,
        scheduler: swapping.scheduler,
        stats: swapping.stats,
        announce: swapping.announce,
        changes: swapping.changes,
        seen: Default::default(),
    };
    reloader.remember();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("reload".into())
        .spawn(move || {
            while rx.recv().is_ok() {
                reloader.reload();
            }
        })
        .expect("spawning the reload thread");
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("SIGHUP received: reloading the models whose files changed");
            if tx.send(()).is_err() {
                break;
            }
        }
    });
    Ok(())
}

/// Starts the admin thread (`admin.enabled`); returns its queue.
fn start_admin(
    config: &Config,
    store: Store,
    cache: Option<ModelCache>,
    topics: &Topics,
    outbox: &Arc<Outbox>,
    swapping: Swapping,
) -> Result<mpsc::Sender<AdminRequest>, ServeError> {
    let trusted = config.admin.trusted_keys.iter().map(|path| PublicKey::read(path)).collect::<Result<_, _>>()?;
    let admin = Admin {
        topics: topics.clone(),
        reply_rules: ReplyRules::from_config(config),
        outbox: outbox.clone(),
        scheduler: swapping.scheduler,
        stats: swapping.stats,
        store,
        trusted,
        max_package_bytes: config.admin.max_package_bytes,
        repository: config.models.repository.clone(),
        cache,
        announce: swapping.announce,
        changes: swapping.changes,
    };
    let (tx, rx) = mpsc::channel(crate::admin::QUEUE);
    std::thread::Builder::new().name("admin".into()).spawn(move || admin.run(rx)).expect("spawning the admin thread");
    tracing::info!(filters = ?topics.admin_filters(), keys = config.admin.trusted_keys.len(), "admin operations on");
    Ok(tx)
}

/// What the board publishes, retained, on every connection: its status and each model's metadata.
fn retained_at_connect(topics: &Topics, device: &str, models: &[Arc<Model>]) -> Vec<(String, Vec<u8>)> {
    let mut retained = vec![(topics.status(), status::online(device, models))];
    for model in models {
        let metadata = serde_json::to_vec(model.metadata()).expect("metadata serialises");
        retained.push((topics.metadata(model.name()), metadata));
    }
    retained
}

/// Queues `message()` for the publisher every `interval`, until the publisher is gone.
async fn publish_every(interval: Duration, replies: mpsc::Sender<Command>, message: impl Fn() -> Command) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    loop {
        ticks.tick().await;
        if replies.send(message()).await.is_err() {
            break;
        }
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
fn watchdog(interval: Duration, scheduler: Scheduler<ReplyTo>) {
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
