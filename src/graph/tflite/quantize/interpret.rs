//! Runs an int8 `.tflite` (flowers' own or TensorFlow's full-integer files with the same
//! operators) with [`super::kernels`]: float or uint8-valued input in, float scores out.
//! Every parameter (multipliers, activation ranges) is derived from the file's scales and
//! zero points exactly as TFLite's `Prepare` functions derive them.

use anyhow::{anyhow, bail, Context, Result};

use crate::util::panic_guard::catching_panics_in;

use super::fixed_point::Multiplier;
use super::kernels::{self, AddParams, Requantize, Window};
use crate::graph::tflite::ir::{
    Activation, Data, ElementType, Model, Op, Operator, Padding, Tensor, TensorId,
};

/// A tensor's values while the model runs: float, or integers of the tensor's type held
/// as i32 (int8 and uint8 alike, so the kernels see one integer type).
#[derive(Clone, Debug)]
enum Value {
    F32(Vec<f32>),
    Int(Vec<i32>),
}

/// Whether `model` computes in integers: some activation is int8 or uint8.
pub fn is_quantized(model: &Model) -> bool {
    model
        .tensors
        .iter()
        .any(|t| t.data.is_none() && matches!(t.element, ElementType::I8 | ElementType::U8))
}

/// A checked int8 model, ready to run images.
pub struct Int8Model {
    model: Model,
}

impl Int8Model {
    /// Checks `model` once: one input and one output,
    /// constants as long as their shapes, and one run on a zero input that completes.
    /// The kernels index by shapes and constants only, never by the values computed, so
    /// every later input of the same size runs too; a panic in that run (a damaged file)
    /// is an error naming the file.
    pub fn new(model: Model) -> Result<Int8Model> {
        for tensor in &model.tensors {
            if let Some(data) = &tensor.data {
                if data.len() != tensor.len() || data.element_type() != tensor.element {
                    bail!(
                        "constant {} does not fill its shape {:?}",
                        tensor.name,
                        tensor.shape
                    );
                }
            }
        }
        let input_len = model.input()?.len();
        let checked = Int8Model { model };
        catching_panics_in("the int8 model", || {
            checked.run(&vec![0.0; input_len]).map(drop)
        })?;
        Ok(checked)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Number of output values.
    pub fn output_len(&self) -> usize {
        self.model.output().map(|t| t.len()).unwrap_or(0)
    }

    /// Runs one input (the normalised NHWC image) and returns the scores.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>> {
        let expected = self.model.input()?.len();
        if input.len() != expected {
            bail!(
                "the input has {} values, the model takes {expected}",
                input.len()
            );
        }
        run(&self.model, input)
    }
}

/// Runs `model` on one float input (NHWC, the normalised image); an int8/uint8 model
/// input is quantized with its own scale and zero point first, as an app does. Returns
/// the output as float (dequantized if it is integer).
pub fn run(model: &Model, input: &[f32]) -> Result<Vec<f32>> {
    let [input_id] = model.inputs[..] else {
        bail!(
            "the model has {} inputs, not one image input",
            model.inputs.len()
        );
    };
    let mut values: Vec<Option<Value>> = vec![None; model.tensors.len()];
    let tensor = &model.tensors[input_id];
    values[input_id] = Some(match tensor.element {
        ElementType::F32 => Value::F32(input.to_vec()),
        _ => {
            let (scale, zero) = scale_and_zero(tensor)?;
            let (min, max) = integer_range(tensor.element)?;
            Value::Int(kernels::quantize(input, scale, zero, min, max))
        }
    });
    for operator in &model.operators {
        let output = evaluate(model, operator, &values)
            .with_context(|| format!("int8 {}", operator.op.name()))?;
        values[operator.outputs[0]] = Some(output);
    }
    let [output_id] = model.outputs[..] else {
        bail!("the model has {} outputs, not one", model.outputs.len());
    };
    match values[output_id].take() {
        Some(Value::F32(scores)) => Ok(scores),
        Some(Value::Int(q)) => {
            let (scale, zero) = scale_and_zero(&model.tensors[output_id])?;
            Ok(kernels::dequantize(&q, scale, zero))
        }
        None => bail!("no operator computes the model's output"),
    }
}

/// The per-tensor scale and zero point of an activation.
fn scale_and_zero(tensor: &Tensor) -> Result<(f32, i32)> {
    let q = tensor
        .quantization
        .as_ref()
        .ok_or_else(|| anyhow!("tensor {} has no quantization", tensor.name))?;
    match (q.scale.first(), q.zero_point.first()) {
        (Some(&scale), Some(&zero)) if scale > 0.0 && scale.is_finite() => {
            let zero =
                i32::try_from(zero).map_err(|_| anyhow!("zero point {zero} of {}", tensor.name))?;
            Ok((scale, zero))
        }
        _ => bail!("tensor {} has no usable scale", tensor.name),
    }
}

