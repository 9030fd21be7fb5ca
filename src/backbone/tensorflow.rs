//! TensorFlow 1 frozen graphs (`GraphDef`): retrain.py's backbones, and the retrained
//! graphs retrain.py and flowers write.
//!
//! tract's TensorFlow front end runs these graphs once a few things it does not do are
//! rewritten first ([`for_tract`]): the 2017 MobileNet graphs have convolutions without
//! a `dilations` attribute; `quantized_graph.pb` stores weights as `quint8` constants
//! behind `Dequantize`; retrain.py's own graphs contain `PlaceholderWithDefault`; and
//! Inception's 2015 graph uses `BatchNormWithGlobalNormalization` and the old `Concat`,
//! and starts with `DecodeJpeg`/`ResizeBilinear`, which are cut off at `Mul`. The graph a
//! user gets back ([`with_final_layer`]) keeps the backbone's nodes as they were, so
//! TensorFlow and label_image.py run it as they ran retrain.py's.
//!
//! Node attributes are kept in sorted maps, so that the same graph always encodes to the
//! same bytes (the same seed gives the same retrained graph).

use std::collections::{BTreeMap, HashMap, HashSet};

use anyhow::{anyhow, bail, Context, Result};
use prost::bytes::Bytes;
use prost::Message;
use tfpb::attr_value::Value as AttrKind;
use tfpb::tensor_shape_proto::Dim;
use tfpb::{AttrValue, DataType, TensorProto, TensorShapeProto, VersionDef};
use tract_tensorflow::tfpb::tensorflow as tfpb;

use super::limits::{
    self, quote, Tally, MAX_CONSTANT_ELEMENTS, MAX_GENERATED_ELEMENTS, MAX_TENSOR_ELEMENTS,
};

/// A frozen graph. Only the fields frozen graphs use: nodes and versions.
#[derive(Clone, PartialEq, prost::Message)]
pub struct GraphDef {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeDef>,
    #[prost(message, optional, tag = "4")]
    pub versions: Option<VersionDef>,
}

/// One node, with its attributes in a sorted map (encoded in the same order every time).
#[derive(Clone, PartialEq, prost::Message)]
pub struct NodeDef {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub op: String,
    #[prost(string, repeated, tag = "3")]
    pub input: Vec<String>,
    #[prost(string, tag = "4")]
    pub device: String,
    #[prost(btree_map = "string, message", tag = "5")]
    pub attr: BTreeMap<String, AttrValue>,
}

/// A first, shallow decoding of a `GraphDef`: its nodes' attributes only sliced, so that
/// they are counted before the full decoding gives each a record of its own.
#[derive(Clone, PartialEq, prost::Message)]
struct ShallowGraphDef {
    #[prost(message, repeated, tag = "1")]
    node: Vec<ShallowNodeDef>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ShallowNodeDef {
    #[prost(bytes = "bytes", repeated, tag = "5")]
    attr: Vec<Bytes>,
}

/// The name of the constant holding flowers' metadata in a retrained graph.
pub const METADATA_NODE: &str = "flowers_metadata";

/// Whether `bytes` look like a `GraphDef` rather than an ONNX model: a `GraphDef` starts
/// with its first node (field 1, length-delimited), an ONNX model with its IR version
/// (field 1, a varint).
pub fn looks_like_graph_def(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x0a)
}

/// Decodes a frozen graph, with a message a user can act on, and checks it against
/// [`limits`] before anything is built from it.
pub fn decode_graph(bytes: impl Into<Bytes>, display: &str) -> Result<GraphDef> {
    let bytes = bytes.into();
    let not_tf = || anyhow!("{display} is not a TensorFlow graph (protobuf decoding failed)");
    let shallow = ShallowGraphDef::decode(bytes.clone()).map_err(|_| not_tf())?;
    let attributes = shallow.node.iter().map(|n| n.attr.len()).sum();
    limits::check_counts(shallow.node.len(), attributes)
        .with_context(|| format!("{display} is refused"))?;
    drop(shallow);
    let graph = GraphDef::decode(bytes).map_err(|_| not_tf())?;
    if graph.node.is_empty() {
        bail!("{display} is not a TensorFlow graph (it has no nodes)");
    }
    check_graph(&graph).with_context(|| format!("{display} is refused"))?;
    Ok(graph)
}

