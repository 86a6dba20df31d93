//! MQTT transport: options, the topic scheme, the event loop and the publisher.

pub(crate) mod connection;
pub(crate) mod homeassistant;
pub(crate) mod options;
pub(crate) mod publisher;
pub(crate) mod redelivery;
pub(crate) mod reply;
pub(crate) mod status;
pub mod topics;

pub use topics::Topics;
