//! The `retrain` pipeline: images -> bottlenecks -> trained final layer -> retrained graph.
//! This module only sequences the steps and reports; each step lives in its own module.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::atomic::check_writable;
use crate::backbone::{Backbone, ModelSource, Overrides};
use crate::bottleneck::{extract_all, Bottlenecks, Cache};
use crate::dataset::{split_of, Dataset, Skipped, Split, FEW_IMAGES_WARNING};
use crate::evaluate::Report;
use crate::export::{retrained_graph, write_graph, write_labels};
use crate::plots::{write_training_curves, CurvePoint};
use crate::progress::{info, shown, warn};
use crate::summary::EventWriter;
use crate::train::{predictions, train, Evaluation, Examples, FinalLayer, TrainingOptions};

/// Everything `flowers retrain` can be told.
#[derive(Clone, Debug)]
pub struct RetrainOptions {
    pub image_dir: PathBuf,
    pub output_graph: PathBuf,
    pub output_labels: PathBuf,
    pub bottleneck_dir: PathBuf,
    pub training: TrainingOptions,
    /// `None`: the whole test set.
    pub test_batch_size: Option<usize>,
    pub testing_percentage: f64,
    pub validation_percentage: f64,
    pub print_misclassified_test_images: bool,
    pub final_tensor_name: String,
    pub model: ModelSource,
    pub overrides: Overrides,
    /// `None`: all cores.
    pub threads: Option<usize>,
    /// TensorBoard event files go to `<dir>/train` and `<dir>/validation`.
    pub summaries_dir: Option<PathBuf>,
    /// Where the PNG pictures go [default: the summaries directory].
    pub report_dir: Option<PathBuf>,
}

/// What a retrain run did, as printed by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct RetrainSummary {
    pub labels: Vec<String>,
    pub images: usize,
    pub skipped: Vec<Skipped>,
    pub bottlenecks_cached: usize,
    pub bottlenecks_computed: usize,
    pub training_images: usize,
    pub validation_images: usize,
    pub test_images: usize,
    /// Test images the accuracy was measured on (`--test-batch-size` samples).
    pub test_images_evaluated: usize,
    /// `None` when there were no test images.
    pub test_accuracy: Option<f64>,
    /// The classification report on the test images measured.
    pub test_report: Option<Report>,
    /// The same on the whole validation set.
    pub validation_report: Option<Report>,
    pub output_graph: PathBuf,
    pub output_labels: PathBuf,
    /// PNG pictures written (training curves, test confusion matrix).
    pub pictures: Vec<PathBuf>,
    pub backbone: String,
    pub extraction_seconds: f64,
    pub training_seconds: f64,
    pub total_seconds: f64,
}

