//! MQTT transport: options, the topic scheme, the event loop and the publisher.

pub mod connection;
pub mod options;
pub mod publisher;
pub mod redelivery;
pub mod reply;
pub mod status;
pub mod topics;

pub use topics::Topics;
