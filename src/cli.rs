//! The command line: clap definitions, turned once into [`crate::options`] by
//! [`Cli::into_command`]. retrain.py's underscore spellings (`--image_dir`) are accepted
//! as hidden aliases, so old commands run as written.

use std::path::PathBuf;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::backbone::{Choice, Fetch, ModelSource, Overrides};
use crate::bottleneck::Shard;
use crate::graph::classifier::LabelImageFlags;
use crate::graph::tflite::quantize::{Io, Precision, QuantizeOptions};
use crate::image::{parse_channels, Distortions, ResizeRule};
use crate::options::{self, EvaluateOptions, LabelOptions, RetrainOptions};
use crate::train::{FinalLayerRecipe, TrainingOptions};

#[derive(Parser, Debug)]
#[command(
    name = "flowers",
    version,
    about = "Point it at folders of photos, get an image classifier.",
    long_about = "Point it at folders of photos, get an image classifier.\n\n\
        `flowers retrain` trains a new final layer on top of a frozen ImageNet backbone \
        (transfer learning, as TensorFlow's retrain.py) and writes one ONNX graph; \
        `flowers label` classifies images with it (as label_image.py).",
    after_help = "Exit codes: 0 success; 1 some inputs of `label` could not be read (the rest were labelled); \
        2 usage, dataset, model or output error; 3 accuracy below --assert-accuracy-at-least."
)]
pub struct Cli {
    /// No progress bars and no informational lines on stderr; warnings and errors remain.
    #[arg(long, short, global = true)]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Train a classifier on a folder with one sub-folder of images per class.
    Retrain(Box<RetrainArgs>),
    /// Classify images with a retrained graph.
    Label(LabelArgs),
    /// Measure a retrained graph on a folder with one sub-folder of images per class.
    Evaluate(EvaluateArgs),
    /// Print a shell completion script: `flowers completions bash > ~/.local/share/bash-completion/completions/flowers`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `flowers man > ~/.local/share/man/man1/flowers.1`.
    Man,
    /// List the backbones --architecture knows: name, format, size, source, on disk.
    Architectures(ArchitecturesArgs),
    /// Compute bottlenecks into the cache and nothing else: one shard of a cluster job
    /// (docs/cluster.md), or all of them.
    Extract(Box<ExtractArgs>),
    /// Write a retrained graph in another format: a TensorFlow Lite file for phones, with
    /// its labels and input normalisation inside as TFLite metadata.
    Export(ExportArgs),
}

/// The formats `flowers export` writes.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// TensorFlow Lite flatbuffer (`.tflite`).
    Tflite,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The retrained graph flowers wrote, ONNX or TensorFlow [default: retrained_graph.onnx].
    #[arg(long, value_name = "FILE")]
    pub graph: Option<PathBuf>,

    /// Labels file; must agree with the graph's own labels [default: the graph's labels].
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,

    /// The format to write.
    #[arg(long, value_enum, default_value = "tflite")]
    pub format: ExportFormat,

    /// The file to write.
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,

    #[command(flatten)]
    pub quantize: QuantizeArgs,

    /// Photos to calibrate `--quantize int8` on (any folder of photos like those the
    /// model will classify; the first 100 in a fixed hash order that decode).
    #[arg(long, value_name = "DIR")]
    pub calibration_dir: Option<PathBuf>,
}

/// TensorFlow Lite quantization, for `export` and `retrain --output-tflite`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Quantize the TensorFlow Lite file: int8 (full-integer post-training quantization,
    /// about a quarter of the size) or float16 (weights only, half the size).
    #[arg(long, value_name = "TYPE", value_parser = precision)]
    pub quantize: Option<Precision>,

    /// With --quantize int8: the input and output tensors' type, float (QUANTIZE and
    /// DEQUANTIZE inside the file) or uint8 (as Model Maker's quantized files).
    #[arg(long, value_name = "TYPE", value_parser = io_type)]
    pub io: Option<Io>,
}

impl QuantizeArgs {
    /// The options, refusing combinations that mean nothing.
    fn into_options(self, calibration_dir: Option<PathBuf>) -> Result<QuantizeOptions, String> {
        let int8 = self.quantize == Some(Precision::Int8);
        if self.io.is_some() && !int8 {
            return Err("--io applies to --quantize int8 only".into());
        }
        if calibration_dir.is_some() && !int8 {
            return Err("--calibration-dir applies to --quantize int8 only".into());
        }
        Ok(QuantizeOptions {
            precision: self.quantize,
            io: self.io.unwrap_or_default(),
            calibration_dir,
        })
    }
}

fn precision(text: &str) -> Result<Precision, String> {
    Precision::parse(text)
}

fn io_type(text: &str) -> Result<Io, String> {
    Io::parse(text)
}

#[derive(Args, Debug)]
pub struct ExtractArgs {
    /// Folder with one sub-folder per class, as for retrain.
    #[arg(long, alias = "image_dir", value_name = "DIR")]
    pub image_dir: PathBuf,

    /// Bottleneck cache folder, shared by every shard [default: the per-user cache].
    #[arg(long, alias = "bottleneck_dir", value_name = "DIR")]
    pub bottleneck_dir: Option<PathBuf>,

    /// This process's shard, K of N counted from 1 (`--shard 2/3`) [default: from the
    /// scheduler's variables (JOB_COMPLETION_INDEX with --shards, or SLURM_ARRAY_TASK_*),
    /// else every image].
    #[arg(long, value_name = "K/N")]
    pub shard: Option<String>,

    /// The number of shards, for Kubernetes Indexed Jobs (JOB_COMPLETION_INDEX counts from 0).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub shards: Option<u32>,

    #[command(flatten)]
    pub backbone: BackboneArgs,

    /// Worker threads, at most 4 per core [default: all cores].
    #[arg(long, value_name = "N", value_parser = threads)]
    pub threads: Option<u32>,

    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
}

impl ExtractArgs {
    fn into_options(self, quiet: bool) -> Result<options::ExtractOptions, String> {
        let backbones = self.backbone.choices(quiet)?;
        let shard = shard_from(self.shard.as_deref(), self.shards, |name| {
            std::env::var(name).ok()
        })?;
        Ok(options::ExtractOptions {
            image_dir: self.image_dir,
            bottleneck_dir: self.bottleneck_dir.unwrap_or_else(default_bottleneck_dir),
            backbones,
            threads: self.threads.map(|t| t as usize),
            shard,
            json: self.json,
        })
    }
}

