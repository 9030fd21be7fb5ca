//! Writing the retrained graph (backbone cut at the bottleneck + the new final layer, one
//! ONNX file that describes itself) and the labels file.
//!
//! The graph is built by editing the backbone's own protobuf: nodes after the bottleneck
//! (the old ImageNet head) are dropped, then Flatten -> Gemm -> Softmax are appended. The
//! preprocessing travels in `metadata_props`, so `flowers label` and any onnxruntime client
//! feed it exactly what retrain fed the backbone.

use std::collections::HashSet;
use std::path::Path;

use anyhow::{anyhow, bail, Result};
use prost::Message;
use tract_onnx::pb::{self, ModelProto};

use super::digest;
use super::metadata::{keys, GraphInput, GraphMetadata};
use crate::backbone::combined::name_prefix;
use crate::backbone::tensorflow::{self, FinalLayerNodes};
use crate::backbone::{Backbone, BackboneGraph, Backbones, ModelFormat};
use crate::train::FinalLayer;
use crate::util::atomic::write_atomically;

/// A retrained graph in the backbone's format: ONNX for ONNX backbones, a TensorFlow
/// `GraphDef` for retrain.py's TensorFlow backbones.
pub enum RetrainedGraphFile {
    Onnx(Box<ModelProto>),
    TensorFlow(tensorflow::GraphDef),
}

impl RetrainedGraphFile {
    pub fn format(&self) -> ModelFormat {
        match self {
            RetrainedGraphFile::Onnx(_) => ModelFormat::Onnx,
            RetrainedGraphFile::TensorFlow(_) => ModelFormat::TensorFlow,
        }
    }

    /// The file's bytes, with the digest of themselves filled in.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = match self {
            RetrainedGraphFile::Onnx(proto) => proto.encode_to_vec(),
            RetrainedGraphFile::TensorFlow(graph) => graph.encode_to_vec(),
        };
        digest::seal(&mut bytes);
        bytes
    }

    /// The usual file name extension of this format.
    pub fn extension(&self) -> &'static str {
        match self {
            RetrainedGraphFile::Onnx(_) => "onnx",
            RetrainedGraphFile::TensorFlow(_) => "pb",
        }
    }
}

/// The retrained graph of one backbone ([`retrained_graph`]) or of several side by side:
/// then one ONNX graph with one input per backbone (each fed as its metadata says: the
/// backbones differ in input size, crop and normalisation, and resizing inside the graph
/// would not be the preprocessing their bottlenecks were trained on), the backbones cut at
/// their bottlenecks, their bottlenecks concatenated, then the final layer.
pub fn retrained_graph_of(
    backbones: &Backbones,
    layer: &FinalLayer,
    labels: &[String],
    final_tensor_name: &str,
) -> Result<RetrainedGraphFile> {
    if let Some(backbone) = backbones.single() {
        return retrained_graph(backbone, layer, labels, final_tensor_name);
    }
    if !layer.is_finite() {
        bail!("the trained layer has NaN or infinite weights: lower --learning-rate and retrain");
    }
    let proto = combined_onnx(backbones, layer, labels, final_tensor_name)?;
    Ok(RetrainedGraphFile::Onnx(Box::new(proto)))
}

/// The retrained graph: the backbone cut at its bottleneck plus the new final layer, in
/// the backbone's format, describing itself (labels, preprocessing) in its metadata and
/// carrying its digest. A layer with NaN or infinite weights is refused: such a graph
/// would answer NaN for every image.
pub fn retrained_graph(
    backbone: &Backbone,
    layer: &FinalLayer,
    labels: &[String],
    final_tensor_name: &str,
) -> Result<RetrainedGraphFile> {
    if !layer.is_finite() {
        bail!("the trained layer has NaN or infinite weights: lower --learning-rate and retrain");
    }
    match &backbone.graph {
        BackboneGraph::Onnx(_) => Ok(RetrainedGraphFile::Onnx(Box::new(retrained_onnx(
            backbone,
            layer,
            labels,
            final_tensor_name,
        )?))),
        BackboneGraph::TensorFlow(graph) => {
            let metadata = graph_metadata(backbone, labels, final_tensor_name);
            let weights: Vec<f32> = layer.weights.iter().copied().collect();
            let biases: Vec<f32> = layer.biases.iter().copied().collect();
            let nodes = FinalLayerNodes {
                bottleneck: &backbone.bottleneck,
                weights: &weights,
                biases: &biases,
                final_tensor_name,
                metadata: &entries_with_digest(&metadata),
            };
            Ok(RetrainedGraphFile::TensorFlow(
                tensorflow::with_final_layer(graph, &nodes)?,
            ))
        }
    }
}

