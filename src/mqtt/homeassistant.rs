//! Home Assistant MQTT discovery (`metrics.homeassistant`): retained configs under
//! `homeassistant/sensor/<device>_<model>/config` that make each model's answered and refused
//! requests, and the board's status, appear as sensors of one device, read from the topics the
//! board publishes anyway (stats and status). Home Assistant computes rates from the totals.

use std::sync::Arc;

use serde_json::json;

use super::status::VERSION;
use super::Topics;
use crate::model::Model;

/// Home Assistant's discovery prefix (its default).
const PREFIX: &str = "homeassistant";

/// A topic level and id Home Assistant accepts: letters, digits, `_` and `-`.
fn object_id(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// The discovery config topics of one model's sensors (answered, errors), in that order.
pub fn model_configs(device: &str, model: &str) -> [String; 2] {
    let (id, model_id) = (object_id(device), object_id(model));
    ["answered", "errors"].map(|what| format!("{PREFIX}/sensor/{id}_{model_id}_{what}/config"))
}

/// The retained discovery configs for this board and its models.
pub fn discovery(topics: &Topics, device: &str, models: &[Arc<Model>]) -> Vec<(String, Vec<u8>)> {
    let id = object_id(device);
    let board = json!({
        "identifiers": [format!("edgeinfer_{id}")],
        "name": format!("edgeinfer {device}"),
        "manufacturer": "edgeinfer",
        "sw_version": VERSION,
    });
    let availability = json!({
        "topic": topics.status(),
        "value_template": "{{ 'online' if value_json.state == 'online' else 'offline' }}",
    });
    let mut configs = vec![(
        format!("{PREFIX}/sensor/{id}_status/config"),
        json!({
            "name": "status",
            "unique_id": format!("edgeinfer_{id}_status"),
            "state_topic": topics.status(),
            "value_template": "{{ value_json.state }}",
            "device": board,
        }),
    )];
    for model in models {
        let model_id = object_id(model.name());
        // Names are quoted for Jinja; model names hold no quotes (repository::is_valid_model_name).
        for ((what, template), topic) in [
            ("answered", format!("{{{{ value_json.models['{}'].answered }}}}", model.name())),
            ("errors", format!("{{{{ value_json.models['{}'].errors.values() | sum }}}}", model.name())),
        ]
        .into_iter()
        .zip(model_configs(device, model.name()))
        {
            configs.push((
                topic,
                json!({
                    "name": format!("{} {what}", model.name()),
                    "unique_id": format!("edgeinfer_{id}_{model_id}_{what}"),
                    "state_topic": topics.stats(),
                    "value_template": template,
                    "state_class": "total_increasing",
                    "unit_of_measurement": "requests",
                    "availability": [availability],
                    "device": board,
                }),
            ));
        }
    }
    configs.into_iter().map(|(topic, config)| (topic, serde_json::to_vec(&config).expect("JSON serialises"))).collect()
}
