//! Classification reports: accuracy, per-class precision/recall/F1, the confusion matrix
//! and the misclassified images, for the test split at the end of retrain and for
//! `flowers evaluate` on any class-per-folder directory.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::dataset::{Dataset, Skipped};
use crate::label::RetrainedGraph;
use crate::plots::write_confusion_matrix;
use crate::progress::{shown, Progress};

/// An image the classifier got wrong.
#[derive(Clone, Debug, Serialize)]
pub struct Misclassified {
    pub image: String,
    pub label: String,
    pub predicted: String,
}

/// Precision, recall and F1 of one class.
#[derive(Clone, Debug, Serialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Number of images whose true label is this class.
    pub support: usize,
}

/// Everything a classification report shows.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub accuracy: f64,
    pub n: usize,
    pub classes: Vec<ClassMetrics>,
    /// `confusion[true][predicted]`, in label order.
    pub confusion: Vec<Vec<usize>>,
    pub labels: Vec<String>,
    pub misclassified: Vec<Misclassified>,
}

impl Report {
    /// Builds the report from true and predicted class indices; `images` names each row.
    pub fn new(
        labels: &[String],
        truth: &[usize],
        predicted: &[usize],
        images: &[String],
    ) -> Report {
        let k = labels.len();
        let mut confusion = vec![vec![0usize; k]; k];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t][p] += 1;
        }
        let correct: usize = (0..k).map(|c| confusion[c][c]).sum();
        let classes = (0..k)
            .map(|c| class_metrics(&labels[c], &confusion, c))
            .collect();
        let misclassified = truth
            .iter()
            .zip(predicted)
            .zip(images)
            .filter(|((t, p), _)| t != p)
            .map(|((&t, &p), image)| Misclassified {
                image: image.clone(),
                label: labels[t].clone(),
                predicted: labels[p].clone(),
            })
            .collect();
        Report {
            accuracy: correct as f64 / truth.len().max(1) as f64,
            n: truth.len(),
            classes,
            confusion,
            labels: labels.to_vec(),
            misclassified,
        }
    }

    /// The per-class table and the confusion matrix, aligned for a terminal.
    pub fn write_tables(&self, out: &mut impl Write) -> io::Result<()> {
        let width = self
            .labels
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(5)
            .max(9);
        writeln!(
            out,
            "{:<width$}  precision  recall     f1  support",
            "class"
        )?;
        for c in &self.classes {
            writeln!(
                out,
                "{:<width$}  {:>9.3}  {:>6.3}  {:>5.3}  {:>7}",
                c.label, c.precision, c.recall, c.f1, c.support
            )?;
        }
        // Classes absent from this set (support 0) would drag the mean down for nothing.
        let present: Vec<f64> = self
            .classes
            .iter()
            .filter(|c| c.support > 0)
            .map(|c| c.f1)
            .collect();
        let macro_f1 = present.iter().sum::<f64>() / present.len().max(1) as f64;
        writeln!(
            out,
            "{:<width$}  {:>9}  {:>6}  {:>5.3}  {:>7}",
            "macro avg", "", "", macro_f1, self.n
        )?;
        writeln!(out)?;
        writeln!(
            out,
            "Confusion matrix (rows: true label, columns: predicted label)"
        )?;
        let cell = self
            .labels
            .iter()
            .map(|l| l.chars().count())
            .max()
            .unwrap_or(1)
            .max(5);
        write!(out, "{:<width$}", "")?;
        for label in &self.labels {
            write!(out, "  {label:>cell$}")?;
        }
        writeln!(out)?;
        for (label, row) in self.labels.iter().zip(&self.confusion) {
            write!(out, "{label:<width$}")?;
            for count in row {
                write!(out, "  {count:>cell$}")?;
            }
            writeln!(out)?;
        }
        Ok(())
    }

    /// Draws the confusion matrix as a PNG titled `what`, with the accuracy and N.
    pub fn write_confusion_png(&self, path: &Path, what: &str) -> Result<()> {
        let title = format!(
            "{what}: accuracy {:.1}% (N={})",
            self.accuracy * 100.0,
            self.n
        );
        write_confusion_matrix(path, &self.labels, &self.confusion, &title)
    }

    /// The misclassified images, one `path  predicted_label` line each.
    pub fn write_misclassified(&self, out: &mut impl Write, heading: &str) -> io::Result<()> {
        writeln!(out, "{heading}")?;
        for miss in &self.misclassified {
            writeln!(out, "{}  {}", miss.image, miss.predicted)?;
        }
        Ok(())
    }
}

