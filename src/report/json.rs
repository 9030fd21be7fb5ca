//! Results for scripts: one JSON object per line on stdout.
//!
//! Each object is serialised in memory and then written in one call, so a failed write is
//! always an `io::Error` the caller can recognise (a closed pipe ends the run quietly),
//! never an error hidden inside `serde_json`'s.

use std::io::{self, Write};
use std::path::Path;

use serde::Serialize;

use super::metrics::Report;
use super::{Format, RetrainSummary};
use crate::graph::Prediction;
use crate::problem::{Problem, Skipped};

/// One JSON object per line.
pub struct Json;

impl Format for Json {
    /// The whole summary; the misclassified images are in it already.
    fn retrain(&self, out: &mut dyn Write, summary: &RetrainSummary, _: bool) -> io::Result<()> {
        write_line(out, summary)
    }

    /// The report with the skipped files beside it.
    fn evaluation(
        &self,
        out: &mut dyn Write,
        report: &Report,
        skipped: &[Skipped],
    ) -> io::Result<()> {
        let mut value = serde_json::to_value(report).map_err(io::Error::other)?;
        value["skipped"] = serde_json::to_value(skipped).map_err(io::Error::other)?;
        write_line(out, &value)
    }

    /// `{"image": ..., "predictions": [{"label": ..., "score": ...}, ...]}`.
    fn predictions(
        &self,
        out: &mut dyn Write,
        image: &Path,
        predictions: &[Prediction],
        _several: bool,
    ) -> io::Result<()> {
        #[derive(Serialize)]
        struct Line<'a> {
            image: &'a str,
            predictions: &'a [Prediction],
        }
        let image = image.to_string_lossy();
        write_line(
            out,
            &Line {
                image: &image,
                predictions,
            },
        )
    }

    /// `{"image": ..., "kind": ..., "error": ...}`, so a script sees every input.
    fn label_failure(
        &self,
        out: &mut dyn Write,
        image: &Path,
        problem: &Problem,
    ) -> io::Result<()> {
        #[derive(Serialize)]
        struct Line<'a> {
            image: &'a str,
            kind: &'a str,
            error: &'a str,
        }
        let image = image.to_string_lossy();
        let error = problem.to_string();
        write_line(
            out,
            &Line {
                image: &image,
                kind: problem.kind(),
                error: &error,
            },
        )
    }
}

/// `value` as one line of JSON.
fn write_line(out: &mut dyn Write, value: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_label_failure_carries_its_kind() {
        let mut out = Vec::new();
        Json.label_failure(&mut out, Path::new("x.jpg"), &Problem::Truncated)
            .unwrap();
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["image"], "x.jpg");
        assert_eq!(value["kind"], "truncated");
        assert!(out.ends_with(b"}\n"));
    }

    #[test]
    fn a_closed_pipe_is_an_io_error_of_its_kind() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let error = Json
            .predictions(&mut Closed, Path::new("x.jpg"), &[], false)
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::BrokenPipe);
    }
}
