//! Where training progress goes as it happens: retrain.py's step lines on stderr,
//! TensorBoard event files, and the points of the training-curves picture.

use std::path::{Path, PathBuf};

use anyhow::Result;

use super::metrics::Report;
use super::plots::{write_confusion_png, write_training_curves, CurvePoint};
use super::tensorboard::EventWriter;
use crate::train::{Evaluation, FinalLayer};
use crate::util::messages::shown;

/// Where training progress goes: stderr, TensorBoard event files, the curves picture.
pub struct TrainingLog {
    train_events: Option<EventWriter>,
    validation_events: Option<EventWriter>,
    report_dir: Option<PathBuf>,
    points: Vec<CurvePoint>,
}

impl TrainingLog {
    /// Creates the event files and report folder up front, so a bad path fails before
    /// the long extraction rather than after it.
    pub fn create(summaries_dir: Option<&Path>, report_dir: Option<&Path>) -> Result<TrainingLog> {
        let (train_events, validation_events) = match summaries_dir {
            Some(dir) => (
                Some(EventWriter::create(&dir.join("train"))?),
                Some(EventWriter::create(&dir.join("validation"))?),
            ),
            None => (None, None),
        };
        let report_dir = report_dir.or(summaries_dir).map(Path::to_path_buf);
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

    pub fn record(&mut self, evaluation: &Evaluation, layer: &FinalLayer) {
        report_evaluation(evaluation);
        self.points.push(CurvePoint {
            step: evaluation.step,
            train_accuracy: evaluation.train_accuracy,
            cross_entropy: evaluation.cross_entropy,
            validation_accuracy: evaluation.validation.as_ref().map(|v| v.accuracy),
            validation_cross_entropy: evaluation.validation.as_ref().map(|v| v.cross_entropy),
        });
        if let Err(e) = self.write_events(evaluation, layer) {
            crate::warn!("TensorBoard summaries stopped: {e:#}");
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
    pub fn finish(self, test_report: Option<&Report>) -> Result<Vec<PathBuf>> {
        let Some(dir) = self.report_dir else {
            return Ok(Vec::new());
        };
        let curves = dir.join("training_curves.png");
        write_training_curves(&curves, &self.points)?;
        let mut pictures = vec![curves];
        if let Some(report) = test_report {
            let confusion = dir.join("test_confusion_matrix.png");
            write_confusion_png(&confusion, report, "Test confusion matrix")?;
            pictures.push(confusion);
        }
        for picture in &pictures {
            crate::info!("Wrote {}", shown(picture));
        }
        Ok(pictures)
    }
}

/// retrain.py's three lines per evaluation step.
fn report_evaluation(evaluation: &Evaluation) {
    let step = evaluation.step;
    crate::info!(
        "Step {step}: Train accuracy = {:.1}%",
        evaluation.train_accuracy * 100.0
    );
    crate::info!(
        "Step {step}: Cross entropy = {:.6}",
        evaluation.cross_entropy
    );
    if let Some(validation) = &evaluation.validation {
        crate::info!(
            "Step {step}: Validation accuracy = {:.1}% (N={})",
            validation.accuracy * 100.0,
            validation.n
        );
    }
}
