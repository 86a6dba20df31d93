//! The model cache: each model's decluttered tract graph in tract's NNEF/OPL form, so that a restart
//! skips parsing the ONNX protobuf, type inference and decluttering, which are most of a large
//! model's start time on a board.
//!
//! What is cached is the *decluttered* model (after the input shapes from `model.toml` are fixed),
//! not the optimised one: NNEF describes portable operators, not the kernels the optimiser picks for
//! this CPU, so a reload still runs `into_optimized` and `into_runnable`.
//!
//! One file per model, `<cache dir>/<model>.nnef-cache`:
//!
//! ```text
//! MAGIC | header length (u32 LE) | header (JSON: key, inputs, output names) | tar written by tract-nnef
//! ```
//!
//! The header carries what NNEF does not keep faithfully: the input and output names as the ONNX
//! file spells them (NNEF identifiers cannot hold `gpu_0/data_0`), and the input contracts. The key
//! is a SHA-256 of every source the cached graph depends on ([`CacheEntry::for_model`]); a file with
//! another key is stale and rewritten. Any failure to read or use a cache file is logged and the
//! model is loaded from ONNX, which then rewrites the file: the cache can make a start faster, never
//! make it fail.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tract_core::prelude::*;
use tract_onnx_opl::WithOnnx;
use tract_transformers::WithTractTransformers;

use super::repository::is_valid_model_name;
use super::TensorMetadata;
use crate::report::{Cause, Report};

/// First bytes of every cache file: a file that does not start with them is not ours.
const MAGIC: &[u8] = b"edgeinfer model cache v1\n";
/// A header larger than this is a corrupt length field, not a real header (which is a few hundred bytes).
const MAX_HEADER: u32 = 1 << 20;
/// File name suffix of cache files.
const SUFFIX: &str = "nnef-cache";

/// The directory that holds the cache files (`models.cache_dir`).
#[derive(Debug, Clone)]
pub struct ModelCache {
    dir: PathBuf,
}

/// A cache file could not be read, used or written. Never fatal: the model loads from ONNX.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a model cache file of this format ({reason})")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: tract cannot {stage}")]
    Tract { path: PathBuf, stage: &'static str, source: Cause },
    #[error("{path}: the cached graph does not match its header ({reason})")]
    Mismatch { path: PathBuf, reason: String },
}

/// What a model's cache file holds: the decluttered graph and the names and contracts that NNEF
/// does not keep.
pub struct CachedModel {
    pub typed: TypedModel,
    pub inputs: Vec<TensorMetadata>,
    pub output_names: Vec<String>,
}

/// The header stored before the NNEF tar.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    key: String,
    inputs: Vec<TensorMetadata>,
    output_names: Vec<String>,
}

/// One model's place in the cache, with the key of its sources as they are now.
#[derive(Debug)]
pub struct CacheEntry {
    model: String,
    path: PathBuf,
    key: String,
}

