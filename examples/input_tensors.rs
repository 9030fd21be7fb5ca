//! Writes the exact input tensors flowers feeds a retrained graph, in NHWC, so that
//! bench/tflite_oracle.py can run TensorFlow Lite's interpreter on the very same floats
//! (Pillow's decoder and resizer differ from flowers' by a few grey levels, which would
//! hide a 1e-4 disagreement between two interpreters).
//!
//!     cargo run --release --example input_tensors -- GRAPH OUT.f32 IMAGE...
//!
//! GRAPH is a flowers graph (ONNX or `.pb`): its metadata gives the size, mean, std and
//! resize rule. OUT.f32 gets the tensors back to back (little-endian float32, each
//! height x width x 3) and OUT.f32.txt the image paths in the same order; an image that
//! cannot be decoded is left out of both, with a warning.
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

use flowers::graph::classifier::LabelImageFlags;
use flowers::graph::RetrainedGraph;
use flowers::image::Layout;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [graph, out, images @ ..] = &args[..] else {
        anyhow::bail!("usage: input_tensors GRAPH OUT.f32 IMAGE...");
    };
    let graph = RetrainedGraph::load(Path::new(graph), None, &LabelImageFlags::default())?;
    let mut preprocessing = graph.preprocessing.clone();
    preprocessing.layout = Layout::Nhwc;
    let mut tensors = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut names = String::new();
    for image in images {
        let bytes = std::fs::read(image).with_context(|| format!("cannot read {image}"))?;
        let tensor = match preprocessing.tensor_from_bytes(&bytes) {
            Ok(tensor) => tensor,
            Err(problem) => {
                eprintln!("warning: {image}: {problem}");
                continue;
            }
        };
        for value in tensor.try_as_plain_ram()?.as_slice::<f32>()? {
            tensors.write_all(&value.to_le_bytes())?;
        }
        names.push_str(image);
        names.push('\n');
    }
    tensors.flush()?;
    std::fs::write(format!("{out}.txt"), names)?;
    Ok(())
}