/// The shard to extract: `--shard K/N`; else Kubernetes' 0-based `JOB_COMPLETION_INDEX`
/// with `--shards N`; else Slurm's `SLURM_ARRAY_TASK_ID` counted from
/// `SLURM_ARRAY_TASK_MIN` out of `SLURM_ARRAY_TASK_COUNT`; else every image.
fn shard_from(
    explicit: Option<&str>,
    shards: Option<u32>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<Shard>, String> {
    if let Some(text) = explicit {
        return Shard::parse(text).map(Some);
    }
    let number = |name: &str| -> Result<Option<usize>, String> {
        env(name)
            .map(|v| {
                v.trim()
                    .parse::<usize>()
                    .map_err(|_| format!("{name}={v:?} is not a number"))
            })
            .transpose()
    };
    let shard = |index: usize, count: usize, what: &str| {
        if count == 0 || index >= count {
            Err(format!(
                "{what} gives shard index {index} of {count}: out of range"
            ))
        } else {
            Ok(Some(Shard { index, count }))
        }
    };
    if let Some(index) = number("JOB_COMPLETION_INDEX")? {
        let count = shards.ok_or(
            "JOB_COMPLETION_INDEX is set: give the number of shards with --shards N (the Job's completions)",
        )?;
        return shard(index, count as usize, "JOB_COMPLETION_INDEX");
    }
    let slurm = (
        number("SLURM_ARRAY_TASK_ID")?,
        number("SLURM_ARRAY_TASK_COUNT")?,
    );
    if let (Some(id), Some(count)) = slurm {
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        check_slurm_array(min, count, shards, &number)?;
        return shard(id.saturating_sub(min), count, "SLURM_ARRAY_TASK_ID");
    }
    if shards.is_some() {
        return Err(
            "--shards goes with JOB_COMPLETION_INDEX (Kubernetes Indexed Jobs); elsewhere use --shard K/N"
                .into(),
        );
    }
    Ok(None)
}

/// Task ids map onto shards only for an array that is one contiguous range: with
/// `--array=1,3` task 1 would take shard 1 of 2 (it is 1 of 3) and task 3 would be out of
/// range, and a stepped array (`0-4:2`) likewise. `--shards N` given beside a Slurm array
/// must agree with the array's task count rather than be silently ignored.
fn check_slurm_array(
    min: usize,
    count: usize,
    shards: Option<u32>,
    number: &dyn Fn(&str) -> Result<Option<usize>, String>,
) -> Result<(), String> {
    let step = number("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1);
    let max = number("SLURM_ARRAY_TASK_MAX")?;
    let span = max.map(|max| (max + 1).saturating_sub(min));
    if step != 1 || span.is_some_and(|span| span != count) {
        return Err(format!(
            "this Slurm array is not one contiguous range (SLURM_ARRAY_TASK_MIN={min}, _MAX={}, _STEP={step}, _COUNT={count}), so its task ids are no shard numbers: pass --shard \"$SLURM_ARRAY_TASK_ID/N\" with N the number of shards instead",
            max.map_or("unset".into(), |m| m.to_string())
        ));
    }
    match shards {
        Some(n) if n as usize != count => Err(format!(
            "--shards {n} disagrees with the Slurm array's {count} tasks (SLURM_ARRAY_TASK_COUNT): drop --shards, or pass --shard \"$SLURM_ARRAY_TASK_ID/{n}\""
        )),
        _ => Ok(()),
    }
}

#[derive(Args, Debug)]
pub struct ArchitecturesArgs {
    /// Where downloaded backbones are looked for [default: the per-user cache].
    #[arg(long, alias = "model_dir", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,

    /// One JSON object per architecture per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct RetrainArgs {
    /// Folder with one sub-folder per class; each sub-folder's name is its label.
    #[arg(long, alias = "image_dir", value_name = "DIR")]
    pub image_dir: PathBuf,

    /// Where to write the retrained graph, in the backbone's format
    /// [default: retrained_graph.onnx, or retrained_graph.pb for TensorFlow backbones].
    #[arg(long, alias = "output_graph", value_name = "FILE")]
    pub output_graph: Option<PathBuf>,

    /// Where to write the labels, one per line in output order.
    #[arg(
        long,
        alias = "output_labels",
        value_name = "FILE",
        default_value = "retrained_labels.txt"
    )]
    pub output_labels: PathBuf,

    /// Bottleneck cache folder [default: the per-user cache, e.g. ~/.cache/flowers/bottlenecks].
    #[arg(long, alias = "bottleneck_dir", value_name = "DIR")]
    pub bottleneck_dir: Option<PathBuf>,

    /// Number of SGD steps.
    #[arg(
        long,
        alias = "how_many_training_steps",
        value_name = "N",
        default_value_t = 4000
    )]
    pub how_many_training_steps: usize,

    /// SGD learning rate.
    #[arg(
        long,
        alias = "learning_rate",
        value_name = "RATE",
        default_value_t = 0.01
    )]
    pub learning_rate: f32,

    /// Images per training step (sampled class-balanced, with replacement).
    #[arg(long, alias = "train_batch_size", value_name = "N", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub train_batch_size: u32,

    /// Validation images per evaluation; -1 for the whole validation set.
    #[arg(
        long,
        alias = "validation_batch_size",
        value_name = "N",
        default_value_t = 100,
        allow_negative_numbers = true
    )]
    pub validation_batch_size: i64,

    /// Test images for the final accuracy; -1 for the whole test set.
    #[arg(long, alias = "test_batch_size", value_name = "N", default_value_t = -1,
          allow_negative_numbers = true)]
    pub test_batch_size: i64,

    /// Evaluate every N steps (and at the last step).
    #[arg(long, alias = "eval_step_interval", value_name = "N", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub eval_step_interval: u32,

    /// Percentage of images used as the test set.
    #[arg(
        long,
        alias = "testing_percentage",
        value_name = "PCT",
        default_value_t = 10.0
    )]
    pub testing_percentage: f64,

    /// Percentage of images used as the validation set.
    #[arg(
        long,
        alias = "validation_percentage",
        value_name = "PCT",
        default_value_t = 10.0
    )]
    pub validation_percentage: f64,

    /// Print each misclassified test image with the label it was given.
    #[arg(long, alias = "print_misclassified_test_images")]
    pub print_misclassified_test_images: bool,

    /// Name of the retrained graph's output tensor.
    #[arg(
        long,
        alias = "final_tensor_name",
        value_name = "NAME",
        default_value = "final_result"
    )]
    pub final_tensor_name: String,

    #[command(flatten)]
    pub backbone: BackboneArgs,

    /// Seed for the weight initialisation and batch sampling (same seed, same graph).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,

    /// Worker threads for bottleneck extraction, at most 4 per core; training the final
    /// layer uses two of them, or one with --threads 1 [default: all cores].
    #[arg(long, value_name = "N", value_parser = threads)]
    pub threads: Option<u32>,

    /// Print a JSON summary on stdout (the human report goes to stderr).
    #[arg(long)]
    pub json: bool,

    /// Write TensorBoard event files (scalars and final-layer histograms) to DIR/train and
    /// DIR/validation, and the report pictures to DIR.
    #[arg(long, alias = "summaries_dir", value_name = "DIR")]
    pub summaries_dir: Option<PathBuf>,

    /// Write the training-curves and confusion-matrix PNGs here [default: --summaries-dir].
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,

    /// Exit with code 3 (after writing everything) when the final test accuracy is below
    /// this fraction, e.g. 0.9.
    #[arg(long, value_name = "FRACTION", value_parser = fraction)]
    pub assert_accuracy_at_least: Option<f64>,

    /// Also write the retrained graph as a TensorFlow Lite file (float32, labels and
    /// normalisation inside as TFLite metadata), as `flowers export` does.
    #[arg(long, value_name = "FILE")]
    pub output_tflite: Option<PathBuf>,

    /// With --output-tflite: quantize it (int8 calibrates on the training images).
    #[command(flatten)]
    pub quantize: QuantizeArgs,

    /// Compute no bottleneck: fail (exit 2, saying how many) if any image is not in the
    /// cache yet. For the last step of a cluster run, after every `flowers extract` shard.
    #[arg(long)]
    pub require_cached: bool,

    /// Memory for bottleneck values (e.g. 512MiB, 2GB). Up to it they are memory-mapped;
    /// past it they are streamed from a scratch file beside the cache, so training memory
    /// does not grow with the image count (a million MobileNet bottlenecks are 4 GB).
    #[arg(long, value_name = "SIZE", default_value = "1GiB", value_parser = byte_size)]
    pub training_memory: u64,

    /// Mirror half of the distorted training copies (retrain.py's distortion).
    #[arg(long, alias = "flip_left_right", help_heading = "Distortions")]
    pub flip_left_right: bool,

    /// Enlarge by this margin (percent) and crop back to the input size at random.
    #[arg(long, alias = "random_crop", value_name = "PCT", default_value_t = 0.0,
          help_heading = "Distortions", value_parser = percentage, allow_negative_numbers = true)]
    pub random_crop: f32,

    /// Enlarge by a further random 0 to PCT percent before the crop.
    #[arg(long, alias = "random_scale", value_name = "PCT", default_value_t = 0.0,
          help_heading = "Distortions", value_parser = percentage, allow_negative_numbers = true)]
    pub random_scale: f32,

    /// Multiply the pixels by a random factor within 1 +- PCT percent.
    #[arg(long, alias = "random_brightness", value_name = "PCT", default_value_t = 0.0,
          help_heading = "Distortions", value_parser = percentage, allow_negative_numbers = true)]
    pub random_brightness: f32,

    /// Distorted copies per training image, computed once and cached, that training
    /// samples from where retrain.py distorted afresh at every step (see README).
    #[arg(long, value_name = "K", default_value_t = 5, help_heading = "Distortions",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub distorted_copies: u32,

    /// Standardise each bottleneck value by the training bottlenecks' mean and standard
    /// deviation before the final layer (folded into its weights: the graph is unchanged in
    /// form). `--standardize` alone means on [default: off; it lost in cross-validation,
    /// see README].
    #[arg(long, value_name = "on|off", num_args = 0..=1, require_equals = true,
          default_missing_value = "on", value_parser = on_off, help_heading = "Final layer")]
    pub standardize: Option<bool>,

    /// L2 weight decay of the final layer's weights: F * w is added to each weight's
    /// gradient [default: 0].
    #[arg(long, value_name = "F", value_parser = weight_decay, help_heading = "Final layer")]
    pub weight_decay: Option<f32>,

    /// Also write the graph every N steps (0: never), as
    /// <--intermediate-output-graphs-dir>/intermediate_<step>.pb (.onnx for ONNX backbones).
    #[arg(
        long,
        alias = "intermediate_store_frequency",
        value_name = "N",
        default_value_t = 0
    )]
    pub intermediate_store_frequency: u32,

    /// Where the intermediate graphs go [default: the per-user cache, e.g.
    /// ~/.cache/flowers/intermediate_graph; retrain.py's /tmp/intermediate_graph/ was
    /// shared by every user of the machine].
    #[arg(long, alias = "intermediate_output_graphs_dir", value_name = "DIR")]
    pub intermediate_output_graphs_dir: Option<PathBuf>,

    #[command(flatten)]
    pub not_supported: RetrainPyOnly,
}

