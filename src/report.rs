//! Printing results on stdout: plain text for people, JSON lines for scripts.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use crate::label::Prediction;
use crate::progress::shown;
use crate::retrain::RetrainSummary;

/// The end of a retrain run: the final test accuracy and, if asked, the misclassified
/// test images (retrain.py's format).
pub fn write_retrain_summary(
    out: &mut impl Write,
    summary: &RetrainSummary,
    print_misclassified: bool,
) -> io::Result<()> {
    match summary.test_accuracy {
        Some(accuracy) => writeln!(
            out,
            "Final test accuracy = {:.1}% (N={})",
            accuracy * 100.0,
            summary.test_images_evaluated
        )?,
        None => writeln!(
            out,
            "Final test accuracy = n/a (N=0): no test images; add images or raise --testing-percentage"
        )?,
    }
    if print_misclassified {
        writeln!(out, "=== MISCLASSIFIED TEST IMAGES ===")?;
        for miss in &summary.misclassified {
            writeln!(out, "{}  {}", miss.image, miss.predicted)?;
        }
    }
    Ok(())
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
