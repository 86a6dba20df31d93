//! A package's own checks (`golden.json`): requests, and the outputs each must give within a
//! tolerance. A deployment is swapped in only if the new version passes them on the board itself,
//! so a model that loads but answers wrongly there (a bad export, a kernel that differs on this
//! CPU) never serves.
//!
//! ```json
//! [{"request": {"inputs": [...]}, "outputs": [{"name": "probabilities", "data": [0.1, ...]}], "tolerance": 1e-4}]
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::Model;
use crate::protocol::{decode_reply, decode_request, encode_response};

/// The most goldens one package may carry: each is a full inference at deploy time.
const MAX_GOLDENS: usize = 64;
/// The tolerance when a golden gives none: outputs match if `|a - b| <= tol * (1 + |b|)`.
const DEFAULT_TOLERANCE: f64 = 1e-4;

/// One check.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Golden {
    /// An OIP JSON request.
    pub request: Value,
    /// The outputs expected, by name (`data` flat, as replies carry it); outputs not listed are
    /// not compared.
    pub outputs: Vec<ExpectedOutput>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerance: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedOutput {
    pub name: String,
    pub data: Vec<Value>,
}

/// Why a version failed its checks.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    #[error("golden.json is not a list of checks: {0}")]
    Malformed(String),
    #[error("golden.json holds {0} checks; at most {MAX_GOLDENS}")]
    TooMany(usize),
    #[error("check {index}: {message}")]
    Failed { index: usize, message: String },
}

/// The model's reply to an OIP JSON request, as JSON (binary outputs read back as `data`).
pub fn reply_json(model: &Model, request: &[u8]) -> Result<Value, String> {
    let mut request = decode_request(request, None).map_err(|failure| failure.error.to_string())?;
    let prepared = model.prepare(&mut request).map_err(|e| e.to_string())?;
    let answer = model.answer(prepared).map_err(|e| e.to_string())?;
    let reply =
        encode_response(model.name(), Some(model.version()), None, answer.parameters.as_ref(), &answer.tensors())
            .map_err(|e| e.to_string())?;
    decode_reply(&reply.payload, reply.header_len).map_err(|e| e.to_string())
}

/// A check recording what `model` answers to `request` now: what `edgeinfer package --golden`
/// puts in a package, made on a machine where the model is known to be right.
pub fn record(model: &Model, request: &[u8]) -> Result<Golden, String> {
    let reply = reply_json(model, request)?;
    let outputs = reply["outputs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|out| ExpectedOutput {
            name: out["name"].as_str().unwrap_or_default().to_string(),
            data: out["data"].as_array().cloned().unwrap_or_default(),
        })
        .collect();
    let request = serde_json::from_slice(request).map_err(|e| e.to_string())?;
    Ok(Golden { request, outputs, tolerance: None })
}

/// Runs every check of `golden_json` on `model`; returns how many passed (all of them).
pub fn check(model: &Model, golden_json: &[u8]) -> Result<usize, GoldenError> {
    let goldens: Vec<Golden> =
        serde_json::from_slice(golden_json).map_err(|e| GoldenError::Malformed(e.to_string()))?;
    if goldens.len() > MAX_GOLDENS {
        return Err(GoldenError::TooMany(goldens.len()));
    }
    for (index, golden) in goldens.iter().enumerate() {
        let failed = |message: String| GoldenError::Failed { index, message };
        let request = serde_json::to_vec(&golden.request).expect("JSON serialises");
        let reply = reply_json(model, &request).map_err(&failed)?;
        let tolerance = golden.tolerance.unwrap_or(DEFAULT_TOLERANCE);
        for expected in &golden.outputs {
            let got = reply["outputs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|out| out["name"] == expected.name.as_str())
                .and_then(|out| out["data"].as_array())
                .ok_or_else(|| failed(format!("the reply has no output \"{}\"", expected.name)))?;
            if got.len() != expected.data.len() {
                return Err(failed(format!(
                    "output \"{}\" has {} values; {} expected",
                    expected.name,
                    got.len(),
                    expected.data.len()
                )));
            }
            for (at, (g, e)) in got.iter().zip(&expected.data).enumerate() {
                let close = match (g.as_f64(), e.as_f64()) {
                    (Some(g), Some(e)) => (g - e).abs() <= tolerance * (1.0 + e.abs()),
                    _ => g == e,
                };
                if !close {
                    return Err(failed(format!(
                        "output \"{}\"[{at}] is {g}; {e} expected (tolerance {tolerance})",
                        expected.name
                    )));
                }
            }
        }
    }
    Ok(goldens.len())
}
