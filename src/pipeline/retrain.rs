//! The `retrain` pipeline: images -> bottlenecks -> trained final layer -> retrained graph.
//! This module only sequences the steps and reports; each step lives in its own module.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{accuracy_gate, thread_pool};
use crate::backbone::names::is_taken_in;
use crate::backbone::{Backbones, ModelFormat};
use crate::bottleneck::distorted::{extract_distorted, PoolSpec};
use crate::bottleneck::{cache_dirs, extract_scoped, open_caches, parts, Bottlenecks, Part, Scope};
use crate::dataset::{split_of, Dataset, Split, FEW_IMAGES_WARNING};
use crate::graph::export::graph_metadata;
use crate::graph::tflite;
use crate::graph::tflite::quantize::TrainingImages;
use crate::graph::{retrained_graph_of, write_graph, write_labels, RetrainedGraphFile};
use crate::options::RetrainOptions;
use crate::problem::Skipped;
use crate::report::training_log::TrainingLog;
use crate::report::{format, Report, RetrainSummary};
use crate::train::{check_batch, predictions, train, Examples, FinalLayer};
use crate::util::atomic::{check_writable, create_private_dir, same_destination, write_atomically};
use crate::util::messages::shown;

/// `flowers retrain`: runs the pipeline, prints the results on `out` (text, or JSON with
/// the text on stderr), and returns the exit code of the accuracy gate.
pub fn run_command(options: &RetrainOptions, out: &mut dyn Write) -> Result<u8> {
    let summary = run(options)?;
    let print_misclassified = options.print_misclassified_test_images;
    if options.json {
        format(false).retrain(&mut io::stderr(), &summary, print_misclassified)?;
        format(true).retrain(out, &summary, print_misclassified)?;
    } else {
        format(false).retrain(out, &summary, print_misclassified)?;
    }
    Ok(accuracy_gate(
        options.assert_accuracy_at_least,
        summary.test_accuracy,
        "test",
    ))
}

