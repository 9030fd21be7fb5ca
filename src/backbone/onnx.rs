//! Reading ONNX backbones: decoding the protobuf, finding the image input and its
//! geometry, and finding the bottleneck (the pooled features that feed the old head).

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use prost::bytes::Bytes;
use prost::Message;
use tract_onnx::pb::{self, ModelProto, TensorProto};

use super::limits::{
    self, quote, Tally, MAX_CONSTANT_ELEMENTS, MAX_GENERATED_ELEMENTS, MAX_TENSOR_ELEMENTS,
};
use crate::image::Layout;

/// Parses ONNX bytes, turning protobuf noise into a message a user can act on, and
/// checks the graph against [`limits`] before anything is built from it.
pub fn decode_model(bytes: impl Into<Bytes>, display: &str) -> Result<ModelProto> {
    // Decoding from `Bytes` lets prost slice the weight fields out of the buffer before its
    // one copy into each tensor, instead of copying them twice from a `&[u8]` (a measurable
    // part of a one-image `label`; BENCHMARKS.md).
    let bytes = bytes.into();
    check_shallow(&bytes, display)?;
    let proto = ModelProto::decode(bytes).map_err(|_| not_onnx(display))?;
    check_decoded(proto, display, &|_| None)
}

fn not_onnx(display: &str) -> anyhow::Error {
    anyhow!("{display} is not an ONNX model (protobuf decoding failed)")
}

/// What must hold before prost decodes a model whole: counts within [`limits`], no
/// functions or subgraphs (whose nesting prost would follow).
pub(super) fn check_shallow(bytes: &[u8], display: &str) -> Result<()> {
    let shallow = shallow::Model::decode(bytes).map_err(|_| not_onnx(display))?;
    shallow
        .check()
        .with_context(|| format!("{display} is refused"))
}

/// [`check_model_with`] on a decoded model, which must have a graph.
pub(super) fn check_decoded(
    proto: ModelProto,
    display: &str,
    unread: &dyn Fn(usize) -> Option<u64>,
) -> Result<ModelProto> {
    if proto.graph.as_ref().is_none_or(|g| g.node.is_empty()) {
        bail!("{display} is not an ONNX model (it has no graph)");
    }
    check_model_with(&proto, unread).with_context(|| format!("{display} is refused"))?;
    Ok(proto)
}

/// The ops tract evaluates while it loads a graph, whose constant arguments
/// [`check_model`] reads to bound what they generate.
pub(super) const GENERATORS: [&str; 8] = [
    "ConstantOfShape",
    "Expand",
    "Tile",
    "Range",
    "OneHot",
    "HannWindow",
    "HammingWindow",
    "BlackmanWindow",
];

/// Everything about an ONNX model that must hold before tract sees it: versions flowers
/// knows, a bounded acyclic graph whose outputs exist, constants whose declared sizes are
/// bounded and match the data present, and generators (`ConstantOfShape`, `Expand`,
/// `Tile`, `Range`) whose constant arguments ask for a bounded tensor: tract evaluates
/// those while it loads the graph, and an allocation that fails aborts.
pub fn check_model(proto: &ModelProto) -> Result<()> {
    check_model_with(proto, &|_| None)
}

/// [`check_model`] on a model some of whose initializers' data is still on disk:
/// `unread(i)` is the length of the data of initializer `i` if it was not read.
pub(super) fn check_model_with(
    proto: &ModelProto,
    unread: &dyn Fn(usize) -> Option<u64>,
) -> Result<()> {
    check_versions(proto)?;
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("it has no graph"))?;
    let mut constants = Tally::default();
    for (i, tensor) in graph.initializer.iter().enumerate() {
        let raw = unread(i).unwrap_or(tensor.raw_data.len() as u64);
        check_tensor(tensor, raw, "initializer", &mut constants)?;
    }
    if !graph.sparse_initializer.is_empty() {
        bail!("it has sparse initializers, which flowers does not read");
    }
    for node in &graph.node {
        check_attributes(node, &mut constants)?;
    }
    check_wiring(graph)?;
    check_generators(graph)
}

fn check_versions(proto: &ModelProto) -> Result<()> {
    if proto.ir_version > limits::MAX_ONNX_IR_VERSION {
        bail!(
            "its ONNX IR version is {}; flowers reads IR versions up to {}",
            proto.ir_version,
            limits::MAX_ONNX_IR_VERSION
        );
    }
    for import in &proto.opset_import {
        let default_domain = import.domain.is_empty() || import.domain == "ai.onnx";
        if default_domain && !(1..=limits::MAX_ONNX_OPSET).contains(&import.version) {
            bail!(
                "it uses ONNX operator set {}; flowers supports operator sets 1 to {}",
                import.version,
                limits::MAX_ONNX_OPSET
            );
        }
    }
    Ok(())
}

