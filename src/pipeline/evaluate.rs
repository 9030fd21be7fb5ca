//! The `evaluate` pipeline: label every image of a class-per-folder directory with a
//! retrained graph and compare with the folder names.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::{accuracy_gate, thread_pool};
use crate::dataset::Dataset;
use crate::exit;
use crate::graph::classifier::LabelImageFlags;
use crate::graph::RetrainedGraph;
use crate::options::EvaluateOptions;
use crate::problem::{Problem, Skipped};
use crate::report::plots::write_confusion_png;
use crate::report::{format, Report};
use crate::util::messages::shown;
use crate::util::progress::Progress;

/// The outcome of `flowers evaluate`.
pub struct Evaluation {
    pub report: Report,
    /// Files that could not be read or decoded, with the reason.
    pub skipped: Vec<Skipped>,
}

/// `flowers evaluate`: measures the graph, prints the report on `out`, writes the picture
/// if asked, and returns the exit code of the accuracy gate.
pub fn run_command(options: &EvaluateOptions, out: &mut dyn Write) -> Result<u8> {
    let graph = RetrainedGraph::load(
        &options.graph,
        options.labels.as_deref(),
        &LabelImageFlags::default(),
    )?;
    let pool = thread_pool(options.threads)?;
    let evaluation = pool.install(|| evaluate_directory(&graph, &options.image_dir))?;
    let report = &evaluation.report;
    if let Some(dir) = &options.report_dir {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create report directory {}: {e}", shown(dir)))?;
        let path = dir.join("confusion_matrix.png");
        write_confusion_png(&path, report, "Confusion matrix")?;
        crate::info!("Wrote {}", shown(&path));
    }
    format(options.json).evaluation(out, report, &evaluation.skipped)?;
    if report.failed > 0 && options.assert_accuracy_at_least.is_some() {
        crate::util::messages::error(&anyhow::anyhow!(
            "the graph failed on {} of {} images (inference_failed): an evaluation with such failures never passes --assert-accuracy-at-least",
            report.failed,
            report.n
        ));
        return Ok(exit::ACCURACY_BELOW_GATE);
    }
    Ok(accuracy_gate(
        options.assert_accuracy_at_least,
        Some(report.accuracy),
        "evaluation",
    ))
}

/// Labels every image of a class-per-folder directory with `graph`, on the current rayon
/// pool, and compares with the folder names, which must all be labels of the graph.
/// Unusable files are skipped; images the graph fails on (`inference_failed`, such as NaN
/// scores) are listed with them and also count as wrong answers, so a broken graph
/// cannot score well by failing.
pub fn evaluate_directory(graph: &RetrainedGraph, image_dir: &Path) -> Result<Evaluation> {
    let dataset = Dataset::discover_classes(image_dir, 1)?;
    let to_graph: Vec<usize> = dataset
        .labels
        .iter()
        .map(|folder| graph_index(graph, folder, image_dir))
        .collect::<Result<_>>()?;
    let paths: Vec<PathBuf> = dataset.images.iter().map(|i| i.path.clone()).collect();
    let results = classify_files(graph, &paths);
    let mut skipped = dataset.skipped.clone();
    let (mut truth, mut predicted, mut names) = (Vec::new(), Vec::new(), Vec::new());
    let mut failed = 0;
    for (image, result) in dataset.images.iter().zip(results) {
        match result {
            Ok(class) => {
                truth.push(to_graph[image.class]);
                predicted.push(class);
                names.push(image.relative.clone());
            }
            Err(problem) => {
                failed += usize::from(matches!(problem, Problem::InferenceFailed(_)));
                skipped.push(Skipped {
                    path: image.path.clone(),
                    problem,
                });
            }
        }
    }
    if truth.is_empty() {
        let first = skipped
            .iter()
            .find(|s| matches!(s.problem, Problem::InferenceFailed(_)));
        match first {
            Some(first) => bail!(
                "the graph failed on every image of {}: {}",
                shown(image_dir),
                first.problem
            ),
            None => bail!("no image of {} could be labelled", shown(image_dir)),
        }
    }
    let report = Report::new(&graph.labels, &truth, &predicted, &names).with_failures(failed);
    Ok(Evaluation { report, skipped })
}

/// The most probable class of each file, on the current rayon pool, in input order.
fn classify_files(graph: &RetrainedGraph, paths: &[PathBuf]) -> Vec<Result<usize, Problem>> {
    let progress = Progress::new(paths.len() as u64, "labelling");
    let results = paths
        .par_iter()
        .map(|path| {
            let result = graph.label_file(path, 1).map(|best| best[0].class);
            if let Err(problem) = &result {
                crate::warn!("skipping {}: {problem}", shown(path));
            }
            progress.inc();
            result
        })
        .collect();
    progress.finish();
    results
}

fn graph_index(graph: &RetrainedGraph, folder: &str, image_dir: &Path) -> Result<usize> {
    match graph.labels.iter().position(|l| l == folder) {
        Some(index) => Ok(index),
        None => bail!(
            "folder {:?} in {} is not a label of the graph (labels: {}): rename it or leave it out",
            folder,
            shown(image_dir),
            graph.labels.join(", ")
        ),
    }
}
