//! `edgeinfer inspect`: what an ONNX file contains and whether tract can serve it, before it is
//! copied to a hundred boards.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tract_onnx::pb;
use tract_onnx::prelude::Framework;

use super::ModelMetadata;
use super::{Model, ModelManifest};
use crate::report::Report;

/// The findings on one ONNX file.
#[derive(Debug, Serialize)]
pub struct Inspection {
    pub file: PathBuf,
    pub producer: String,
    pub ir_version: i64,
    pub opsets: Vec<String>,
    pub inputs: Vec<ProtoTensor>,
    pub outputs: Vec<ProtoTensor>,
    /// Operator type -> number of nodes, subgraphs (If/Loop/Scan bodies) included.
    pub ops: BTreeMap<String, usize>,
    pub parameters: u64,
    /// What tract made of it: the served metadata, or why it cannot load.
    pub tract: Result<ModelMetadata, LoadFailure>,
}

/// A graph input or output as the ONNX file declares it.
#[derive(Debug, Serialize)]
pub struct ProtoTensor {
    pub name: String,
    pub elem_type: String,
    /// Concrete sizes as numbers, symbolic ones by name, unknown ones as "?".
    pub dims: Vec<String>,
}

/// Why tract cannot load the file, with a plain-words hint when the failure is a known kind.
#[derive(Debug, Serialize)]
pub struct LoadFailure {
    pub error: String,
    pub hint: Option<&'static str>,
}

/// The file could not be read as ONNX at all.
#[derive(Debug, thiserror::Error)]
#[error("{file}: not a readable ONNX file: {reason}")]
pub struct InspectError {
    pub file: PathBuf,
    pub reason: String,
}

/// Reads and tries to load an ONNX file. A `model.toml` next to it is used as the daemon would.
pub fn inspect(file: &Path) -> Result<Inspection, InspectError> {
    let proto = tract_onnx::onnx()
        .proto_model_for_path(file)
        .map_err(|e| InspectError { file: file.to_path_buf(), reason: format!("{e:#}") })?;
    let graph = proto.graph.clone().unwrap_or_default();
    let initializers: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut ops = BTreeMap::new();
    count_ops(&graph, &mut ops);
    let parameters = graph.initializer.iter().map(|t| t.dims.iter().product::<i64>().max(0) as u64).sum();
    let name = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let dir = file.parent().unwrap_or(Path::new("."));
    let tract = try_load(&name, file, dir);
    Ok(Inspection {
        file: file.to_path_buf(),
        producer: format!("{} {}", proto.producer_name, proto.producer_version).trim().to_string(),
        ir_version: proto.ir_version,
        opsets: proto
            .opset_import
            .iter()
            .map(|o| format!("{}:{}", if o.domain.is_empty() { "ai.onnx" } else { &o.domain }, o.version))
            .collect(),
        inputs: graph.input.iter().filter(|i| !initializers.contains(i.name.as_str())).map(proto_tensor).collect(),
        outputs: graph.output.iter().map(proto_tensor).collect(),
        ops,
        parameters,
        tract,
    })
}

fn try_load(name: &str, file: &Path, dir: &Path) -> Result<ModelMetadata, LoadFailure> {
    let failure = |error: String| LoadFailure { hint: hint_for(&error), error };
    let is_model_onnx = file.file_name().is_some_and(|f| f == "model.onnx");
    let manifest = if is_model_onnx {
        ModelManifest::read(dir).map_err(|e| failure(e.to_string()))?.unwrap_or_default()
    } else {
        ModelManifest::default()
    };
    Model::from_onnx(name, file, &manifest, None, None, None)
        .map(|m| m.metadata().clone())
        .map_err(|e| failure(Report(&e).to_string()))
}

fn hint_for(error: &str) -> Option<&'static str> {
    if error.contains("no fixed") {
        Some("the ONNX file leaves an input shape open: write a model.toml next to model.onnx with the input's datatype and shape")
    } else if error.contains("If") && (error.contains("branch") || error.contains("unify")) {
        Some(
            "an ONNX If node has then/else branches of different shapes; tract needs the condition known when \
              loading. Fixing the input that decides it (for example a sample rate) as a constant can fold the If \
              away: in model.toml next to model.onnx, [[inputs]] name = \"sr\", datatype = \"INT64\", shape = [], \
              value = [16000]",
        )
    } else if error.contains("Impossible to unify") {
        Some("shapes declared inside the ONNX file contradict the input shapes; check the input shape in model.toml")
    } else if error.contains("not supported") || error.contains("Unimplemented") || error.contains("unimplemented") {
        Some("tract has no implementation of an operator in this graph; re-export the model with a different opset or operators")
    } else {
        None
    }
}

fn count_ops(graph: &pb::GraphProto, ops: &mut BTreeMap<String, usize>) {
    for node in &graph.node {
        let op = if node.domain.is_empty() || node.domain == "ai.onnx" {
            node.op_type.clone()
        } else {
            format!("{}:{}", node.domain, node.op_type)
        };
        *ops.entry(op).or_default() += 1;
        for attr in &node.attribute {
            attr.g.iter().chain(&attr.graphs).for_each(|g| count_ops(g, ops));
        }
    }
}

fn proto_tensor(v: &pb::ValueInfoProto) -> ProtoTensor {
    use pb::tensor_shape_proto::dimension::Value as Dim;
    use pb::type_proto::Value as Type;
    let tensor = v.r#type.as_ref().and_then(|t| match &t.value {
        Some(Type::TensorType(t)) => Some(t),
        _ => None,
    });
    let elem_type = tensor
        .and_then(|t| pb::tensor_proto::DataType::try_from(t.elem_type).ok())
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|| "?".into());
    let dims = tensor
        .and_then(|t| t.shape.as_ref())
        .map(|s| {
            s.dim
                .iter()
                .map(|d| match &d.value {
                    Some(Dim::DimValue(v)) => v.to_string(),
                    Some(Dim::DimParam(p)) => p.clone(),
                    None => "?".into(),
                })
                .collect()
        })
        .unwrap_or_default();
    ProtoTensor { name: v.name.clone(), elem_type, dims }
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "file:       {}", self.file.display())?;
        writeln!(f, "producer:   {}", if self.producer.is_empty() { "?" } else { &self.producer })?;
        writeln!(f, "ir/opsets:  {} / {}", self.ir_version, self.opsets.join(", "))?;
        writeln!(f, "parameters: {}", self.parameters)?;
        for (title, tensors) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            writeln!(f, "{title}:")?;
            for t in tensors {
                writeln!(f, "  {} {} [{}]", t.name, t.elem_type, t.dims.join(", "))?;
            }
        }
        writeln!(f, "operators ({} nodes):", self.ops.values().sum::<usize>())?;
        let mut by_count: Vec<_> = self.ops.iter().collect();
        by_count.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        for (op, n) in by_count {
            writeln!(f, "  {n:>5}  {op}")?;
        }
        match &self.tract {
            Ok(meta) => {
                writeln!(f, "tract: loads and runs; served as:")?;
                for (title, tensors) in [("input", &meta.inputs), ("output", &meta.outputs)] {
                    for t in tensors {
                        writeln!(f, "  {title} {} {} {:?}", t.name, t.datatype, t.shape)?;
                    }
                }
            }
            Err(failure) => {
                writeln!(f, "tract: CANNOT LOAD: {}", failure.error)?;
                if let Some(hint) = failure.hint {
                    writeln!(f, "hint:  {hint}")?;
                }
            }
        }
        Ok(())
    }
}