/// Checks one constant: a numeric type, data in the file itself, a bounded declared size
/// and exactly that many values present. Adds its size to `total`.
/// `raw` is the length of its `raw_data`, read or not.
fn check_tensor(tensor: &TensorProto, raw: u64, what: &str, total: &mut Tally) -> Result<()> {
    let name = quote(&tensor.name);
    let Some(size) = element_size(tensor.data_type) else {
        bail!(
            "{what} {name} has data type {} ({}), which flowers cannot compute with",
            tensor.data_type,
            type_name(tensor.data_type)
        );
    };
    if tensor.data_location == Some(1) || !tensor.external_data.is_empty() {
        bail!("{what} {name} keeps its data in another file; flowers reads self-contained graphs only");
    }
    let count = limits::element_count(tensor.dims.iter().copied())
        .ok_or_else(|| anyhow!("{what} {name} has an invalid shape {:?}", tensor.dims))?;
    if count > MAX_TENSOR_ELEMENTS {
        bail!("{what} {name} declares {count} values, over the limit of {MAX_TENSOR_ELEMENTS}");
    }
    let present = if raw == 0 {
        (tensor.float_data.len()
            + tensor.int32_data.len()
            + tensor.int64_data.len()
            + tensor.double_data.len()
            + tensor.uint64_data.len()) as u64
    } else if raw.is_multiple_of(size) {
        raw / size
    } else {
        u64::MAX
    };
    if present != count {
        bail!(
            "{what} {name} declares shape {:?} but holds a different amount of data",
            tensor.dims
        );
    }
    total.add(count, MAX_CONSTANT_ELEMENTS).map_err(|sum| {
        anyhow!(
            "its constants hold {sum} values or more, over the limit of {MAX_CONSTANT_ELEMENTS}"
        )
    })
}

/// Bytes per value of the numeric ONNX data types; `None` for strings, complex numbers
/// and types flowers does not know.
fn element_size(data_type: i32) -> Option<u64> {
    use pb::tensor_proto::DataType as T;
    Some(match T::try_from(data_type).ok()? {
        T::Uint8 | T::Int8 | T::Bool => 1,
        T::Uint16 | T::Int16 | T::Float16 | T::Bfloat16 => 2,
        T::Float | T::Int32 | T::Uint32 => 4,
        T::Int64 | T::Double | T::Uint64 => 8,
        _ => return None,
    })
}

fn type_name(data_type: i32) -> &'static str {
    pb::tensor_proto::DataType::try_from(data_type).map_or("unknown", |t| t.as_str_name())
}

/// Constants inside node attributes (`Constant`'s value, `ConstantOfShape`'s fill value).
/// Subgraphs (`If`, `Loop`, `Scan`) were refused by the shallow pass: no backbone has
/// them, and they would hide nodes from these checks.
fn check_attributes(node: &pb::NodeProto, total: &mut Tally) -> Result<()> {
    for attribute in &node.attribute {
        let what = format!(
            "attribute {} of node {}",
            quote(&attribute.name),
            quote(&node.name)
        );
        if attribute.sparse_tensor.is_some() || !attribute.sparse_tensors.is_empty() {
            bail!("{what} is a sparse tensor, which flowers does not read");
        }
        for tensor in attribute.t.iter().chain(&attribute.tensors) {
            check_tensor(tensor, tensor.raw_data.len() as u64, &what, total)?;
        }
    }
    Ok(())
}

/// Every node input and graph output names a tensor that exists, and the nodes form an
/// acyclic graph within [`limits::MAX_NODES`] and [`limits::MAX_DEPTH`].
fn check_wiring(graph: &pb::GraphProto) -> Result<()> {
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (index, node) in graph.node.iter().enumerate() {
        for output in node.output.iter().filter(|o| !o.is_empty()) {
            if producer.insert(output, index).is_some() {
                bail!("tensor {} is produced twice", quote(output));
            }
        }
    }
    let given: std::collections::HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name.as_str())
        .chain(graph.initializer.iter().map(|t| t.name.as_str()))
        .collect();
    let exists = |name: &str| producer.contains_key(name) || given.contains(name);
    let mut producers = Vec::with_capacity(graph.node.len());
    for node in &graph.node {
        let mut inputs = Vec::with_capacity(node.input.len());
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            if !exists(input) {
                bail!(
                    "node {} reads tensor {}, which nothing produces",
                    quote(&node.name),
                    quote(input)
                );
            }
            inputs.extend(producer.get(input.as_str()));
        }
        producers.push(inputs);
    }
    for output in &graph.output {
        if !exists(&output.name) {
            bail!(
                "its output {} is a tensor nothing produces",
                quote(&output.name)
            );
        }
    }
    limits::check_structure(&producers)
}

