//! The retained device status, following the zigbee2mqtt / Frigate convention: `online` on every
//! connect, `offline` from the broker's Last Will when the daemon vanishes, `stopped` on a clean stop.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::model::Model;

/// The daemon's version, as reported in the status.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Serialize)]
struct Status<'a> {
    state: &'a str,
    version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    models: Option<Vec<&'a str>>,
    /// Each model's version served, by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    versions: Option<BTreeMap<&'a str, &'a str>>,
}

/// `{"state":"online",...}` with the models this board serves and their versions.
pub fn online(device: &str, models: &[Arc<Model>]) -> Vec<u8> {
    encode(Status {
        state: "online",
        version: VERSION,
        device: Some(device),
        models: Some(models.iter().map(|m| m.name()).collect()),
        versions: Some(models.iter().map(|m| (m.name(), m.version())).collect()),
    })
}

/// The Last Will: what the broker publishes if the connection dies without a goodbye.
pub fn offline(device: &str) -> Vec<u8> {
    encode(Status { state: "offline", version: VERSION, device: Some(device), models: None, versions: None })
}

/// Published on a clean shutdown, so that an operator can tell a stop from a crash.
pub fn stopped(device: &str) -> Vec<u8> {
    encode(Status { state: "stopped", version: VERSION, device: Some(device), models: None, versions: None })
}

fn encode(status: Status<'_>) -> Vec<u8> {
    serde_json::to_vec(&status).expect("status serialises")
}
