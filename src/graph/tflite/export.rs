//! A retrained graph (in memory, or a file's bytes) -> its float `.tflite` file.

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::pb::ModelProto;

use super::convert;
use super::file;
use super::ir::Model;
use super::quantize::{self, QuantizeOptions, TrainingImages};
use crate::backbone::onnx::decode_model;
use crate::backbone::tensorflow;
use crate::graph::export::RetrainedGraphFile;
use crate::graph::metadata::GraphMetadata;
use crate::image::Layout;

/// The TFLite model and metadata of a retrained graph file's bytes (already checked
/// against its digest), shown as `display` in errors.
pub fn from_graph_bytes(bytes: Vec<u8>, display: &str) -> Result<(Model, GraphMetadata)> {
    if tensorflow::looks_like_graph_def(&bytes) {
        bail!("{display} is a TensorFlow graph: the TensorFlow Lite export reads flowers' ONNX graphs; retrain with an ONNX backbone (the default, or --architecture mobilenetv2-12, ...)");
    }
    let proto = decode_model(bytes, display)?;
    let entries = proto.metadata_props.iter();
    let metadata = GraphMetadata::from_entries(entries.map(|p| (p.key.as_str(), p.value.as_str())))
        .with_context(|| {
            format!(
                "{display} has no usable flowers metadata (was it written by `flowers retrain`?)"
            )
        })?;
    let model = from_onnx(&proto, &metadata, display)?;
    Ok((model, metadata))
}

/// The TFLite model of an ONNX retrained graph described by `metadata`.
pub fn from_onnx(proto: &ModelProto, metadata: &GraphMetadata, display: &str) -> Result<Model> {
    let p = &metadata.preprocessing;
    if p.layout != Layout::Nchw {
        bail!("{display} takes NHWC input: the TensorFlow Lite export reads NCHW ONNX graphs");
    }
    convert::from_onnx(proto, p.height as usize, p.width as usize, display)
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
        RetrainedGraphFile::TensorFlow(_) => bail!(
            "--output-tflite: the TensorFlow Lite export reads flowers' ONNX graphs, and this backbone is a TensorFlow graph; retrain with an ONNX backbone"
        ),
    };
    let model = quantize::apply(model, quantize, &metadata.preprocessing, training)?;
    file::encode(&model, metadata).map_err(|e| anyhow!("{display}: {e}"))
}
