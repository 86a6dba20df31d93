//! `edgeinfer fleet`: the boards' status, and deployments with a canary and rollback.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Subcommand};
use edgeinfer::fleet::{boards, Board, Operator};
use edgeinfer::package;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Value};

use super::ConfigArgs;

#[derive(Debug, Args)]
pub struct FleetArgs {
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Debug, Subcommand)]
enum FleetCommand {
    /// Every board's retained status: state, models and versions, request counts.
    Status(StatusArgs),
    /// Send a package to boards: the canaries first, the rest once they are healthy; a board
    /// whose new version fails its health check is rolled back.
    Deploy(DeployArgs),
    /// Switch a model back to the version it served before, on the boards given.
    Rollback(RollbackArgs),
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// How long to collect retained messages
    #[arg(long, value_name = "MS", default_value_t = 1_000)]
    wait_ms: u64,
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

/// Which boards an operation goes to.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct Targets {
    /// These boards (device ids, comma-separated)
    #[arg(long, value_delimiter = ',')]
    boards: Vec<String>,
    /// Every board whose retained status is online
    #[arg(long)]
    all: bool,
}

#[derive(Debug, Args)]
struct DeployArgs {
    /// A package from `edgeinfer package`
    #[arg(value_name = "PACKAGE")]
    package: PathBuf,
    #[command(flatten)]
    targets: Targets,
    #[command(flatten)]
    config: ConfigArgs,
    /// Deploy to this many boards first and go on only if all of them are healthy after it
    #[arg(long, value_name = "N", default_value_t = 0)]
    canary: usize,
    /// Boards deployed to at once after the canaries
    #[arg(long, value_name = "N", default_value_t = 4)]
    parallel: usize,
    /// Bytes per MQTT message (under the broker's maximum packet size)
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024)]
    chunk_bytes: u64,
    /// How long a board gets to answer each message
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    timeout_ms: u64,
}

#[derive(Debug, Args)]
struct RollbackArgs {
    /// The model to switch back
    model: String,
    #[command(flatten)]
    targets: Targets,
    #[command(flatten)]
    config: ConfigArgs,
    #[arg(long, value_name = "MS", default_value_t = 30_000)]
    timeout_ms: u64,
}

pub fn run(args: FleetArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        match args.command {
            FleetCommand::Status(args) => status(args).await,
            FleetCommand::Deploy(args) => deploy(args).await,
            FleetCommand::Rollback(args) => rollback(args).await,
        }
    })
}