/// Everything about a frozen graph that must hold before it is rewritten or tract sees
/// it: a bounded acyclic graph, constants whose declared sizes are
/// bounded and match the data present (one `float_val` may stand for a whole tensor, so
/// the declared shape is what counts), and generators (`Fill`, `Tile`, `Range`,
/// `BroadcastTo`, the random ones) whose constant arguments ask for a bounded tensor: tract evaluates
/// those while it loads the graph, and an allocation that fails aborts.
pub fn check_graph(graph: &GraphDef) -> Result<()> {
    let index: HashMap<&str, usize> = graph
        .node
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut producers = Vec::with_capacity(graph.node.len());
    for node in &graph.node {
        let mut inputs = Vec::with_capacity(node.input.len());
        // An input that names no node is reported when the nodes tract needs are
        // gathered (`ancestors`), and only if it is on the way to the output.
        inputs.extend(
            node.input
                .iter()
                .filter_map(|i| index.get(node_name(i)).copied()),
        );
        producers.push(inputs);
    }
    limits::check_structure(&producers)?;
    let (mut constants, mut generated) = (Tally::default(), Tally::default());
    for node in graph.node.iter().filter(|n| n.op == "Const") {
        check_const(node, &mut constants, &mut generated)?;
    }
    check_generators(graph, &index, generated)
}

/// A constant's declared size is bounded and its data fits it; what TensorFlow would
/// repeat from a shorter value list counts as generated.
fn check_const(node: &NodeDef, total: &mut Tally, generated: &mut Tally) -> Result<()> {
    let name = quote(&node.name);
    let Some(AttrKind::Tensor(tensor)) = node.attr.get("value").and_then(|v| v.value.as_ref())
    else {
        bail!("constant {name} has no value");
    };
    let count = checked_count(tensor)
        .ok_or_else(|| anyhow!("constant {name} has an invalid or unknown shape"))?;
    if count > MAX_TENSOR_ELEMENTS {
        bail!("constant {name} declares {count} values, over the limit of {MAX_TENSOR_ELEMENTS}");
    }
    if !tensor.tensor_content.is_empty() {
        let size = dtype_size(tensor.dtype).ok_or_else(|| {
            anyhow!(
                "constant {name} has raw content of data type {}, which flowers cannot read",
                tensor.dtype
            )
        })?;
        if tensor.tensor_content.len() as u64 != count * size {
            bail!(
                "constant {name} declares {count} values but holds {} bytes of data",
                tensor.tensor_content.len()
            );
        }
    } else if listed_values(tensor) < count {
        generated.add(count, MAX_GENERATED_ELEMENTS).map_err(|_| {
            anyhow!(super::onnx::generated_too_much(
                &node.name,
                &node.op,
                count as f64
            ))
        })?;
    }
    total.add(count, MAX_CONSTANT_ELEMENTS).map_err(|sum| {
        anyhow!(
            "its constants hold {sum} values or more, over the limit of {MAX_CONSTANT_ELEMENTS}"
        )
    })
}

/// How many values a tensor lists in its typed fields.
fn listed_values(tensor: &TensorProto) -> u64 {
    [
        tensor.half_val.len(),
        tensor.float_val.len(),
        tensor.double_val.len(),
        tensor.int_val.len(),
        tensor.string_val.len(),
        tensor.scomplex_val.len() / 2,
        tensor.int64_val.len(),
        tensor.bool_val.len(),
        tensor.dcomplex_val.len() / 2,
        tensor.uint32_val.len(),
        tensor.uint64_val.len(),
    ]
    .iter()
    .sum::<usize>() as u64
}

/// The number of values a tensor declares; `None` for an unknown or overflowing shape.
fn checked_count(tensor: &TensorProto) -> Option<u64> {
    match &tensor.tensor_shape {
        None => Some(1),
        Some(shape) if shape.unknown_rank => None,
        Some(shape) => limits::element_count(shape.dim.iter().map(|d| d.size)),
    }
}

