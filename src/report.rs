//! Printing results on stdout: plain text for people, JSON lines for scripts.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use crate::evaluate::Report;
use crate::label::Prediction;
use crate::progress::shown;
use crate::retrain::RetrainSummary;

/// The end of a retrain run: the final test accuracy (retrain.py's line), the
/// classification report on the test images and, if asked, the misclassified ones.
pub fn write_retrain_summary(
    out: &mut impl Write,
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
    report.write_tables(out)?;
    if print_misclassified {
        writeln!(out)?;
        report.write_misclassified(out, "=== MISCLASSIFIED TEST IMAGES ===")?;
    }
    Ok(())
}

/// The report of `flowers evaluate`.
pub fn write_evaluation(out: &mut impl Write, report: &Report, skipped: usize) -> io::Result<()> {
    writeln!(
        out,
        "Accuracy = {:.1}% (N={}, {} files skipped)",
        report.accuracy * 100.0,
        report.n,
        skipped
    )?;
    writeln!(out)?;
    report.write_tables(out)?;
    writeln!(out)?;
    report.write_misclassified(out, "=== MISCLASSIFIED IMAGES ===")
}

/// The JSON summary of a retrain run, one object on one line.
pub fn write_retrain_json(out: &mut impl Write, summary: &RetrainSummary) -> io::Result<()> {
    serde_json::to_writer(&mut *out, summary)?;
    writeln!(out)
}

/// One labelled image. `several` adds the image path as a heading and a blank line after.
pub fn write_predictions(
    out: &mut impl Write,
    image: &Path,
    predictions: &[Prediction],
    several: bool,
    as_json: bool,
) -> io::Result<()> {
    if as_json {
        #[derive(Serialize)]
        struct Line<'a> {
            image: &'a str,
            predictions: &'a [Prediction],
        }
        let image = image.to_string_lossy();
        serde_json::to_writer(
            &mut *out,
            &Line {
                image: &image,
                predictions,
            },
        )?;
        return writeln!(out);
    }
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

/// An image that could not be labelled: a JSON line on stdout in JSON mode (so a script
/// sees every input), always a warning on stderr.
pub fn write_label_failure(
    out: &mut impl Write,
    image: &Path,
    reason: &str,
    as_json: bool,
) -> io::Result<()> {
    eprintln!("error: {}: {reason}", shown(image));
    if as_json {
        #[derive(Serialize)]
        struct Line<'a> {
            image: &'a str,
            error: &'a str,
        }
        let image = image.to_string_lossy();
        serde_json::to_writer(
            &mut *out,
            &Line {
                image: &image,
                error: reason,
            },
        )?;
        writeln!(out)?;
    }
    Ok(())
}
