//! The daemon's connections to the broker: the board's own link, and with a persistent session a
//! second, clean link for the fleet's shared subscription.
//!
//! Mosquitto keeps handing an offline persistent member its share of a shared subscription, so a
//! dead board would hold fleet requests until it came back (tests/faults.rs measures both): the
//! board's own topics keep the persistent session, the fleet's `$share` filter does not.

use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{LastWill, Publish};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, EventLoop};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::mqtt::connection::{Connection, Incoming, OnConnect, Retained};
use crate::mqtt::options::{mqtt_options, SetupError};
use crate::mqtt::reply::ReplyLimits;
use crate::mqtt::{status, Topics};

/// The Receive Maximum the broker is given: it sends at most this many QoS 1 requests that the
/// daemon has not acknowledged, so at most this many wait between the connection and the
/// dispatcher (each may be as large as the packet limit).
const RECEIVE_MAXIMUM: u16 = 16;
/// rumqttc's own request channel.
const CLIENT_CAPACITY: usize = 1024;

/// What every MQTT connection of the daemon shares: where requests go, the limits, the backoff.
pub(super) struct Links {
    pub requests: mpsc::UnboundedSender<Incoming>,
    pub qos0_waiting: Arc<AtomicUsize>,
    pub qos0_limit: usize,
    pub on_overload: Arc<dyn Fn(&Publish) + Send + Sync>,
    pub reply_limits: Arc<ReplyLimits>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub broker: String,
}

/// The running connections.
pub(super) struct Broker {
    /// The board's own link: replies, status and stats go out on it.
    pub client: AsyncClient,
    connection: JoinHandle<()>,
    device_filters: Vec<String>,
    fleet: Option<Fleet>,
    persistent_session: bool,
}

struct Fleet {
    client: AsyncClient,
    task: JoinHandle<()>,
    filter: String,
}

impl Broker {
    /// Starts the links; each subscribes (and the board's publishes `retained`) on every CONNACK,
    /// and `connected` follows the board's link. The board's link also subscribes to `admin`.
    pub fn connect(
        config: &Config,
        topics: &Topics,
        links: &Links,
        retained: Retained,
        admin: Vec<String>,
        connected: watch::Sender<bool>,
    ) -> Result<Broker, SetupError> {
        let device = config.device();
        let mut options = mqtt_options(config, &config.client_id())?;
        // MQTT's own flow control: the broker sends at most this many unacknowledged QoS 1 requests.
        options.set_manual_acks(true);
        options.set_receive_maximum(Some(RECEIVE_MAXIMUM));
        let persistent_session = config.broker.session_expiry_secs > 0;
        if persistent_session {
            options.set_clean_start(false);
            options.set_session_expiry_interval(Some(config.broker.session_expiry_secs));
        }
        options.set_last_will(LastWill::new(topics.status(), status::offline(device), QoS::AtLeastOnce, true, None));
        let (client, eventloop) = AsyncClient::new(options, CLIENT_CAPACITY);

        let fleet_filter = topics.fleet_filter().filter(|_| persistent_session);
        let device_filters = match fleet_filter {
            Some(_) => vec![topics.device_filter()],
            None => topics.request_filters(),
        };
        let filters = device_filters.iter().cloned().chain(admin).collect();
        let connection = tokio::spawn(links.connection("device", eventloop, &client, filters, retained, connected));
        let fleet = match fleet_filter {
            Some(filter) => {
                let mut options = mqtt_options(config, &format!("{}-fleet", config.client_id()))?;
                options.set_manual_acks(true);
                options.set_receive_maximum(Some(config.topics.fleet_receive_maximum));
                let (fleet_client, eventloop) = AsyncClient::new(options, CLIENT_CAPACITY);
                let filters = vec![filter.clone()];
                let task = tokio::spawn(links.connection(
                    "fleet",
                    eventloop,
                    &fleet_client,
                    filters,
                    Arc::new(Vec::new),
                    watch::channel(false).0,
                ));
                Some(Fleet { client: fleet_client, task, filter })
            }
            None => None,
        };
        Ok(Broker { client, connection, device_filters, fleet, persistent_session })
    }

    /// Whether the broker keeps the board's session (and what comes in for it) across restarts.
    pub fn persistent_session(&self) -> bool {
        self.persistent_session
    }

    /// Unsubscribes from what the daemon should no longer be sent while it stops. With a
    /// persistent session the board's own subscription stays, so the broker keeps what comes in
    /// while the daemon restarts; the fleet's requests go to the other boards meanwhile.
    pub fn stop_taking_requests(&self) {
        match &self.fleet {
            Some(fleet) => {
                let _ = fleet.client.try_unsubscribe(fleet.filter.clone());
            }
            None if !self.persistent_session => {
                for filter in &self.device_filters {
                    let _ = self.client.try_unsubscribe(filter.clone());
                }
            }
            None => {}
        }
    }

    /// Closes the fleet link and waits for the board's link to end (the publisher sends its
    /// DISCONNECT).
    pub async fn closed(self) {
        if let Some(fleet) = self.fleet {
            let _ = fleet.client.disconnect().await;
            let _ = fleet.task.await;
        }
        let _ = self.connection.await;
    }
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
        retained: Retained,
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
