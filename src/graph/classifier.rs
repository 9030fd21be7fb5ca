//! A retrained graph, loaded to classify images: flowers' ONNX graphs, flowers' TensorFlow
//! graphs, and the graphs retrain.py itself wrote. For flowers' graphs the preprocessing
//! comes from the graph's own metadata, so it cannot drift from what retrain did; a
//! contradicting label_image.py flag gets a warning. retrain.py's graphs carry none, so
//! label_image.py's flags and defaults apply, with its exact resizing.

use std::borrow::Cow;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use prost::bytes::Bytes;
use serde::Serialize;
use tract_onnx::pb::ModelProto;

use super::metadata::GraphMetadata;
use super::tflite;
use super::tflite::run::Interpreter;
use crate::backbone::limits::{self, quote};
use crate::backbone::onnx::decode_model;
use crate::backbone::onnx_file;
use crate::backbone::tensorflow::{self, GraphDef};
use crate::backbone::Plan;
use crate::image::{decode_rgb, Layout, Preprocessing, ResizeRule};
use crate::problem::Problem;
use crate::util::files::{open_bounded, read_exact_at, read_opened, read_regular};
use crate::util::panic_guard::{catching_panics, catching_panics_in};

/// The labels file read when neither `--labels` nor the graph gives labels.
pub const DEFAULT_LABELS: &str = "retrained_labels.txt";

/// Why an image whose scores are NaN or infinite was not labelled.
pub const NOT_FINITE: &str =
    "the graph gave NaN or infinite scores (damaged or diverged weights): retrain it";

/// label_image.py's options. They describe graphs that do not describe themselves
/// (retrain.py's); flowers' own graphs carry the truth, and a flag that contradicts it is
/// ignored with a warning.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelImageFlags {
    pub input_layer: Option<String>,
    pub output_layer: Option<String>,
    pub input_height: Option<u32>,
    pub input_width: Option<u32>,
    pub input_mean: Option<f32>,
    pub input_std: Option<f32>,
}

/// label_image.py's defaults (tensorflow-for-poets-2), for graphs without metadata.
const LEGACY_INPUT: &str = "input";
const LEGACY_OUTPUT: &str = "final_result";
const LEGACY_SIZE: u32 = 224;
const LEGACY_MEAN: f32 = 128.0;
const LEGACY_STD: f32 = 128.0;

/// A retrained graph ready to label images.
pub struct RetrainedGraph {
    pub labels: Vec<String>,
    pub preprocessing: Preprocessing,
    runner: Runner,
}

/// What computes the scores: tract for ONNX and TensorFlow graphs, flowers' own TFLite
/// interpreter for `.tflite` files.
enum Runner {
    Tract(Plan),
    Tflite(Interpreter),
}

impl Runner {
    fn output_len(&self) -> usize {
        match self {
            Runner::Tract(plan) => plan.output_len,
            Runner::Tflite(interpreter) => interpreter.output_len(),
        }
    }
}

/// One class and its probability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub label: String,
    pub score: f32,
    /// Index of the label in output order.
    #[serde(skip)]
    pub class: usize,
}

