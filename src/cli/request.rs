//! `edgeinfer request`: a command-line client for a running daemon.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use edgeinfer::client::{RequestMeta, Requester};
use edgeinfer::protocol::decode_reply;

use super::ConfigArgs;

#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Model name
    model: String,
    #[command(flatten)]
    config: ConfigArgs,
    /// OIP JSON request, or a .png/.jpg image sent as it is (Content Type image/png, image/jpeg)
    /// [default: stdin, JSON]
    #[arg(long, short = 'i', value_name = "FILE")]
    input: Option<PathBuf>,
    /// Continue this streaming session (models with [session])
    #[arg(long, value_name = "ID")]
    session: Option<String>,
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
    let input = match &args.input {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => {
            let mut bytes = Vec::new();
            std::io::stdin().read_to_end(&mut bytes).context("reading the request from stdin")?;
            bytes
        }
    };
    let image_type = args.input.as_deref().and_then(super::image_content_type);
    let (payload, meta) = match image_type {
        Some(content_type) => {
            let user_properties = args.session.iter().map(|s| ("session".to_string(), s.clone())).collect();
            (input, RequestMeta { content_type: Some(content_type.into()), user_properties, ..Default::default() })
        }
        None => {
            let json = match &args.session {
                Some(session) => with_session(&input, session)?,
                None => input,
            };
            let (payload, header_len) = super::request_payload(json, args.binary)?;
            (payload, RequestMeta { header_len, ..Default::default() })
        }
    };
    let topic = super::request_topic(&config, &args.model, args.fleet);
    let timeout = Duration::from_millis(args.timeout_ms);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let reply = runtime.block_on(async {
        let requester = Requester::connect(&config, timeout).await?;
        let reply = requester.request_with(&topic, payload, meta, timeout).await;
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

/// The JSON request with `parameters.session` set.
fn with_session(json: &[u8], session: &str) -> anyhow::Result<Vec<u8>> {
    let mut request: serde_json::Value = serde_json::from_slice(json).context("the request is not JSON")?;
    let object = request.as_object_mut().context("the request is not a JSON object")?;
    let parameters = object.entry("parameters").or_insert_with(|| serde_json::json!({}));
    parameters.as_object_mut().context("parameters is not a JSON object")?.insert("session".into(), session.into());
    Ok(serde_json::to_vec(&request)?)
}
