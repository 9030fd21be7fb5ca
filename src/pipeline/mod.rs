//! The pipelines, on top of everything else: `retrain` (images -> bottlenecks -> trained
//! layer -> graph), `label` (graph + images -> predictions) and `evaluate` (graph +
//! class folders -> report). Each only sequences the layers below and reports.

pub mod architectures;
pub mod evaluate;
pub mod export;
pub mod extract;
pub mod label;
pub mod retrain;

use anyhow::Result;

use crate::exit;

/// Exit code for `--assert-accuracy-at-least`: 3 when the accuracy is missing or too low,
/// with one line on stderr saying which.
pub(crate) fn accuracy_gate(gate: Option<f64>, accuracy: Option<f64>, what: &str) -> u8 {
    match (gate, accuracy) {
        (None, _) => exit::SUCCESS,
        (Some(min), Some(accuracy)) if accuracy >= min => exit::SUCCESS,
        (Some(min), Some(accuracy)) => {
            crate::util::messages::error(&anyhow::anyhow!(
                "{what} accuracy {accuracy:.4} is below --assert-accuracy-at-least {min}"
            ));
            exit::ACCURACY_BELOW_GATE
        }
        (Some(_), None) => {
            crate::util::messages::error(&anyhow::anyhow!(
                "no {what} images to check --assert-accuracy-at-least against"
            ));
            exit::ACCURACY_BELOW_GATE
        }
    }
}

/// A rayon pool of `threads` workers (`None`: one per core).
pub(crate) fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    Ok(rayon::ThreadPoolBuilder::new()
        .num_threads(threads.unwrap_or(0))
        .build()?)
}