/// What a retrained graph says about itself: its labels, the backbone's preprocessing and
/// identity, and its input and output names. The TensorFlow graph and the TensorFlow Lite
/// file written beside it carry the same.
pub fn graph_metadata(
    backbone: &Backbone,
    labels: &[String],
    final_tensor_name: &str,
) -> GraphMetadata {
    GraphMetadata {
        labels: Some(labels.to_vec()),
        preprocessing: backbone.preprocessing.clone(),
        backbone: Some(format!("{} sha256:{}", backbone.name, backbone.sha256)),
        input: Some(backbone.input_name.clone()),
        output: Some(final_tensor_name.to_string()),
        inputs: Vec::new(),
    }
}

const PREFIX: &str = "final_layer/";

/// The retrained graph as an ONNX model.
fn retrained_onnx(
    backbone: &Backbone,
    layer: &FinalLayer,
    labels: &[String],
    final_tensor_name: &str,
) -> Result<ModelProto> {
    let BackboneGraph::Onnx(proto) = &backbone.graph else {
        bail!("the backbone is not an ONNX model");
    };
    let mut proto = (**proto).clone();
    let graph = proto
        .graph
        .as_mut()
        .ok_or_else(|| anyhow!("backbone has no graph"))?;
    cut_after(graph, &backbone.bottleneck);
    let taken: HashSet<String> = graph.node.iter().flat_map(|n| n.output.clone()).collect();
    if taken.contains(final_tensor_name) || final_tensor_name.starts_with(PREFIX) {
        bail!(
            "--final-tensor-name {final_tensor_name:?} clashes with a tensor of the backbone: choose another name"
        );
    }
    append_final_layer(graph, &backbone.bottleneck, layer, final_tensor_name);
    let batch = batch_dim(graph, &backbone.input_name);
    graph.output = vec![float_value_info(
        final_tensor_name,
        vec![batch, dim_value(labels.len() as i64)],
    )];
    proto.producer_name = "flowers".into();
    proto.producer_version = env!("CARGO_PKG_VERSION").into();
    let metadata = GraphMetadata {
        labels: Some(labels.to_vec()),
        preprocessing: backbone.preprocessing.clone(),
        backbone: Some(format!("{} sha256:{}", backbone.name, backbone.sha256)),
        input: None,
        output: None,
        inputs: Vec::new(),
    };
    set_metadata(&mut proto, &metadata);
    Ok(proto)
}

/// Replaces flowers' metadata entries of `proto` with `metadata`'s, digest last.
fn set_metadata(proto: &mut ModelProto, metadata: &GraphMetadata) {
    proto
        .metadata_props
        .retain(|p| !p.key.starts_with(keys::PREFIX));
    let entries = entries_with_digest(metadata).into_iter();
    proto
        .metadata_props
        .extend(entries.map(|(key, value)| pb::StringStringEntryProto {
            key: key.to_string(),
            value,
        }));
}

/// The graph of combined ONNX backbones: each cut at its bottleneck with every name
/// behind [`name_prefix`], side by side, then Flatten each, Concat, Gemm, Softmax.
fn combined_onnx(
    backbones: &Backbones,
    layer: &FinalLayer,
    labels: &[String],
    final_tensor_name: &str,
) -> Result<ModelProto> {
    let mut graph = pb::GraphProto {
        name: "flowers_combined".into(),
        ..Default::default()
    };
    let mut model = ModelProto::default();
    let mut bottlenecks = Vec::new();
    let mut inputs = Vec::new();
    for (i, backbone) in backbones.parts().iter().enumerate() {
        let BackboneGraph::Onnx(proto) = &backbone.graph else {
            bail!(
                "{} is not an ONNX model: it cannot be combined",
                backbone.name
            );
        };
        let prefix = name_prefix(i);
        let mut part = proto
            .graph
            .clone()
            .ok_or_else(|| anyhow!("backbone {} has no graph", backbone.name))?;
        cut_after(&mut part, &backbone.bottleneck);
        renamed(&mut part, &prefix, &backbone.name)?;
        let input = format!("{prefix}{}", backbone.input_name);
        if i == 0 {
            model.ir_version = proto.ir_version;
            model.opset_import = proto.opset_import.clone();
            graph.output = vec![float_value_info(
                final_tensor_name,
                vec![batch_dim(&part, &input), dim_value(labels.len() as i64)],
            )];
        }
        model.ir_version = model.ir_version.max(proto.ir_version);
        graph.node.append(&mut part.node);
        graph.initializer.append(&mut part.initializer);
        graph.input.append(&mut part.input);
        graph.value_info.append(&mut part.value_info);
        bottlenecks.push(format!("{prefix}{}", backbone.bottleneck));
        inputs.push(GraphInput {
            name: input,
            preprocessing: backbone.preprocessing.clone(),
            backbone: format!("{} sha256:{}", backbone.name, backbone.sha256),
        });
    }
    if graph
        .node
        .iter()
        .any(|n| n.output.iter().any(|o| o == final_tensor_name))
    {
        bail!("--final-tensor-name {final_tensor_name:?} clashes with a tensor of the backbones: choose another name");
    }
    append_combined_layer(&mut graph, &bottlenecks, layer, final_tensor_name);
    model.graph = Some(graph);
    model.producer_name = "flowers".into();
    model.producer_version = env!("CARGO_PKG_VERSION").into();
    let metadata = GraphMetadata {
        labels: Some(labels.to_vec()),
        preprocessing: backbones.parts()[0].preprocessing.clone(),
        backbone: Some(backbones.describe()),
        input: None,
        output: None,
        inputs,
    };
    set_metadata(&mut model, &metadata);
    Ok(model)
}