impl RetrainedGraph {
    /// Loads a retrained graph, ONNX or TensorFlow (told apart by content). `labels_file`,
    /// when given, must agree with the labels the graph carries; a graph without labels
    /// needs one.
    pub fn load(
        path: &Path,
        labels_file: Option<&Path>,
        flags: &LabelImageFlags,
    ) -> Result<RetrainedGraph> {
        let cannot_read = |e| anyhow!("cannot read graph {}: {e}", path.display());
        let display = path.display().to_string();
        let (file, size) = open_bounded(path, limits::MAX_GRAPH_BYTES).map_err(cannot_read)?;
        let mut head = [0; 8];
        let head = &mut head[..size.min(8) as usize];
        read_exact_at(&file, head, 0).map_err(|e| cannot_read(e.into()))?;
        if Format::of(head) != Format::Onnx {
            let bytes = read_opened(file, size, limits::MAX_GRAPH_BYTES).map_err(cannot_read)?;
            return RetrainedGraph::from_bytes(bytes, &display, labels_file, flags);
        }
        // An ONNX graph is read from the file as it is decoded, its weights straight into
        // their buffers ([`onnx_file`]), and the digest hashes the file on its own.
        let (intact, loaded) = std::thread::scope(|scope| {
            let checking = scope.spawn(|| super::digest::verify_file(&file, size, &display));
            let loaded = catching_panics_in(&display, || {
                let model = OnnxModel::OnDisk(onnx_file::read(&file, size, &display)?);
                load_onnx(model, labels_file, flags, &display)
            });
            (checking.join(), loaded)
        });
        intact.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        let (labels, plan) = loaded?;
        RetrainedGraph::new(
            labels,
            plan.preprocessing.clone(),
            Runner::Tract(plan),
            &display,
        )
    }

    /// [`RetrainedGraph::load`] for a graph already read, shown as `display` in errors.
    /// Decoding, the checks and tract's model building run behind the panic guard, so a
    /// panic on a damaged graph is an error naming it.
    pub fn from_bytes(
        bytes: Vec<u8>,
        display: &str,
        labels_file: Option<&Path>,
        flags: &LabelImageFlags,
    ) -> Result<RetrainedGraph> {
        // The digest (a pass of sha256 over the whole file) runs on a second thread while
        // this one decodes the graph and builds the plan: both take milliseconds, and a
        // damaged graph is still refused by its digest before anything else is said.
        let bytes = Bytes::from(bytes);
        let (intact, loaded) = std::thread::scope(|scope| {
            let hashed = bytes.clone();
            let checking = scope.spawn(move || super::digest::verify(&hashed, display));
            let loaded =
                catching_panics_in(display, || load_any(bytes, labels_file, flags, display));
            (checking.join(), loaded)
        });
        intact.unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        let (labels, preprocessing, runner) = loaded?;
        RetrainedGraph::new(labels, preprocessing, runner, display)
    }

    fn new(
        labels: Vec<String>,
        preprocessing: Preprocessing,
        runner: Runner,
        display: &str,
    ) -> Result<RetrainedGraph> {
        if labels.len() != runner.output_len() {
            bail!(
                "{display} has {} outputs but {} labels: pass the labels file written with this graph",
                runner.output_len(),
                labels.len()
            );
        }
        Ok(RetrainedGraph {
            labels,
            preprocessing,
            runner,
        })
    }

    /// Probabilities for one image's bytes, in label order. NaN or infinite scores are a
    /// failure of the graph on this image, never an answer.
    pub fn probabilities(&self, bytes: &[u8]) -> Result<Vec<f32>, Problem> {
        if let Runner::Tract(plan) = &self.runner {
            if plan.inputs.len() > 1 {
                return self.combined_probabilities(plan, bytes);
            }
        }
        let input = self.preprocessing.tensor_from_bytes(bytes)?;
        let scores = match &self.runner {
            Runner::Tract(plan) => plan.run(input),
            Runner::Tflite(interpreter) => input
                .try_as_plain_ram()
                .and_then(|plain| interpreter.run(plain.as_slice::<f32>()?)),
        };
        let scores = scores.map_err(|e| Problem::InferenceFailed(format!("{e:#}")))?;
        if scores.iter().any(|s| !s.is_finite()) {
            return Err(Problem::InferenceFailed(NOT_FINITE.into()));
        }
        Ok(scores)
    }

    /// [`RetrainedGraph::probabilities`] of a graph of combined backbones: the image is
    /// decoded once and made into each input's tensor.
    fn combined_probabilities(&self, plan: &Plan, bytes: &[u8]) -> Result<Vec<f32>, Problem> {
        let rgb = catching_panics(|| decode_rgb(bytes))?;
        let inputs = plan
            .inputs
            .iter()
            .map(|p| catching_panics(|| p.tensor_from_rgb(rgb.clone())))
            .collect::<Result<Vec<_>, Problem>>()?;
        let scores = plan
            .run_all(inputs)
            .map_err(|e| Problem::InferenceFailed(format!("{e:#}")))?;
        if scores.iter().any(|s| !s.is_finite()) {
            return Err(Problem::InferenceFailed(NOT_FINITE.into()));
        }
        Ok(scores)
    }