/// retrain.py flags flowers does not take (yet): accepted by the parser so that each gets
/// one line saying what to use instead, rather than a generic usage error.
#[derive(Args, Debug)]
pub struct RetrainPyOnly {
    #[arg(long, alias = "saved_model_dir", hide = true)]
    saved_model_dir: Option<String>,
    #[arg(long, alias = "tfhub_module", hide = true)]
    tfhub_module: Option<String>,
}

impl RetrainPyOnly {
    /// The first flag given, with what to do instead.
    fn check(&self) -> Result<(), String> {
        let flags = [
            (
                "--saved_model_dir",
                self.saved_model_dir.is_some(),
                "is not supported: flowers writes one frozen graph, use --output_graph",
            ),
            (
                "--tfhub_module",
                self.tfhub_module.is_some(),
                "is not supported: TF-Hub modules need TensorFlow 2; use --architecture (`flowers architectures` lists them) or --model",
            ),
        ];
        match flags.iter().find(|(_, given, _)| *given) {
            Some((flag, _, what)) => Err(format!("{flag} {what}")),
            None => Ok(()),
        }
    }
}

#[derive(Args, Debug)]
pub struct EvaluateArgs {
    /// The retrained graph [default: retrained_graph.onnx, else retrained_graph.pb].
    #[arg(long, value_name = "FILE")]
    pub graph: Option<PathBuf>,

    /// Folder with one sub-folder per class, named as the graph's labels.
    #[arg(long, alias = "image_dir", value_name = "DIR")]
    pub image_dir: PathBuf,

    /// Labels file; must agree with the graph's own labels.
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,

    /// Print the report as one JSON object on stdout.
    #[arg(long)]
    pub json: bool,

    /// Also write the confusion matrix as a PNG into DIR.
    #[arg(long, value_name = "DIR")]
    pub report_dir: Option<PathBuf>,

    /// Exit with code 3 when the accuracy is below this fraction, e.g. 0.9.
    #[arg(long, value_name = "FRACTION", value_parser = fraction)]
    pub assert_accuracy_at_least: Option<f64>,

    /// Worker threads, at most 4 per core [default: all cores].
    #[arg(long, value_name = "N", value_parser = threads)]
    pub threads: Option<u32>,
}