/// Bytes per value of the data types whose raw `tensor_content` flowers reads.
fn dtype_size(dtype: i32) -> Option<u64> {
    use DataType as T;
    Some(match T::try_from(dtype).ok()? {
        T::DtUint8 | T::DtInt8 | T::DtBool | T::DtQint8 | T::DtQuint8 => 1,
        T::DtInt16 | T::DtUint16 | T::DtHalf | T::DtBfloat16 | T::DtQint16 | T::DtQuint16 => 2,
        T::DtFloat | T::DtInt32 | T::DtUint32 | T::DtQint32 => 4,
        T::DtDouble | T::DtInt64 | T::DtUint64 | T::DtComplex64 => 8,
        T::DtComplex128 => 16,
        _ => return None,
    })
}

/// The generators tract evaluates while loading when their arguments are constants: what
/// they ask for counts as generated, with the constants' repeated values.
fn check_generators(
    graph: &GraphDef,
    index: &HashMap<&str, usize>,
    mut generated: Tally,
) -> Result<()> {
    // A constant argument, followed through `Identity` (frozen graphs read every weight
    // through one); bounded, so that a cycle of identities cannot loop.
    let values = |name: &str| -> Option<Vec<f64>> {
        let mut node = &graph.node[*index.get(node_name(name))?];
        for _ in 0..=limits::MAX_DEPTH {
            match node.op.as_str() {
                "Const" => return const_values(node),
                "Identity" => node = &graph.node[*index.get(node_name(node.input.first()?))?],
                _ => return None,
            }
        }
        None
    };
    for node in &graph.node {
        let argument = |i: usize| node.input.get(i).and_then(|name| values(name));
        let asked = match node.op.as_str() {
            "Fill" | "BroadcastTo" | "RandomUniform" | "RandomUniformInt" => {
                let i = usize::from(node.op == "BroadcastTo");
                argument(i).map(|dims| super::onnx::product(&dims))
            }
            "Tile" => argument(1).map(|multiples| super::onnx::product(&multiples)),
            "Range" => match (argument(0), argument(1), argument(2)) {
                (Some(start), Some(limit), Some(delta)) => {
                    Some(super::onnx::range_length(&start, &limit, &delta))
                }
                _ => None,
            },
            _ => None,
        };
        if let Some(asked) = asked {
            // Saturating: an infinite or huge ask is past any limit.
            generated
                .add(asked.min(u64::MAX as f64) as u64, MAX_GENERATED_ELEMENTS)
                .map_err(|_| {
                    anyhow!(super::onnx::generated_too_much(&node.name, &node.op, asked))
                })?;
        }
    }
    Ok(())
}

/// The values of a short integer or float constant (a shape, a scalar), as TensorFlow
/// reads them: a shorter value list repeats its last value.
fn const_values(node: &NodeDef) -> Option<Vec<f64>> {
    let Some(AttrKind::Tensor(tensor)) = node.attr.get("value")?.value.as_ref() else {
        return None;
    };
    let count = checked_count(tensor).filter(|&c| c <= 64)? as usize;
    let content = &tensor.tensor_content;
    let listed: Vec<f64> = match DataType::try_from(tensor.dtype).ok()? {
        DataType::DtInt32 if content.is_empty() => {
            tensor.int_val.iter().map(|&v| f64::from(v)).collect()
        }
        DataType::DtInt64 if content.is_empty() => {
            tensor.int64_val.iter().map(|&v| v as f64).collect()
        }
        DataType::DtFloat if content.is_empty() => {
            tensor.float_val.iter().map(|&v| f64::from(v)).collect()
        }
        DataType::DtInt32 => content
            .chunks_exact(4)
            .map(|c| f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        DataType::DtInt64 => content
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap_or_default()) as f64)
            .collect(),
        DataType::DtFloat => content
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => return None,
    };
    let last = *listed.last()?;
    Some(
        (0..count)
            .map(|i| listed.get(i).copied().unwrap_or(last))
            .collect(),
    )
}