    /// The `k` most probable labels, best first.
    pub fn top_k(&self, probabilities: &[f32], k: usize) -> Vec<Prediction> {
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        order
            .into_iter()
            .take(k)
            .map(|i| Prediction {
                label: self.labels[i].clone(),
                score: probabilities[i],
                class: i,
            })
            .collect()
    }

    /// Reads and classifies one file.
    pub fn label_file(&self, path: &Path, k: usize) -> Result<Vec<Prediction>, Problem> {
        let bytes = fs::read(path).map_err(|e| Problem::from_io(&e))?;
        let probabilities = self.probabilities(&bytes)?;
        Ok(self.top_k(&probabilities, k))
    }
}

/// The kinds of graph file flowers reads, told apart by their first bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    Tflite,
    TensorFlow,
    Onnx,
}

impl Format {
    /// The format of a file starting with `head` (its first eight bytes, or all of a
    /// shorter file): whatever is neither TensorFlow Lite nor TensorFlow is tried as ONNX.
    fn of(head: &[u8]) -> Format {
        if tflite::read::looks_like_tflite(head) {
            Format::Tflite
        } else if tensorflow::looks_like_graph_def(head) {
            Format::TensorFlow
        } else {
            Format::Onnx
        }
    }
}

/// Any graph flowers reads, told apart by content: TensorFlow Lite, TensorFlow, ONNX.
fn load_any(
    bytes: Bytes,
    labels_file: Option<&Path>,
    flags: &LabelImageFlags,
    display: &str,
) -> Result<(Vec<String>, Preprocessing, Runner)> {
    let (labels, plan) = match Format::of(&bytes) {
        Format::Tflite => return load_tflite(&bytes, labels_file, flags, display),
        Format::TensorFlow => {
            let graph = tensorflow::decode_graph(bytes, display)?;
            load_tensorflow(graph, labels_file, flags, display)?
        }
        // Consumed, so its memory is freed for the copies tract makes next.
        Format::Onnx => {
            let proto = decode_model(bytes, display)?;
            load_onnx(OnnxModel::Decoded(proto), labels_file, flags, display)?
        }
    };
    Ok((labels, plan.preprocessing.clone(), Runner::Tract(plan)))
}

/// flowers' ONNX graph: everything from its metadata.
fn load_onnx(
    model: OnnxModel,
    labels_file: Option<&Path>,
    flags: &LabelImageFlags,
    display: &str,
) -> Result<(Vec<String>, Plan)> {
    let proto = model.proto();
    let metadata = GraphMetadata::of_onnx(proto, display)?;
    let graph = proto.graph.as_ref();
    let output = graph
        .and_then(|g| g.output.first())
        .map(|o| o.name.clone())
        .ok_or_else(|| anyhow!("{display} has no output"))?;
    let input = graph
        .and_then(|g| g.input.first())
        .map(|i| i.name.clone())
        .unwrap_or_default();
    warn_about_flags(flags, &metadata.preprocessing, &input, &output, display);
    let labels = resolve_labels(metadata.labels.clone(), labels_file, display)?;
    let inputs = metadata.input_list();
    let plan = match model {
        OnnxModel::Decoded(proto) => Plan::with_inputs(Cow::Owned(proto), &inputs, &output),
        OnnxModel::OnDisk(file) => Plan::from_onnx_file(file, &inputs, &output),
    };
    let plan = plan.with_context(|| format!("cannot prepare {display} for inference"))?;
    Ok((labels, plan))
}

