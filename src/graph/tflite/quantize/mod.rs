//! Post-training quantization of a float TFLite [`Model`], as TensorFlow Lite defines it
//! (<https://www.tensorflow.org/lite/performance/quantization_spec>), and running the
//! result.
//!
//! - [`int8`]: full-integer quantization from activation ranges measured by
//!   [`calibration`]: per-channel symmetric int8 convolution weights, per-tensor
//!   asymmetric int8 activations, int32 biases, QUANTIZE/DEQUANTIZE at the float ends (or
//!   uint8 input and output).
//! - [`float16`]: weights stored as float16 behind DEQUANTIZE operators.
//! - [`interpret`]: flowers' integer interpreter, on [`kernels`] and [`fixed_point`] that
//!   compute what TFLite's kernels compute.

pub mod calibration;
pub mod fixed_point;
pub mod float16;
pub mod int8;
pub mod interpret;
pub mod kernels;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use super::ir::Model;
use crate::image::Preprocessing;
use crate::util::messages::shown;

/// `--quantize`: how the exported weights and activations are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// int8 weights and activations, integer kernels.
    Int8,
    /// float16 weights, float32 computation.
    Float16,
}

impl Precision {
    pub fn parse(text: &str) -> Result<Precision, String> {
        match text {
            "int8" => Ok(Precision::Int8),
            "float16" => Ok(Precision::Float16),
            _ => Err(format!(
                "unknown --quantize {text:?} (expected int8 or float16)"
            )),
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::Int8 => "int8",
            Precision::Float16 => "float16",
        })
    }
}

/// `--io`: the type of an int8 model's input and output tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Io {
    /// float32 in and out, with QUANTIZE and DEQUANTIZE inside the model.
    #[default]
    Float,
    /// uint8 in and out (as Model Maker's quantized files): the app quantizes the input.
    Uint8,
}

impl Io {
    pub fn parse(text: &str) -> Result<Io, String> {
        match text {
            "float" => Ok(Io::Float),
            "uint8" => Ok(Io::Uint8),
            _ => Err(format!("unknown --io {text:?} (expected float or uint8)")),
        }
    }
}

/// `--quantize`, `--io` and `--calibration-dir`, as `export` and `retrain` take them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuantizeOptions {
    /// None: float32 weights and activations.
    pub precision: Option<Precision>,
    pub io: Io,
    pub calibration_dir: Option<PathBuf>,
}

impl QuantizeOptions {
    /// The file's precision in words, for the line `export` prints.
    pub fn describe(&self) -> String {
        match (self.precision, self.io) {
            (None, _) => "float32".into(),
            (Some(Precision::Int8), Io::Uint8) => "int8 (uint8 input and output)".into(),
            (Some(precision), _) => precision.to_string(),
        }
    }
}

/// Images of a dataset that int8 may calibrate on when no `--calibration-dir` is given
/// (`retrain`'s training images): the folder and the files.
pub struct TrainingImages<'a> {
    pub root: &'a Path,
    pub paths: Vec<PathBuf>,
}

/// `float` as `how` asks: unchanged, with float16 weights, or int8 with activation
/// ranges from the calibration images run through `preprocessing` (the graph's).
pub fn apply(
    float: Model,
    how: &QuantizeOptions,
    preprocessing: &Preprocessing,
    training: Option<TrainingImages<'_>>,
) -> Result<Model> {
    match how.precision {
        None => Ok(float),
        Some(Precision::Float16) => Ok(float16::quantize(&float)),
        Some(Precision::Int8) => {
            let (source, candidates) = calibration_images(how, training)?;
            let count = calibration::DEFAULT_COUNT;
            let (ranges, used) =
                calibration::measure(&float, preprocessing, &candidates, count, &source)?;
            crate::info!("int8: activation ranges from {used} images of {source}");
            if used < count {
                crate::warn!(
                    "int8 calibrated on {used} images of {source}, fewer than {count}: the ranges may miss what other photos reach"
                );
            }
            int8::quantize(&float, &ranges, how.io)
        }
    }
}

/// Where int8 calibrates: `--calibration-dir`, else the training images, else an error
/// saying what to give (a graph does not record where its training photos were).
fn calibration_images(
    how: &QuantizeOptions,
    training: Option<TrainingImages<'_>>,
) -> Result<(String, Vec<PathBuf>)> {
    if let Some(dir) = &how.calibration_dir {
        if !dir.is_dir() {
            bail!("--calibration-dir {}: not a folder: give a folder of photos like those the model will classify", shown(dir));
        }
        return Ok((
            format!("--calibration-dir {}", shown(dir)),
            calibration::candidates_in(dir),
        ));
    }
    match training {
        Some(images) => Ok(("the training images".into(), calibration::in_calibration_order(images.root, images.paths))),
        None => bail!(
            "--quantize int8 needs --calibration-dir DIR, a folder of photos like those the model will classify (the training folder will do): a graph does not record where its training photos were"
        ),
    }
}
