//! Connection options for every MQTT client this crate makes (daemon, `request`, tests), with the
//! rumqttc defaults that hurt fixed: Nagle off, a packet limit sized from the payload limit, TLS.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::MqttOptions;
use rumqttc::{NetworkOptions, TlsConfiguration, Transport};

use crate::config::{BrokerEndpoint, Config, ConfigError};

/// Headroom over the largest payload for the topic, properties and MQTT framing.
const PACKET_OVERHEAD: usize = 64 * 1024;

/// The connection options could not be built: a bad URL, an unreadable or invalid TLS file.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("broker.url: {0}")]
    Url(String),
    #[error("TLS file {path}: {message}")]
    TlsFile { path: PathBuf, message: String },
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// Options for a client of `config`'s broker, identified as `client_id`.
///
/// The incoming packet limit is twice the payload limit, so that a request somewhat over
/// `max_payload_bytes` still arrives and gets a `too_large` reply instead of costing the connection;
/// the broker is told the same limit and drops anything larger before sending it.
pub fn mqtt_options(config: &Config, client_id: &str) -> Result<MqttOptions, SetupError> {
    let endpoint = BrokerEndpoint::parse(&config.broker.url).map_err(SetupError::Url)?;
    let broker = &config.broker;
    let mut options = MqttOptions::new(client_id, endpoint.host.clone(), endpoint.port);
    options.set_keep_alive(Duration::from_secs(broker.keep_alive_secs));
    options.set_clean_start(true);
    options.set_connection_timeout(10);
    let max_payload = config.requests.max_payload_bytes;
    let packet_limit = max_payload.saturating_mul(2).max(max_payload + PACKET_OVERHEAD).min(268_435_455);
    options.set_max_packet_size(Some(packet_limit as u32));
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(10);
    options.set_network_options(network);
    if let Some(user) = &broker.username {
        options.set_credentials(user.clone(), config.broker_password()?.unwrap_or_default());
    }
    if endpoint.tls {
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(tls_config(config)?))));
    }
    Ok(options)
}

fn tls_config(config: &Config) -> Result<rustls::ClientConfig, SetupError> {
    let broker = &config.broker;
    let mut roots = rustls::RootCertStore::empty();
    match &broker.ca_file {
        Some(ca) => {
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| tls_file(ca, e))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            for cert in native.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(SetupError::Tls("no CA certificates in the system trust store; set broker.ca_file".into()));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| SetupError::Tls(e.to_string()))?
        .with_root_certificates(roots);
    match (&broker.client_cert, &broker.client_key) {
        (Some(cert), Some(key_path)) => {
            let chain = read_certs(cert)?;
            let key = rustls_pemfile::private_key(&mut reader(key_path)?)
                .map_err(|e| tls_file(key_path, e))?
                .ok_or_else(|| tls_file(key_path, "no private key found (PEM PKCS#8, PKCS#1 or SEC1)"))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| SetupError::Tls(e.to_string()))
        }
        _ => Ok(builder.with_no_client_auth()),
    }
}

fn reader(path: &Path) -> Result<BufReader<File>, SetupError> {
    File::open(path).map(BufReader::new).map_err(|e| tls_file(path, e))
}

fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, SetupError> {
    let certs =
        rustls_pemfile::certs(&mut reader(path)?).collect::<Result<Vec<_>, _>>().map_err(|e| tls_file(path, e))?;
    if certs.is_empty() {
        return Err(tls_file(path, "no PEM certificate found"));
    }
    Ok(certs)
}

fn tls_file(path: &Path, message: impl ToString) -> SetupError {
    SetupError::TlsFile { path: path.to_path_buf(), message: message.to_string() }
}