/// Puts `prefix` before every name of `graph` (nodes, tensors, inputs, initializers),
/// leaving the empty name of an omitted optional input as it is. A backbone with
/// subgraphs (`If`, `Loop`) is refused: their names would need the same care.
fn renamed(graph: &mut pb::GraphProto, prefix: &str, backbone: &str) -> Result<()> {
    let rename = |name: &mut String| {
        if !name.is_empty() {
            *name = format!("{prefix}{name}");
        }
    };
    for node in &mut graph.node {
        if node
            .attribute
            .iter()
            .any(|a| a.g.is_some() || !a.graphs.is_empty())
        {
            bail!(
                "backbone {backbone} has subgraphs (node {:?}): it cannot be combined",
                node.name
            );
        }
        rename(&mut node.name);
        node.input.iter_mut().for_each(rename);
        node.output.iter_mut().for_each(rename);
    }
    graph
        .initializer
        .iter_mut()
        .for_each(|t| rename(&mut t.name));
    graph.input.iter_mut().for_each(|v| rename(&mut v.name));
    graph
        .value_info
        .iter_mut()
        .for_each(|v| rename(&mut v.name));
    if !graph.sparse_initializer.is_empty() {
        bail!("backbone {backbone} has sparse initializers: it cannot be combined");
    }
    Ok(())
}

/// Flatten each bottleneck, Concat them (in backbone order, the order of the trained
/// layer's rows), then Gemm and Softmax as for one backbone.
fn append_combined_layer(
    graph: &mut pb::GraphProto,
    bottlenecks: &[String],
    layer: &FinalLayer,
    final_tensor_name: &str,
) {
    let mut flat = Vec::new();
    for (i, bottleneck) in bottlenecks.iter().enumerate() {
        let name = format!("{PREFIX}bottleneck_{}", i + 1);
        let mut flatten = node(
            "Flatten",
            &[bottleneck],
            &name,
            vec![int_attribute("axis", 1)],
        );
        flatten.name = format!("{PREFIX}flatten_{}", i + 1);
        graph.node.push(flatten);
        flat.push(name);
    }
    let joined = format!("{PREFIX}bottleneck");
    let parts: Vec<&str> = flat.iter().map(String::as_str).collect();
    graph.node.push(node(
        "Concat",
        &parts,
        &joined,
        vec![int_attribute("axis", 1)],
    ));
    append_layer_on(graph, &joined, layer, final_tensor_name);
}

/// The metadata entries, then the digest to be sealed once the graph is encoded.
fn entries_with_digest(metadata: &GraphMetadata) -> Vec<(&'static str, String)> {
    let mut entries = metadata.to_entries();
    entries.push((keys::DIGEST, digest::UNSEALED.to_string()));
    entries
}

