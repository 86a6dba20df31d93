//! Recognising the broker's redelivery of a QoS 1 request the daemon already has.
//!
//! QoS 1 is at-least-once: when a connection dies before the broker has the daemon's PUBACK, the
//! broker delivers the request again (DUP flag set) on the next connection of the same session.
//! Computed again, it would be answered twice, and the first reply may still reach the client
//! (rumqttc resends unacknowledged replies after a reconnect). So the requests accepted recently
//! are remembered by packet id and content, and a redelivery of one of them is only acknowledged.

use std::collections::hash_map::DefaultHasher;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;

use rumqttc::v5::mqttbytes::v5::Publish;

/// How many accepted requests are remembered: several times the Receive Maximum, the most the
/// broker can have unacknowledged with the daemon at once.
const REMEMBERED: usize = 256;

/// A request's identity for redelivery: its packet id and a digest of what it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pkid: u16,
    digest: u64,
}

impl Delivery {
    pub fn of(publish: &Publish) -> Delivery {
        let mut hasher = DefaultHasher::new();
        publish.topic.hash(&mut hasher);
        publish.payload.hash(&mut hasher);
        if let Some(props) = &publish.properties {
            props.correlation_data.hash(&mut hasher);
            props.response_topic.hash(&mut hasher);
        }
        Delivery { pkid: publish.pkid, digest: hasher.finish() }
    }
}

/// What the daemon already did with a redelivered request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Accepted, its reply not yet sent: that reply's acknowledgement will cover it.
    InProgress,
    /// Answered: only the acknowledgement is missing.
    Answered,
}

/// The requests accepted recently, oldest first.
#[derive(Debug, Default)]
pub struct Recent {
    entries: Mutex<VecDeque<(Delivery, bool)>>,
}

impl Recent {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(Delivery, bool)>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request was accepted (queued for a worker or refused with a reply).
    pub fn accepted(&self, delivery: Delivery) {
        let mut entries = self.lock();
        if entries.len() == REMEMBERED {
            entries.pop_front();
        }
        entries.push_back((delivery, false));
    }

    /// Its reply and acknowledgement were handed to the MQTT client.
    pub fn answered(&self, delivery: Delivery) {
        if let Some(entry) = self.lock().iter_mut().rev().find(|(d, _)| *d == delivery) {
            entry.1 = true;
        }
    }

    /// Whether a redelivered request (DUP) is one the daemon already has.
    pub fn seen(&self, delivery: Delivery) -> Option<Seen> {
        let entries = self.lock();
        let (_, answered) = entries.iter().rev().find(|(d, _)| *d == delivery)?;
        Some(if *answered { Seen::Answered } else { Seen::InProgress })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::v5::mqttbytes::QoS;

    fn publish(pkid: u16, payload: &'static str) -> Publish {
        let mut p = Publish::new("edgeinfer/pi/models/digits/infer", QoS::AtLeastOnce, payload, None);
        p.pkid = pkid;
        p
    }

    #[test]
    fn a_redelivery_is_known_by_packet_id_and_content() {
        let recent = Recent::default();
        let first = Delivery::of(&publish(7, "a"));
        recent.accepted(first);
        assert_eq!(recent.seen(Delivery::of(&publish(7, "a"))), Some(Seen::InProgress));
        recent.answered(first);
        assert_eq!(recent.seen(Delivery::of(&publish(7, "a"))), Some(Seen::Answered));
        assert_eq!(recent.seen(Delivery::of(&publish(7, "b"))), None, "the packet id reused for another request");
        assert_eq!(recent.seen(Delivery::of(&publish(8, "a"))), None);
    }

    #[test]
    fn memory_is_bounded() {
        let recent = Recent::default();
        for pkid in 0..(REMEMBERED as u16 + 10) {
            recent.accepted(Delivery::of(&publish(pkid, "x")));
        }
        assert_eq!(recent.lock().len(), REMEMBERED);
        assert_eq!(recent.seen(Delivery::of(&publish(0, "x"))), None, "the oldest is forgotten");
    }
}
