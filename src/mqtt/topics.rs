//! The topic scheme, in one place so that the daemon, the client and the docs agree.
//!
//! ```text
//! <base>/<device>/models/<model>/infer            requests for this board
//! $share/<group>/<base>/fleet/models/<model>/infer requests for any board of the fleet
//! <base>/<device>/models/<model>/result           replies when the request named no reply topic
//! <base>/<device>/models/<model>                  model metadata (retained)
//! <base>/<device>/status                          online / offline / stopped (retained)
//! <base>/<device>/admin/<op>                      operations for this board (admin.enabled)
//! <base>/fleet/admin/<op>                         operations for every board (not shared)
//! ```

use crate::config::Config;

/// Topic names for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    base: String,
    device: String,
    fleet_group: Option<String>,
}

/// The level that stands for the whole fleet in place of a device id.
pub const FLEET: &str = "fleet";

impl Topics {
    pub fn new(base: &str, device: &str, fleet_group: Option<&str>) -> Topics {
        Topics {
            base: base.to_string(),
            device: device.to_string(),
            fleet_group: fleet_group.filter(|g| !g.is_empty()).map(str::to_string),
        }
    }

    pub fn from_config(config: &Config) -> Topics {
        Topics::new(&config.topics.base, config.device(), Some(&config.topics.fleet_group))
    }

    /// This board's id.
    pub fn device(&self) -> &str {
        &self.device
    }

    /// The subscriptions that bring requests to this board.
    pub fn request_filters(&self) -> Vec<String> {
        std::iter::once(self.device_filter()).chain(self.fleet_filter()).collect()
    }

    /// The subscription to this board's own requests.
    pub fn device_filter(&self) -> String {
        format!("{}/{}/models/+/infer", self.base, self.device)
    }

    /// The shared subscription to the fleet's requests, when the board is in a fleet group.
    pub fn fleet_filter(&self) -> Option<String> {
        let group = self.fleet_group.as_ref()?;
        Some(format!("$share/{group}/{}/{FLEET}/models/+/infer", self.base))
    }

    /// Where a request for `model` on `device` (or [`FLEET`]) is published.
    pub fn infer(&self, device: &str, model: &str) -> String {
        format!("{}/{device}/models/{model}/infer", self.base)
    }

    pub fn result(&self, model: &str) -> String {
        format!("{}/{}/models/{model}/result", self.base, self.device)
    }

    pub fn metadata(&self, model: &str) -> String {
        format!("{}/{}/models/{model}", self.base, self.device)
    }

    pub fn stats(&self) -> String {
        format!("{}/{}/stats", self.base, self.device)
    }

    pub fn status(&self) -> String {
        format!("{}/{}/status", self.base, self.device)
    }

    /// The subscriptions to admin operations: this board's and the whole fleet's (every board
    /// gets those, so not a shared subscription).
    pub fn admin_filters(&self) -> Vec<String> {
        vec![format!("{}/{}/admin/+", self.base, self.device), format!("{}/{FLEET}/admin/+", self.base)]
    }

    /// Where an admin operation for `device` (or [`FLEET`]) is published.
    pub fn admin(&self, device: &str, op: &str) -> String {
        format!("{}/{device}/admin/{op}", self.base)
    }

    /// Every board's retained status (the fleet CLI reads them).
    pub fn all_status(&self) -> String {
        format!("{}/+/status", self.base)
    }

    /// Every board's retained stats.
    pub fn all_stats(&self) -> String {
        format!("{}/+/stats", self.base)
    }

    /// Where an admin reply goes when the request named no Response Topic.
    pub fn admin_response(&self, op: &str) -> String {
        format!("{}/{}/admin/response/{op}", self.base, self.device)
    }

