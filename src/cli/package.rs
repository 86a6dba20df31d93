//! `edgeinfer package`: a model directory becomes a signed package for `edgeinfer fleet deploy`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use edgeinfer::admin::golden;
use edgeinfer::model::Model;
use edgeinfer::package::{self, SigningKey};

#[derive(Debug, Args)]
pub struct PackageArgs {
    /// The model directory (model.onnx, model.toml, labels, ...); its files go in flat
    #[arg(value_name = "MODEL_DIR")]
    dir: PathBuf,
    /// The version boards will serve it as (`model_version` in replies)
    #[arg(long)]
    version: String,
    /// The private key from `edgeinfer keygen`
    #[arg(long, value_name = "KEYFILE")]
    key: PathBuf,
    /// The model's name on the boards [default: the directory's name]
    #[arg(long)]
    name: Option<String>,
    /// OIP JSON requests to record as the package's checks (golden.json): the model is run here
    /// on each, and a board activates the package only if it answers the same
    #[arg(long, value_name = "REQUEST.json")]
    golden: Vec<PathBuf>,
    /// Where to write the package [default: NAME-VERSION.tar]
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

pub fn run(args: PackageArgs) -> anyhow::Result<()> {
    let name = match &args.name {
        Some(name) => name.clone(),
        None => args
            .dir
            .canonicalize()
            .with_context(|| format!("reading {}", args.dir.display()))?
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .context("the model directory has no name; pass --name")?,
    };
    let key = SigningKey::read(&args.key)?;
    let mut extra = Vec::new();
    if !args.golden.is_empty() {
        // The same loading as on a board, so that a package that cannot load fails here first.
        let mut model = Model::load(&name, &args.dir, None)?;
        model.set_version(&args.version);
        let mut goldens = Vec::new();
        for path in &args.golden {
            let request = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            let check = golden::record(&model, &request)
                .map_err(|e| anyhow::anyhow!("{}: the model could not answer it: {e}", path.display()))?;
            goldens.push(check);
        }
        extra.push((package::GOLDEN.to_string(), serde_json::to_vec_pretty(&goldens)?));
    }
    let bytes = package::make(&args.dir, &name, &args.version, &key, &extra)?;
    let output = args.output.unwrap_or_else(|| PathBuf::from(format!("{name}-{}.tar", args.version)));
    std::fs::write(&output, &bytes).with_context(|| format!("writing {}", output.display()))?;
    let manifest = package::peek(&bytes)?;
    outln!(
        "{}: {name} version {}, {} files, {} bytes, signed by {}",
        output.display(),
        args.version,
        manifest.files.len(),
        bytes.len(),
        key.public().to_hex()
    )?;
    Ok(())
}
