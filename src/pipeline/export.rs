//! The `export` pipeline: a retrained graph -> a TensorFlow Lite file a phone app loads,
//! its labels and normalisation inside as TFLite Model Metadata.

use std::io::Write;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};

use crate::backbone::limits;
use crate::graph::classifier::read_labels;
use crate::graph::tflite::{export, file, quantize};
use crate::graph::{digest, GraphMetadata};
use crate::options::ExportOptions;
use crate::util::atomic::{check_writable, write_atomically};
use crate::util::files::read_regular;
use crate::util::messages::shown;
use crate::util::panic_guard::catching_panics_in;

/// `flowers export`: writes the `.tflite` file and prints one line about it on `out`.
pub fn run_command(options: &ExportOptions, out: &mut dyn Write) -> Result<u8> {
    let start = Instant::now();
    let output = &options.tflite.output;
    check_writable(output, "--output")?;
    let display = shown(&options.graph);
    let bytes = read_regular(&options.graph, limits::MAX_GRAPH_BYTES)
        .map_err(|e| anyhow!("cannot read graph {display}: {e}"))?;
    digest::verify(&bytes, &display)?;
    let (model, mut metadata) =
        catching_panics_in(&display, || export::from_graph_bytes(bytes, &display))?;
    if let Some(path) = &options.labels {
        let labels = read_labels(path)?;
        check_labels(&metadata, &labels, &shown(path), &display)?;
        metadata.labels.get_or_insert(labels);
    }
    let quantize = &options.tflite.quantize;
    let model = quantize::apply(model, quantize, &metadata.preprocessing, None)?;
    let bytes = file::encode(&model, &metadata)?;
    write_atomically(output, &bytes)?;
    writeln!(
        out,
        "{}: TensorFlow Lite, {}, {} operators, {} bytes, written in {:.2}s",
        shown(output),
        quantize.describe(),
        model.operators.len(),
        bytes.len(),
        start.elapsed().as_secs_f64()
    )?;
    Ok(crate::exit::SUCCESS)
}

/// The labels file given with `--labels` must be the graph's own labels.
fn check_labels(
    metadata: &GraphMetadata,
    labels: &[String],
    path: &str,
    display: &str,
) -> Result<()> {
    let Some(own) = &metadata.labels else {
        return Ok(());
    };
    if own != labels {
        bail!(
            "labels file {path} does not match the labels inside {display} ({} vs {} labels): pass the labels file written with this graph, or leave --labels out",
            labels.len(),
            own.len()
        );
    }
    Ok(())
}