    /// The admin operation named by an incoming topic, if the topic is one of ours.
    pub fn admin_op_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic.strip_prefix(self.base.as_str())?.strip_prefix('/')?;
        let (target, rest) = rest.split_once('/')?;
        if target != self.device && target != FLEET {
            return None;
        }
        let op = rest.strip_prefix("admin/")?;
        (!op.is_empty() && !op.contains('/')).then_some(op)
    }

    /// The model named by an incoming request topic, if the topic is one of ours.
    pub fn model_of<'t>(&self, topic: &'t str) -> Option<&'t str> {
        let rest = topic.strip_prefix(self.base.as_str())?.strip_prefix('/')?;
        let (target, rest) = rest.split_once('/')?;
        if target != self.device && target != FLEET {
            return None;
        }
        let model = rest.strip_prefix("models/")?.strip_suffix("/infer")?;
        (!model.is_empty() && !model.contains('/')).then_some(model)
    }
}

/// The longest topic MQTT can carry (a two-byte length).
pub const MAX_TOPIC_BYTES: usize = 65_535;

/// Where the daemon agrees to publish a reply a client asked for: the README's "Security"
/// section states these rules. A reply topic is a concrete topic (no wildcard), not a `$` system
/// topic, valid MQTT UTF-8 (no control characters or noncharacters, which Mosquitto answers by
/// closing the connection), and not under the daemon's own `<base>/` unless it starts with one
/// of `topics.allowed_reply_prefixes`: otherwise a client could make a board publish onto its own
/// status or another board's request topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyRules {
    /// `<base>/`.
    base: String,
    /// Full prefixes under `<base>/` that replies may use.
    allowed: Vec<String>,
}

/// Why a reply topic is refused. The message goes back to the client (on the result topic).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyTopicError {
    #[error("is empty")]
    Empty,
    #[error("is {0} bytes; MQTT topics are at most {MAX_TOPIC_BYTES}")]
    TooLong(usize),
    #[error("contains {} at byte {at}, which MQTT forbids in a topic", describe_char(*.ch))]
    Character { at: usize, ch: char },
    #[error("contains a wildcard (+ or #); a reply needs a concrete topic")]
    Wildcard,
    #[error("starts with $, which is reserved for the broker's own topics")]
    System,
    #[error(
        "is under \"{base}\", this daemon's own topics; use a topic outside it, or one under a prefix \
         listed in topics.allowed_reply_prefixes ({allowed:?})"
    )]
    OwnTopic { base: String, allowed: Vec<String> },
}

fn describe_char(ch: char) -> String {
    let kind = if ch.is_control() { "a control character" } else { "a noncharacter" };
    format!("U+{:04X} ({kind})", ch as u32)
}

/// Characters MQTT 5 (1.5.4) forbids or that Mosquitto refuses in UTF-8 strings: U+0000, the C0
/// and C1 controls, and the Unicode noncharacters.
fn is_forbidden_in_topic(ch: char) -> bool {
    let c = ch as u32;
    ch.is_control() || (0xFDD0..=0xFDEF).contains(&c) || (c & 0xFFFE) == 0xFFFE
}

/// Checks a topic the daemon itself builds from request data (the result topic carries the
/// model name from the request topic): valid MQTT, within length.
pub fn check_topic_syntax(topic: &str) -> Result<(), ReplyTopicError> {
    if topic.is_empty() {
        return Err(ReplyTopicError::Empty);
    }
    if topic.len() > MAX_TOPIC_BYTES {
        return Err(ReplyTopicError::TooLong(topic.len()));
    }
    if let Some((at, ch)) = topic.char_indices().find(|&(_, ch)| is_forbidden_in_topic(ch)) {
        return Err(ReplyTopicError::Character { at, ch });
    }
    Ok(())
}

impl ReplyRules {
    /// `allowed` are prefixes relative to `<base>/` (`"clients/"` allows `<base>/clients/...`).
    pub fn new(base: &str, allowed: &[String]) -> ReplyRules {
        ReplyRules { base: format!("{base}/"), allowed: allowed.iter().map(|p| format!("{base}/{p}")).collect() }
    }

    pub fn from_config(config: &Config) -> ReplyRules {
        ReplyRules::new(&config.topics.base, &config.topics.allowed_reply_prefixes)
    }