fn integer_range(element: ElementType) -> Result<(i32, i32)> {
    match element {
        ElementType::I8 => Ok((-128, 127)),
        ElementType::U8 => Ok((0, 255)),
        other => bail!("{} activations are not integer", other.as_str()),
    }
}

/// `CalculateActivationRangeQuantized`: the fused activation's bounds in the output's
/// integers.
fn activation_range(activation: Activation, output: &Tensor) -> Result<(i32, i32)> {
    let (scale, zero) = scale_and_zero(output)?;
    let (min, max) = integer_range(output.element)?;
    let quantize = |f: f32| zero + (f / scale).round() as i32;
    Ok(match activation {
        Activation::None => (min, max),
        Activation::Relu => (min.max(quantize(0.0)), max),
        Activation::Relu6 => (min.max(quantize(0.0)), max.min(quantize(6.0))),
    })
}

fn integers<'a>(model: &'a Model, values: &'a [Option<Value>], id: TensorId) -> Result<Vec<i32>> {
    match (&model.tensors[id].data, &values[id]) {
        (Some(Data::I8(v)), _) => Ok(v.iter().map(|&x| i32::from(x)).collect()),
        (Some(Data::U8(v)), _) => Ok(v.iter().map(|&x| i32::from(x)).collect()),
        (Some(Data::I32(v)), _) => Ok(v.clone()),
        (None, Some(Value::Int(v))) => Ok(v.clone()),
        _ => bail!(
            "tensor {} is not an integer tensor here",
            model.tensors[id].name
        ),
    }
}

fn floats(values: &[Option<Value>], model: &Model, id: TensorId) -> Result<Vec<f32>> {
    match (&model.tensors[id].data, &values[id]) {
        (Some(Data::F32(v)), _) | (None, Some(Value::F32(v))) => Ok(v.clone()),
        _ => bail!(
            "tensor {} is not a float tensor here",
            model.tensors[id].name
        ),
    }
}

/// int8 values of an int8 tensor.
fn int8(model: &Model, values: &[Option<Value>], id: TensorId) -> Result<Vec<i8>> {
    if model.tensors[id].element != ElementType::I8 {
        bail!(
            "tensor {} is {}, not int8",
            model.tensors[id].name,
            model.tensors[id].element.as_str()
        );
    }
    Ok(integers(model, values, id)?
        .into_iter()
        .map(|v| v as i8)
        .collect())
}

fn widen(values: Vec<i8>) -> Value {
    Value::Int(values.into_iter().map(i32::from).collect())
}

fn evaluate(model: &Model, operator: &Operator, values: &[Option<Value>]) -> Result<Value> {
    let input = operator
        .inputs
        .first()
        .copied()
        .ok_or_else(|| anyhow!("no input"))?;
    let output = &model.tensors[operator.outputs[0]];
    match &operator.op {
        Op::Quantize => quantize_op(model, values, input, output),
        Op::Dequantize => {
            let (scale, zero) = scale_and_zero(&model.tensors[input])?;
            Ok(Value::F32(kernels::dequantize(
                &integers(model, values, input)?,
                scale,
                zero,
            )))
        }
        Op::Conv2d { .. } | Op::DepthwiseConv2d { .. } => convolution(model, operator, values),
        Op::FullyConnected { activation } => fully_connected(model, operator, values, *activation),
        Op::AveragePool2d {
            filter,
            stride,
            padding,
            activation,
        } => {
            let window = window(model, operator, *filter, *stride, [1, 1], *padding)?;
            let (min, max) = activation_range(*activation, output)?;
            Ok(widen(kernels::average_pool(
                &int8(model, values, input)?,
                &window,
                min,
                max,
            )))
        }
        Op::Add { activation } => add(model, operator, values, *activation),
        Op::Reshape => Ok(Value::Int(integers(model, values, input)?)),
        Op::Pad => pad(model, operator, values),
        Op::Softmax { beta } => {
            let (input_scale, _) = scale_and_zero(&model.tensors[input])?;
            let (scale, zero) = scale_and_zero(output)?;
            let logits = int8(model, values, input)?;
            Ok(widen(kernels::softmax(
                &logits,
                input_scale,
                *beta,
                scale,
                zero,
            )))
        }
        other => bail!("flowers has no int8 kernel for {}", other.name()),
    }
}

