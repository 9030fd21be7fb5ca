//! Full-integer quantization of a float model, as TensorFlow Lite's converter does it
//! (`TFLiteConverter` with a representative dataset and `TFLITE_BUILTINS_INT8`):
//!
//! - activations: per-tensor asymmetric int8 from the calibrated range, widened to
//!   include 0 and nudged so that 0 is exact (TF's `fakeQuantAttrsToType`);
//! - CONV_2D and DEPTHWISE_CONV_2D weights: per-channel symmetric int8 in [-127, 127],
//!   zero point 0, scale `max|w| / 127` (axis 0 for OHWI, 3 for depthwise 1HWC);
//! - FULLY_CONNECTED weights: per-tensor symmetric, the form every TFLite runtime back to
//!   the first int8 one (and the Task Library's) runs;
//! - biases: int32 at scale `input_scale * weight_scale`, zero point 0;
//! - AVERAGE_POOL_2D, RESHAPE and PAD keep their input's quantization, SOFTMAX outputs
//!   at scale 1/256 and zero point -128, as TFLite's int8 kernels require;
//! - MEAN over height and width becomes the equal AVERAGE_POOL_2D (and a RESHAPE when
//!   the mean drops those axes): one rounded division, which flowers' interpreter
//!   reproduces exactly, where TFLite's int8 MEAN has several code paths.

use anyhow::{anyhow, bail, Result};

use super::calibration::Ranges;
use super::Io;
use crate::graph::tflite::ir::{
    Data, ElementType, Model, Op, Operator, Padding, Quantization, TensorId,
};

/// int8's bounds.
const QMIN: f64 = -128.0;
const QMAX: f64 = 127.0;

/// The quantized model of `float` (as written by the exporter), with activation ranges
/// measured on it by [`super::calibration`].
pub fn quantize(float: &Model, ranges: &Ranges, io: Io) -> Result<Model> {
    let mut model = means_to_average_pools(float.clone())?;
    let params = activation_params(&model, ranges)?;
    for index in 0..model.operators.len() {
        quantize_constants(&mut model, index, &params)?;
    }
    for (tensor, q) in model.tensors.iter_mut().zip(&params) {
        if let Some(q) = q {
            tensor.element = ElementType::I8;
            tensor.quantization = Some(q.clone());
        }
    }
    add_input_quantize(&mut model, io);
    add_output_dequantize(&mut model, io);
    Ok(model)
}

/// TF's activation parameters for a calibrated `[min, max]`.
pub fn activation_quantization(min: f32, max: f32) -> Quantization {
    let (low, high) = (f64::from(min.min(0.0)), f64::from(max.max(0.0)));
    let (scale, zero) = if (high - low).abs() < f64::EPSILON {
        (1.0, QMIN)
    } else {
        let scale = (high - low) / (QMAX - QMIN);
        let from_min = QMIN - low / scale;
        let from_max = QMAX - high / scale;
        let zero = if QMIN.abs() + (low / scale).abs() < QMAX.abs() + (high / scale).abs() {
            from_min
        } else {
            from_max
        };
        (scale, zero.clamp(QMIN, QMAX).round())
    };
    per_tensor(scale as f32, zero as i64)
}

fn per_tensor(scale: f32, zero: i64) -> Quantization {
    Quantization {
        scale: vec![scale],
        zero_point: vec![zero],
        axis: 0,
    }
}

/// The quantization of every activation (None for constants), in operator order:
/// operators that only move values keep their input's, SOFTMAX gets TFLite's fixed one,
/// every other output its calibrated range's.
fn activation_params(model: &Model, ranges: &Ranges) -> Result<Vec<Option<Quantization>>> {
    let mut params: Vec<Option<Quantization>> = vec![None; model.tensors.len()];
    let measured = |id: TensorId| -> Result<Quantization> {
        let (min, max) = ranges
            .get(id)
            .ok_or_else(|| anyhow!("no calibration range for tensor {}", model.tensors[id].name))?;
        Ok(activation_quantization(min, max))
    };
    let input = model.input()?;
    let input_id = model.inputs[0];
    if input.element != ElementType::F32 {
        bail!("the model is already quantized");
    }
    params[input_id] = Some(measured(input_id)?);
    for operator in &model.operators {
        let output = operator.outputs[0];
        params[output] = Some(match operator.op {
            Op::AveragePool2d { .. } | Op::Reshape | Op::Pad => {
                params[operator.inputs[0]].clone().ok_or_else(|| {
                    anyhow!("{} reads a tensor no operator wrote", operator.op.name())
                })?
            }
            Op::Softmax { .. } => per_tensor(1.0 / 256.0, -128),
            Op::Conv2d { .. }
            | Op::DepthwiseConv2d { .. }
            | Op::FullyConnected { .. }
            | Op::Add { .. } => measured(output)?,
            ref other => bail!(
                "int8 export of {} is not supported: export float32 or --quantize float16",
                other.name()
            ),
        });
    }
    Ok(params)
}