impl ModelCache {
    pub fn new(dir: impl Into<PathBuf>) -> ModelCache {
        ModelCache { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The entry of model `name` whose ONNX file is `onnx` (and `model.toml` next to it). `None`,
    /// with a warning, when the sources cannot be hashed; `None` silently for a name that is not a
    /// model name (`inspect` of a bare file), which must never become a path in the cache directory.
    pub fn entry(&self, name: &str, onnx: &Path) -> Option<CacheEntry> {
        if !is_valid_model_name(name) {
            return None;
        }
        match CacheEntry::for_model(self, name, onnx) {
            Ok(entry) => Some(entry),
            Err(e) => {
                tracing::warn!(model = name, error = %e, "model cache: cannot hash the model's files; loading without the cache");
                None
            }
        }
    }
}

impl CacheEntry {
    /// Keys the entry on everything the cached graph depends on: the ONNX bytes, the `model.toml`
    /// bytes (input shapes), the tract version (operators and their NNEF form), the CPU
    /// architecture, and edgeinfer's version (how the graph is prepared before caching).
    fn for_model(cache: &ModelCache, name: &str, onnx: &Path) -> Result<CacheEntry, CacheError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CacheError::Io { path, source }
        };
        let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            MAGIC,
            env!("CARGO_PKG_VERSION").as_bytes(),
            env!("EDGEINFER_TRACT_VERSION").as_bytes(),
            std::env::consts::ARCH.as_bytes(),
        ] {
            hash_part(&mut hash, part);
        }
        hash_part(&mut hash, &std::fs::read(onnx).map_err(io(onnx))?);
        let manifest = onnx.with_file_name("model.toml");
        match std::fs::read(&manifest) {
            Ok(bytes) => hash_part(&mut hash, &bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => hash_part(&mut hash, b"no model.toml"),
            Err(e) => return Err(io(&manifest)(e)),
        }
        let key = hash.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let path = cache.dir.join(format!("{name}.{SUFFIX}"));
        Ok(CacheEntry { model: name.to_string(), path, key })
    }

    /// The cached model when the file is there and valid for these sources; `None` otherwise, with
    /// a log line saying why (missing and stale are normal events, anything else is a warning).
    pub fn load(&self) -> Option<CachedModel> {
        match self.read() {
            Ok(Some(cached)) => {
                tracing::info!(model = %self.model, file = %self.path.display(), "model cache: hit");
                Some(cached)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(model = %self.model, error = %Report(&e), "model cache: unusable file; loading from ONNX and rewriting it");
                None
            }
        }
    }

    /// Writes the cache file for this entry; a failure is logged and otherwise ignored.
    pub fn store(&self, typed: &TypedModel, inputs: &[TensorMetadata], output_names: &[String]) {
        match self.write(typed, inputs, output_names) {
            Ok(()) => tracing::info!(model = %self.model, file = %self.path.display(), "model cache: written"),
            Err(e) => tracing::warn!(model = %self.model, error = %Report(&e), "model cache: not written"),
        }
    }

    fn read(&self) -> Result<Option<CachedModel>, CacheError> {
        let io = |source| CacheError::Io { path: self.path.clone(), source };
        let bad = |reason: String| CacheError::Format { path: self.path.clone(), reason };
        let file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(model = %self.model, "model cache: no file yet; loading from ONNX");
                return Ok(None);
            }
            Err(e) => return Err(io(e)),
        };
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut magic = vec![0; MAGIC.len()];
        reader.read_exact(&mut magic).map_err(io)?;
        if magic != MAGIC {
            return Err(bad("wrong magic bytes".into()));
        }
        let mut len = [0; 4];
        reader.read_exact(&mut len).map_err(io)?;
        let len = u32::from_le_bytes(len);
        if len > MAX_HEADER {
            return Err(bad(format!("header length {len}")));
        }
        let mut header = vec![0; len as usize];
        reader.read_exact(&mut header).map_err(io)?;
        let header: Header = serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
        if header.key != self.key {
            tracing::info!(model = %self.model, "model cache: stale (the model, model.toml, tract or edgeinfer changed); loading from ONNX");
            return Ok(None);
        }
        let typed = nnef().model_for_read(&mut reader).map_err(|e| CacheError::Tract {
            path: self.path.clone(),
            stage: "read the cached NNEF graph",
            source: e.into(),
        })?;
        check_contract(&typed, &header).map_err(|reason| CacheError::Mismatch { path: self.path.clone(), reason })?;
        Ok(Some(CachedModel { typed, inputs: header.inputs, output_names: header.output_names }))
    }

    /// Writes to a temporary file in the cache directory and renames it over the entry, so that a
    /// crash or a full disk leaves the old file or none, never half a file under the entry's name.
    fn write(&self, typed: &TypedModel, inputs: &[TensorMetadata], output_names: &[String]) -> Result<(), CacheError> {
        // tract 0.23.9 writes string properties as they are, and its parser refuses a quote or an
        // apostrophe inside one (digits' ONNX doc string says "scikit-learn's"). These properties
        // are the ONNX file's metadata, which edgeinfer never reads: they are left out. (A clone
        // shares the weights, which tract keeps behind `Arc`s.)
        let mut typed = typed.clone();
        typed.properties.clear();
        let header = Header { key: self.key.clone(), inputs: inputs.to_vec(), output_names: output_names.to_vec() };
        let header = serde_json::to_vec(&header).expect("the header serialises");
        let temp = self.path.with_file_name(format!(".{}.{SUFFIX}.{}.tmp", self.model, std::process::id()));
        let io = |source| CacheError::Io { path: temp.clone(), source };
        let written = (|| {
            // A leftover of a crashed start with the same pid, or a planted symlink, is removed
            // (not followed), and the new file must be created here: nothing is written elsewhere.
            let _ = std::fs::remove_file(&temp);
            let file = File::options().write(true).create_new(true).open(&temp).map_err(io)?;
            let mut out = BufWriter::with_capacity(1 << 20, file);
            out.write_all(MAGIC).map_err(io)?;
            out.write_all(&(header.len() as u32).to_le_bytes()).map_err(io)?;
            out.write_all(&header).map_err(io)?;
            let out = nnef().write_to_tar(&typed, out).map_err(|e| CacheError::Tract {
                path: temp.clone(),
                stage: "write the graph as NNEF",
                source: e.into(),
            })?;
            let file = out.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            std::fs::rename(&temp, &self.path).map_err(io)
        })();
        if written.is_err() {
            // Best effort: the write already failed, and a leftover temp file is only wasted space.
            let _ = std::fs::remove_file(&temp);
        }
        written
    }
}