#[derive(Args, Debug)]
pub struct BackboneArgs {
    /// A known backbone by name, downloaded into --model-dir on first use: retrain.py's
    /// `inception_v3` and `mobilenet_<1.0|0.75|0.50|0.25>_<224|192|160|128>[_quantized]`
    /// (TensorFlow), ONNX model zoo classifiers; `flowers architectures` lists them.
    /// Without it flowers uses its embedded MobileNet v1 1.0 224 and works offline; this
    /// is where it differs from retrain.py, whose default was inception_v3.
    ///
    /// Several backbones side by side: `A+B[+C]` (each image goes through each, the final
    /// layer sees their bottlenecks joined); `--model` files are added after them.
    #[arg(long, alias = "architecture", value_name = "NAME[+NAME...]")]
    pub architecture: Option<String>,

    /// Where downloaded backbones are kept [default: the per-user cache, e.g.
    /// ~/.cache/flowers/models].
    #[arg(long, alias = "model_dir", value_name = "DIR")]
    pub model_dir: Option<PathBuf>,

    /// A mirror: replaces everything before the file name in the download URLs of
    /// --architecture (for proxies, offline mirrors and tests).
    #[arg(
        long,
        alias = "model_base_url",
        value_name = "URL",
        env = "FLOWERS_MODEL_BASE_URL"
    )]
    pub model_base_url: Option<String>,

    /// Largest download accepted for an --architecture whose size is not published
    /// (retrain.py's MobileNets): a server that sends more, or announces more, is cut off
    /// and nothing is kept [default: 256MiB].
    #[arg(long, value_name = "SIZE", value_parser = byte_size, env = "FLOWERS_MAX_DOWNLOAD_SIZE")]
    pub max_download_size: Option<u64>,

    /// A backbone file instead of the embedded MobileNet v1: an ONNX image classifier or a
    /// TensorFlow frozen graph (.pb, with --bottleneck-tensor unless known). Given more
    /// than once, the backbones are used side by side (ONNX only), each with its own
    /// preprocessing: `FILE:mean=V|R,G,B,std=V|R,G,B,resize=RULE,bottleneck=NAME`.
    #[arg(long, value_name = "FILE[:KEY=VALUE,...]")]
    pub model: Vec<PathBuf>,

    /// The backbone's pooled feature tensor (or node) [default: found automatically].
    #[arg(long, alias = "bottleneck_tensor", value_name = "NAME")]
    pub bottleneck_tensor: Option<String>,

    /// Pixel mean subtracted before dividing by --input-std: one value or R,G,B
    /// [default: the known backbone's, else 127.5].
    #[arg(long, alias = "input_mean", value_name = "V|R,G,B")]
    pub input_mean: Option<String>,

    /// Pixel divisor: one value or R,G,B [default: the known backbone's, else 127.5].
    #[arg(long, alias = "input_std", value_name = "V|R,G,B")]
    pub input_std: Option<String>,

    /// How images are fitted to the input size: `center-crop:F` (the centred square of
    /// fraction F of the shorter side, then resized), `squash` (the whole image, aspect
    /// ratio ignored) or `squash-tf` (squash with TensorFlow 1's resize_bilinear, exactly
    /// as retrain.py) [default: center-crop:0.875 for ONNX backbones, squash-tf for
    /// TensorFlow ones].
    #[arg(long, value_name = "RULE")]
    pub resize: Option<String>,
}

#[derive(Args, Debug)]
pub struct LabelArgs {
    /// Image files or folders (walked recursively) to label.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,

    /// An image to label (repeatable).
    #[arg(long, value_name = "FILE")]
    pub image: Vec<PathBuf>,

    /// The retrained graph: flowers' (ONNX or TensorFlow) or one retrain.py wrote
    /// [default: retrained_graph.onnx, else retrained_graph.pb].
    #[arg(long, value_name = "FILE")]
    pub graph: Option<PathBuf>,

    /// Labels file; must agree with the graph's own labels [default: the graph's labels,
    /// else retrained_labels.txt].
    #[arg(long, value_name = "FILE")]
    pub labels: Option<PathBuf>,

    /// How many labels to print per image.
    #[arg(long, aliases = ["top_k", "num_top_predictions", "num-top-predictions"], value_name = "K", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub top_k: u32,

    /// label_image.py: the tensor images are fed to, for graphs without flowers metadata
    /// [default: input].
    #[arg(long, alias = "input_layer", value_name = "NAME")]
    pub input_layer: Option<String>,

    /// label_image.py: the output tensor [default: final_result].
    #[arg(long, alias = "output_layer", value_name = "NAME")]
    pub output_layer: Option<String>,

    /// label_image.py: input height for graphs that do not fix it [default: 224].
    #[arg(long, alias = "input_height", value_name = "PX", value_parser = input_side)]
    pub input_height: Option<u32>,

    /// label_image.py: input width for graphs that do not fix it [default: 224].
    #[arg(long, alias = "input_width", value_name = "PX", value_parser = input_side)]
    pub input_width: Option<u32>,

    /// label_image.py: subtracted from 0-255 pixels, for graphs without metadata [default: 128].
    #[arg(
        long,
        alias = "input_mean",
        value_name = "V",
        allow_negative_numbers = true
    )]
    pub input_mean: Option<f32>,

    /// label_image.py: divisor after the mean, for graphs without metadata [default: 128].
    #[arg(long, alias = "input_std", value_name = "V")]
    pub input_std: Option<f32>,

    /// One JSON object per image per line.
    #[arg(long)]
    pub json: bool,

    /// Worker threads, at most 4 per core [default: all cores].
    #[arg(long, value_name = "N", value_parser = threads)]
    pub threads: Option<u32>,
}

/// What the command line asks for.
pub enum Request {
    /// A pipeline to run.
    Run(options::Command),
    /// Text to print on stdout (completions, the man page).
    Print(Vec<u8>),
}

impl Cli {
    /// Turns the parsed command line into what to do; flag values that clap cannot check
    /// alone (sums of percentages, channel lists) are checked here, with one-line errors.
    pub fn into_request(self) -> Result<Request, String> {
        let quiet = self.quiet;
        Ok(match self.command {
            Command::Retrain(args) => Request::Run(options::Command::Retrain(Box::new(
                args.into_options(quiet)?,
            ))),
            Command::Label(args) => Request::Run(options::Command::Label(args.into_options()?)),
            Command::Evaluate(args) => {
                Request::Run(options::Command::Evaluate(args.into_options()))
            }
            Command::Extract(args) => Request::Run(options::Command::Extract(Box::new(
                args.into_options(quiet)?,
            ))),
            Command::Export(args) => match args.format {
                ExportFormat::Tflite => {
                    Request::Run(options::Command::Export(options::ExportOptions {
                        graph: args
                            .graph
                            .unwrap_or_else(|| PathBuf::from("retrained_graph.onnx")),
                        labels: args.labels,
                        tflite: options::TfliteOptions {
                            output: args.output,
                            quantize: args.quantize.into_options(args.calibration_dir)?,
                        },
                    }))
                }
            },
            Command::Architectures(args) => Request::Run(options::Command::Architectures(
                options::ArchitecturesOptions {
                    model_dir: args.model_dir.unwrap_or_else(default_model_dir),
                    json: args.json,
                },
            )),
            Command::Completions { shell } => {
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut Cli::command(), "flowers", &mut script);
                Request::Print(script)
            }
            Command::Man => {
                let mut page = Vec::new();
                clap_mangen::Man::new(Cli::command())
                    .render(&mut page)
                    .map_err(|e| format!("cannot render the man page: {e}"))?;
                Request::Print(page)
            }
        })
    }
}