/// Keeps only the nodes, initializers and value infos the bottleneck depends on.
fn cut_after(graph: &mut pb::GraphProto, bottleneck: &str) {
    let mut needed: HashSet<String> = HashSet::from([bottleneck.to_string()]);
    let mut kept = Vec::new();
    for node in graph.node.drain(..).rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            needed.extend(node.input.iter().cloned());
            kept.push(node);
        }
    }
    kept.reverse();
    graph.node = kept;
    graph.initializer.retain(|t| needed.contains(&t.name));
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let live: HashSet<&str> = needed.iter().map(String::as_str).collect();
    graph
        .input
        .retain(|i| !inits.contains(i.name.as_str()) || live.contains(i.name.as_str()));
    graph.value_info.retain(|v| live.contains(v.name.as_str()));
}

fn append_final_layer(
    graph: &mut pb::GraphProto,
    bottleneck: &str,
    layer: &FinalLayer,
    final_tensor_name: &str,
) {
    let flat = format!("{PREFIX}bottleneck");
    graph.node.push(node(
        "Flatten",
        &[bottleneck],
        &flat,
        vec![int_attribute("axis", 1)],
    ));
    append_layer_on(graph, &flat, layer, final_tensor_name);
}

/// Gemm (the trained weights and biases) on the flat bottleneck, then Softmax.
fn append_layer_on(
    graph: &mut pb::GraphProto,
    flat: &str,
    layer: &FinalLayer,
    final_tensor_name: &str,
) {
    let weights = format!("{PREFIX}weights");
    let biases = format!("{PREFIX}biases");
    let logits = format!("{PREFIX}logits");
    let (rows, cols) = layer.weights.dim();
    graph.initializer.push(float_tensor(
        &weights,
        vec![rows as i64, cols as i64],
        layer.weights.iter(),
    ));
    graph.initializer.push(float_tensor(
        &biases,
        vec![cols as i64],
        layer.biases.iter(),
    ));
    graph
        .node
        .push(node("Gemm", &[flat, &weights, &biases], &logits, vec![]));
    graph.node.push(node(
        "Softmax",
        &[&logits],
        final_tensor_name,
        vec![int_attribute("axis", 1)],
    ));
}

fn batch_dim(graph: &pb::GraphProto, input: &str) -> pb::tensor_shape_proto::Dimension {
    use pb::type_proto::Value;
    graph
        .input
        .iter()
        .find(|i| i.name == input)
        .and_then(|i| match i.r#type.as_ref()?.value.as_ref()? {
            Value::TensorType(t) => t.shape.as_ref()?.dim.first().cloned(),
        })
        .unwrap_or_else(|| pb::tensor_shape_proto::Dimension {
            denotation: String::new(),
            value: Some(pb::tensor_shape_proto::dimension::Value::DimParam(
                "N".into(),
            )),
        })
}

fn dim_value(value: i64) -> pb::tensor_shape_proto::Dimension {
    pb::tensor_shape_proto::Dimension {
        denotation: String::new(),
        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(value)),
    }
}

fn float_value_info(
    name: &str,
    dims: Vec<pb::tensor_shape_proto::Dimension>,
) -> pb::ValueInfoProto {
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: pb::tensor_proto::DataType::Float as i32,
                shape: Some(pb::TensorShapeProto { dim: dims }),
            })),
        }),
        doc_string: String::new(),
    }
}

fn float_tensor<'a>(
    name: &str,
    dims: Vec<i64>,
    values: impl Iterator<Item = &'a f32>,
) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims,
        data_type: pb::tensor_proto::DataType::Float as i32,
        raw_data: values.flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

fn node(
    op: &str,
    inputs: &[&str],
    output: &str,
    attribute: Vec<pb::AttributeProto>,
) -> pb::NodeProto {
    pb::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.to_string()],
        name: format!("{PREFIX}{}", op.to_lowercase()),
        op_type: op.to_string(),
        attribute,
        ..Default::default()
    }
}

fn int_attribute(name: &str, value: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.to_string(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// Writes the retrained graph; a file name whose extension says another format gets one
/// warning line (the file is what its content says, whatever its name).
pub fn write_graph(path: &Path, graph: &RetrainedGraphFile) -> Result<()> {
    let extension = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let other = match graph.format() {
        ModelFormat::Onnx => extension == "pb",
        ModelFormat::TensorFlow => extension == "onnx",
    };
    if other {
        crate::warn!(
            "{} is named .{extension}, but it is {} (the backbone's format); name it .{}",
            path.display(),
            graph.format().as_str(),
            graph.extension()
        );
    }
    write_atomically(path, &graph.encode())
}

/// Writes the labels file: one label per line, in output order.
pub fn write_labels(path: &Path, labels: &[String]) -> Result<()> {
    let mut text = labels.join("\n");
    text.push('\n');
    write_atomically(path, text.as_bytes())
}