fn hash_part(hash: &mut ring::digest::Context, part: &[u8]) {
    hash.update(&(part.len() as u64).to_le_bytes());
    hash.update(part);
}

/// The NNEF framework with the registries of every operator an ONNX graph can hold after decluttering.
/// Extended identifiers (`i"..."`) keep node names that are not NNEF identifiers readable and unique.
fn nnef() -> tract_nnef::framework::Nnef {
    let mut nnef = tract_nnef::nnef().with_onnx().with_tract_transformers();
    nnef.allow_extended_identifier_syntax(true);
    nnef
}

/// Checks that the graph read back has the header's inputs (names, datatypes, shapes, with a
/// symbolic batch dimension for -1) and as many outputs, so that a file that went wrong in any way
/// is refused rather than served.
fn check_contract(typed: &TypedModel, header: &Header) -> Result<(), String> {
    if typed.inputs.len() != header.inputs.len() || typed.outputs.len() != header.output_names.len() {
        return Err(format!(
            "{} inputs and {} outputs, the header has {} and {}",
            typed.inputs.len(),
            typed.outputs.len(),
            header.inputs.len(),
            header.output_names.len()
        ));
    }
    for (ix, spec) in header.inputs.iter().enumerate() {
        let node = &typed.node(typed.inputs[ix].node).name;
        if node != &spec.name {
            return Err(format!("input {ix} is \"{node}\", the header says \"{}\"", spec.name));
        }
        let fact = typed.input_fact(ix).map_err(|e| format!("input {ix}: {e:#}"))?;
        let same_type = spec.datatype.datum_type() == Some(fact.datum_type);
        let same_shape = fact.rank() == spec.shape.len()
            && fact.shape.iter().zip(&spec.shape).all(|(dim, &want)| match dim.to_i64() {
                Ok(got) => got == want,
                Err(_) => want < 0,
            });
        if !same_type || !same_shape {
            return Err(format!(
                "input \"{}\" is {:?}, the header says {} {:?}",
                spec.name, fact, spec.datatype, spec.shape
            ));
        }
    }
    Ok(())
}