impl LabelArgs {
    fn into_options(self) -> Result<LabelOptions, String> {
        if let Some(mean) = self.input_mean {
            pixel_mean(&[mean], "--input-mean")?;
        }
        if let Some(std) = self.input_std {
            pixel_std(&[std], "--input-std")?;
        }
        let mut inputs = self.image;
        inputs.extend(self.paths);
        Ok(LabelOptions {
            inputs,
            graph: self.graph.unwrap_or_else(default_graph),
            flags: LabelImageFlags {
                input_layer: self.input_layer,
                output_layer: self.output_layer,
                input_height: self.input_height,
                input_width: self.input_width,
                input_mean: self.input_mean,
                input_std: self.input_std,
            },
            labels: self.labels,
            top_k: self.top_k as usize,
            json: self.json,
            threads: self.threads.map(|t| t as usize),
        })
    }
}

impl EvaluateArgs {
    fn into_options(self) -> EvaluateOptions {
        EvaluateOptions {
            graph: self.graph.unwrap_or_else(default_graph),
            image_dir: self.image_dir,
            labels: self.labels,
            json: self.json,
            report_dir: self.report_dir,
            assert_accuracy_at_least: self.assert_accuracy_at_least,
            threads: self.threads.map(|t| t as usize),
        }
    }
}

impl RetrainArgs {
    fn into_options(self, quiet: bool) -> Result<RetrainOptions, String> {
        if self.quantize.quantize.is_some() && self.output_tflite.is_none() {
            return Err("--quantize applies to --output-tflite: give the file to write".into());
        }
        let quantize = self.quantize.into_options(None)?;
        self.not_supported.check()?;
        let backbones = self.backbone.choices(quiet)?;
        split_percentages(self.testing_percentage, self.validation_percentage)?;
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(format!(
                "--learning-rate must be positive, got {}",
                self.learning_rate
            ));
        }
        if self.random_brightness > 100.0 {
            return Err(format!(
                "--random-brightness must be at most 100 (percent), got {}",
                self.random_brightness
            ));
        }
        tensor_name(&self.final_tensor_name, "--final-tensor-name")?;
        let bottleneck_dir = match self.bottleneck_dir {
            Some(dir) => dir,
            None => default_bottleneck_dir(),
        };
        Ok(RetrainOptions {
            image_dir: self.image_dir,
            output_graph: self.output_graph,
            output_labels: self.output_labels,
            bottleneck_dir,
            training: TrainingOptions {
                steps: self.how_many_training_steps,
                learning_rate: self.learning_rate,
                train_batch_size: self.train_batch_size as usize,
                validation_batch_size: batch_size(
                    self.validation_batch_size,
                    "--validation-batch-size",
                )?,
                eval_step_interval: self.eval_step_interval as usize,
                seed: self.seed,
                snapshot_every: (self.intermediate_store_frequency > 0)
                    .then_some(self.intermediate_store_frequency as usize),
                final_layer: final_layer(
                    backbones.len(),
                    self.standardize,
                    self.weight_decay,
                    self.learning_rate,
                )?,
                product_threads: product_threads(self.threads),
            },
            intermediate_output_graphs_dir: self
                .intermediate_output_graphs_dir
                .unwrap_or_else(default_intermediate_dir),
            require_cached: self.require_cached,
            training_memory: self.training_memory,
            distortions: Distortions {
                flip_left_right: self.flip_left_right,
                random_crop: self.random_crop,
                random_scale: self.random_scale,
                random_brightness: self.random_brightness,
            },
            distorted_copies: self.distorted_copies as usize,
            test_batch_size: batch_size(self.test_batch_size, "--test-batch-size")?,
            testing_percentage: self.testing_percentage,
            validation_percentage: self.validation_percentage,
            print_misclassified_test_images: self.print_misclassified_test_images,
            final_tensor_name: self.final_tensor_name,
            backbones,
            threads: self.threads.map(|t| t as usize),
            summaries_dir: self.summaries_dir,
            report_dir: self.report_dir,
            json: self.json,
            assert_accuracy_at_least: self.assert_accuracy_at_least,
            output_tflite: self
                .output_tflite
                .map(|output| options::TfliteOptions { output, quantize }),
        })
    }
}

impl BackboneArgs {
    /// The backbones asked for, in order: each name of `--architecture A+B`, then each
    /// `--model`; the embedded default when neither is given. With several, the
    /// preprocessing flags go with each `--model FILE:key=value,...` instead.
    fn choices(&self, quiet: bool) -> Result<Vec<Choice>, String> {
        let mut choices = Vec::new();
        if let Some(names) = &self.architecture {
            for name in architecture_names(names)? {
                choices.push(Choice {
                    source: ModelSource::Architecture(self.fetch(name, quiet)),
                    overrides: Overrides::default(),
                });
            }
        }
        for model in &self.model {
            let (path, overrides) = model_with_overrides(model)?;
            choices.push(Choice {
                source: ModelSource::File(path),
                overrides,
            });
        }
        if choices.is_empty() {
            choices.push(Choice::embedded());
        }
        if choices.len() > 1 {
            refuse_tensorflow_names(self.architecture.as_deref().unwrap_or(""))?;
        }
        let flags = self.overrides()?;
        match choices.as_mut_slice() {
            [only] => only.overrides = merged(&only.overrides, flags),
            _ if flags != Overrides::default() => {
                return Err(
                    "--input-mean, --input-std, --resize and --bottleneck-tensor apply to one backbone: with several, give them with each --model FILE:mean=V,std=V,resize=RULE,bottleneck=NAME".into(),
                )
            }
            _ => {}
        }
        Ok(choices)
    }

    fn fetch(&self, name: &str, quiet: bool) -> Fetch {
        Fetch {
            name: name.to_string(),
            model_dir: self.model_dir.clone().unwrap_or_else(default_model_dir),
            base_url: self.model_base_url.clone(),
            quiet,
            max_download_size: self.max_download_size,
        }
    }