/// Quantizes operator `index`'s weights and bias, which only it reads.
fn quantize_constants(
    model: &mut Model,
    index: usize,
    params: &[Option<Quantization>],
) -> Result<()> {
    let operator = model.operators[index].clone();
    let (axis, per_channel) = match operator.op {
        Op::Conv2d { .. } => (0, true),
        Op::DepthwiseConv2d { .. } => (3, true),
        Op::FullyConnected { .. } => (0, false),
        _ => return check_no_float_constants(model, &operator),
    };
    let input_scale = params[operator.inputs[0]]
        .as_ref()
        .map(|q| q.scale[0])
        .ok_or_else(|| anyhow!("{} reads an unquantized tensor", operator.op.name()))?;
    let weights = operator.inputs[1];
    let weight_scales = quantize_weights(model, weights, axis, per_channel)?;
    let channels = model.tensors[weights].shape[axis];
    let bias = match operator.inputs.get(2) {
        Some(&bias) => bias,
        None => {
            let name = format!("{}/bias", model.tensors[weights].name);
            let bias = model.add_constant(&name, vec![channels], Data::F32(vec![0.0; channels]));
            model.operators[index].inputs.push(bias);
            bias
        }
    };
    quantize_bias(model, bias, input_scale, &weight_scales)
}

/// Operators other than the three with weights take no float constant: quantizing one
/// would need scales TFLite's kernels do not take.
fn check_no_float_constants(model: &Model, operator: &Operator) -> Result<()> {
    for &id in &operator.inputs {
        let tensor = &model.tensors[id];
        if tensor.data.is_some() && tensor.element == ElementType::F32 {
            bail!(
                "int8 export of {} with the constant {} is not supported: export float32 or --quantize float16",
                operator.op.name(),
                tensor.name
            );
        }
    }
    Ok(())
}

/// Symmetric int8 weights, per channel along `axis` or per tensor; returns the scales.
fn quantize_weights(
    model: &mut Model,
    id: TensorId,
    axis: usize,
    per_channel: bool,
) -> Result<Vec<f32>> {
    let tensor = &model.tensors[id];
    let Some(Data::F32(values)) = &tensor.data else {
        bail!(
            "the weights {} are not float32 constants (shared, or quantized already)",
            tensor.name
        );
    };
    let channels = if per_channel { tensor.shape[axis] } else { 1 };
    // The channel of element i: OHWI keeps each output channel contiguous, 1HWC
    // interleaves them.
    let inner: usize = tensor.shape[axis + 1..].iter().product();
    let channel_of = |i: usize| {
        if per_channel {
            (i / inner) % channels
        } else {
            0
        }
    };
    let mut max_abs = vec![0f32; channels];
    for (i, &w) in values.iter().enumerate() {
        let c = channel_of(i);
        max_abs[c] = max_abs[c].max(w.abs());
    }
    let scales: Vec<f32> = max_abs
        .iter()
        .map(|&m| if m > 0.0 { m / 127.0 } else { 1.0 })
        .collect();
    let quantized = values
        .iter()
        .enumerate()
        .map(|(i, &w)| (w / scales[channel_of(i)]).round().clamp(-127.0, 127.0) as i8)
        .collect();
    let tensor = &mut model.tensors[id];
    tensor.data = Some(Data::I8(quantized));
    tensor.element = ElementType::I8;
    tensor.quantization = Some(Quantization {
        scale: scales.clone(),
        zero_point: vec![0; channels],
        axis: if per_channel { axis } else { 0 },
    });
    Ok(scales)
}