/// Runs the whole pipeline and writes the graph and labels.
pub fn run(options: &RetrainOptions) -> Result<RetrainSummary> {
    let start = Instant::now();
    check_outputs(options)?;
    let mut log = TrainingLog::create(
        options.summaries_dir.as_deref(),
        options.report_dir.as_deref(),
    )?;
    let pool = thread_pool(options.threads)?;
    let dataset = Dataset::discover(&options.image_dir)?;
    report_dataset(&dataset);
    let backbones = Backbones::load(&options.backbones)?;
    let output_graph = output_graph_path(options, &backbones);
    if options.output_graph.is_none() {
        check_graph_output(&output_graph, &options.output_labels)?;
    }
    check_final_tensor_name(&backbones, &options.final_tensor_name)?;
    check_tflite_output(options, &output_graph, &backbones)?;
    let caches = open_caches(&options.bottleneck_dir, &backbones)?;
    let parts = parts(&backbones, &caches);
    let scope = Scope {
        shard: None,
        require_cached: options.require_cached,
        matrix_memory: options.training_memory,
    };
    let (bottlenecks, extraction) =
        pool.install(|| extract_scoped(&dataset.images, &parts, scope))?;
    crate::info!(
        "Bottlenecks: {} cached, {} computed, {} skipped in {:.1}s ({})",
        extraction.cached,
        extraction.computed,
        extraction.failed.len(),
        extraction.elapsed.as_secs_f64(),
        cache_dirs(&parts)
    );
    let sets = training_sets(&dataset, bottlenecks, &parts, &pool, options)?;
    let [training, validation, testing] = &sets.splits;
    if let Some(size) = options.test_batch_size {
        check_batch("--test-batch-size", size, training.dim())?;
    }
    let training_start = Instant::now();
    let mut snapshot_error = None;
    let layer = train(
        training,
        validation,
        dataset.labels.len(),
        &options.training,
        |evaluation, layer| log.record(evaluation, layer),
        |step, layer| {
            if snapshot_error.is_none() {
                let written = write_intermediate(options, &backbones, layer, &dataset.labels, step);
                snapshot_error = written.err();
            }
        },
    )?;
    if let Some(error) = snapshot_error {
        return Err(error);
    }
    let training_seconds = training_start.elapsed().as_secs_f64();
    let tested = test_sample(testing, options);
    let test_report = tested
        .as_ref()
        .map(|t| report_on(&layer, t, &dataset))
        .transpose()?;
    let validation_report = (!validation.is_empty())
        .then(|| report_on(&layer, validation, &dataset))
        .transpose()?;
    let graph = retrained_graph_of(
        &backbones,
        &layer,
        &dataset.labels,
        &options.final_tensor_name,
    )?;
    let tflite = tflite_bytes(options, &backbones, &graph, &dataset, &output_graph)?;
    write_graph(&output_graph, &graph)?;
    write_labels(&options.output_labels, &dataset.labels)?;
    crate::info!(
        "Wrote {} and {}",
        shown(&output_graph),
        shown(&options.output_labels)
    );
    if let (Some(tflite), Some(bytes)) = (&options.output_tflite, tflite) {
        write_atomically(&tflite.output, &bytes)?;
        crate::info!("Wrote {}", shown(&tflite.output));
    }
    let pictures = log.finish(test_report.as_ref())?;
    let skipped = dataset
        .skipped
        .iter()
        .chain(&extraction.failed)
        .chain(&sets.distortion_failures)
        .cloned()
        .collect();
    Ok(RetrainSummary {
        labels: dataset.labels.clone(),
        images: dataset.images.len(),
        skipped,
        bottlenecks_cached: extraction.cached,
        bottlenecks_computed: extraction.computed,
        training_images: sets.training_images,
        validation_images: validation.len(),
        test_images: testing.len(),
        test_images_evaluated: test_report.as_ref().map_or(0, |r| r.n),
        test_accuracy: test_report.as_ref().map(|r| r.accuracy),
        test_report,
        validation_report,
        output_graph,
        output_labels: options.output_labels.clone(),
        pictures,
        backbone: backbones.describe(),
        extraction_seconds: extraction.elapsed.as_secs_f64(),
        training_seconds,
        total_seconds: start.elapsed().as_secs_f64(),
    })
}

/// The `--output-tflite` file's bytes, made before anything is written so that a graph
/// that cannot be exported leaves no outputs behind.
fn tflite_bytes(
    options: &RetrainOptions,
    backbones: &Backbones,
    graph: &RetrainedGraphFile,
    dataset: &Dataset,
    output_graph: &Path,
) -> Result<Option<Vec<u8>>> {
    let (Some(tflite), Some(backbone)) = (&options.output_tflite, backbones.single()) else {
        return Ok(None);
    };
    let metadata = graph_metadata(backbone, &dataset.labels, &options.final_tensor_name);
    let display = shown(output_graph);
    // int8 calibrates on the training images: never on the test photos it is judged by.
    let training = dataset
        .images
        .iter()
        .filter(|image| {
            let split = split_of(
                &image.relative,
                options.validation_percentage,
                options.testing_percentage,
            );
            split == Split::Training
        })
        .map(|image| image.path.clone())
        .collect();
    let training = TrainingImages {
        root: &dataset.root,
        paths: training,
    };
    tflite::export::quantized_tflite_file(
        graph,
        &metadata,
        &display,
        &tflite.quantize,
        Some(training),
    )
    .map(Some)
}

/// `--output-tflite` needs a path of its own, and one backbone, checked before any work.
fn check_tflite_output(
    options: &RetrainOptions,
    graph: &Path,
    backbones: &Backbones,
) -> Result<()> {
    let Some(tflite) = &options.output_tflite else {
        return Ok(());
    };
    if backbones.is_combined() {
        bail!(
            "--output-tflite: the graph of combined backbones ({}) has one input per backbone, which flowers' TensorFlow Lite export does not take; leave --output-tflite out or use one backbone",
            backbones.name()
        );
    }
    for (other, flag) in [
        (graph, "--output-graph"),
        (options.output_labels.as_path(), "--output-labels"),
    ] {
        if same_destination(&tflite.output, other) {
            bail!(
                "--output-tflite {} is the same file as {flag} {}: give them two names",
                shown(&tflite.output),
                shown(other)
            );
        }
    }
    Ok(())
}

