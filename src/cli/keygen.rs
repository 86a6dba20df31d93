//! `edgeinfer keygen`: the key pair that signs model packages.

use std::path::PathBuf;

use clap::Args;
use edgeinfer::package::{public_path, SigningKey};

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Where to write the private key (mode 0600); the public half goes to KEYFILE.pub, for
    /// the boards' admin.trusted_keys. Neither may exist yet.
    #[arg(value_name = "KEYFILE")]
    key: PathBuf,
}

pub fn run(args: KeygenArgs) -> anyhow::Result<()> {
    let public = SigningKey::generate(&args.key)?;
    outln!("private key: {} (keep it off the boards)", args.key.display())?;
    outln!("public key:  {} ({})", public_path(&args.key).display(), public.to_hex())?;
    Ok(())
}
