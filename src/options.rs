//! What each command is asked to do, as plain data: the command line ([`crate::cli`]) is
//! turned into these once, checked, and the pipelines never see a flag.

use std::path::PathBuf;

use crate::backbone::Choice;
use crate::bottleneck::Shard;
use crate::graph::classifier::LabelImageFlags;
use crate::graph::tflite::quantize::QuantizeOptions;
use crate::image::Distortions;
use crate::train::TrainingOptions;

/// A command to run.
#[derive(Clone, Debug)]
pub enum Command {
    Retrain(Box<RetrainOptions>),
    Label(LabelOptions),
    Evaluate(EvaluateOptions),
    Architectures(ArchitecturesOptions),
    Extract(Box<ExtractOptions>),
    Export(ExportOptions),
}

/// `flowers export`: a retrained graph as a TensorFlow Lite file.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    pub graph: PathBuf,
    /// Checked against the graph's own labels.
    pub labels: Option<PathBuf>,
    pub tflite: TfliteOptions,
}

/// How a `.tflite` file is written (`flowers export`, `retrain --output-tflite`).
#[derive(Clone, Debug)]
pub struct TfliteOptions {
    pub output: PathBuf,
    /// `--quantize`, `--io`, `--calibration-dir`.
    pub quantize: QuantizeOptions,
}

/// `flowers extract`: bottlenecks into the cache, for one shard or all images.
#[derive(Clone, Debug)]
pub struct ExtractOptions {
    pub image_dir: PathBuf,
    pub bottleneck_dir: PathBuf,
    /// The backbones, in order: one, or several side by side.
    pub backbones: Vec<Choice>,
    pub threads: Option<usize>,
    /// `None`: every image.
    pub shard: Option<Shard>,
    pub json: bool,
}

/// `flowers architectures`: the registry, and what of it is on disk.
#[derive(Clone, Debug)]
pub struct ArchitecturesOptions {
    pub model_dir: PathBuf,
    pub json: bool,
}

/// Everything `flowers retrain` can be told.
#[derive(Clone, Debug)]
pub struct RetrainOptions {
    pub image_dir: PathBuf,
    /// `None`: `retrained_graph.onnx`, or `.pb` for a TensorFlow backbone.
    pub output_graph: Option<PathBuf>,
    pub output_labels: PathBuf,
    pub bottleneck_dir: PathBuf,
    pub training: TrainingOptions,
    /// `None`: the whole test set.
    pub test_batch_size: Option<usize>,
    pub testing_percentage: f64,
    pub validation_percentage: f64,
    pub print_misclassified_test_images: bool,
    pub final_tensor_name: String,
    /// The backbones, in order: one, or several side by side.
    pub backbones: Vec<Choice>,
    /// `None`: all cores.
    pub threads: Option<usize>,
    /// TensorBoard event files go to `<dir>/train` and `<dir>/validation`.
    pub summaries_dir: Option<PathBuf>,
    /// Where the PNG pictures go [default: the summaries directory].
    pub report_dir: Option<PathBuf>,
    /// Where `training.snapshot_every` puts its intermediate graphs.
    pub intermediate_output_graphs_dir: PathBuf,
    /// Fail instead of computing bottlenecks missing from the cache.
    pub require_cached: bool,
    /// The most bytes of bottlenecks held mapped; past it they are streamed from disk.
    pub training_memory: u64,
    /// retrain.py's distortions of training images.
    pub distortions: Distortions,
    /// Distorted copies computed per training image when distortions are on.
    pub distorted_copies: usize,
    /// Results as JSON on stdout (the text report then goes to stderr).
    pub json: bool,
    /// Exit code 3 when the final test accuracy is below this fraction.
    pub assert_accuracy_at_least: Option<f64>,
    /// Also write the graph as a TensorFlow Lite file.
    pub output_tflite: Option<TfliteOptions>,
}

/// Everything `flowers label` can be told.
#[derive(Clone, Debug)]
pub struct LabelOptions {
    /// Image files and folders, in the order given.
    pub inputs: Vec<PathBuf>,
    pub graph: PathBuf,
    pub labels: Option<PathBuf>,
    /// label_image.py's flags, for graphs without flowers metadata.
    pub flags: LabelImageFlags,
    pub top_k: usize,
    pub json: bool,
    /// `None`: all cores.
    pub threads: Option<usize>,
}

/// Everything `flowers evaluate` can be told.
#[derive(Clone, Debug)]
pub struct EvaluateOptions {
    pub graph: PathBuf,
    pub image_dir: PathBuf,
    pub labels: Option<PathBuf>,
    pub json: bool,
    /// Also write the confusion matrix PNG here.
    pub report_dir: Option<PathBuf>,
    /// Exit code 3 when the accuracy is below this fraction.
    pub assert_accuracy_at_least: Option<f64>,
    /// `None`: all cores.
    pub threads: Option<usize>,
}
