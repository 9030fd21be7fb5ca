//! A retrained graph (in memory, or a file's bytes) -> its float `.tflite` file.

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::pb::ModelProto;

use super::file;
use super::ir::Model;
use super::quantize::{self, QuantizeOptions, TrainingImages};
use super::{convert, convert_tf};
use crate::backbone::onnx::decode_model;
use crate::backbone::tensorflow;
use crate::graph::export::RetrainedGraphFile;
use crate::graph::metadata::GraphMetadata;
use crate::image::Layout;

/// The TFLite model and metadata of a retrained graph file's bytes (already checked
/// against its digest), shown as `display` in errors.
pub fn from_graph_bytes(bytes: Vec<u8>, display: &str) -> Result<(Model, GraphMetadata)> {
    if tensorflow::looks_like_graph_def(&bytes) {
        let graph = tensorflow::decode_graph(bytes, display)?;
        let entries = graph.metadata().ok_or_else(|| {
            anyhow!("{display} has no flowers metadata (was it written by `flowers retrain`?)")
        })?;
        let metadata =
            GraphMetadata::from_entries(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .with_context(|| format!("{display} has damaged flowers metadata"))?;
        let model = from_tensorflow(&graph, &metadata, display)?;
        return Ok((model, metadata));
    }
    let proto = decode_model(bytes, display)?;
    let metadata = GraphMetadata::of_onnx(&proto, display)?;
    let model = from_onnx(&proto, &metadata, display)?;
    Ok((model, metadata))
}

/// The TFLite model of an ONNX retrained graph described by `metadata`.
pub fn from_onnx(proto: &ModelProto, metadata: &GraphMetadata, display: &str) -> Result<Model> {
    if metadata.inputs.len() > 1 {
        bail!(
            "{display} is a graph of {} combined backbones, one input each: the TensorFlow Lite export takes graphs of one backbone",
            metadata.inputs.len()
        );
    }
    let p = &metadata.preprocessing;
    if p.layout != Layout::Nchw {
        bail!("{display} takes NHWC input: the TensorFlow Lite export reads NCHW ONNX graphs");
    }
    convert::from_onnx(proto, p.height as usize, p.width as usize, display)
}

/// The TFLite model of a TensorFlow retrained graph described by `metadata` (fed at its
/// `flowers.input`, `input` by default, output `flowers.output`, `final_result` by default).
pub fn from_tensorflow(
    graph: &tensorflow::GraphDef,
    metadata: &GraphMetadata,
    display: &str,
) -> Result<Model> {
    let input = metadata.input.as_deref().unwrap_or("input");
    let output = metadata.output.as_deref().unwrap_or("final_result");
    let p = &metadata.preprocessing;
    let size = [p.height as usize, p.width as usize];
    convert_tf::from_tensorflow(graph, input, output, size, display)
}

/// The float `.tflite` file of a retrained graph just trained, with its labels and
/// preprocessing.
pub fn tflite_file(
    graph: &RetrainedGraphFile,
    metadata: &GraphMetadata,
    display: &str,
) -> Result<Vec<u8>> {
    quantized_tflite_file(graph, metadata, display, &QuantizeOptions::default(), None)
}

/// [`tflite_file`] quantized as `quantize` says (int8 calibrating on `training`).
pub fn quantized_tflite_file(
    graph: &RetrainedGraphFile,
    metadata: &GraphMetadata,
    display: &str,
    quantize: &QuantizeOptions,
    training: Option<TrainingImages<'_>>,
) -> Result<Vec<u8>> {
    let model = match graph {
        RetrainedGraphFile::Onnx(proto) => from_onnx(proto, metadata, display)?,
        RetrainedGraphFile::TensorFlow(graph) => from_tensorflow(graph, metadata, display)?,
    };
    let model = quantize::apply(model, quantize, &metadata.preprocessing, training)?;
    file::encode(&model, metadata).map_err(|e| anyhow!("{display}: {e}"))
}