/// QUANTIZE: float -> integers, or integers -> integers of another type or scale.
fn quantize_op(
    model: &Model,
    values: &[Option<Value>],
    input: TensorId,
    output: &Tensor,
) -> Result<Value> {
    let (scale, zero) = scale_and_zero(output)?;
    let (min, max) = integer_range(output.element)?;
    let source = &model.tensors[input];
    if source.element == ElementType::F32 {
        return Ok(Value::Int(kernels::quantize(
            &floats(values, model, input)?,
            scale,
            zero,
            min,
            max,
        )));
    }
    let (input_scale, input_zero) = scale_and_zero(source)?;
    let multiplier = Multiplier::new(f64::from(input_scale) / f64::from(scale));
    let q = integers(model, values, input)?;
    Ok(Value::Int(kernels::requantize(
        &q, input_zero, multiplier, zero, min, max,
    )))
}

/// The window of a convolution or pooling operator from its input and output shapes.
fn window(
    model: &Model,
    operator: &Operator,
    kernel: [usize; 2],
    stride: [usize; 2],
    dilation: [usize; 2],
    padding: Padding,
) -> Result<Window> {
    let image = |id: TensorId| -> Result<[usize; 3]> {
        match model.tensors[id].shape[..] {
            [1, h, w, c] => Ok([h, w, c]),
            ref other => bail!(
                "tensor {} has shape {other:?}, not [1, H, W, C]",
                model.tensors[id].name
            ),
        }
    };
    let (input, output) = (image(operator.inputs[0])?, image(operator.outputs[0])?);
    let mut pad = [0; 2];
    for axis in 0..2 {
        let (size, before) = padding
            .output(input[axis], kernel[axis], stride[axis], dilation[axis])
            .ok_or_else(|| anyhow!("the window does not fit the input"))?;
        if size != output[axis] {
            bail!("output size {} where the window gives {size}", output[axis]);
        }
        pad[axis] = before;
    }
    Ok(Window {
        input,
        output,
        kernel,
        stride,
        dilation,
        pad,
    })
}

/// TFLite's per-channel multipliers: `input_scale * filter_scale[c] / output_scale`, in
/// double (`PopulateConvolutionQuantizationParams`).
fn channel_multipliers(
    input: &Tensor,
    filter: &Tensor,
    output: &Tensor,
    channels: usize,
) -> Result<Vec<Multiplier>> {
    let (input_scale, _) = scale_and_zero(input)?;
    let (output_scale, _) = scale_and_zero(output)?;
    let scales = &filter
        .quantization
        .as_ref()
        .ok_or_else(|| anyhow!("unquantized filter"))?
        .scale;
    if scales.len() != channels && scales.len() != 1 {
        bail!(
            "filter {} has {} scales for {channels} channels",
            filter.name,
            scales.len()
        );
    }
    Ok((0..channels)
        .map(|c| {
            let filter_scale = f64::from(if scales.len() == 1 {
                scales[0]
            } else {
                scales[c]
            });
            Multiplier::new(f64::from(input_scale) * filter_scale / f64::from(output_scale))
        })
        .collect())
}

fn convolution(model: &Model, operator: &Operator, values: &[Option<Value>]) -> Result<Value> {
    let [input, filter, bias] = operator.inputs[..] else {
        bail!("expected input, filter and bias");
    };
    let output = &model.tensors[operator.outputs[0]];
    let filter_tensor = &model.tensors[filter];
    let (_, input_zero) = scale_and_zero(&model.tensors[input])?;
    let (stride, dilation, padding, activation, multiplier) = match operator.op {
        Op::Conv2d {
            stride,
            dilation,
            padding,
            activation,
        } => (stride, dilation, padding, activation, None),
        Op::DepthwiseConv2d {
            stride,
            dilation,
            padding,
            multiplier,
            activation,
        } => (stride, dilation, padding, activation, Some(multiplier)),
        _ => unreachable!("convolution() is called for convolutions"),
    };
    let kernel = match filter_tensor.shape[..] {
        [_, kh, kw, _] => [kh, kw],
        ref other => bail!("filter shape {other:?}"),
    };
    let window = window(model, operator, kernel, stride, dilation, padding)?;
    let channels = window.output[2];
    let (min, max) = activation_range(activation, output)?;
    let requantize = Requantize {
        multipliers: channel_multipliers(&model.tensors[input], filter_tensor, output, channels)?,
        output_zero_point: scale_and_zero(output)?.1,
        min,
        max,
    };
    let (x, w, b) = (
        int8(model, values, input)?,
        int8(model, values, filter)?,
        integers(model, values, bias)?,
    );
    Ok(widen(match multiplier {
        None => kernels::conv2d(&x, -input_zero, &w, &b, &window, &requantize),
        Some(m) => kernels::depthwise_conv2d(&x, -input_zero, &w, &b, m, &window, &requantize),
    }))
}

