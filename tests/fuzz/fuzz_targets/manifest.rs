//! `model.toml`: parsing and validation (`ModelManifest::read`), then what the loader computes
//! from a valid manifest without the ONNX file: constant inputs (`TensorDecl::constant`) and the
//! image pre-processing target (`ImageTarget::new`).
//!
//! `read` takes a directory, so each input is written to model.toml in a directory of this
//! process under /dev/shm (memory, no disk). A `ModelManifest::from_str` would save that.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use edgeinfer::model::image::ImageTarget;
use edgeinfer::model::manifest::{ModelManifest, PreprocessDecl};
use libfuzzer_sys::fuzz_target;

mod common;

fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("edgeinfer-fuzz-manifest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    std::fs::write(dir().join("model.toml"), data).expect("write model.toml");
    let Ok(Some(manifest)) = ModelManifest::read(dir()) else {
        return;
    };
    for decl in manifest.inputs.iter().filter(|d| d.value.is_some()) {
        let _ = decl.constant();
    }
    if let Some(PreprocessDecl::Image(image)) = &manifest.preprocess {
        if let Some(input) = manifest.inputs.iter().find(|d| d.name == image.input) {
            let _ = ImageTarget::new(image, &input.shape);
        }
    }
});
