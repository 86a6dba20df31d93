//! Command-line definitions (clap) and one module per subcommand.

/// `println!` that returns the write error instead of panicking, so that `edgeinfer models | head`
/// ends quietly when the reader goes away (see `main`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)
    }};
}

mod bench;
mod fleet;
mod infer;
mod inspect;
mod keygen;
mod loadgen;
mod models;
mod package;
mod request;
mod serve;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use edgeinfer::config::Config;

/// Serve ONNX models on small boards over MQTT (Open Inference Protocol), through tract.
#[derive(Debug, Parser)]
#[command(name = "edgeinfer", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the daemon: load the models, connect to the broker, answer requests until stopped.
    Serve(serve::ServeArgs),
    /// Print each model's metadata (inputs, outputs) as Open Inference Protocol JSON.
    Models(models::ModelsArgs),
    /// Run one inference locally, without a broker, and print the response.
    Infer(infer::InferArgs),
    /// Send one request to a running daemon over MQTT and print the reply.
    Request(request::RequestArgs),
    /// Show an ONNX file's inputs, outputs and operators, and whether tract can load it.
    Inspect(inspect::InspectArgs),
    /// Benchmark the engine alone: load time, latency percentiles, throughput, peak RSS.
    Bench(bench::BenchArgs),
    /// Load-test a running daemon over MQTT: closed or open loop, latency, throughput, errors by kind.
    Loadgen(loadgen::LoadgenArgs),
    /// Write a key pair for signing model packages.
    Keygen(keygen::KeygenArgs),
    /// Make a signed package of a model directory, for `fleet deploy`.
    #[command(disable_version_flag = true)]
    Package(package::PackageArgs),
    /// Operate boards over MQTT: status, deployments with canaries, rollbacks.
    Fleet(fleet::FleetArgs),
}

/// Where the configuration comes from; flags override the file, the file overrides the defaults.
#[derive(Debug, Args)]
struct ConfigArgs {
    /// TOML config file (see systemd/edgeinfer.toml for every key)
    #[arg(long, short = 'c', env = "EDGEINFER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Broker URL, mqtt://host:port or mqtts://host:port [config: broker.url]
    #[arg(long, value_name = "URL")]
    broker: Option<String>,
    /// This board's id in topics [config: topics.device; default: hostname]
    #[arg(long, value_name = "NAME")]
    device: Option<String>,
}

impl ConfigArgs {
    fn load(&self, models: Option<&PathBuf>) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        if let Some(url) = &self.broker {
            config.broker.url = url.clone();
        }
        if let Some(device) = &self.device {
            config.topics.device = Some(device.clone());
        }
        if let Some(dir) = models {
            config.models.repository = dir.clone();
        }
        Ok(config.finalize()?)
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Models(args) => models::run(args),
        Command::Infer(args) => infer::run(args),
        Command::Request(args) => request::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Loadgen(args) => loadgen::run(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Package(args) => package::run(args),
        Command::Fleet(args) => fleet::run(args),
    }
}

/// The model repository for commands that need nothing else from the config.
fn models_dir(models: Option<PathBuf>, config: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(match (models, config) {
        (Some(dir), _) => dir,
        (None, Some(file)) => Config::from_file(file)?.models.repository,
        (None, None) => Config::default().models.repository,
    })
}

/// The `q` quantile of sorted durations, in milliseconds (0 for no samples).
fn percentile_ms(sorted: &[std::time::Duration], q: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n => sorted[((n as f64 * q) as usize).min(n - 1)].as_secs_f64() * 1e3,
    }
}

/// The Content Type of an image file sent as it is, by its extension: `.png`, `.jpg`/`.jpeg`.
fn image_content_type(path: &std::path::Path) -> Option<&'static str> {
    match path.extension()?.to_string_lossy().to_lowercase().as_str() {
        "png" => Some("image/png"),
        "jpg" | "jpeg" => Some("image/jpeg"),
        _ => None,
    }
}

/// A request payload from an OIP JSON file: as it is, or re-encoded in the binary tensor extension
/// (with its header length).
fn request_payload(json: Vec<u8>, binary: bool) -> anyhow::Result<(Vec<u8>, Option<usize>)> {
    if !binary {
        return Ok((json, None));
    }
    let request = edgeinfer::protocol::decode_request(&json, None).map_err(|f| anyhow::anyhow!(f.error))?;
    let (payload, header_len) = edgeinfer::protocol::request::encode_binary_request(&request);
    Ok((payload, Some(header_len)))
}

/// The request topic for `model` on the configured device, or on the whole fleet.
fn request_topic(config: &Config, model: &str, fleet: bool) -> String {
    let target = if fleet { edgeinfer::mqtt::topics::FLEET } else { config.device() };
    edgeinfer::mqtt::Topics::from_config(config).infer(target, model)
}