    /// Whether the daemon may publish a reply to `topic`, a topic chosen by a client.
    pub fn check(&self, topic: &str) -> Result<(), ReplyTopicError> {
        check_topic_syntax(topic)?;
        if topic.contains(['+', '#']) {
            return Err(ReplyTopicError::Wildcard);
        }
        if topic.starts_with('$') {
            return Err(ReplyTopicError::System);
        }
        if topic.starts_with(&self.base) && !self.allowed.iter().any(|p| topic.starts_with(p.as_str())) {
            return Err(ReplyTopicError::OwnTopic { base: self.base.clone(), allowed: self.allowed.clone() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_topics_follow_the_scheme() {
        let t = Topics::new("edgeinfer", "pi4", Some("g1"));
        assert_eq!(t.request_filters(), ["edgeinfer/pi4/models/+/infer", "$share/g1/edgeinfer/fleet/models/+/infer"]);
        assert_eq!(t.status(), "edgeinfer/pi4/status");
        assert_eq!(t.metadata("digits"), "edgeinfer/pi4/models/digits");
        assert_eq!(t.result("digits"), "edgeinfer/pi4/models/digits/result");
        assert_eq!(Topics::new("e", "d", Some("")).request_filters().len(), 1);
    }

    #[test]
    fn model_names_come_only_from_our_request_topics() {
        let t = Topics::new("edgeinfer", "pi4", Some("g1"));
        assert_eq!(t.model_of("edgeinfer/pi4/models/digits/infer"), Some("digits"));
        assert_eq!(t.model_of("edgeinfer/fleet/models/digits/infer"), Some("digits"));
        assert_eq!(t.model_of("edgeinfer/other/models/digits/infer"), None);
        assert_eq!(t.model_of("edgeinfer/pi4/models/digits/result"), None);
        assert_eq!(t.model_of("edgeinfer/pi4/models//infer"), None);
        assert_eq!(t.model_of("edgeinferx/pi4/models/a/infer"), None);
    }

    #[test]
    fn reply_topics_must_be_concrete_valid_mqtt_and_outside_our_own() {
        let rules = ReplyRules::new("edgeinfer", &["clients/".to_string()]);
        for good in ["clients/42/reply", "edgeinfer/clients/7/reply", "x", "caf\u{e9}/\u{1F600}", "edgeinferx/a"] {
            assert_eq!(rules.check(good), Ok(()), "{good}");
        }
        let long = "a".repeat(MAX_TOPIC_BYTES + 1);
        for (bad, want) in [
            ("", ReplyTopicError::Empty),
            ("a/+/b", ReplyTopicError::Wildcard),
            ("a/#", ReplyTopicError::Wildcard),
            ("$SYS/x", ReplyTopicError::System),
            ("x/\u{1}", ReplyTopicError::Character { at: 2, ch: '\u{1}' }),
            ("\u{7f}", ReplyTopicError::Character { at: 0, ch: '\u{7f}' }),
            ("\u{85}", ReplyTopicError::Character { at: 0, ch: '\u{85}' }),
            ("a\u{0}", ReplyTopicError::Character { at: 1, ch: '\u{0}' }),
            ("\u{fffe}", ReplyTopicError::Character { at: 0, ch: '\u{fffe}' }),
            ("\u{10ffff}", ReplyTopicError::Character { at: 0, ch: '\u{10ffff}' }),
            ("\u{fdd0}", ReplyTopicError::Character { at: 0, ch: '\u{fdd0}' }),
            (long.as_str(), ReplyTopicError::TooLong(MAX_TOPIC_BYTES + 1)),
        ] {
            assert_eq!(rules.check(bad), Err(want), "{:?}", &bad[..bad.len().min(20)]);
        }
        for own in ["edgeinfer/pi4/status", "edgeinfer/other/models/digits/infer", "edgeinfer/fleet/models/a/infer"] {
            assert!(matches!(rules.check(own), Err(ReplyTopicError::OwnTopic { .. })), "{own}");
        }
        assert!(rules.check(&"a".repeat(MAX_TOPIC_BYTES)).is_ok());
        let message = rules.check("x/\u{1}").unwrap_err().to_string();
        assert!(message.contains("U+0001 (a control character) at byte 2"), "{message}");
    }
}
