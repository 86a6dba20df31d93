//! `edgeinfer models`

use std::path::PathBuf;

use clap::Args;
use edgeinfer::model::ModelRepository;
use edgeinfer::report::Report;

#[derive(Debug, Args)]
pub struct ModelsArgs {
    /// Model repository [default: models, or models.repository from --config]
    #[arg(long, value_name = "DIR")]
    models: Option<PathBuf>,
    /// Config file whose models.repository to use
    #[arg(long, short = 'c', env = "EDGEINFER_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
}

pub fn run(args: ModelsArgs) -> anyhow::Result<()> {
    let dir = super::models_dir(args.models, args.config.as_ref())?;
    let (repository, failures) = ModelRepository::load(&dir, None)?;
    let metadata: Vec<_> = repository.models().map(|m| m.metadata().clone()).collect();
    outln!("{}", serde_json::to_string_pretty(&metadata)?)?;
    for failure in &failures {
        eprintln!("edgeinfer: {}", Report(failure));
    }
    if failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} model(s) failed to load", failures.len())
    }
}