fn class_metrics(label: &str, confusion: &[Vec<usize>], c: usize) -> ClassMetrics {
    let true_positives = confusion[c][c] as f64;
    let predicted: usize = confusion.iter().map(|row| row[c]).sum();
    let support: usize = confusion[c].iter().sum();
    let ratio = |a: f64, b: usize| if b == 0 { 0.0 } else { a / b as f64 };
    let precision = ratio(true_positives, predicted);
    let recall = ratio(true_positives, support);
    let f1 = if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    };
    ClassMetrics {
        label: label.to_string(),
        precision,
        recall,
        f1,
        support,
    }
}

/// The outcome of `flowers evaluate`.
pub struct Evaluation {
    pub report: Report,
    /// Files that could not be read or decoded, with the reason.
    pub skipped: Vec<Skipped>,
}

/// Labels every image of a class-per-folder directory with `graph` and compares with the
/// folder names, which must all be labels of the graph.
pub fn evaluate_directory(graph: &RetrainedGraph, image_dir: &Path) -> Result<Evaluation> {
    let dataset = Dataset::discover_classes(image_dir, 1)?;
    let to_graph: Vec<usize> = dataset
        .labels
        .iter()
        .map(|folder| graph_index(graph, folder, image_dir))
        .collect::<Result<_>>()?;
    let paths: Vec<PathBuf> = dataset.images.iter().map(|i| i.path.clone()).collect();
    let progress = Progress::new(paths.len() as u64, "labelling");
    let results = graph.classify_files(&paths, &progress);
    progress.finish();
    let mut skipped = dataset.skipped.clone();
    let (mut truth, mut predicted, mut names) = (Vec::new(), Vec::new(), Vec::new());
    for (image, result) in dataset.images.iter().zip(results) {
        match result {
            Ok(class) => {
                truth.push(to_graph[image.class]);
                predicted.push(class);
                names.push(image.relative.clone());
            }
            Err(reason) => skipped.push(Skipped {
                path: image.path.clone(),
                reason,
            }),
        }
    }
    if truth.is_empty() {
        bail!("no image of {} could be labelled", shown(image_dir));
    }
    Ok(Evaluation {
        report: Report::new(&graph.labels, &truth, &predicted, &names),
        skipped,
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_a_hand_count() {
        let labels = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let truth = [0, 0, 0, 1, 1, 2];
        let predicted = [0, 0, 1, 1, 2, 2];
        let names: Vec<String> = (0..6).map(|i| format!("img{i}")).collect();
        let report = Report::new(&labels, &truth, &predicted, &names);
        assert_eq!(
            report.confusion,
            vec![vec![2, 1, 0], vec![0, 1, 1], vec![0, 0, 1]]
        );
        assert!((report.accuracy - 4.0 / 6.0).abs() < 1e-12);
        let a = &report.classes[0];
        assert_eq!((a.precision, a.support), (1.0, 3));
        assert!((a.recall - 2.0 / 3.0).abs() < 1e-12);
        assert!((a.f1 - 0.8).abs() < 1e-12);
        assert_eq!(report.classes[1].precision, 0.5);
        assert_eq!(report.misclassified.len(), 2);
        assert_eq!(report.misclassified[0].image, "img2");
        assert_eq!(report.misclassified[0].predicted, "b");

        let mut text = Vec::new();
        report.write_tables(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("a              1.000   0.667  0.800        3"),
            "{text}"
        );
    }
}
