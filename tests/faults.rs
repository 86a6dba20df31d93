//! Faults with real processes: the daemon restarted, frozen past its keep-alive, the broker killed
//! with `kill -9`, a fleet member killed under load. With the daemon's persistent session (the
//! default `broker.session_expiry_secs = 600`) the broker keeps the QoS 1 requests meanwhile and
//! every one gets its reply once the daemon is back.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use serde_json::Value;

fn correlation(publish: &Publish) -> String {
    let data = publish.properties.as_ref().and_then(|p| p.correlation_data.clone()).expect("correlation data");
    String::from_utf8(data.to_vec()).unwrap()
}

/// Publishes `count` digits requests (QoS 1) to `topic`, correlation ids `<tag>-<n>`.
async fn send(client: &V5Client, topic: &str, tag: &str, count: usize) {
    let golden = digits_golden();
    for n in 0..count {
        let id = format!("{tag}-{n}");
        let props = PublishProperties {
            response_topic: Some("faults/replies".into()),
            correlation_data: Some(Bytes::from(id.clone())),
            ..Default::default()
        };
        client.publish(topic, digits_request(&id, &golden.inputs[n % golden.inputs.len()]), props).await;
    }
}

/// Collects replies until `count` distinct requests are answered; every reply must be a result,
/// and none may come twice.
async fn collect(client: &mut V5Client, count: usize) -> HashMap<String, Value> {
    let mut replies = HashMap::new();
    while replies.len() < count {
        let publish = client.next().await;
        let reply: Value = serde_json::from_slice(&publish.payload).unwrap();
        assert!(reply["outputs"].is_array(), "{reply}");
        let id = correlation(&publish);
        assert!(replies.insert(id.clone(), reply).is_none(), "{id} answered twice");
    }
    replies
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_sent_while_the_daemon_restarts_are_answered_when_it_is_back() {
    let broker = Broker::start();
    let mut daemon = Daemon::start(&broker, &digits_repository(), "");
    let mut client = V5Client::connect(&broker, &["faults/replies"]).await;
    assert!(daemon.terminate().success());
    send(&client, &daemon.infer_topic("digits"), "restart", 10).await;
    daemon.relaunch();
    let replies = collect(&mut client, 10).await;
    assert_eq!(replies.len(), 10);
    assert!(daemon.log().contains("session_present=true"), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_frozen_past_its_keep_alive_recovers_by_itself_and_loses_nothing() {
    let broker = Broker::start();
    // Keep-alive 5 s: the broker gives up on a silent client after 7.5 s.
    let daemon = Daemon::spawn_with_broker_section(&broker.url(), &digits_repository(), "keep_alive_secs = 5", "");
    daemon.wait_online(&broker);
    let mut client = V5Client::connect(&broker, &["faults/replies"]).await;
    daemon.signal("STOP");
    let frozen = Instant::now();
    send(&client, &daemon.infer_topic("digits"), "frozen", 20).await;
    // Mosquitto checks keep-alives every few seconds: 15 s is well past 7.5 s.
    tokio::time::sleep(Duration::from_secs(15)).await;
    daemon.signal("CONT");
    let replies = collect(&mut client, 20).await;
    eprintln!(
        "20 requests sent to a daemon frozen for 15 s: all answered {:?} after the freeze began",
        frozen.elapsed()
    );
    assert_eq!(replies.len(), 20);
    let log = daemon.log();
    assert!(broker.log().contains("exceeded timeout"), "the broker dropped the frozen connection:\n{}", broker.log());
    assert_eq!(log.matches("connected to broker link=device").count(), 2, "reconnected by itself:\n{log}");
    assert!(daemon.log().contains("session_present=true"), "{}", daemon.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_hard_with_persistence_still_delivers_every_saved_request() {
    let mut broker = Broker::start_persistent();
    let daemon = Daemon::start(&broker, &digits_repository(), "");
    // Frozen, the daemon reads nothing: the requests wait in the broker.
    daemon.signal("STOP");
    let client = V5Client::connect(&broker, &[]).await;
    send(&client, &daemon.infer_topic("digits"), "saved", 20).await;
    // autosave_interval is 1 s: after 2.5 s the broker has written them to disk.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    broker.kill();
    broker.relaunch();
    let mut client = V5Client::connect(&broker, &["faults/replies"]).await;
    let back = Instant::now();
    daemon.signal("CONT");
    wait_until("the daemon is back", || daemon.log().matches("connected to broker link=device").count() == 2);
    let replies = tokio::time::timeout(Duration::from_secs(15), collect(&mut client, 20))
        .await
        .unwrap_or_else(|_| panic!("daemon:\n{}\nbroker:\n{}", daemon.log(), broker.log()));
    eprintln!("broker kill -9 with 20 saved requests: all answered {:?} after the daemon resumed", back.elapsed());
    assert_eq!(replies.len(), 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_cleanly_loses_nothing_and_one_killed_at_once_loses_what_it_had_not_saved() {
    let mut broker = Broker::start_persistent();
    let daemon = Daemon::start(&broker, &digits_repository(), "");
    daemon.signal("STOP");
    let client = V5Client::connect(&broker, &[]).await;
    send(&client, &daemon.infer_topic("digits"), "clean", 20).await;
    // SIGTERM: Mosquitto saves its state before it exits.
    broker.stop();
    broker.relaunch();
    let mut client = V5Client::connect(&broker, &["faults/replies"]).await;
    daemon.signal("CONT");
    // Seen once to time out on a machine at load 10 (it passed alone and in 3 reruns): wait for
    // the reconnection first, and let the logs say which side held the requests if it happens again.
    wait_until("the daemon is back", || daemon.log().matches("connected to broker link=device").count() == 2);
    let replies = tokio::time::timeout(Duration::from_secs(15), collect(&mut client, 20))
        .await
        .unwrap_or_else(|_| panic!("daemon:\n{}\nbroker:\n{}", daemon.log(), broker.log()));
    assert_eq!(replies.len(), 20);

    // kill -9 right after the requests were acknowledged to their sender: the broker may not have
    // saved them yet (autosave_interval 1 s). What it had not saved is lost; the figure is printed.
    daemon.signal("STOP");
    send(&client, &daemon.infer_topic("digits"), "unsaved", 20).await;
    broker.kill();
    broker.relaunch();
    let mut client = V5Client::connect(&broker, &["faults/replies"]).await;
    daemon.signal("CONT");
    let mut answered = 0;
    while tokio::time::timeout(Duration::from_secs(3), client.next()).await.is_ok() {
        answered += 1;
    }
    eprintln!("broker kill -9 at once after 20 acknowledged requests: {answered} of 20 answered after the restart");
    assert!(answered <= 20, "none answered twice");
}

/// Sends `total` fleet requests, one every 5 ms, killing `victim` after a quarter of them; returns
/// the ids answered within three seconds of the last one.
async fn fleet_load(client: &mut V5Client, victim: &mut Daemon, total: usize) -> HashMap<String, ()> {
    let golden = digits_golden();
    for n in 0..total {
        if n == total / 4 {
            victim.kill();
        }
        let id = format!("fleet-{n}");
        let props = PublishProperties {
            response_topic: Some("faults/replies".into()),
            correlation_data: Some(Bytes::from(id.clone())),
            ..Default::default()
        };
        let request = digits_request(&id, &golden.inputs[n % golden.inputs.len()]);
        client.publish("edgeinfer/fleet/models/digits/infer", request, props).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut answered = HashMap::new();
    while let Ok(publish) = tokio::time::timeout(Duration::from_secs(3), client.next()).await {
        answered.insert(correlation(&publish), ());
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_member_killed_under_load_strands_at_most_its_fleet_receive_maximum() {
    let broker = Broker::start_with("max_queued_messages 0\n");
    let models = digits_repository();
    let _a = Daemon::start_with_topics(&broker, &models, "fleet_receive_maximum = 4", "");
    let mut b = Daemon::start_with_topics(&broker, &models, "fleet_receive_maximum = 4", "");
    let mut client = V5Client::connect(&broker, &["faults/replies"]).await;
    let total = 200;
    let answered = fleet_load(&mut client, &mut b, total).await;
    let lost = total - answered.len();
    eprintln!(
        "fleet of 2 (fleet connections clean, 4 in flight each), one SIGKILLed at request 50: {lost} of {total} lost"
    );
    assert!(lost <= 4, "{lost} lost: more than the killed board's fleet_receive_maximum");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_single_persistent_connection_a_dead_member_would_keep_its_share_of_the_fleet() {
    // The measurement behind the separate fleet connection: a board whose one connection holds a
    // persistent session and the shared subscription keeps being handed its share by Mosquitto
    // 2.0 while it is dead; those requests wait for it to come back. Here the daemon's own split
    // is turned off by giving the fleet subscription to a persistent client of the test's.
    let broker = Broker::start_with("max_queued_messages 0\n");
    let models = digits_repository();
    let _a = Daemon::start(&broker, &models, "");
    let mut options = rumqttc::v5::MqttOptions::new("test-persistent-member", "127.0.0.1", broker.port);
    options.set_clean_start(false);
    options.set_session_expiry_interval(Some(600));
    let (member, mut eventloop) = rumqttc::v5::AsyncClient::new(options, 16);
    let member_task = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    member
        .subscribe("$share/edgeinfer/edgeinfer/fleet/models/+/infer", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    member_task.abort();
    let _ = member_task.await;
    let mut client = V5Client::connect(&broker, &["faults/replies"]).await;
    let mut nobody = Daemon::spawn(&broker.url(), &models, "");
    nobody.kill();
    let total = 200;
    let answered = fleet_load(&mut client, &mut nobody, total).await;
    let held = total - answered.len();
    eprintln!("a dead persistent member of the shared subscription was handed {held} of {total} fleet requests");
    assert!(
        held > total / 4,
        "Mosquitto no longer hands a dead persistent member its share ({held}): revisit the split"
    );
}
