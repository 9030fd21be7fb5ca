//! Reading ONNX backbones: decoding the protobuf, finding the image input and its
//! geometry, and finding the bottleneck (the pooled features that feed the old head).

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use prost::bytes::Bytes;
use prost::Message;
use tract_onnx::pb::{self, ModelProto};

use crate::image::Layout;

/// Parses ONNX bytes, turning protobuf noise into a message a user can act on.
pub fn decode_model(bytes: impl Into<Bytes>, display: &str) -> Result<ModelProto> {
    // Decoding from `Bytes` lets prost slice the weight fields out of the buffer before its
    // one copy into each tensor, instead of copying them twice from a `&[u8]` (a measurable
    // part of a one-image `label`; BENCHMARKS.md).
    let proto = ModelProto::decode(bytes.into())
        .map_err(|_| anyhow!("{display} is not an ONNX model (protobuf decoding failed)"))?;
    if proto.graph.as_ref().is_none_or(|g| g.node.is_empty()) {
        bail!("{display} is not an ONNX model (it has no graph)");
    }
    Ok(proto)
}

/// The image input: the first graph input that is not an initializer.
pub(crate) fn graph_input(proto: &ModelProto) -> Result<pb::ValueInfoProto> {
    let graph = proto.graph.as_ref().ok_or_else(|| anyhow!("no graph"))?;
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .find(|i| !initializers.contains(&i.name.as_str()))
        .cloned()
        .ok_or_else(|| anyhow!("the graph has no input"))
}

/// Height, width and layout of a 4-d image input; symbolic spatial dims default to 224.
pub(crate) fn input_geometry(input: &pb::ValueInfoProto) -> Result<(u32, u32, Layout)> {
    use pb::tensor_shape_proto::dimension::Value;
    use pb::type_proto::Value as Type;
    let dims: Vec<Option<i64>> = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(Type::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Value::DimValue(v)) if v > 0 => Some(v),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => vec![],
    };
    if dims.len() != 4 {
        bail!(
            "input {:?} is not a 4-d image tensor (rank {})",
            input.name,
            dims.len()
        );
    }
    let side = |d: Option<i64>| d.map_or(224, |v| v as u32);
    match (dims[1], dims[3]) {
        (Some(3), _) => Ok((side(dims[2]), side(dims[3]), Layout::Nchw)),
        (_, Some(3)) => Ok((side(dims[1]), side(dims[2]), Layout::Nhwc)),
        _ => bail!(
            "input {:?} has no 3-channel axis (shape {dims:?})",
            input.name
        ),
    }
}

/// Maps a tensor name or a node name to a tensor name produced in the graph.
pub(crate) fn resolve_tensor(proto: &ModelProto, name: &str) -> Result<String> {
    let graph = proto.graph.as_ref().ok_or_else(|| anyhow!("no graph"))?;
    for node in &graph.node {
        if node.output.iter().any(|o| o == name) {
            return Ok(name.to_string());
        }
    }
    graph
        .node
        .iter()
        .find(|n| n.name == name)
        .and_then(|n| n.output.first().cloned())
        .ok_or_else(|| anyhow!("no such tensor"))
}

/// The pooled feature tensor: output of the last global pooling, followed through any
/// Flatten/Reshape/Squeeze that only reshapes it.
pub fn find_bottleneck(proto: &ModelProto) -> Option<String> {
    const POOLS: [&str; 4] = [
        "GlobalAveragePool",
        "AveragePool",
        "ReduceMean",
        "GlobalMaxPool",
    ];
    const RESHAPES: [&str; 3] = ["Flatten", "Reshape", "Squeeze"];
    let graph = proto.graph.as_ref()?;
    let pool = graph
        .node
        .iter()
        .rev()
        .find(|n| POOLS.contains(&n.op_type.as_str()))?;
    let mut tensor = pool.output.first()?.clone();
    let consumers = consumer_map(graph);
    while let Some(reshape) = consumers
        .get(tensor.as_str())
        .into_iter()
        .flatten()
        .map(|&index| &graph.node[index])
        .find(|node| RESHAPES.contains(&node.op_type.as_str()))
    {
        tensor = reshape.output.first()?.clone();
    }
    Some(tensor)
}

fn consumer_map(graph: &pb::GraphProto) -> HashMap<&str, Vec<usize>> {
    let mut map: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, node) in graph.node.iter().enumerate() {
        for input in &node.input {
            map.entry(input.as_str()).or_default().push(index);
        }
    }
    map
}