/// The node name of a tensor name: `pool_3/_reshape:0` -> `pool_3/_reshape`.
pub fn node_name(tensor: &str) -> &str {
    let tensor = tensor.trim_start_matches('^');
    match tensor.rsplit_once(':') {
        Some((node, index)) if index.chars().all(|c| c.is_ascii_digit()) => node,
        _ => tensor,
    }
}

impl GraphDef {
    pub fn node(&self, name: &str) -> Option<&NodeDef> {
        self.node.iter().find(|n| n.name == name)
    }

    /// The nodes `outputs` depend on, in graph order; the inputs of `stop` are not
    /// followed (the graph is cut there).
    fn ancestors(&self, outputs: &[&str], stop: Option<&str>) -> Result<Vec<NodeDef>> {
        let by_name: HashMap<&str, &NodeDef> =
            self.node.iter().map(|n| (n.name.as_str(), n)).collect();
        let mut needed: HashSet<&str> = HashSet::new();
        let mut stack: Vec<&str> = outputs.iter().map(|o| node_name(o)).collect();
        while let Some(name) = stack.pop() {
            let node = by_name
                .get(name)
                .ok_or_else(|| anyhow!("the graph has no node {}", quote(name)))?;
            if !needed.insert(node.name.as_str()) || Some(name) == stop {
                continue;
            }
            stack.extend(node.input.iter().map(|i| node_name(i)));
        }
        Ok(self
            .node
            .iter()
            .filter(|n| needed.contains(n.name.as_str()))
            .cloned()
            .collect())
    }

    /// The fixed `(height, width)` of the placeholder `input`, if its shape is
    /// `[1 or -1, h, w, 3]` with both known.
    pub fn placeholder_size(&self, input: &str) -> Option<(u32, u32)> {
        let node = self.node(node_name(input))?;
        let Some(AttrKind::Shape(shape)) = node.attr.get("shape")?.value.as_ref() else {
            return None;
        };
        match shape.dim.iter().map(|d| d.size).collect::<Vec<_>>()[..] {
            [_, h, w, 3] if h > 0 && w > 0 => Some((h as u32, w as u32)),
            _ => None,
        }
    }

    /// Reads flowers' metadata entries, if this graph carries them.
    pub fn metadata(&self) -> Option<Vec<(String, String)>> {
        let node = self.node(METADATA_NODE)?;
        let Some(AttrKind::Tensor(tensor)) = node.attr.get("value")?.value.as_ref() else {
            return None;
        };
        let entries = tensor.string_val.iter().filter_map(|entry| {
            let text = std::str::from_utf8(entry).ok()?;
            let (key, value) = text.split_once('=')?;
            Some((key.to_string(), value.to_string()))
        });
        Some(entries.collect())
    }
}

/// The graph tract runs: `output` and what it needs, cut at `input` (replaced by a float
/// placeholder of `shape`), with the rewrites the module doc lists.
pub fn for_tract(
    graph: &GraphDef,
    input: &str,
    output: &str,
    shape: [i64; 4],
) -> Result<tfpb::GraphDef> {
    let input = node_name(input);
    if graph.node(input).is_none() {
        bail!("the graph has no input node {}", quote(input));
    }
    let kept = graph.ancestors(&[output], Some(input))?;
    let consts: HashMap<&str, &NodeDef> = graph
        .node
        .iter()
        .filter(|n| n.op == "Const")
        .map(|n| (n.name.as_str(), n))
        .collect();
    let mut rewritten = Vec::with_capacity(kept.len());
    for mut node in kept {
        node.input.retain(|i| !i.starts_with('^'));
        if node.name == input {
            rewritten.push(placeholder(input, shape));
            continue;
        }
        match node.op.as_str() {
            "Conv2D" | "DepthwiseConv2dNative" => {
                node.attr
                    .entry("dilations".into())
                    .or_insert_with(|| vec![1i64, 1, 1, 1].into());
                rewritten.push(node);
            }
            "Dequantize" => rewritten.push(fold_dequantize(&node, &consts)?),
            "PlaceholderWithDefault" => {
                node.op = "Identity".into();
                let dtype = node.attr.remove("dtype");
                node.attr.retain(|_, _| false);
                if let Some(dtype) = dtype {
                    node.attr.insert("T".into(), dtype);
                }
                rewritten.push(node);
            }
            "BatchNormWithGlobalNormalization" => {
                rewritten.extend(fold_batch_norm(&node, &consts)?);
            }
            "Concat" => rewritten.push(concat_v2(node)),
            _ => rewritten.push(node),
        }
    }
    let rewritten = GraphDef {
        node: rewritten,
        versions: graph.versions.clone(),
    };
    // Folding leaves the folded constants (quint8 weights, batch statistics) unread.
    let graph = GraphDef {
        node: rewritten.ancestors(&[output], Some(input))?,
        versions: rewritten.versions.clone(),
    };
    Ok(tfpb::GraphDef::decode(graph.encode_to_vec().as_slice())?)
}