/// Runs the whole pipeline and writes the graph and labels.
pub fn run(options: &RetrainOptions) -> Result<RetrainSummary> {
    let start = Instant::now();
    check_writable(&options.output_graph)?;
    check_writable(&options.output_labels)?;
    let mut log = TrainingLog::create(options)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(options.threads.unwrap_or(0))
        .build()?;
    let dataset = Dataset::discover(&options.image_dir)?;
    report_dataset(&dataset);
    let backbone = Backbone::load(&options.model, &options.overrides)?;
    let cache = Cache::open(&options.bottleneck_dir, backbone.identity())?;
    let (bottlenecks, extraction) =
        pool.install(|| extract_all(&dataset.images, &backbone, &cache))?;
    info(&format!(
        "Bottlenecks: {} cached, {} computed, {} skipped in {:.1}s ({})",
        extraction.cached,
        extraction.computed,
        extraction.failed.len(),
        extraction.elapsed.as_secs_f64(),
        cache.dir().display()
    ));
    let splits = split_examples(&dataset, bottlenecks, options)?;
    let [training, validation, testing] = &splits;
    let training_start = Instant::now();
    let layer = train(
        training,
        validation,
        dataset.labels.len(),
        &options.training,
        |evaluation, layer| log.record(evaluation, layer),
    );
    let training_seconds = training_start.elapsed().as_secs_f64();
    let tested = test_sample(testing, options);
    let test_report = tested.as_ref().map(|t| report_on(&layer, t, &dataset));
    let validation_report =
        (!validation.is_empty()).then(|| report_on(&layer, validation, &dataset));
    let graph = retrained_graph(
        &backbone,
        &layer,
        &dataset.labels,
        &options.final_tensor_name,
    )?;
    write_graph(&options.output_graph, &graph)?;
    write_labels(&options.output_labels, &dataset.labels)?;
    info(&format!(
        "Wrote {} and {}",
        shown(&options.output_graph),
        shown(&options.output_labels)
    ));
    let pictures = log.finish(test_report.as_ref())?;
    let skipped = dataset
        .skipped
        .iter()
        .chain(&extraction.failed)
        .cloned()
        .collect();
    Ok(RetrainSummary {
        labels: dataset.labels.clone(),
        images: dataset.images.len(),
        skipped,
        bottlenecks_cached: extraction.cached,
        bottlenecks_computed: extraction.computed,
        training_images: training.len(),
        validation_images: validation.len(),
        test_images: testing.len(),
        test_images_evaluated: test_report.as_ref().map_or(0, |r| r.n),
        test_accuracy: test_report.as_ref().map(|r| r.accuracy),
        test_report,
        validation_report,
        output_graph: options.output_graph.clone(),
        output_labels: options.output_labels.clone(),
        pictures,
        backbone: format!("{} sha256:{}", backbone.name, backbone.sha256),
        extraction_seconds: extraction.elapsed.as_secs_f64(),
        training_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}

/// Where training progress goes: stderr, TensorBoard event files, the curves picture.
struct TrainingLog {
    train_events: Option<EventWriter>,
    validation_events: Option<EventWriter>,
    report_dir: Option<PathBuf>,
    points: Vec<CurvePoint>,
}

impl TrainingLog {
    /// Creates the event files and report folder up front, so a bad path fails before
    /// the long extraction rather than after it.
    fn create(options: &RetrainOptions) -> Result<TrainingLog> {
        let (train_events, validation_events) = match &options.summaries_dir {
            Some(dir) => (
                Some(EventWriter::create(&dir.join("train"))?),
                Some(EventWriter::create(&dir.join("validation"))?),
            ),
            None => (None, None),
        };
        let report_dir = options.report_dir.clone().or(options.summaries_dir.clone());
        if let Some(dir) = &report_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!("cannot create report directory {}: {e}", shown(dir))
            })?;
        }
        Ok(TrainingLog {
            train_events,
            validation_events,
            report_dir,
            points: Vec::new(),
        })
    }

    fn record(&mut self, evaluation: &Evaluation, layer: &FinalLayer) {
        report_evaluation(evaluation);
        self.points.push(CurvePoint {
            step: evaluation.step,
            train_accuracy: evaluation.train_accuracy,
            cross_entropy: evaluation.cross_entropy,
            validation_accuracy: evaluation.validation.as_ref().map(|v| v.accuracy),
            validation_cross_entropy: evaluation.validation.as_ref().map(|v| v.cross_entropy),
        });
        if let Err(e) = self.write_events(evaluation, layer) {
            warn(&format!("TensorBoard summaries stopped: {e:#}"));
            self.train_events = None;
            self.validation_events = None;
        }
    }

    fn write_events(&mut self, evaluation: &Evaluation, layer: &FinalLayer) -> Result<()> {
        let step = evaluation.step as i64;
        if let Some(writer) = &mut self.train_events {
            writer.scalar("accuracy", step, evaluation.train_accuracy as f32)?;
            writer.scalar("cross_entropy", step, evaluation.cross_entropy as f32)?;
            let weights: Vec<f32> = layer.weights.iter().copied().collect();
            writer.histogram("final_layer/weights", step, &weights)?;
            writer.histogram(
                "final_layer/biases",
                step,
                layer.biases.as_slice().unwrap_or(&[]),
            )?;
        }
        if let (Some(writer), Some(validation)) =
            (&mut self.validation_events, &evaluation.validation)
        {
            writer.scalar("accuracy", step, validation.accuracy as f32)?;
            writer.scalar("cross_entropy", step, validation.cross_entropy as f32)?;
        }
        Ok(())
    }

    /// Writes the pictures; returns their paths.
    fn finish(self, test_report: Option<&Report>) -> Result<Vec<PathBuf>> {
        let Some(dir) = self.report_dir else {
            return Ok(Vec::new());
        };
        let curves = dir.join("training_curves.png");
        write_training_curves(&curves, &self.points)?;
        let mut pictures = vec![curves];
        if let Some(report) = test_report {
            let confusion = dir.join("test_confusion_matrix.png");
            report.write_confusion_png(&confusion, "Test confusion matrix")?;
            pictures.push(confusion);
        }
        for picture in &pictures {
            info(&format!("Wrote {}", shown(picture)));
        }
        Ok(pictures)
    }
}

