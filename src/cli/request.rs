//! `edgeinfer request`: a command-line client for a running daemon.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use edgeinfer::client::Requester;
use edgeinfer::protocol::decode_reply;

use super::ConfigArgs;

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Model name
    model: String,
    #[command(flatten)]
    config: ConfigArgs,
    /// OIP JSON request [default: stdin]
    #[arg(long, short = 'i', value_name = "FILE")]
    input: Option<PathBuf>,
    /// Send to the fleet topic (any board of the shared group answers) instead of --device
    #[arg(long)]
    fleet: bool,
    /// Send the inputs as raw bytes (binary tensor extension) and ask for binary outputs
    #[arg(long)]
    binary: bool,
    /// How long to wait for the broker and for the reply
    #[arg(long, value_name = "MS", default_value_t = 10_000)]
    timeout_ms: u64,
}

pub fn run(args: RequestArgs) -> anyhow::Result<()> {
    let config = args.config.load(None)?;
    let json = match &args.input {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("reading the request from stdin")?;
            bytes
        }
    };
    let (payload, header_len) = super::request_payload(json, args.binary)?;
    let topic = super::request_topic(&config, &args.model, args.fleet);
    let timeout = Duration::from_millis(args.timeout_ms);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reply = runtime.block_on(async {
        let requester = Requester::connect(&config, timeout).await?;
        let reply = requester.request(&topic, payload, header_len, timeout).await;
        requester.close().await;
        reply
    })?;
    let shown = decode_reply(&reply.payload, reply.header_len)?;
    match reply.header_len {
        // JSON replies are printed as they came, field order included.
        None => outln!("{}", String::from_utf8_lossy(&reply.payload))?,
        Some(_) => outln!("{}", serde_json::to_string(&shown)?)?,
    }
    if let Some(error) = shown.get("error") {
        anyhow::bail!("the daemon answered with an error: {error}");
    }
    Ok(())
}
