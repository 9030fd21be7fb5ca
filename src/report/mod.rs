//! Reports: what a run tells people and scripts.
//!
//! [`metrics`] computes a classification report; [`text`] and [`json`] are the two output
//! formats behind the [`Format`] trait (as hyperfine's exporters: one file per format);
//! [`plots`] draws pictures, [`tensorboard`] writes event files, and [`training_log`]
//! records training as it goes.

pub mod json;
pub mod metrics;
pub mod plots;
pub mod tensorboard;
pub mod text;
pub mod training_log;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use metrics::Report;

use crate::graph::Prediction;
use crate::problem::{Problem, Skipped};

/// One output format for every result flowers prints on stdout.
pub trait Format {
    /// The end of a retrain run.
    fn retrain(
        &self,
        out: &mut dyn Write,
        summary: &RetrainSummary,
        print_misclassified: bool,
    ) -> io::Result<()>;

    /// The report of `flowers evaluate`.
    fn evaluation(
        &self,
        out: &mut dyn Write,
        report: &Report,
        skipped: &[Skipped],
    ) -> io::Result<()>;

    /// One labelled image; `several` when more than one image is being labelled.
    fn predictions(
        &self,
        out: &mut dyn Write,
        image: &Path,
        predictions: &[Prediction],
        several: bool,
    ) -> io::Result<()>;

    /// An image that could not be labelled (the stderr line is the caller's).
    fn label_failure(&self, out: &mut dyn Write, image: &Path, problem: &Problem)
        -> io::Result<()>;
}

/// The format asked for: JSON lines with `--json`, else text.
pub fn format(json: bool) -> &'static dyn Format {
    if json {
        &json::Json
    } else {
        &text::Text
    }
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
