//! `edgeinfer inspect`

use std::path::PathBuf;

use clap::Args;

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The ONNX file
    file: PathBuf,
    /// Print JSON instead of text
    #[arg(long)]
    json: bool,
}

pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let inspection = edgeinfer::model::inspect::inspect(&args.file)?;
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&inspection)?)?;
    } else {
        print!("{inspection}");
    }
    if inspection.tract.is_err() {
        anyhow::bail!("tract cannot load {}", args.file.display());
    }
    Ok(())
}