/// `--output-graph`, or retrain.py's name with the extension of the backbone's format.
fn output_graph_path(options: &RetrainOptions, backbones: &Backbones) -> PathBuf {
    let extension = match backbones.format() {
        ModelFormat::Onnx => "onnx",
        ModelFormat::TensorFlow => "pb",
    };
    options
        .output_graph
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("retrained_graph.{extension}")))
}

/// Checks the output paths before any work: each can be written and is no folder, and
/// the intermediate graphs' folder is one of this user's. The default graph name waits
/// for the backbone's format.
fn check_outputs(options: &RetrainOptions) -> Result<()> {
    check_writable(&options.output_labels, "--output-labels")?;
    if let Some(tflite) = &options.output_tflite {
        check_writable(&tflite.output, "--output-tflite")?;
    }
    if let Some(graph) = &options.output_graph {
        check_graph_output(graph, &options.output_labels)?;
    }
    if options.training.snapshot_every.is_some() {
        create_private_dir(
            &options.intermediate_output_graphs_dir,
            "--intermediate-output-graphs-dir",
        )?;
    }
    Ok(())
}

/// The graph's path can be written, and is not the labels' file (the labels, written
/// second, would replace the graph).
fn check_graph_output(graph: &Path, labels: &Path) -> Result<()> {
    check_writable(graph, "--output-graph")?;
    if same_destination(graph, labels) {
        bail!(
            "--output-labels {} is the same file as --output-graph {}: give them two names",
            shown(labels),
            shown(graph)
        );
    }
    Ok(())
}

/// `--final-tensor-name` must name a new tensor: one the backbone already has (its
/// `input`, say) would give a graph with two tensors of one name.
fn check_final_tensor_name(backbones: &Backbones, name: &str) -> Result<()> {
    if is_taken_in(backbones, name) {
        bail!(
            "--final-tensor-name {name:?} is already a tensor of the backbone {}: choose another name, e.g. final_result",
            backbones.name()
        );
    }
    Ok(())
}

/// The examples of the three splits, as training uses them.
struct TrainingSets {
    /// Training, validation and test examples; with distortions on, the training examples
    /// are the distorted copies.
    splits: [Examples; 3],
    /// Training images (not copies).
    training_images: usize,
    /// Images whose distorted copies could not be computed.
    distortion_failures: Vec<Skipped>,
}

/// Splits the bottlenecks and, with distortions on, puts the training images' distorted
/// copies in place of their bottlenecks.
fn training_sets(
    dataset: &Dataset,
    mut bottlenecks: Bottlenecks,
    parts: &[Part],
    pool: &rayon::ThreadPool,
    options: &RetrainOptions,
) -> Result<TrainingSets> {
    if bottlenecks.matrix.is_streamed() {
        crate::info!(
            "Bottlenecks take {} MB, more than --training-memory: streaming them from disk",
            bottlenecks.matrix.rows() * bottlenecks.dim() * 4 / 1_000_000
        );
    }
    let image_sha256 = std::mem::take(&mut bottlenecks.sha256);
    let mut splits = split_examples(dataset, bottlenecks, options)?;
    let training = Split::Training as usize;
    let training_images = splits[training].len();
    let mut distortion_failures = Vec::new();
    if options.distortions.any() {
        let plain = &splits[training];
        let (distorted, failed) =
            pool.install(|| distorted_training(dataset, &image_sha256, plain, parts, options))?;
        splits[training] = distorted;
        distortion_failures = failed;
    }
    Ok(TrainingSets {
        splits,
        training_images,
        distortion_failures,
    })
}