    fn overrides(&self) -> Result<Overrides, String> {
        let parse = |value: &Option<String>, flag: &str| {
            value
                .as_deref()
                .map(|v| parse_channels(v, flag))
                .transpose()
        };
        let std = parse(&self.input_std, "--input-std")?;
        if let Some(std) = &std {
            pixel_std(std, "--input-std")?;
        }
        let mean = parse(&self.input_mean, "--input-mean")?;
        if let Some(mean) = &mean {
            pixel_mean(mean, "--input-mean")?;
        }
        Ok(Overrides {
            bottleneck_tensor: self.bottleneck_tensor.clone(),
            mean,
            std,
            resize: self.resize.as_deref().map(ResizeRule::parse).transpose()?,
        })
    }
}

/// The flags of a single `--model` (or `--architecture`) where its own `:key=value` gave
/// none: both ways of saying it work for one backbone.
fn merged(own: &Overrides, flags: Overrides) -> Overrides {
    Overrides {
        bottleneck_tensor: own.bottleneck_tensor.clone().or(flags.bottleneck_tensor),
        mean: own.mean.or(flags.mean),
        std: own.std.or(flags.std),
        resize: own.resize.or(flags.resize),
    }
}

/// The names of `--architecture A+B+...`, each one the registry knows.
fn architecture_names(text: &str) -> Result<Vec<&str>, String> {
    let names: Vec<&str> = text.split('+').map(str::trim).collect();
    for name in &names {
        if name.is_empty() {
            return Err(format!(
                "--architecture {text:?} has an empty name: join names with + (e.g. mobilenet_v1_1.0_224+efficientnet_lite0)"
            ));
        }
        if let Err(e) = crate::backbone::registry::find(name) {
            return Err(match names.len() {
                1 => e.to_string(),
                _ => format!("in --architecture {text:?}: {e}"),
            });
        }
    }
    Ok(names)
}

/// A combination is of ONNX backbones: a TensorFlow name in one is refused before its
/// archive is downloaded (a file is refused once loaded, see `backbone::combined`).
fn refuse_tensorflow_names(text: &str) -> Result<(), String> {
    let names = text.split('+').filter(|n| !n.trim().is_empty());
    for name in names {
        let known = crate::backbone::registry::find(name.trim()).map_err(|e| e.to_string())?;
        if known.format == crate::backbone::ModelFormat::TensorFlow {
            return Err(format!(
                "--architecture {name} is a TensorFlow backbone: backbones are combined only when all are ONNX (one retrained graph holds them all); use it alone"
            ));
        }
    }
    Ok(())
}

/// The keys `--model FILE:key=value,...` takes.
const MODEL_KEYS: [&str; 4] = ["mean", "std", "resize", "bottleneck"];

/// `--model FILE[:mean=V|R,G,B][,std=...][,resize=RULE][,bottleneck=NAME]`: the file and
/// its own preprocessing. The options begin at the first `:key=` of a known key, so file
/// names with colons still work; a value's commas (`mean=123.7,116.3,103.5`) stay in it.
fn model_with_overrides(model: &std::path::Path) -> Result<(PathBuf, Overrides), String> {
    let Some(text) = model.to_str() else {
        return Ok((model.to_path_buf(), Overrides::default()));
    };
    let start = MODEL_KEYS
        .iter()
        .filter_map(|key| text.find(&format!(":{key}=")))
        .min();
    let Some(start) = start else {
        return Ok((model.to_path_buf(), Overrides::default()));
    };
    let (path, options) = (&text[..start], &text[start + 1..]);
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for token in options.split(',') {
        match (token.split_once('='), pairs.last_mut()) {
            (Some((key, value)), _) if MODEL_KEYS.contains(&key) => {
                pairs.push((key, value.to_string()))
            }
            (Some((key, _)), _) if !key.contains(|c: char| c.is_ascii_digit() || c == '.') => {
                return Err(format!(
                    "--model {text:?}: unknown option {key:?}; it takes {}",
                    MODEL_KEYS.join(", ")
                ))
            }
            (_, Some((_, value))) => {
                value.push(',');
                value.push_str(token);
            }
            (_, None) => return Err(format!("--model {text:?}: options begin with a key=")),
        }
    }
    let mut overrides = Overrides::default();
    for (key, value) in pairs {
        let flag = format!("--model {path}:{key}");
        match key {
            "mean" => {
                let mean = parse_channels(&value, &flag)?;
                pixel_mean(&mean, &flag)?;
                overrides.mean = Some(mean);
            }
            "std" => {
                let std = parse_channels(&value, &flag)?;
                pixel_std(&std, &flag)?;
                overrides.std = Some(std);
            }
            "resize" => {
                let rule = ResizeRule::parse(&value).map_err(|e| format!("{flag}: {e}"))?;
                overrides.resize = Some(rule);
            }
            _ => overrides.bottleneck_tensor = Some(value),
        }
    }
    Ok((PathBuf::from(path), overrides))
}

/// `-1` means the whole set.
fn batch_size(value: i64, flag: &str) -> Result<Option<usize>, String> {
    match value {
        -1 => Ok(None),
        v if v >= 1 => Ok(Some(v as usize)),
        v => Err(format!(
            "{flag} must be -1 (whole set) or positive, got {v}"
        )),
    }
}

/// The graph `label` and `evaluate` read when none is named: retrain's default output,
/// ONNX or TensorFlow.
fn default_graph() -> PathBuf {
    let onnx = PathBuf::from("retrained_graph.onnx");
    let tensorflow = PathBuf::from("retrained_graph.pb");
    if !onnx.exists() && tensorflow.exists() {
        tensorflow
    } else {
        onnx
    }
}

fn default_model_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("flowers")
        .join("models")
}

/// retrain.py's `/tmp/intermediate_graph/` moved into the per-user cache: in a folder
/// every user can write, another user could create it first, or make it a link.
fn default_intermediate_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("flowers")
        .join("intermediate_graph")
}

fn default_bottleneck_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("flowers")
        .join("bottlenecks")
}

/// A fraction in [0, 1].
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected a fraction from 0 to 1 (e.g. 0.9), got {text:?}"
        )),
    }
}

/// `on` or `off` (also `true`/`false`, `yes`/`no`), as `--standardize` takes it.
fn on_off(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("expected on or off, got {text:?}")),
    }
}

/// A weight decay: a finite number from 0 on.
fn weight_decay(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "expected a weight decay of 0 or more (e.g. 0.01), got {text:?}"
        )),
    }
}

