//! flowers: point it at folders of photos, get an image classifier.
//!
//! The pipeline flows one way: [`dataset`] finds images and splits them, [`backbone`] and
//! [`preprocess`] turn an image into a bottleneck, [`bottleneck`] caches and extracts them
//! in parallel, [`train`] fits the new final layer, [`export`] writes the retrained graph,
//! and [`label`] classifies new images with it. [`retrain`] sequences the steps and
//! [`report`] prints results.

pub mod accelerate;
pub mod atomic;
pub mod backbone;
pub mod bottleneck;
pub mod dataset;
pub mod direct_conv;
pub mod evaluate;
pub mod export;
pub mod label;
pub mod matrix;
pub mod plots;
pub mod pointwise;
pub mod preprocess;
pub mod progress;
pub mod report;
pub mod retrain;
pub mod summary;
pub mod train;

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