/// An ONNX graph decoded from memory, or read from its file with its weights left there
/// until tract needs them.
enum OnnxModel<'f> {
    Decoded(ModelProto),
    OnDisk(onnx_file::OnnxFile<'f>),
}

impl OnnxModel<'_> {
    fn proto(&self) -> &ModelProto {
        match self {
            OnnxModel::Decoded(proto) => proto,
            OnnxModel::OnDisk(file) => &file.proto,
        }
    }
}

/// A `.tflite` file flowers wrote: preprocessing and labels from its flowers metadata.
fn load_tflite(
    bytes: &[u8],
    labels_file: Option<&Path>,
    flags: &LabelImageFlags,
    display: &str,
) -> Result<(Vec<String>, Preprocessing, Runner)> {
    let file = tflite::file::decode(bytes, display)?;
    let metadata = file.metadata;
    let (input, output) = {
        let model = &file.model;
        (model.input()?.name.clone(), model.output()?.name.clone())
    };
    warn_about_flags(flags, &metadata.preprocessing, &input, &output, display);
    let labels = resolve_labels(metadata.labels, labels_file, display)?;
    let interpreter =
        Interpreter::new(file.model).map_err(|e| anyhow!("{display} cannot be run: {e}"))?;
    Ok((labels, metadata.preprocessing, Runner::Tflite(interpreter)))
}

