//! `edgeinfer serve`

use std::path::PathBuf;

use clap::Args;

use super::ConfigArgs;

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Model repository: one sub-directory per model [config: models.repository]
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    print_config: bool,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = args.config.load(args.models.as_ref())?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("edgeinfer-io").build()?;
    let served = runtime
        .block_on(async { edgeinfer::daemon::serve(config, shutdown_signal()?).await.map_err(anyhow::Error::from) });
    // Tasks still blocked on a vanished broker must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

/// Completes on SIGTERM (systemd's stop) or SIGINT (Ctrl-C). The handlers are installed when this
/// is called, not when the future is first polled: a stop that comes while the models load (or
/// before the daemon reaches its main wait) must still be a clean stop, not the default kill.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
        }
    })
}