/// The final layer's recipe: the default for that many backbones, with what the user gave.
/// A decay of 1 / --learning-rate or more would flip every weight's sign at each step.
fn final_layer(
    backbones: usize,
    standardize: Option<bool>,
    weight_decay: Option<f32>,
    learning_rate: f32,
) -> Result<FinalLayerRecipe, String> {
    let recipe = FinalLayerRecipe::chosen(backbones, standardize, weight_decay);
    if recipe.weight_decay * learning_rate >= 1.0 {
        return Err(format!(
            "--weight-decay {} times --learning-rate {} is 1 or more, which flips the weights at every step: lower --weight-decay below {}",
            recipe.weight_decay,
            learning_rate,
            1.0 / learning_rate
        ));
    }
    Ok(recipe)
}

/// A percentage from 0 to 1000, as retrain.py's distortion flags take them.
fn percentage(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(v) if (0.0..=1000.0).contains(&v) => Ok(v),
        _ => Err(format!(
            "expected a percentage from 0 to 1000 (e.g. 10), got {text:?}"
        )),
    }
}

/// The test and validation shares of the images, in percent: each from 0 to 100 and
/// together under 100, so that some images are left to train on.
fn split_percentages(testing: f64, validation: f64) -> Result<(), String> {
    let share = |v: f64| v.is_finite() && (0.0..100.0).contains(&v);
    if share(testing) && share(validation) && testing + validation < 100.0 {
        return Ok(());
    }
    Err(format!(
        "--testing-percentage and --validation-percentage must be numbers from 0 to 100 that add up to less than 100 (got {testing} and {validation})"
    ))
}

/// `--input-std`, for retrain and label alike: a divisor, so finite and not zero.
fn pixel_std(values: &[f32], flag: &str) -> Result<(), String> {
    match values.iter().find(|v| **v == 0.0 || !v.is_finite()) {
        Some(v) => Err(format!(
            "{flag} must be a finite number other than zero (it divides the pixels), got {v}"
        )),
        None => Ok(()),
    }
}

/// `--input-mean`: subtracted from the pixels, so finite.
fn pixel_mean(values: &[f32], flag: &str) -> Result<(), String> {
    match values.iter().find(|v| !v.is_finite()) {
        Some(v) => Err(format!("{flag} must be a finite number, got {v}")),
        None => Ok(()),
    }
}

/// A name for a tensor flowers adds to a graph: TensorFlow's rule for node names
/// (`[A-Za-z0-9.][A-Za-z0-9_./-]*`), which ONNX tools accept too; a `:` would read as a
/// tensor's output index.
fn tensor_name(name: &str, flag: &str) -> Result<(), String> {
    let first = |c: char| c.is_ascii_alphanumeric() || c == '.';
    let rest = |c: char| first(c) || matches!(c, '_' | '/' | '-');
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(first) && chars.all(rest);
    if valid {
        return Ok(());
    }
    Err(format!(
        "{flag} {name:?} is not a valid tensor name: use letters, digits and . _ / - (not first), e.g. final_result"
    ))
}

/// The most threads a run may start per core. Extraction is bound by the cores; a few
/// more threads than cores cover time spent waiting for images on a slow disk, while
/// each thread costs a stack and the backbone's working buffers, and tens of thousands
/// fail to start at all (the system's thread limit) after the run has begun.
const THREADS_PER_CORE: u32 = 4;

/// Threads for the products of an SGD step: two, unless `--threads` or the machine gives
/// one (a third would cost more in hand-offs than it saves on a 100-row batch).
fn product_threads(threads: Option<u32>) -> usize {
    let cores = || std::thread::available_parallelism().map_or(1, |n| n.get());
    threads.map_or_else(cores, |t| t as usize).min(2)
}

/// `--threads`: from 1 to [`THREADS_PER_CORE`] times the cores of this machine.
fn threads(text: &str) -> Result<u32, String> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let most = cores.saturating_mul(THREADS_PER_CORE);
    match text.parse::<u32>() {
        Ok(n) if (1..=most).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a number of threads from 1 to {most} ({THREADS_PER_CORE} per core, {cores} cores here), got {text:?}"
        )),
    }
}

/// The largest input side label_image.py's `--input-height/--input-width` may ask for:
/// ImageNet backbones take 600 pixels at most, and one image of this side is already
/// 200 MB of floats.
const MAX_INPUT_SIDE: u32 = 4096;

fn input_side(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(n) if (1..=MAX_INPUT_SIDE).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a size in pixels from 1 to {MAX_INPUT_SIDE}, got {text:?}"
        )),
    }
}