/// The generators (`ConstantOfShape`, `Expand`, `Tile`, `Range`, `OneHot`, the windows,
/// the random ones) tract evaluates while loading when their arguments are constants: the
/// sizes they ask for, from those constants, must stay within [`MAX_GENERATED_ELEMENTS`].
fn check_generators(graph: &pb::GraphProto) -> Result<()> {
    let constants = Constants::of(graph);
    let mut generated = 0.0;
    for node in &graph.node {
        let argument = |index: usize| {
            node.input
                .get(index)
                .and_then(|name| constants.values(name))
        };
        // Tile repeats and OneHot one-hots their first input: its size, when constant.
        let first_input_count = || {
            let count = node.input.first().and_then(|i| constants.count(i));
            count.unwrap_or(1) as f64
        };
        let asked = match node.op_type.as_str() {
            "ConstantOfShape" | "Expand" => {
                let index = usize::from(node.op_type == "Expand");
                argument(index).map(|shape| product(&shape))
            }
            "Tile" => argument(1).map(|repeats| product(&repeats) * first_input_count()),
            "Range" => match (argument(0), argument(1), argument(2)) {
                (Some(start), Some(limit), Some(delta)) => {
                    Some(range_length(&start, &limit, &delta))
                }
                _ => None,
            },
            "OneHot" => argument(1).map(|depth| product(&depth) * first_input_count()),
            "HannWindow" | "HammingWindow" | "BlackmanWindow" => {
                argument(0).map(|size| product(&size))
            }
            "RandomUniform" | "RandomNormal" | "ConstantLike" => node
                .attribute
                .iter()
                .find(|a| a.name == "shape")
                .map(|a| product(&a.ints.iter().map(|&d| d as f64).collect::<Vec<_>>())),
            _ => None,
        };
        generated += asked.unwrap_or(0.0);
        if generated > MAX_GENERATED_ELEMENTS as f64 {
            bail!(
                "{}",
                generated_too_much(&node.name, &node.op_type, asked.unwrap_or(0.0))
            );
        }
    }
    Ok(())
}

/// The error for a generator past [`MAX_GENERATED_ELEMENTS`], shared by both formats.
pub(crate) fn generated_too_much(node: &str, op: &str, asked: f64) -> String {
    format!(
        "node {} ({}) asks for a tensor of {asked:.0} values, over the limit of {MAX_GENERATED_ELEMENTS} values a graph may generate beyond the data it holds",
        quote(node),
        quote(op)
    )
}

/// Product of dimensions as a float, so that no product overflows; negative ones count
/// as 1 (`Expand`'s "keep this dimension").
pub(crate) fn product(dims: &[f64]) -> f64 {
    dims.iter().map(|&d| d.max(1.0)).product()
}

/// The length of `Range(start, limit, delta)`; infinite for a zero or non-finite step.
pub(crate) fn range_length(start: &[f64], limit: &[f64], delta: &[f64]) -> f64 {
    match (start, limit, delta) {
        ([start], [limit], [delta]) if *delta != 0.0 && delta.is_finite() => {
            ((limit - start) / delta).ceil().max(0.0)
        }
        _ => f64::INFINITY,
    }
}

/// The graph's small constants by tensor name, followed through `Identity` and `Cast`.
struct Constants<'a> {
    tensors: HashMap<&'a str, &'a TensorProto>,
    aliases: HashMap<&'a str, &'a str>,
}

