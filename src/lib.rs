//! edgeinfer: ONNX models on small boards, answered over MQTT.
//!
//! The modules follow the data path of a request:
//!
//! - [`mqtt`]: the broker connection (event loop, topics, status, publishing);
//! - [`protocol`]: Open Inference Protocol decode/encode, JSON and binary;
//! - [`dispatch`]: a message becomes a checked job or an immediate error reply;
//! - [`scheduler`]: bounded per-model queues and inference threads;
//! - [`model`]: ONNX -> tract plan, pre/post-processing and sessions, the model repository, `inspect`;
//!
//! beside them [`admin`], operating the board over MQTT (deployments of [`package`]s, version
//! switches, health) and [`fleet`], its operator's side; with [`daemon`] wiring them together,
//! [`config`] for the settings, [`stats`] for the request counts operators read (and [`metrics`],
//! the same for Prometheus), [`systemd`] for the service manager and [`client`] for callers.

pub mod admin;
pub mod client;
pub mod config;
pub mod daemon;
pub(crate) mod dispatch;
pub mod fleet;
pub(crate) mod metrics;
pub mod model;
pub mod mqtt;
pub mod package;
mod panics;
pub mod protocol;
pub mod report;
pub(crate) mod scheduler;
pub(crate) mod stats;
pub(crate) mod systemd;
pub mod tensors;
mod untrusted;
