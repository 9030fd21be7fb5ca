//! Results for people: the text on stdout that retrain.py and label_image.py printed, and
//! the tables of a classification report.

use std::io::{self, Write};
use std::path::Path;

use super::metrics::Report;
use super::{Format, RetrainSummary};
use crate::graph::Prediction;
use crate::problem::{Problem, Skipped};
use crate::util::messages::shown;

/// Plain text, as retrain.py and label_image.py printed it.
pub struct Text;

impl Format for Text {
    /// The final test accuracy (retrain.py's line), the classification report on the test
    /// images and, if asked, the misclassified ones.
    fn retrain(
        &self,
        out: &mut dyn Write,
        summary: &RetrainSummary,
        print_misclassified: bool,
    ) -> io::Result<()> {
        let Some(report) = &summary.test_report else {
            return writeln!(
                out,
                "Final test accuracy = n/a (N=0): no test images; add images or raise --testing-percentage"
            );
        };
        writeln!(
            out,
            "Final test accuracy = {:.1}% (N={})",
            report.accuracy * 100.0,
            report.n
        )?;
        writeln!(out)?;
        write_tables(out, report)?;
        if print_misclassified {
            writeln!(out)?;
            write_misclassified(out, report, "=== MISCLASSIFIED TEST IMAGES ===")?;
        }
        Ok(())
    }

    fn evaluation(
        &self,
        out: &mut dyn Write,
        report: &Report,
        skipped: &[Skipped],
    ) -> io::Result<()> {
        let accuracy = report.accuracy * 100.0;
        if report.failed == 0 {
            writeln!(
                out,
                "Accuracy = {accuracy:.1}% (N={}, {} files skipped)",
                report.n,
                skipped.len()
            )?;
        } else {
            writeln!(
                out,
                "Accuracy = {accuracy:.1}% (N={}, with {} images the graph failed on counted as wrong; {} other files skipped)",
                report.n,
                report.failed,
                skipped.len() - report.failed.min(skipped.len())
            )?;
        }
        writeln!(out)?;
        write_tables(out, report)?;
        writeln!(out)?;
        write_misclassified(out, report, "=== MISCLASSIFIED IMAGES ===")
    }

    /// `label daisy 0.99`: one line per label, best first; with several images, each gets
    /// its path as a heading and a blank line after.
    fn predictions(
        &self,
        out: &mut dyn Write,
        image: &Path,
        predictions: &[Prediction],
        several: bool,
    ) -> io::Result<()> {
        if several {
            writeln!(out, "{}", shown(image))?;
        }
        for prediction in predictions {
            writeln!(out, "{} {}", prediction.label, prediction.score)?;
        }
        if several {
            writeln!(out)?;
        }
        Ok(())
    }

    /// Nothing on stdout: the error line on stderr says it all.
    fn label_failure(
        &self,
        _out: &mut dyn Write,
        _image: &Path,
        _problem: &Problem,
    ) -> io::Result<()> {
        Ok(())
    }
}

/// The per-class table and the confusion matrix, aligned for a terminal.
pub fn write_tables(out: &mut dyn Write, report: &Report) -> io::Result<()> {
    let width = report
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
    for c in &report.classes {
        writeln!(
            out,
            "{:<width$}  {:>9.3}  {:>6.3}  {:>5.3}  {:>7}",
            c.label, c.precision, c.recall, c.f1, c.support
        )?;
    }
    // Classes absent from this set (support 0) would drag the mean down for nothing.
    let present: Vec<f64> = report
        .classes
        .iter()
        .filter(|c| c.support > 0)
        .map(|c| c.f1)
        .collect();
    let macro_f1 = present.iter().sum::<f64>() / present.len().max(1) as f64;
    writeln!(
        out,
        "{:<width$}  {:>9}  {:>6}  {:>5.3}  {:>7}",
        "macro avg", "", "", macro_f1, report.n
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "Confusion matrix (rows: true label, columns: predicted label)"
    )?;
    let cell = report
        .labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(1)
        .max(5);
    write!(out, "{:<width$}", "")?;
    for label in &report.labels {
        write!(out, "  {label:>cell$}")?;
    }
    writeln!(out)?;
    for (label, row) in report.labels.iter().zip(&report.confusion) {
        write!(out, "{label:<width$}")?;
        for count in row {
            write!(out, "  {count:>cell$}")?;
        }
        writeln!(out)?;
    }
    Ok(())
}

/// The misclassified images, one `path  predicted_label` line each.
fn write_misclassified(out: &mut dyn Write, report: &Report, heading: &str) -> io::Result<()> {
    writeln!(out, "{heading}")?;
    for miss in &report.misclassified {
        writeln!(out, "{}  {}", miss.image, miss.predicted)?;
    }
    Ok(())
}