/// int32 bias at scale `input_scale * weight_scale` (per channel when the weights are).
fn quantize_bias(
    model: &mut Model,
    id: TensorId,
    input_scale: f32,
    weight_scales: &[f32],
) -> Result<()> {
    let tensor = &model.tensors[id];
    let Some(Data::F32(values)) = &tensor.data else {
        bail!("the bias {} is not a float32 constant", tensor.name);
    };
    let scales: Vec<f32> = if weight_scales.len() == 1 {
        vec![input_scale * weight_scales[0]]
    } else {
        weight_scales.iter().map(|&s| input_scale * s).collect()
    };
    let scale_of = |c: usize| scales[if scales.len() == 1 { 0 } else { c }];
    let quantized = values
        .iter()
        .enumerate()
        .map(|(c, &b)| {
            (f64::from(b) / f64::from(scale_of(c)))
                .round()
                .clamp(i32::MIN.into(), i32::MAX.into()) as i32
        })
        .collect();
    let tensor = &mut model.tensors[id];
    tensor.data = Some(Data::I32(quantized));
    tensor.element = ElementType::I32;
    tensor.quantization = Some(Quantization {
        zero_point: vec![0; scales.len()],
        scale: scales,
        axis: 0,
    });
    Ok(())
}

/// MEAN over axes 1 and 2 -> AVERAGE_POOL_2D over the whole image (then RESHAPE to
/// [1, C] when the mean does not keep those axes).
fn means_to_average_pools(mut model: Model) -> Result<Model> {
    let mut operators = Vec::with_capacity(model.operators.len() + 1);
    for operator in std::mem::take(&mut model.operators) {
        let Op::Mean { keep_dims } = operator.op else {
            operators.push(operator);
            continue;
        };
        let (x, output) = (operator.inputs[0], operator.outputs[0]);
        let [1, h, w, c] = model.tensors[x].shape[..] else {
            bail!(
                "a MEAN of shape {:?} cannot be quantized",
                model.tensors[x].shape
            );
        };
        if model.constant_i32(operator.inputs[1]) != Some(&[1, 2]) {
            bail!("a MEAN over other axes than height and width cannot be quantized");
        }
        let pool = Op::AveragePool2d {
            filter: [h, w],
            stride: [1, 1],
            padding: Padding::Valid,
            activation: Default::default(),
        };
        if keep_dims {
            operators.push(Operator {
                op: pool,
                inputs: vec![x],
                outputs: vec![output],
            });
            continue;
        }
        let name = model.tensors[output].name.clone();
        let pooled = model.add_activation(&format!("{name}/pool"), vec![1, 1, 1, c]);
        let shape = model.add_constant(
            &format!("{name}/shape"),
            vec![2],
            Data::I32(vec![1, c as i32]),
        );
        operators.push(Operator {
            op: pool,
            inputs: vec![x],
            outputs: vec![pooled],
        });
        operators.push(Operator {
            op: Op::Reshape,
            inputs: vec![pooled, shape],
            outputs: vec![output],
        });
    }
    model.operators = operators;
    Ok(model)
}

/// The model input stays float (or becomes uint8, zero point moved by 128, same scale),
/// and a QUANTIZE operator makes the int8 tensor the first operators read.
fn add_input_quantize(model: &mut Model, io: Io) {
    let input = model.inputs[0];
    let mut int8 = model.tensors[input].clone();
    int8.name = format!("{}_int8", int8.name);
    let int8 = model.add_tensor(int8);
    for operator in &mut model.operators {
        for i in operator.inputs.iter_mut().filter(|i| **i == input) {
            *i = int8;
        }
    }
    set_io_type(model, input, io);
    let quantize = Operator {
        op: Op::Quantize,
        inputs: vec![input],
        outputs: vec![int8],
    };
    model.operators.insert(0, quantize);
}

/// The model output stays float through DEQUANTIZE (or uint8 through QUANTIZE).
fn add_output_dequantize(model: &mut Model, io: Io) {
    let output = model.outputs[0];
    let mut int8 = model.tensors[output].clone();
    int8.name = format!("{}_int8", int8.name);
    let int8 = model.add_tensor(int8);
    for operator in &mut model.operators {
        for o in operator.outputs.iter_mut().filter(|o| **o == output) {
            *o = int8;
        }
    }
    set_io_type(model, output, io);
    let op = match io {
        Io::Float => Op::Dequantize,
        Io::Uint8 => Op::Quantize,
    };
    model.operators.push(Operator {
        op,
        inputs: vec![int8],
        outputs: vec![output],
    });
}

fn set_io_type(model: &mut Model, id: TensorId, io: Io) {
    let tensor = &mut model.tensors[id];
    match io {
        Io::Float => {
            tensor.element = ElementType::F32;
            tensor.quantization = None;
        }
        Io::Uint8 => {
            tensor.element = ElementType::U8;
            if let Some(q) = &mut tensor.quantization {
                q.zero_point[0] += 128;
            }
        }
    }
}