impl<'a> Constants<'a> {
    fn of(graph: &'a pb::GraphProto) -> Constants<'a> {
        let mut tensors: HashMap<&str, &TensorProto> = graph
            .initializer
            .iter()
            .map(|t| (t.name.as_str(), t))
            .collect();
        let mut aliases = HashMap::new();
        for node in &graph.node {
            let Some(output) = node.output.first() else {
                continue;
            };
            match node.op_type.as_str() {
                "Constant" => {
                    if let Some(t) = node.attribute.iter().find_map(|a| a.t.as_ref()) {
                        tensors.insert(output, t);
                    }
                }
                "Identity" | "Cast" => {
                    if let Some(input) = node.input.first() {
                        aliases.insert(output.as_str(), input.as_str());
                    }
                }
                _ => {}
            }
        }
        Constants { tensors, aliases }
    }

    fn tensor(&self, name: &str) -> Option<&'a TensorProto> {
        let mut name = name;
        // Bounded, so that an alias cycle cannot loop.
        for _ in 0..=limits::MAX_DEPTH {
            if let Some(tensor) = self.tensors.get(name) {
                return Some(tensor);
            }
            name = self.aliases.get(name)?;
        }
        None
    }

    fn count(&self, name: &str) -> Option<u64> {
        limits::element_count(self.tensor(name)?.dims.iter().copied())
    }

    /// The values of a short constant (a shape, a scalar) as floats.
    fn values(&self, name: &str) -> Option<Vec<f64>> {
        let tensor = self.tensor(name)?;
        if self.count(name)? > 64 {
            return None;
        }
        tensor_values(tensor)
    }
}

fn tensor_values(tensor: &TensorProto) -> Option<Vec<f64>> {
    use pb::tensor_proto::DataType as T;
    let raw = &tensor.raw_data;
    let data_type = T::try_from(tensor.data_type).ok()?;
    if raw.is_empty() {
        return Some(match data_type {
            T::Int64 => tensor.int64_data.iter().map(|&v| v as f64).collect(),
            T::Int32 => tensor.int32_data.iter().map(|&v| f64::from(v)).collect(),
            T::Float => tensor.float_data.iter().map(|&v| f64::from(v)).collect(),
            T::Double => tensor.double_data.clone(),
            _ => return None,
        });
    }
    Some(match data_type {
        T::Int64 => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        T::Int32 => raw
            .chunks_exact(4)
            .map(|c| f64::from(i32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        T::Float => raw
            .chunks_exact(4)
            .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
            .collect(),
        T::Double => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        _ => return None,
    })
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
            "input {} is not a 4-d image tensor (rank {})",
            quote(&input.name),
            dims.len()
        );
    }
    let side = |d: Option<i64>| d.map_or(224, |v| v as u32);
    match (dims[1], dims[3]) {
        (Some(3), _) => Ok((side(dims[2]), side(dims[3]), Layout::Nchw)),
        (_, Some(3)) => Ok((side(dims[1]), side(dims[2]), Layout::Nhwc)),
        _ => bail!(
            "input {} has no 3-channel axis (shape {dims:?})",
            quote(&input.name)
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

/// A first, shallow decoding of an ONNX model: the nodes and attributes counted (each
/// attribute's bytes only sliced, not decoded) before the full decoding allocates a
/// record for each, and the parts that would hide nodes from the checks (subgraphs,
/// functions, training graphs) refused.
mod shallow {
    use anyhow::{bail, Result};
    use prost::bytes::Bytes;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Model {
        #[prost(message, optional, tag = "7")]
        graph: Option<Graph>,
        #[prost(bytes = "bytes", repeated, tag = "20")]
        training_info: Vec<Bytes>,
        #[prost(bytes = "bytes", repeated, tag = "25")]
        functions: Vec<Bytes>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Graph {
        #[prost(message, repeated, tag = "1")]
        node: Vec<Node>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Node {
        #[prost(message, repeated, tag = "5")]
        attribute: Vec<Attribute>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct Attribute {
        #[prost(bytes = "bytes", optional, tag = "6")]
        g: Option<Bytes>,
        #[prost(bytes = "bytes", repeated, tag = "11")]
        graphs: Vec<Bytes>,
    }

    impl Model {
        pub fn check(&self) -> Result<()> {
            if !self.functions.is_empty() || !self.training_info.is_empty() {
                bail!("it defines functions or training graphs, which flowers does not run");
            }
            let nodes = self.graph.as_ref().map_or(&[][..], |g| &g.node[..]);
            let attributes = nodes.iter().flat_map(|n| &n.attribute);
            if attributes
                .clone()
                .any(|a| a.g.is_some() || !a.graphs.is_empty())
            {
                bail!("it has subgraphs (If, Loop, Scan), which flowers does not run");
            }
            super::limits::check_counts(nodes.len(), attributes.count())
        }
    }
}