/// A byte size such as `512MiB`, `2GB` or `1000000` (bytes).
fn byte_size(text: &str) -> Result<u64, String> {
    parse_size::parse_size(text)
        .map_err(|e| format!("expected a size such as 512MiB or 2GB, got {text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    /// The final layer's recipe `flowers retrain ARGS` asks for, or the one-line error.
    fn final_layer_of(args: &[&str]) -> Result<FinalLayerRecipe, String> {
        let line = ["flowers", "retrain", "--image-dir", "photos"]
            .iter()
            .chain(args);
        let cli = Cli::try_parse_from(line).map_err(|e| e.to_string())?;
        match cli.into_request()? {
            Request::Run(options::Command::Retrain(options)) => Ok(options.training.final_layer),
            _ => unreachable!("a retrain command line"),
        }
    }

    #[test]
    fn final_layer_flags_set_the_recipe_and_refuse_what_would_break_it() {
        assert_eq!(
            final_layer_of(&[]).unwrap(),
            FinalLayerRecipe::default_for(1)
        );
        let on = final_layer_of(&["--standardize", "--weight-decay", "0.01"]).unwrap();
        assert_eq!((on.standardize, on.weight_decay), (true, 0.01));
        assert!(!final_layer_of(&["--standardize=off"]).unwrap().standardize);
        assert!(final_layer_of(&["--standardize=on"]).unwrap().standardize);
        let error = final_layer_of(&["--standardize=maybe"]).unwrap_err();
        assert!(error.contains("expected on or off"), "{error}");
        for bad in ["-1", "nan", "inf", "x"] {
            let error = final_layer_of(&[&format!("--weight-decay={bad}")]).unwrap_err();
            assert!(error.contains("--weight-decay"), "{bad}: {error}");
        }
        let error =
            final_layer_of(&["--weight-decay", "100", "--learning-rate", "0.01"]).unwrap_err();
        assert!(
            error.starts_with("--weight-decay 100 times --learning-rate 0.01"),
            "{error}"
        );
        assert!(final_layer_of(&["--weight-decay", "99", "--learning-rate", "0.01"]).is_ok());
    }

    #[test]
    fn numeric_flags_refuse_what_would_break_the_run() {
        assert!(split_percentages(10.0, 10.0).is_ok());
        assert!(split_percentages(0.0, 0.0).is_ok());
        for (t, v) in [
            (f64::NAN, 10.0),
            (10.0, f64::NAN),
            (-1.0, 10.0),
            (101.0, 0.0),
            (60.0, 40.0),
            (f64::INFINITY, 0.0),
        ] {
            let error = split_percentages(t, v).unwrap_err();
            assert!(error.starts_with("--testing-percentage"), "{error}");
        }
        for bad in [0.0, f32::NAN, f32::INFINITY, -0.0] {
            assert!(pixel_std(&[1.0, bad, 1.0], "--input-std").is_err(), "{bad}");
        }
        assert!(pixel_std(&[-1.0], "--input-std").is_ok());
        assert!(pixel_mean(&[f32::NAN], "--input-mean").is_err());
        assert!(threads("1").is_ok());
        assert!(threads("0").is_err());
        assert!(threads("100000").is_err());
        assert!(threads("-3").is_err());
        assert!(input_side("224").is_ok());
        assert!(input_side("100000").is_err());
    }

    #[test]
    fn each_model_takes_its_own_preprocessing_after_a_colon() {
        let parse = |text: &str| model_with_overrides(std::path::Path::new(text));
        let (path, overrides) = parse("a:b/lite.onnx").unwrap();
        assert_eq!(
            (path, overrides),
            (PathBuf::from("a:b/lite.onnx"), Overrides::default())
        );
        let (path, overrides) = parse(
            "m:1.onnx:mean=123.675,116.28,103.53,std=58,resize=center-crop:0.9,bottleneck=pool",
        )
        .unwrap();
        assert_eq!(path, PathBuf::from("m:1.onnx"));
        assert_eq!(overrides.mean, Some([123.675, 116.28, 103.53]));
        assert_eq!(overrides.std, Some([58.0; 3]));
        assert_eq!(overrides.resize, Some(ResizeRule::CenterCrop(0.9)));
        assert_eq!(overrides.bottleneck_tensor.as_deref(), Some("pool"));
        for (bad, says) in [
            ("m.onnx:mean=1,2", "m.onnx:mean"),
            ("m.onnx:std=0", "m.onnx:std"),
            ("m.onnx:resize=zoom", "m.onnx:resize"),
            ("m.onnx:mean=1,colour=red", "unknown option \"colour\""),
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn combinations_are_names_joined_by_plus() {
        assert_eq!(
            architecture_names("mobilenet_v1_1.0_224+mobilenet_0.25_128").unwrap(),
            ["mobilenet_v1_1.0_224", "mobilenet_0.25_128"]
        );
        let unknown = architecture_names("mobilenet_v1_1.0_224+nosuchnet").unwrap_err();
        assert!(unknown.contains("\"nosuchnet\"") && unknown.contains("flowers architectures"));
        assert!(architecture_names("+mobilenet_v1_1.0_224")
            .unwrap_err()
            .contains("empty name"));
        let tensorflow = refuse_tensorflow_names("mobilenet_v1_1.0_224+mobilenet_0.25_224");
        assert!(tensorflow
            .unwrap_err()
            .contains("mobilenet_0.25_224 is a TensorFlow backbone"));
        assert!(refuse_tensorflow_names("mobilenet_v1_1.0_224+efficientnet_lite0").is_ok());
    }

    #[test]
    fn final_tensor_names_follow_tensorflows_rule() {
        for good in ["final_result", "a/b-c.d", "0", ".x"] {
            assert!(tensor_name(good, "--final-tensor-name").is_ok(), "{good}");
        }
        for bad in ["", "a b", "x:0", "_x", "/x", "-x", "é", "a\nb"] {
            let error = tensor_name(bad, "--final-tensor-name").unwrap_err();
            assert!(error.starts_with("--final-tensor-name"), "{error}");
        }
    }

    #[test]
    fn shards_come_from_the_flag_or_the_schedulers_variables() {
        let shard = |index, count| Ok(Some(Shard { index, count }));
        assert_eq!(shard_from(Some("2/3"), None, env(&[])), shard(1, 3));
        assert_eq!(shard_from(None, None, env(&[])), Ok(None));
        // Kubernetes Indexed Job: 0-based index, count from --shards.
        let k8s = [("JOB_COMPLETION_INDEX", "0")];
        assert_eq!(shard_from(None, Some(4), env(&k8s)), shard(0, 4));
        assert!(shard_from(None, None, env(&k8s)).is_err());
        assert!(shard_from(None, Some(4), env(&[("JOB_COMPLETION_INDEX", "4")])).is_err());
        // Slurm array 5-7: task 6 is the second of three.
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "6"),
            ("SLURM_ARRAY_TASK_MIN", "5"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        assert_eq!(shard_from(None, None, env(&slurm)), shard(1, 3));
        // The flag wins over the environment.
        assert_eq!(shard_from(Some("3/3"), None, env(&slurm)), shard(2, 3));
        assert!(shard_from(None, Some(2), env(&[])).is_err());
    }

    #[test]
    fn slurm_arrays_that_are_not_one_range_or_disagree_with_shards_are_refused() {
        let array = |id, min, max, step, count| {
            [
                ("SLURM_ARRAY_TASK_ID", id),
                ("SLURM_ARRAY_TASK_MIN", min),
                ("SLURM_ARRAY_TASK_MAX", max),
                ("SLURM_ARRAY_TASK_STEP", step),
                ("SLURM_ARRAY_TASK_COUNT", count),
            ]
        };
        let shard = |index, count| Ok(Some(Shard { index, count }));
        // --array=1-3, task 2: the second of three, with or without an agreeing --shards.
        assert_eq!(
            shard_from(None, None, env(&array("2", "1", "3", "1", "3"))),
            shard(1, 3)
        );
        assert_eq!(
            shard_from(None, Some(3), env(&array("2", "1", "3", "1", "3"))),
            shard(1, 3)
        );
        // --array=1,3 (a resubmission of two shards of three) and --array=0-4:2.
        for (id, min, max, step, count) in [("1", "1", "3", "1", "2"), ("2", "0", "4", "2", "3")] {
            let error = shard_from(None, None, env(&array(id, min, max, step, count))).unwrap_err();
            assert!(error.contains("not one contiguous range"), "{error}");
            assert!(
                error.contains("--shard \"$SLURM_ARRAY_TASK_ID/N\""),
                "{error}"
            );
            // The flag the error suggests works for such an array.
            let explicit = shard_from(Some("1/3"), None, env(&array(id, min, max, step, count)));
            assert_eq!(explicit, shard(0, 3));
        }
        // --shards 5 beside a 3-task array used to run as shard 2/3.
        let error = shard_from(None, Some(5), env(&array("2", "1", "3", "1", "3"))).unwrap_err();
        assert!(error.contains("--shards 5 disagrees"), "{error}");
    }
}