/// FULLY_CONNECTED: per-tensor weights take `GetQuantizedConvolutionMultipler`'s
/// multiplier (the two scales multiplied in float), per-channel ones the convolutions'.
fn fully_connected(
    model: &Model,
    operator: &Operator,
    values: &[Option<Value>],
    activation: Activation,
) -> Result<Value> {
    let [input, weights, bias] = operator.inputs[..] else {
        bail!("expected input, weights and bias");
    };
    let (input_t, weights_t, output) = (
        &model.tensors[input],
        &model.tensors[weights],
        &model.tensors[operator.outputs[0]],
    );
    let (input_scale, input_zero) = scale_and_zero(input_t)?;
    let (weight_scale, weight_zero) = scale_and_zero(weights_t)?;
    let (output_scale, output_zero) = scale_and_zero(output)?;
    let channels = weights_t.shape.first().copied().unwrap_or(0);
    let per_channel = weights_t
        .quantization
        .as_ref()
        .is_some_and(|q| q.scale.len() > 1);
    let multipliers = if per_channel {
        channel_multipliers(input_t, weights_t, output, channels)?
    } else {
        vec![Multiplier::new(
            f64::from(input_scale * weight_scale) / f64::from(output_scale),
        )]
    };
    let (min, max) = activation_range(activation, output)?;
    let requantize = Requantize {
        multipliers,
        output_zero_point: output_zero,
        min,
        max,
    };
    let (x, w, b) = (
        int8(model, values, input)?,
        int8(model, values, weights)?,
        integers(model, values, bias)?,
    );
    if b.len() != channels || w.len() != channels * x.len() {
        bail!(
            "weights {:?} do not fit {} inputs",
            weights_t.shape,
            x.len()
        );
    }
    Ok(widen(kernels::fully_connected(
        &x,
        -input_zero,
        &w,
        -weight_zero,
        &b,
        &requantize,
    )))
}

fn add(
    model: &Model,
    operator: &Operator,
    values: &[Option<Value>],
    activation: Activation,
) -> Result<Value> {
    let [a, b] = operator.inputs[..] else {
        bail!("expected two inputs");
    };
    let output = &model.tensors[operator.outputs[0]];
    let ((sa, za), (sb, zb), (so, zo)) = (
        scale_and_zero(&model.tensors[a])?,
        scale_and_zero(&model.tensors[b])?,
        scale_and_zero(output)?,
    );
    let (min, max) = activation_range(activation, output)?;
    let params = AddParams::new([sa, sb, so], [za, zb, zo], min, max);
    let (x, y) = (int8(model, values, a)?, int8(model, values, b)?);
    if x.len() != y.len() {
        bail!("flowers' int8 ADD does not broadcast");
    }
    Ok(widen(kernels::add(&x, &y, &params)))
}

/// PAD: the pads are filled with the output zero point (the real value 0). Only height
/// and width are padded (the checks refuse the rest).
fn pad(model: &Model, operator: &Operator, values: &[Option<Value>]) -> Result<Value> {
    let [input, paddings] = operator.inputs[..] else {
        bail!("expected input and paddings");
    };
    let output = &model.tensors[operator.outputs[0]];
    let pads = integers(model, values, paddings)?;
    let (_, zero) = scale_and_zero(output)?;
    let ([_, h, w, c], [_, _, ow, _]) =
        (dims4(&model.tensors[input].shape)?, dims4(&output.shape)?);
    if pads.len() != 8 || pads.iter().any(|&p| p < 0) || pads[..2] != [0, 0] || pads[6..] != [0, 0]
    {
        bail!("paddings {pads:?}: flowers pads height and width only");
    }
    let (top, left) = (pads[2] as usize, pads[4] as usize);
    let x = integers(model, values, input)?;
    let mut out = vec![zero; output.len()];
    for y in 0..h {
        for column in 0..w {
            let (from, to) = ((y * w + column) * c, ((y + top) * ow + column + left) * c);
            out[to..to + c].copy_from_slice(&x[from..from + c]);
        }
    }
    Ok(Value::Int(out))
}

fn dims4(shape: &[usize]) -> Result<[usize; 4]> {
    shape
        .try_into()
        .map_err(|_| anyhow!("shape {shape:?} is not NHWC"))
}