/// The training examples as distorted copies: `--distorted-copies` per training image,
/// from the cache or computed now, sampled in training where retrain.py distorted afresh.
fn distorted_training(
    dataset: &Dataset,
    image_sha256: &[Option<[u8; 32]>],
    plain: &Examples,
    parts: &[Part],
    options: &RetrainOptions,
) -> Result<(Examples, Vec<Skipped>)> {
    let (images, classes): (Vec<_>, Vec<usize>) = plain
        .origin
        .iter()
        .filter_map(|&i| {
            let image = &dataset.images[i];
            Some(((image, image_sha256[i]?), image.class))
        })
        .unzip();
    let spec = PoolSpec {
        distortions: options.distortions,
        copies: options.distorted_copies,
        dim: plain.dim(),
        matrix_memory: options.training_memory,
        require_cached: options.require_cached,
    };
    let (pool, report) = extract_distorted(&images, parts, &spec)?;
    crate::info!(
        "Distorted bottlenecks ({} per training image): {} cached, {} computed in {:.1}s",
        spec.copies,
        report.cached,
        report.computed,
        report.elapsed.as_secs_f64()
    );
    let (rows, labels): (Vec<usize>, Vec<usize>) = (0..pool.present.len())
        .filter(|&row| pool.present[row])
        .map(|row| (row, classes[row / spec.copies]))
        .unzip();
    if rows.is_empty() {
        bail!("no distorted training image could be computed: see the warnings above");
    }
    let examples = Examples::new(Arc::new(pool.matrix), rows, labels, dataset.labels.len());
    Ok((examples, report.failed))
}

/// retrain.py's intermediate graph: `<dir>/intermediate_<step>.pb` (`.onnx` for ONNX
/// backbones), the graph as it would be if training stopped here.
fn write_intermediate(
    options: &RetrainOptions,
    backbones: &Backbones,
    layer: &FinalLayer,
    labels: &[String],
    step: usize,
) -> Result<()> {
    let graph = retrained_graph_of(backbones, layer, labels, &options.final_tensor_name)?;
    let dir = &options.intermediate_output_graphs_dir;
    std::fs::create_dir_all(dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot create --intermediate-output-graphs-dir {}: {}",
            shown(dir),
            crate::util::messages::io_reason(&e)
        )
    })?;
    let path = dir.join(format!("intermediate_{step}.{}", graph.extension()));
    write_graph(&path, &graph)?;
    crate::info!("Wrote {}", shown(&path));
    Ok(())
}

fn report_dataset(dataset: &Dataset) {
    for skipped in &dataset.skipped {
        crate::warn!("skipping {}: {}", shown(&skipped.path), skipped.problem);
    }
    let counts = dataset.class_counts();
    for (label, count) in dataset.labels.iter().zip(&counts) {
        if *count < FEW_IMAGES_WARNING {
            crate::warn!(
                "class {label:?} has only {count} images; {FEW_IMAGES_WARNING} or more give a more reliable classifier"
            );
        }
    }
    crate::info!(
        "Found {} images in {} classes ({} files skipped) in {}",
        dataset.images.len(),
        dataset.labels.len(),
        dataset.skipped.len(),
        shown(&dataset.root)
    );
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
            crate::warn!(
                "no {name} images: the dataset is too small for the split; going on without them"
            );
            continue;
        }
        for class in set.empty_classes() {
            crate::warn!("class {:?} has no {name} images", dataset.labels[class]);
        }
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
fn report_on(layer: &FinalLayer, examples: &Examples, dataset: &Dataset) -> Result<Report> {
    let probabilities = layer.probabilities_of(examples)?;
    let names: Vec<String> = examples
        .origin
        .iter()
        .map(|&i| dataset.images[i].relative.clone())
        .collect();
    Ok(Report::new(
        &dataset.labels,
        &examples.labels,
        &predictions(&probabilities),
        &names,
    ))
}
