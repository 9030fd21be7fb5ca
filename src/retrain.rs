//! The `retrain` pipeline: images -> bottlenecks -> trained final layer -> retrained graph.
//! This module only sequences the steps and reports; each step lives in its own module.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use ndarray::Array2;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::backbone::{Backbone, ModelSource, Overrides};
use crate::bottleneck::{extract_all, Bottlenecks, Cache};
use crate::dataset::{split_of, Dataset, Split, FEW_IMAGES_WARNING};
use crate::export::{retrained_graph, write_graph, write_labels};
use crate::progress::{info, shown, warn};
use crate::train::{accuracy, predictions, train, Evaluation, Examples, TrainingOptions};

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
    /// Print the summary as JSON on stdout; the human report then goes to stderr.
    pub json: bool,
}

/// A test image the trained layer got wrong.
#[derive(Clone, Debug, Serialize)]
pub struct Misclassified {
    pub image: String,
    pub label: String,
    pub predicted: String,
}

/// What a retrain run did, as printed by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct RetrainSummary {
    pub labels: Vec<String>,
    pub images: usize,
    pub skipped: Vec<SkippedFile>,
    pub bottlenecks_cached: usize,
    pub bottlenecks_computed: usize,
    pub training_images: usize,
    pub validation_images: usize,
    pub test_images: usize,
    /// Test images the accuracy was measured on (`--test-batch-size` samples).
    pub test_images_evaluated: usize,
    /// `None` when there were no test images.
    pub test_accuracy: Option<f64>,
    pub misclassified: Vec<Misclassified>,
    pub output_graph: PathBuf,
    pub output_labels: PathBuf,
    pub backbone: String,
    pub extraction_seconds: f64,
    pub training_seconds: f64,
    pub total_seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct SkippedFile {
    pub path: String,
    pub reason: String,
}

/// Runs the whole pipeline and writes the graph and labels.
pub fn run(options: &RetrainOptions) -> Result<RetrainSummary> {
    let start = Instant::now();
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
    let splits = split_examples(&dataset, &bottlenecks, options)?;
    let [training, validation, testing] = &splits;
    let training_start = Instant::now();
    let layer = train(
        training,
        validation,
        dataset.labels.len(),
        &options.training,
        |evaluation, _| report_evaluation(evaluation),
    );
    let training_seconds = training_start.elapsed().as_secs_f64();
    let (test_accuracy, test_images_evaluated, misclassified) =
        test(&layer, testing, &dataset, options);
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
    let skipped = dataset
        .skipped
        .iter()
        .chain(&extraction.failed)
        .map(|s| SkippedFile {
            path: s.path.display().to_string(),
            reason: s.reason.clone(),
        })
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
        test_images_evaluated,
        test_accuracy,
        misclassified,
        output_graph: options.output_graph.clone(),
        output_labels: options.output_labels.clone(),
        backbone: format!("{} sha256:{}", backbone.name, backbone.sha256),
        extraction_seconds: extraction.elapsed.as_secs_f64(),
        training_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    })
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

/// Splits the usable bottlenecks into training, validation and test examples.
fn split_examples(
    dataset: &Dataset,
    bottlenecks: &Bottlenecks,
    options: &RetrainOptions,
) -> Result<[Examples; 3]> {
    let class_count = dataset.labels.len();
    let mut rows: [(Vec<f32>, Vec<usize>, Vec<usize>); 3] = Default::default();
    let mut usable = vec![0usize; class_count];
    for (index, (image, vector)) in dataset.images.iter().zip(&bottlenecks.vectors).enumerate() {
        let Some(vector) = vector else { continue };
        usable[image.class] += 1;
        let split = split_of(
            &image.relative,
            options.validation_percentage,
            options.testing_percentage,
        );
        let slot = &mut rows[split as usize];
        slot.0.extend_from_slice(vector);
        slot.1.push(image.class);
        slot.2.push(index);
    }
    if let Some(class) = usable.iter().position(|&n| n == 0) {
        bail!(
            "class {:?} has no usable image (every file failed to decode): fix or remove {}",
            dataset.labels[class],
            shown(&dataset.root.join(&dataset.labels[class]))
        );
    }
    let examples = rows.map(|(features, labels, origin)| {
        let n = labels.len();
        let features = Array2::from_shape_vec((n, bottlenecks.dim), features)
            .expect("each row has the bottleneck size");
        Examples::new(features, labels, class_count).with_origin(origin)
    });
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
    if let Some((accuracy, n)) = evaluation.validation {
        info(&format!(
            "Step {step}: Validation accuracy = {:.1}% (N={n})",
            accuracy * 100.0
        ));
    }
}

/// Measures the final layer on the test split (all of it, or a class-balanced sample).
fn test(
    layer: &crate::train::FinalLayer,
    testing: &Examples,
    dataset: &Dataset,
    options: &RetrainOptions,
) -> (Option<f64>, usize, Vec<Misclassified>) {
    if testing.is_empty() {
        return (None, 0, Vec::new());
    }
    let mut rng = ChaCha8Rng::seed_from_u64(options.training.seed ^ 0x7e57);
    let sample = match options.test_batch_size {
        None => testing.clone(),
        Some(size) => testing.sample(size, &mut rng),
    };
    let probabilities = layer.probabilities(sample.features.view());
    let test_accuracy = accuracy(&probabilities, &sample.labels);
    let misclassified = predictions(&probabilities)
        .into_iter()
        .zip(&sample.labels)
        .zip(&sample.origin)
        .filter(|((predicted, label), _)| predicted != *label)
        .map(|((predicted, &label), &origin)| Misclassified {
            image: dataset.images[origin].relative.clone(),
            label: dataset.labels[label].clone(),
            predicted: dataset.labels[predicted].clone(),
        })
        .collect();
    (Some(test_accuracy), sample.len(), misclassified)
}