/// A float placeholder named `name`.
fn placeholder(name: &str, shape: [i64; 4]) -> NodeDef {
    let mut node = NodeDef {
        name: name.to_string(),
        op: "Placeholder".into(),
        ..Default::default()
    };
    node.attr.insert("dtype".into(), DataType::DtFloat.into());
    node.attr.insert("shape".into(), shape_proto(&shape).into());
    node
}

fn shape_proto(dims: &[i64]) -> TensorShapeProto {
    TensorShapeProto {
        dim: dims
            .iter()
            .map(|&size| Dim {
                size,
                name: String::new(),
            })
            .collect(),
        unknown_rank: false,
    }
}

/// The constant tensor of node `name` (a `Const` in `consts`).
fn const_tensor<'a>(consts: &HashMap<&str, &'a NodeDef>, name: &str) -> Result<&'a TensorProto> {
    let node = consts
        .get(node_name(name))
        .ok_or_else(|| anyhow!("{} is not a constant", quote(name)))?;
    match node.attr.get("value").and_then(|v| v.value.as_ref()) {
        Some(AttrKind::Tensor(tensor)) => Ok(tensor),
        _ => bail!("constant {} has no value", quote(name)),
    }
}

/// The float values of a constant.
fn const_floats(consts: &HashMap<&str, &NodeDef>, name: &str) -> Result<Vec<f32>> {
    let tensor = const_tensor(consts, name)?;
    if tensor.dtype != DataType::DtFloat as i32 {
        bail!("constant {} is not float", quote(name));
    }
    let count = element_count(tensor);
    let values: Vec<f32> = if !tensor.tensor_content.is_empty() {
        tensor
            .tensor_content
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else if tensor.float_val.len() == 1 {
        vec![tensor.float_val[0]; count.max(1)]
    } else {
        tensor.float_val.clone()
    };
    Ok(values)
}

fn element_count(tensor: &TensorProto) -> usize {
    tensor.tensor_shape.as_ref().map_or(1, |s| {
        s.dim.iter().map(|d| d.size.max(0) as usize).product()
    })
}

/// A float constant node.
fn float_const(name: &str, dims: &[i64], values: &[f32]) -> NodeDef {
    let tensor = TensorProto {
        dtype: DataType::DtFloat as i32,
        tensor_shape: Some(shape_proto(dims)),
        tensor_content: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    };
    let mut node = NodeDef {
        name: name.to_string(),
        op: "Const".into(),
        ..Default::default()
    };
    node.attr.insert("dtype".into(), DataType::DtFloat.into());
    node.attr.insert("value".into(), tensor.into());
    node
}

/// `Dequantize(q, min, max)` of constants, computed now into a float constant, as
/// TensorFlow computes it for `quint8` (modes `MIN_FIRST` and `MIN_COMBINED`).
fn fold_dequantize(node: &NodeDef, consts: &HashMap<&str, &NodeDef>) -> Result<NodeDef> {
    let context = || format!("cannot fold Dequantize node {}", quote(&node.name));
    let [q, min, max] = &node.input[..] else {
        bail!("{}: it has {} inputs, not 3", context(), node.input.len());
    };
    let quantized = const_tensor(consts, q).with_context(context)?;
    if quantized.dtype != DataType::DtQuint8 as i32 {
        bail!("{}: only quint8 weights are supported", context());
    }
    let bytes: Vec<u8> = if quantized.tensor_content.is_empty() {
        quantized.int_val.iter().map(|&v| v as u8).collect()
    } else {
        quantized.tensor_content.clone()
    };
    let first = |name: &str| -> Result<f32> {
        let values = const_floats(consts, name).with_context(context)?;
        values
            .first()
            .copied()
            .ok_or_else(|| anyhow!("{}: {} is empty", context(), quote(name)))
    };
    let (min, max) = (first(min)?, first(max)?);
    let mode = match node.attr.get("mode").and_then(|v| v.value.as_ref()) {
        Some(AttrKind::S(mode)) => String::from_utf8_lossy(mode).into_owned(),
        _ => "MIN_COMBINED".into(),
    };
    let scale = (max - min) / 255.0;
    let values: Vec<f32> = match mode.as_str() {
        "MIN_FIRST" => {
            let offset = (min / scale).round() * scale;
            bytes
                .iter()
                .map(|&v| f32::from(v) * scale + offset)
                .collect()
        }
        "MIN_COMBINED" => bytes.iter().map(|&v| min + f32::from(v) * scale).collect(),
        other => bail!("{}: mode {other} is not supported", context()),
    };
    let dims: Vec<i64> = quantized
        .tensor_shape
        .as_ref()
        .map(|s| s.dim.iter().map(|d| d.size).collect())
        .unwrap_or_default();
    Ok(float_const(&node.name, &dims, &values))
}

/// `BatchNormWithGlobalNormalization(t, mean, variance, beta, gamma)` with constant
/// statistics, as a `Mul` by `1/sqrt(variance + epsilon)` (times gamma only when
/// `scale_after_normalization`) and an `Add` of `beta - mean * scale`; the `Add` keeps the
/// node's name, so its readers need no change.
fn fold_batch_norm(node: &NodeDef, consts: &HashMap<&str, &NodeDef>) -> Result<Vec<NodeDef>> {
    let context = || format!("cannot fold batch normalisation {}", quote(&node.name));
    let [t, mean, variance, beta, gamma] = &node.input[..] else {
        bail!("{}: it has {} inputs, not 5", context(), node.input.len());
    };
    let floats = |name: &str| const_floats(consts, name).with_context(context);
    let (mean, variance, beta, gamma) = (
        floats(mean)?,
        floats(variance)?,
        floats(beta)?,
        floats(gamma)?,
    );
    let epsilon = match node
        .attr
        .get("variance_epsilon")
        .and_then(|v| v.value.as_ref())
    {
        Some(AttrKind::F(e)) => *e,
        _ => 0.001,
    };
    let scale_by_gamma = matches!(
        node.attr
            .get("scale_after_normalization")
            .and_then(|v| v.value.as_ref()),
        Some(AttrKind::B(true))
    );
    let channels = mean.len();
    if [variance.len(), beta.len(), gamma.len()] != [channels; 3] {
        bail!("{}: its statistics differ in length", context());
    }
    let scale: Vec<f32> = (0..channels)
        .map(|c| {
            let s = 1.0 / (variance[c] + epsilon).sqrt();
            if scale_by_gamma {
                s * gamma[c]
            } else {
                s
            }
        })
        .collect();
    let offset: Vec<f32> = (0..channels)
        .map(|c| beta[c] - mean[c] * scale[c])
        .collect();
    let name = &node.name;
    let dims = [channels as i64];
    let binary = |name: String, op: &str, inputs: [String; 2]| {
        let mut node = NodeDef {
            name,
            op: op.into(),
            input: inputs.to_vec(),
            ..Default::default()
        };
        node.attr.insert("T".into(), DataType::DtFloat.into());
        node
    };
    Ok(vec![
        float_const(&format!("{name}/flowers_scale"), &dims, &scale),
        float_const(&format!("{name}/flowers_offset"), &dims, &offset),
        binary(
            format!("{name}/flowers_scaled"),
            "Mul",
            [t.clone(), format!("{name}/flowers_scale")],
        ),
        binary(
            name.clone(),
            "Add",
            [
                format!("{name}/flowers_scaled"),
                format!("{name}/flowers_offset"),
            ],
        ),
    ])
}

/// The old `Concat(dim, values...)` as `ConcatV2(values..., dim)`.
fn concat_v2(mut node: NodeDef) -> NodeDef {
    if !node.input.is_empty() {
        let dim = node.input.remove(0);
        node.input.push(dim);
    }
    node.op = "ConcatV2".into();
    node.attr.insert("Tidx".into(), DataType::DtInt32.into());
    node
}

/// What a retrained TensorFlow graph holds besides the backbone.
pub struct FinalLayerNodes<'a> {
    /// The bottleneck tensor the layer reads.
    pub bottleneck: &'a str,
    /// `bottleneck size x classes`, row-major.
    pub weights: &'a [f32],
    pub biases: &'a [f32],
    pub final_tensor_name: &'a str,
    /// flowers' metadata entries, stored in a string constant nothing reads.
    pub metadata: &'a [(&'a str, String)],
}

