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
