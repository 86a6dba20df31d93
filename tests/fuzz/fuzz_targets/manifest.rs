//! `model.toml`: parsing and validation (`ModelManifest::parse`), then what the loader computes
//! from a valid manifest without the ONNX file: constant inputs (`TensorDecl::constant`) and the
//! image pre-processing target (`ImageTarget::new`).
#![no_main]

use std::path::Path;

use edgeinfer::model::image::ImageTarget;
use edgeinfer::model::manifest::{ModelManifest, PreprocessDecl};
use libfuzzer_sys::fuzz_target;

mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(manifest) = ModelManifest::parse(text, Path::new("model.toml")) else {
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