/// The retrained graph: the backbone's nodes that `layer.bottleneck` needs, as they were
/// (so TensorFlow runs them as it ran retrain.py's graph), then retrain.py's final layer
/// (`final_retrain_ops/...` and the softmax `final_tensor_name`) and the metadata constant.
pub fn with_final_layer(backbone: &GraphDef, layer: &FinalLayerNodes) -> Result<GraphDef> {
    let mut nodes = backbone.ancestors(&[layer.bottleneck], None)?;
    let taken: HashSet<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
    let classes = layer.biases.len();
    let size = layer.weights.len() / classes.max(1);
    for name in [layer.final_tensor_name, METADATA_NODE] {
        if taken.contains(name) || name.starts_with("final_retrain_ops/") {
            bail!("--final-tensor-name {name:?} clashes with a node of the backbone: choose another name");
        }
    }
    let typed = |name: &str, op: &str, inputs: &[&str], extra: &[(&str, AttrValue)]| {
        let mut node = NodeDef {
            name: name.into(),
            op: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        node.attr.insert("T".into(), DataType::DtFloat.into());
        for (key, value) in extra {
            node.attr.insert(key.to_string(), value.clone());
        }
        node
    };
    let mut shape = NodeDef {
        name: "final_retrain_ops/bottleneck_shape".into(),
        op: "Const".into(),
        ..Default::default()
    };
    shape.attr.insert("dtype".into(), DataType::DtInt32.into());
    let shape_value = TensorProto {
        dtype: DataType::DtInt32 as i32,
        tensor_shape: Some(shape_proto(&[2])),
        int_val: vec![-1, size as i32],
        ..Default::default()
    };
    shape.attr.insert("value".into(), shape_value.into());
    nodes.push(shape);
    nodes.push(typed(
        "final_retrain_ops/bottleneck",
        "Reshape",
        &[layer.bottleneck, "final_retrain_ops/bottleneck_shape"],
        &[("Tshape", DataType::DtInt32.into())],
    ));
    nodes.push(float_const(
        "final_retrain_ops/weights/final_weights",
        &[size as i64, classes as i64],
        layer.weights,
    ));
    nodes.push(float_const(
        "final_retrain_ops/biases/final_biases",
        &[classes as i64],
        layer.biases,
    ));
    nodes.push(typed(
        "final_retrain_ops/Wx_plus_b/MatMul",
        "MatMul",
        &[
            "final_retrain_ops/bottleneck",
            "final_retrain_ops/weights/final_weights",
        ],
        &[("transpose_a", false.into()), ("transpose_b", false.into())],
    ));
    nodes.push(typed(
        "final_retrain_ops/Wx_plus_b/add",
        "Add",
        &[
            "final_retrain_ops/Wx_plus_b/MatMul",
            "final_retrain_ops/biases/final_biases",
        ],
        &[],
    ));
    nodes.push(typed(
        layer.final_tensor_name,
        "Softmax",
        &["final_retrain_ops/Wx_plus_b/add"],
        &[],
    ));
    nodes.push(metadata_node(layer.metadata));
    Ok(GraphDef {
        node: nodes,
        versions: backbone.versions.clone(),
    })
}

/// A string constant holding `key=value` entries.
fn metadata_node(entries: &[(&str, String)]) -> NodeDef {
    let tensor = TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: Some(shape_proto(&[entries.len() as i64])),
        string_val: entries
            .iter()
            .map(|(k, v)| format!("{k}={v}").into_bytes())
            .collect(),
        ..Default::default()
    };
    let mut node = NodeDef {
        name: METADATA_NODE.into(),
        op: "Const".into(),
        ..Default::default()
    };
    node.attr.insert("dtype".into(), DataType::DtString.into());
    node.attr.insert("value".into(), tensor.into());
    node
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, op: &str, inputs: &[&str]) -> NodeDef {
        NodeDef {
            name: name.into(),
            op: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn tensor_names_map_to_node_names() {
        assert_eq!(node_name("pool_3/_reshape:0"), "pool_3/_reshape");
        assert_eq!(node_name("^Mul"), "Mul");
        assert_eq!(node_name("input"), "input");
    }

    #[test]
    fn min_first_dequantization_matches_tensorflow() {
        let q = TensorProto {
            dtype: DataType::DtQuint8 as i32,
            tensor_shape: Some(shape_proto(&[3])),
            tensor_content: vec![0, 128, 255],
            ..Default::default()
        };
        let mut q_node = node("q", "Const", &[]);
        q_node.attr.insert("value".into(), q.into());
        let min = float_const("min", &[], &[-0.3]);
        let max = float_const("max", &[], &[0.7]);
        let mut dq = node("dq", "Dequantize", &["q", "min", "max"]);
        dq.attr.insert("mode".into(), "MIN_FIRST".into());
        let consts: HashMap<&str, &NodeDef> = [("q", &q_node), ("min", &min), ("max", &max)]
            .into_iter()
            .collect();
        let folded = fold_dequantize(&dq, &consts).unwrap();
        let values = const_floats(&[("dq", &folded)].into_iter().collect(), "dq").unwrap();
        // scale = 1/255; min rounds to -77/255.
        let scale = 1.0f32 / 255.0;
        let offset = (-0.3f32 / scale).round() * scale;
        assert_eq!(
            values,
            [offset, 128.0 * scale + offset, 255.0 * scale + offset]
        );
    }

    #[test]
    fn graphs_encode_to_the_same_bytes_every_time() {
        let mut a = node("conv", "Conv2D", &["input", "w"]);
        for key in ["strides", "padding", "T", "data_format", "use_cudnn_on_gpu"] {
            a.attr.insert(key.into(), "x".into());
        }
        let graph = GraphDef {
            node: vec![a],
            versions: None,
        };
        let first = graph.encode_to_vec();
        for _ in 0..10 {
            let again = GraphDef::decode(first.as_slice()).unwrap();
            assert_eq!(again.encode_to_vec(), first);
        }
        assert!(looks_like_graph_def(&first));
    }

    #[test]
    fn the_graph_is_cut_at_the_input() {
        let graph = GraphDef {
            node: vec![
                node("DecodeJpeg/contents", "Placeholder", &[]),
                node("DecodeJpeg", "DecodeJpeg", &["DecodeJpeg/contents"]),
                node("Mul", "Mul", &["DecodeJpeg", "DecodeJpeg"]),
                node("pool", "AvgPool", &["Mul"]),
                node("head", "Softmax", &["pool"]),
            ],
            versions: None,
        };
        let kept = graph.ancestors(&["pool:0"], Some("Mul")).unwrap();
        let names: Vec<&str> = kept.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["Mul", "pool"]);
        let all = graph.ancestors(&["pool"], None).unwrap();
        assert_eq!(all.len(), 4);
    }
}