/// A TensorFlow graph: flowers' (with metadata) or retrain.py's (label_image.py's flags).
fn load_tensorflow(
    graph: GraphDef,
    labels_file: Option<&Path>,
    flags: &LabelImageFlags,
    display: &str,
) -> Result<(Vec<String>, Plan)> {
    let (preprocessing, input, output, embedded) = match graph.metadata() {
        Some(entries) => {
            let metadata =
                GraphMetadata::from_entries(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .with_context(|| format!("{display} has damaged flowers metadata"))?;
            let input = metadata.input.unwrap_or_else(|| LEGACY_INPUT.into());
            let output = metadata.output.unwrap_or_else(|| LEGACY_OUTPUT.into());
            warn_about_flags(flags, &metadata.preprocessing, &input, &output, display);
            (metadata.preprocessing, input, output, metadata.labels)
        }
        None => {
            let input = flags
                .input_layer
                .clone()
                .unwrap_or_else(|| LEGACY_INPUT.into());
            let output = flags
                .output_layer
                .clone()
                .unwrap_or_else(|| LEGACY_OUTPUT.into());
            let (height, width) = legacy_size(&graph, &input, flags, display);
            let preprocessing = Preprocessing {
                height,
                width,
                layout: Layout::Nhwc,
                mean: [flags.input_mean.unwrap_or(LEGACY_MEAN); 3],
                std: [flags.input_std.unwrap_or(LEGACY_STD); 3],
                resize: ResizeRule::SquashTf,
            };
            (preprocessing, input, output, None)
        }
    };
    for name in [&input, &output] {
        if graph.node(tensorflow::node_name(name)).is_none() {
            bail!(
                "{display} has no node {}: give the right one with --input_layer / --output_layer",
                quote(name)
            );
        }
    }
    let labels = resolve_labels(embedded, labels_file, display)?;
    let plan = Plan::from_tensorflow(&graph, &preprocessing, &input, &output)
        .with_context(|| format!("cannot prepare {display} for inference"))?;
    Ok((labels, plan))
}

/// The input size of a graph without metadata: fixed in the graph if it is (label_image.py
/// then failed on any other size), else the flags, else 224 (299 for Inception's `Mul`).
fn legacy_size(
    graph: &GraphDef,
    input: &str,
    flags: &LabelImageFlags,
    display: &str,
) -> (u32, u32) {
    let asked = (flags.input_height, flags.input_width);
    match graph.placeholder_size(input) {
        Some(fixed) => {
            if asked.0.is_some_and(|h| h != fixed.0) || asked.1.is_some_and(|w| w != fixed.1) {
                crate::warn!(
                    "{display} takes {}x{} images: --input_height/--input_width ignored",
                    fixed.0,
                    fixed.1
                );
            }
            fixed
        }
        None => {
            // Inception's graphs are fed at `Mul`, after their own 299x299 resizing.
            let inception = tensorflow::node_name(input) == "Mul"
                && graph.node.iter().any(|n| n.op == "DecodeJpeg");
            let side = if inception { 299 } else { LEGACY_SIZE };
            (asked.0.unwrap_or(side), asked.1.unwrap_or(side))
        }
    }
}

/// One warning line per label_image.py flag that contradicts what the graph says.
fn warn_about_flags(
    flags: &LabelImageFlags,
    truth: &Preprocessing,
    input: &str,
    output: &str,
    display: &str,
) {
    let mut contradictions = Vec::new();
    let differs = |flag: Option<f32>, value: [f32; 3]| flag.is_some_and(|f| value != [f; 3]);
    if flags.input_height.is_some_and(|h| h != truth.height) {
        contradictions.push(format!("--input_height (the graph takes {})", truth.height));
    }
    if flags.input_width.is_some_and(|w| w != truth.width) {
        contradictions.push(format!("--input_width (the graph takes {})", truth.width));
    }
    if differs(flags.input_mean, truth.mean) {
        contradictions.push(format!("--input_mean (the graph uses {:?})", truth.mean));
    }
    if differs(flags.input_std, truth.std) {
        contradictions.push(format!("--input_std (the graph uses {:?})", truth.std));
    }
    let same_tensor = |flag: &Option<String>, name: &str| {
        flag.as_deref()
            .is_none_or(|f| tensorflow::node_name(f) == tensorflow::node_name(name))
    };
    if !same_tensor(&flags.input_layer, input) {
        contradictions.push(format!(
            "--input_layer (the graph is fed at {})",
            quote(input)
        ));
    }
    if !same_tensor(&flags.output_layer, output) {
        contradictions.push(format!(
            "--output_layer (the graph's output is {})",
            quote(output)
        ));
    }
    if !contradictions.is_empty() {
        crate::warn!(
            "{display} describes its own preprocessing; ignoring {}",
            contradictions.join(", ")
        );
    }
}

/// The graph's labels: its own, checked against `labels_file` when one is given; else the
/// labels file; else `retrained_labels.txt` in the current folder, as label_image.py did.
fn resolve_labels(
    embedded: Option<Vec<String>>,
    labels_file: Option<&Path>,
    display: &str,
) -> Result<Vec<String>> {
    let from_file = labels_file
        .map(|path| read_labels(path).map(|labels| (labels, path)))
        .transpose()?;
    match (embedded, from_file) {
        (Some(embedded), Some((file, path))) if embedded != file => bail!(
            "labels file {} does not match the labels inside {display} ({} vs {} labels{}): pass the labels file written with this graph, or leave --labels out",
            path.display(),
            file.len(),
            embedded.len(),
            first_difference(&file, &embedded)
        ),
        (Some(embedded), _) => Ok(embedded),
        (None, Some((file, _))) => Ok(file),
        (None, None) => {
            let default = Path::new(DEFAULT_LABELS);
            if default.is_file() {
                read_labels(default)
            } else {
                bail!("{display} carries no labels: pass --labels FILE")
            }
        }
    }
}

fn first_difference(a: &[String], b: &[String]) -> String {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|i| {
            format!(
                "; line {} is {}, expected {}",
                i + 1,
                quote(&a[i]),
                quote(&b[i])
            )
        })
        .unwrap_or_default()
}

/// Reads a labels file: one label per line; a trailing empty line is allowed. Like a
/// graph, it must be a regular file, of at most [`limits::MAX_LABELS_BYTES`].
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let bytes = read_regular(path, limits::MAX_LABELS_BYTES)
        .map_err(|e| anyhow!("cannot read labels file {}: {e}", path.display()))?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow!("labels file {} is not UTF-8 text", path.display()))?;
    Ok(text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect())
}