fn report_dataset(dataset: &Dataset) {
    for skipped in &dataset.skipped {
        warn(&format!(
            "skipping {}: {}",
            shown(&skipped.path),
            skipped.reason
        ));
    }
    let counts = dataset.class_counts();
    for (label, count) in dataset.labels.iter().zip(&counts) {
        if *count < FEW_IMAGES_WARNING {
            warn(&format!(
                "class {label:?} has only {count} images; {FEW_IMAGES_WARNING} or more give a more reliable classifier"
            ));
        }
    }
    info(&format!(
        "Found {} images in {} classes ({} files skipped) in {}",
        dataset.images.len(),
        dataset.labels.len(),
        dataset.skipped.len(),
        shown(&dataset.root)
    ));
}

/// Splits the usable bottlenecks into training, validation and test examples, which share
/// the one bottleneck matrix.
fn split_examples(
    dataset: &Dataset,
    bottlenecks: Bottlenecks,
    options: &RetrainOptions,
) -> Result<[Examples; 3]> {
    let class_count = dataset.labels.len();
    let mut rows: [(Vec<usize>, Vec<usize>); 3] = Default::default();
    let mut usable = vec![0usize; class_count];
    for (index, image) in dataset.images.iter().enumerate() {
        if !bottlenecks.present[index] {
            continue;
        }
        usable[image.class] += 1;
        let split = split_of(
            &image.relative,
            options.validation_percentage,
            options.testing_percentage,
        );
        let slot = &mut rows[split as usize];
        slot.0.push(index);
        slot.1.push(image.class);
    }
    if let Some(class) = usable.iter().position(|&n| n == 0) {
        bail!(
            "class {:?} has no usable image (every file failed to decode): fix or remove {}",
            dataset.labels[class],
            shown(&dataset.root.join(&dataset.labels[class]))
        );
    }
    let matrix = Arc::new(bottlenecks.matrix);
    let examples =
        rows.map(|(rows, labels)| Examples::new(matrix.clone(), rows, labels, class_count));
    warn_about_empty_splits(dataset, &examples);
    if examples[Split::Training as usize].is_empty() {
        bail!("no training images: lower --testing-percentage and --validation-percentage");
    }
    Ok(examples)
}

fn warn_about_empty_splits(dataset: &Dataset, examples: &[Examples; 3]) {
    for (split, name) in [
        (Split::Training, "training"),
        (Split::Validation, "validation"),
        (Split::Testing, "test"),
    ] {
        let set = &examples[split as usize];
        if set.is_empty() {
            warn(&format!(
                "no {name} images: the dataset is too small for the split; going on without them"
            ));
            continue;
        }
        for class in set.empty_classes() {
            warn(&format!(
                "class {:?} has no {name} images",
                dataset.labels[class]
            ));
        }
    }
}

fn report_evaluation(evaluation: &Evaluation) {
    let step = evaluation.step;
    info(&format!(
        "Step {step}: Train accuracy = {:.1}%",
        evaluation.train_accuracy * 100.0
    ));
    info(&format!(
        "Step {step}: Cross entropy = {:.6}",
        evaluation.cross_entropy
    ));
    if let Some(validation) = &evaluation.validation {
        info(&format!(
            "Step {step}: Validation accuracy = {:.1}% (N={})",
            validation.accuracy * 100.0,
            validation.n
        ));
    }
}

/// The test images measured: all of them, or retrain.py's class-balanced sample.
fn test_sample(testing: &Examples, options: &RetrainOptions) -> Option<Examples> {
    if testing.is_empty() {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(options.training.seed ^ 0x7e57);
    Some(match options.test_batch_size {
        None => testing.clone(),
        Some(size) => testing.sample(size, &mut rng),
    })
}

/// The classification report of the final layer on a set of examples.
fn report_on(layer: &FinalLayer, examples: &Examples, dataset: &Dataset) -> Report {
    let probabilities = layer.probabilities_of(examples);
    let names: Vec<String> = examples
        .origin
        .iter()
        .map(|&i| dataset.images[i].relative.clone())
        .collect();
    Report::new(
        &dataset.labels,
        &examples.labels,
        &predictions(&probabilities),
        &names,
    )
}
