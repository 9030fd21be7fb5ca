//! flowers: point it at folders of photos, get an image classifier.
//!
//! Data flows one way, and so do imports: a module uses only the ones listed before it.
//!
//! | layer | modules | what |
//! |---|---|---|
//! | plumbing | [`util`], [`problem`] | atomic writes, messages, the walker; what can be wrong with a file |
//! | images | [`image`] | bytes -> pixels -> the backbone's input tensor |
//! | dataset | [`dataset`] | class folders -> labelled images, and the train/validation/test split |
//! | backbone | [`backbone`] | the frozen CNN: registry, ONNX loading, tract plan, flowers' own ops |
//! | bottlenecks | [`bottleneck`] | images -> bottleneck vectors, cached on disk, in a mapped matrix |
//! | training | [`train`] | bottlenecks -> the new final layer (hand-written SGD) |
//! | graph | [`graph`] | backbone + final layer -> the retrained graph, its metadata, loading it back; its TensorFlow Lite file |
//! | reports | [`report`] | metrics, text and JSON output, pictures, TensorBoard |
//! | pipelines | [`options`], [`pipeline`] | `retrain`, `label`, `evaluate` |
//! | command line | [`cli`] | clap, turned once into [`options`] |

#![warn(clippy::undocumented_unsafe_blocks)]

pub mod backbone;
pub mod bottleneck;
pub mod cli;
pub mod dataset;
pub mod graph;
pub mod image;
pub mod options;
pub mod pipeline;
pub mod problem;
pub mod report;
pub mod train;
pub mod util;

use std::io::Write;

/// Exit codes, documented in the README.
pub mod exit {
    /// Everything worked.
    pub const SUCCESS: u8 = 0;
    /// `label`: some inputs could not be read or decoded; all the others were labelled.
    pub const SOME_INPUTS_FAILED: u8 = 1;
    /// Usage error, unusable dataset, model or output path: nothing useful was produced.
    pub const FATAL: u8 = 2;
    /// `--assert-accuracy-at-least` was not met (everything else was written).
    pub const ACCURACY_BELOW_GATE: u8 = 3;
}

/// Runs one command, writing its results to `out`; returns the exit code. An error is
/// fatal (exit code [`exit::FATAL`]) unless it is a closed `out`.
pub fn run(command: options::Command, out: &mut dyn Write) -> anyhow::Result<u8> {
    match command {
        options::Command::Retrain(options) => pipeline::retrain::run_command(&options, out),
        options::Command::Label(options) => pipeline::label::run_command(&options, out),
        options::Command::Evaluate(options) => pipeline::evaluate::run_command(&options, out),
        options::Command::Extract(options) => pipeline::extract::run_command(&options, out),
        options::Command::Export(options) => pipeline::export::run_command(&options, out),
        options::Command::Architectures(options) => {
            pipeline::architectures::run_command(&options, out)
        }
    }
}