async fn status(args: StatusArgs) -> anyhow::Result<()> {
    let config = args.config.load(None)?;
    let found = boards(&config, Duration::from_millis(args.wait_ms)).await?;
    if args.json {
        let rows: Vec<Value> = found
            .iter()
            .map(|b| json!({"device": b.device, "state": b.state, "version": b.version, "models": b.models, "stats": b.stats}))
            .collect();
        outln!("{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    outln!("{:<20} {:<8} {:<8} {:<40} {:>10} {:>8}", "DEVICE", "STATE", "DAEMON", "MODELS", "ANSWERED", "ERRORS")?;
    for board in &found {
        let models: Vec<String> = board.models.iter().map(|(m, v)| format!("{m}@{v}")).collect();
        let total = |key: &str| -> u64 {
            let models = board.stats.as_ref().and_then(|s| s["models"].as_object());
            models.into_iter().flatten().map(|(_, m)| count(&m[key])).sum()
        };
        outln!(
            "{:<20} {:<8} {:<8} {:<40} {:>10} {:>8}",
            board.device,
            board.state,
            board.version,
            models.join(" "),
            total("answered"),
            total("errors")
        )?;
    }
    if found.is_empty() {
        outln!("(no board has published a status under {}/+/status)", config.topics.base)?;
    }
    Ok(())
}

/// A version as the board reported it: a string, or `none`.
fn shown(version: &Value) -> String {
    version.as_str().unwrap_or("none").to_string()
}

/// A count, or the sum of a map of counts (errors by code).
fn count(value: &Value) -> u64 {
    match value {
        Value::Object(map) => map.values().map(count).sum(),
        other => other.as_u64().unwrap_or(0),
    }
}

/// The boards named, or every online one.
async fn targets(targets: &Targets, config: &edgeinfer::config::Config) -> anyhow::Result<Vec<String>> {
    if !targets.all {
        return Ok(targets.boards.clone());
    }
    let online: Vec<String> = boards(config, Duration::from_secs(1))
        .await?
        .into_iter()
        .filter(|b: &Board| b.state == "online")
        .map(|b| b.device)
        .collect();
    anyhow::ensure!(!online.is_empty(), "no board is online under {}/+/status", config.topics.base);
    Ok(online)
}

async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let config = args.config.load(None)?;
    let bytes = std::fs::read(&args.package).with_context(|| format!("reading {}", args.package.display()))?;
    let manifest = package::peek(&bytes).with_context(|| format!("{} is not a package", args.package.display()))?;
    let devices = targets(&args.targets, &config).await?;
    let operator = Operator::connect(&config, Duration::from_millis(args.timeout_ms)).await?;
    let bars = MultiProgress::with_draw_target(match std::io::stderr().is_terminal() {
        true => ProgressDrawTarget::stderr(),
        false => ProgressDrawTarget::hidden(),
    });
    let started = Instant::now();
    outln!(
        "deploying {} version {} ({} bytes) to {} board(s){}",
        manifest.name,
        manifest.version,
        bytes.len(),
        devices.len(),
        if args.canary > 0 { format!(", {} canary first", args.canary.min(devices.len())) } else { String::new() }
    )?;
    let (canaries, rest) = devices.split_at(args.canary.min(devices.len()));
    let mut failed = Vec::new();
    for (phase, boards, parallel) in
        [("canary", canaries, canaries.len().max(1)), ("rollout", rest, args.parallel.max(1))]
    {
        for group in boards.chunks(parallel) {
            let deployments = group.iter().map(|device| {
                let bar = bars.add(ProgressBar::new(bytes.len() as u64));
                bar.set_style(
                    ProgressStyle::with_template("{prefix:>16} [{bar:30}] {bytes}/{total_bytes} {msg}")
                        .expect("a valid template")
                        .progress_chars("=> "),
                );
                bar.set_prefix(device.clone());
                deploy_one(&operator, device, &bytes, &manifest.name, args.chunk_bytes, bar)
            });
            for (device, outcome) in group.iter().zip(futures_util::future::join_all(deployments).await) {
                match outcome {
                    Ok(line) => outln!("{phase} {device}: {line}")?,
                    Err(e) => {
                        outln!("{phase} {device}: FAILED: {e:#}")?;
                        failed.push(device.clone());
                    }
                }
            }
        }
        if phase == "canary" && !failed.is_empty() {
            outln!("stopped after the canaries: {} failed; the other boards were not touched", failed.join(", "))?;
            break;
        }
    }
    operator.close().await;
    outln!(
        "done in {:.1} s: {} ok, {} failed",
        started.elapsed().as_secs_f64(),
        devices.len() - failed.len(),
        failed.len()
    )?;
    anyhow::ensure!(failed.is_empty(), "deployment failed on {}", failed.join(", "));
    Ok(())
}

/// Deploys to one board, checks its health, rolls it back when the new version is not healthy.
async fn deploy_one(
    operator: &Operator,
    device: &str,
    bytes: &[u8],
    model: &str,
    chunk_bytes: u64,
    bar: ProgressBar,
) -> anyhow::Result<String> {
    let progress = |held: u64| bar.set_position(held);
    let activated = operator.deploy(device, bytes, chunk_bytes, &progress).await;
    let activated = match activated {
        Ok(report) => report,
        Err(e) => {
            bar.abandon_with_message("refused");
            return Err(e.into());
        }
    };
    bar.set_message("health check");
    let health = operator.op(device, "health", &json!({})).await;
    if let Err(e) = health {
        bar.abandon_with_message("unhealthy; rolling back");
        let rolled = operator.op(device, "rollback", &json!({"model": model})).await;
        let outcome = match rolled {
            Ok(r) => format!("rolled back to {}", shown(&r["version"])),
            Err(r) => format!("rollback failed too: {r}"),
        };
        anyhow::bail!("{e}; {outcome}");
    }
    bar.finish_with_message("healthy");
    Ok(format!(
        "serving {model} version {} (was {}, loaded in {} ms, {} check(s) passed), healthy",
        shown(&activated["version"]),
        shown(&activated["replaced"]),
        activated["load_ms"],
        activated["checks"]
    ))
}

async fn rollback(args: RollbackArgs) -> anyhow::Result<()> {
    let config = args.config.load(None)?;
    let devices = targets(&args.targets, &config).await?;
    let operator = Operator::connect(&config, Duration::from_millis(args.timeout_ms)).await?;
    let request = json!({"model": args.model});
    let outcomes =
        futures_util::future::join_all(devices.iter().map(|device| operator.op(device, "rollback", &request))).await;
    operator.close().await;
    let mut failed = 0;
    for (device, outcome) in devices.iter().zip(outcomes) {
        match outcome {
            Ok(r) => {
                outln!("{device}: {} version {} (was {})", args.model, shown(&r["version"]), shown(&r["replaced"]))?
            }
            Err(e) => {
                failed += 1;
                outln!("{device}: FAILED: {e}")?;
            }
        }
    }
    anyhow::ensure!(failed == 0, "rollback failed on {failed} board(s)");
    Ok(())
}
