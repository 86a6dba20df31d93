//! The topic scheme, in one place so that the daemon, the client and the docs agree.
//!
//! ```text
//! <base>/<device>/models/<model>/infer            requests for this board
//! $share/<group>/<base>/fleet/models/<model>/infer requests for any board of the fleet
//! <base>/<device>/models/<model>/result           replies when the request named no reply topic
//! <base>/<device>/models/<model>                  model metadata (retained)
//! <base>/<device>/status                          online / offline / stopped (retained)
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

    /// The subscriptions that bring requests to this board.
    pub fn request_filters(&self) -> Vec<String> {
        let mut filters = vec![format!("{}/{}/models/+/infer", self.base, self.device)];
        if let Some(group) = &self.fleet_group {
            filters.push(format!("$share/{group}/{}/{FLEET}/models/+/infer", self.base));
        }
        filters
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

/// Whether a client-chosen reply topic is one we may publish to: a concrete topic, not a
/// wildcard filter, not a `$` system topic.
pub fn is_valid_reply_topic(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= 65_535 && !topic.starts_with('$') && !topic.contains(['+', '#', '\0'])
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
    fn reply_topics_must_be_concrete() {
        assert!(is_valid_reply_topic("clients/42/reply"));
        for bad in ["", "a/+/b", "a/#", "$SYS/x"] {
            assert!(!is_valid_reply_topic(bad), "{bad}");
        }
    }
}
