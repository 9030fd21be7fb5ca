//! Running a [`Model`]: flowers' own kernels for TFLite's builtin operators, computed as
//! TFLite's reference kernels define them (SAME padding puts the odd pixel after, average
//! pooling counts only the pixels inside the image, softmax subtracts the maximum).
//!
//! [`Interpreter::new`] checks every operator's types and shapes once, so running an image
//! cannot index out of bounds; [`Interpreter::run`] then computes the operators in order.
//! Float kernels live here; integer kernels plug in through [`execute`]'s dispatch on the
//! operator and its input type.

use anyhow::{anyhow, bail, ensure, Result};
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};

use super::ir::{Activation, Data, ElementType, Model, Op, Operator, Padding, Tensor, TensorId};
use super::quantize::float16;
use super::quantize::interpret::{self, Int8Model};

/// A computed tensor's values.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    F32(Vec<f32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I32(Vec<i32>),
}

/// A checked model, ready to run images.
pub struct Interpreter {
    model: Model,
    /// An int8 model runs on flowers' integer kernels instead (`quantize::interpret`).
    int8: Option<Int8Model>,
}

impl Interpreter {
    /// Checks `model` (one float input and output, operators well-formed) for running.
    /// A float16 file's weights are widened first, an int8 file goes to the integer
    /// kernels, which check it their own way.
    pub fn new(model: Model) -> Result<Interpreter> {
        let model = float16::dequantize_constants(model)?;
        if interpret::is_quantized(&model) {
            let int8 = Some(Int8Model::new(model.clone())?);
            return Ok(Interpreter { model, int8 });
        }
        check(&model)?;
        Ok(Interpreter { model, int8: None })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Number of output values.
    pub fn output_len(&self) -> usize {
        self.model.output().map(|t| t.len()).unwrap_or(0)
    }

    /// Runs one input (the input tensor's values, row-major) and returns the output.
    pub fn run(&self, input: &[f32]) -> Result<Vec<f32>> {
        if let Some(int8) = &self.int8 {
            return int8.run(input);
        }
        self.run_observed(input, &mut |_, _| {})
    }

    /// [`Interpreter::run`], showing `observe` the input and every float tensor an
    /// operator computes, as it is computed (calibration collects activation ranges so).
    pub fn run_observed(
        &self,
        input: &[f32],
        observe: &mut dyn FnMut(TensorId, &[f32]),
    ) -> Result<Vec<f32>> {
        let model = &self.model;
        let input_id = model.inputs[0];
        ensure!(
            input.len() == model.tensors[input_id].len(),
            "the input has {} values, the model takes {}",
            input.len(),
            model.tensors[input_id].len()
        );
        let mut values: Vec<Option<Value>> = vec![None; model.tensors.len()];
        values[input_id] = Some(Value::F32(input.to_vec()));
        observe(input_id, input);
        for (index, operator) in model.operators.iter().enumerate() {
            let output = execute(model, operator, &values)?;
            if let Value::F32(computed) = &output {
                observe(operator.outputs[0], computed);
            }
            values[operator.outputs[0]] = Some(output);
            free_dead(model, index, &mut values);
        }
        match values[model.outputs[0]].take() {
            Some(Value::F32(v)) => Ok(v),
            _ => bail!("the model's output is not float32"),
        }
    }
}

/// Drops the activations no later operator reads, so memory stays at a few layers.
fn free_dead(model: &Model, position: usize, values: &mut [Option<Value>]) {
    for &input in &model.operators[position].inputs {
        let read_later = model.operators[position + 1..]
            .iter()
            .any(|o| o.inputs.contains(&input));
        if !read_later && !model.outputs.contains(&input) {
            values[input] = None;
        }
    }
}

/// The float32 values of tensor `id`: a constant's, or those computed.
fn floats<'a>(model: &'a Model, values: &'a [Option<Value>], id: TensorId) -> Result<&'a [f32]> {
    match (&model.tensors[id].data, &values[id]) {
        (Some(Data::F32(v)), _) => Ok(v),
        (None, Some(Value::F32(v))) => Ok(v),
        _ => bail!("tensor {} is not float32", model.tensors[id].name),
    }
}

/// Computes one operator. The float kernels are below; an integer operator goes to the
/// integer kernels by its input type.
pub fn execute(model: &Model, operator: &Operator, values: &[Option<Value>]) -> Result<Value> {
    let shape = |i: usize| model.tensors[operator.inputs[i]].shape.as_slice();
    let input = |i: usize| floats(model, values, operator.inputs[i]);
    let out_shape = &model.tensors[operator.outputs[0]].shape;
    let out = match &operator.op {
        Op::Conv2d {
            stride,
            dilation,
            padding,
            activation,
        } => {
            let geometry =
                Geometry::new(shape(0), shape(1), out_shape, *stride, *dilation, *padding);
            conv2d(&geometry, input(0)?, input(1)?, input(2)?, *activation)
        }
        Op::DepthwiseConv2d {
            stride,
            dilation,
            padding,
            activation,
            ..
        } => {
            let geometry =
                Geometry::new(shape(0), shape(1), out_shape, *stride, *dilation, *padding);
            depthwise(&geometry, input(0)?, input(1)?, input(2)?, *activation)
        }
        Op::AveragePool2d {
            filter,
            stride,
            padding,
            activation,
        } => {
            let kernel = [1, filter[0], filter[1], 1];
            let geometry = Geometry::new(shape(0), &kernel, out_shape, *stride, [1, 1], *padding);
            average_pool(&geometry, input(0)?, *activation)
        }
        Op::Mean { .. } => spatial_mean(shape(0), input(0)?),
        Op::Add { activation } => elementwise(
            shape(0),
            input(0)?,
            shape(1),
            input(1)?,
            out_shape,
            |a, b| a + b,
            *activation,
        ),
        Op::Mul { activation } => elementwise(
            shape(0),
            input(0)?,
            shape(1),
            input(1)?,
            out_shape,
            |a, b| a * b,
            *activation,
        ),
        Op::Pad => {
            let paddings = model
                .constant_i32(operator.inputs[1])
                .ok_or_else(|| anyhow!("PAD without constant paddings"))?;
            pad(shape(0), input(0)?, paddings, out_shape)
        }
        Op::Reshape => input(0)?.to_vec(),
        Op::FullyConnected { activation } => {
            let bias = operator.inputs.get(2).map(|_| input(2)).transpose()?;
            fully_connected(input(0)?, input(1)?, shape(1), bias, *activation)
        }
        Op::Softmax { beta } => softmax(input(0)?, *shape(0).last().unwrap_or(&1), *beta),
        Op::Relu => input(0)?
            .iter()
            .map(|&x| Activation::Relu.apply(x))
            .collect(),
        Op::Relu6 => input(0)?
            .iter()
            .map(|&x| Activation::Relu6.apply(x))
            .collect(),
        Op::Quantize | Op::Dequantize => bail!(
            "{} is not run by flowers' float interpreter",
            operator.op.name()
        ),
    };
    Ok(Value::F32(out))
}

/// The spatial layout of a convolution or pool: NHWC input, kernel [_, kh, kw, _],
/// NHWC output, and where the first window starts.
struct Geometry {
    input: [usize; 4],
    kernel: [usize; 2],
    output: [usize; 4],
    stride: [usize; 2],
    dilation: [usize; 2],
    /// Padding before, rows and columns.
    before: [usize; 2],
}

impl Geometry {
    fn new(
        input: &[usize],
        kernel: &[usize],
        output: &[usize],
        stride: [usize; 2],
        dilation: [usize; 2],
        padding: Padding,
    ) -> Geometry {
        let kernel = [kernel[1], kernel[2]];
        let before = |axis: usize| {
            padding
                .output(input[axis + 1], kernel[axis], stride[axis], dilation[axis])
                .map_or(0, |(_, before)| before)
        };
        Geometry {
            input: [input[0], input[1], input[2], input[3]],
            kernel,
            output: [output[0], output[1], output[2], output[3]],
            stride,
            dilation,
            before: [before(0), before(1)],
        }
    }

    /// The input row (or column) a kernel tap reads, if it is inside the image.
    fn source(&self, axis: usize, out: usize, tap: usize) -> Option<usize> {
        let at =
            (out * self.stride[axis] + tap * self.dilation[axis]).checked_sub(self.before[axis])?;
        (at < self.input[axis + 1]).then_some(at)
    }
}

/// CONV_2D: the image's patches (im2col) times the OHWI filter, plus bias.
fn conv2d(
    g: &Geometry,
    input: &[f32],
    filter: &[f32],
    bias: &[f32],
    activation: Activation,
) -> Vec<f32> {
    let [batch, h, w, channels] = g.input;
    let [_, out_h, out_w, out_channels] = g.output;
    let [kh, kw] = g.kernel;
    let depth = kh * kw * channels;
    let filter =
        ArrayView2::from_shape((out_channels, depth), filter).expect("checked OHWI filter");
    let mut output = vec![0.0f32; batch * out_h * out_w * out_channels];
    let pointwise = kh == 1 && kw == 1 && g.stride == [1, 1] && (out_h, out_w) == (h, w);
    let mut patches = Vec::new();
    for n in 0..batch {
        let image = &input[n * h * w * channels..(n + 1) * h * w * channels];
        let rows = if pointwise {
            image
        } else {
            im2col(g, image, &mut patches);
            &patches[..]
        };
        let rows = ArrayView2::from_shape((out_h * out_w, depth), rows).expect("patch matrix");
        let plane =
            &mut output[n * out_h * out_w * out_channels..(n + 1) * out_h * out_w * out_channels];
        let mut result =
            ArrayViewMut2::from_shape((out_h * out_w, out_channels), plane).expect("output matrix");
        general_mat_mul(1.0, &rows, &filter.t(), 0.0, &mut result);
    }
    for pixel in output.chunks_exact_mut(out_channels) {
        for (v, b) in pixel.iter_mut().zip(bias) {
            *v = activation.apply(*v + b);
        }
    }
    output
}

/// One row per output pixel: the kernel's taps in (ky, kx, channel) order, zeros outside.
fn im2col(g: &Geometry, image: &[f32], patches: &mut Vec<f32>) {
    let [_, _, w, channels] = g.input;
    let [_, out_h, out_w, _] = g.output;
    let [kh, kw] = g.kernel;
    patches.clear();
    patches.resize(out_h * out_w * kh * kw * channels, 0.0);
    let mut at = 0;
    for oy in 0..out_h {
        for ox in 0..out_w {
            for ky in 0..kh {
                for kx in 0..kw {
                    if let (Some(y), Some(x)) = (g.source(0, oy, ky), g.source(1, ox, kx)) {
                        let from = (y * w + x) * channels;
                        patches[at..at + channels].copy_from_slice(&image[from..from + channels]);
                    }
                    at += channels;
                }
            }
        }
    }
}

/// DEPTHWISE_CONV_2D: output channel `c * multiplier + m` filters input channel `c`.
fn depthwise(
    g: &Geometry,
    input: &[f32],
    filter: &[f32],
    bias: &[f32],
    activation: Activation,
) -> Vec<f32> {
    let [batch, h, w, channels] = g.input;
    let [_, out_h, out_w, out_channels] = g.output;
    let [kh, kw] = g.kernel;
    let multiplier = out_channels / channels;
    let mut output = vec![0.0f32; batch * out_h * out_w * out_channels];
    for n in 0..batch {
        for oy in 0..out_h {
            for ox in 0..out_w {
                let at = ((n * out_h + oy) * out_w + ox) * out_channels;
                let pixel = &mut output[at..at + out_channels];
                pixel.copy_from_slice(bias);
                for ky in 0..kh {
                    let Some(y) = g.source(0, oy, ky) else {
                        continue;
                    };
                    for kx in 0..kw {
                        let Some(x) = g.source(1, ox, kx) else {
                            continue;
                        };
                        let from = ((n * h + y) * w + x) * channels;
                        let source = &input[from..from + channels];
                        let taps = &filter[(ky * kw + kx) * out_channels..][..out_channels];
                        if multiplier == 1 {
                            for ((o, s), t) in pixel.iter_mut().zip(source).zip(taps) {
                                *o += s * t;
                            }
                        } else {
                            for (o, (v, t)) in pixel.iter_mut().zip(taps).enumerate() {
                                *v += source[o / multiplier] * t;
                            }
                        }
                    }
                }
                for v in pixel.iter_mut() {
                    *v = activation.apply(*v);
                }
            }
        }
    }
    output
}

/// AVERAGE_POOL_2D: the mean of the window's pixels inside the image.
fn average_pool(g: &Geometry, input: &[f32], activation: Activation) -> Vec<f32> {
    let [batch, h, w, channels] = g.input;
    let [_, out_h, out_w, _] = g.output;
    let [kh, kw] = g.kernel;
    let mut output = vec![0.0f32; batch * out_h * out_w * channels];
    for n in 0..batch {
        for oy in 0..out_h {
            for ox in 0..out_w {
                let at = ((n * out_h + oy) * out_w + ox) * channels;
                let pixel = &mut output[at..at + channels];
                let mut count = 0usize;
                for ky in 0..kh {
                    let Some(y) = g.source(0, oy, ky) else {
                        continue;
                    };
                    for kx in 0..kw {
                        let Some(x) = g.source(1, ox, kx) else {
                            continue;
                        };
                        let from = ((n * h + y) * w + x) * channels;
                        for (o, s) in pixel.iter_mut().zip(&input[from..from + channels]) {
                            *o += s;
                        }
                        count += 1;
                    }
                }
                for v in pixel.iter_mut() {
                    *v = activation.apply(*v / count.max(1) as f32);
                }
            }
        }
    }
    output
}

/// MEAN over height and width of an NHWC tensor.
fn spatial_mean(shape: &[usize], input: &[f32]) -> Vec<f32> {
    let [batch, h, w, channels] = [shape[0], shape[1], shape[2], shape[3]];
    let mut output = vec![0.0f32; batch * channels];
    for n in 0..batch {
        let sums = &mut output[n * channels..(n + 1) * channels];
        for pixel in input[n * h * w * channels..(n + 1) * h * w * channels].chunks_exact(channels)
        {
            for (s, v) in sums.iter_mut().zip(pixel) {
                *s += v;
            }
        }
        for s in sums.iter_mut() {
            *s /= (h * w) as f32;
        }
    }
    output
}

/// ADD and MUL with NumPy broadcasting.
fn elementwise(
    a_shape: &[usize],
    a: &[f32],
    b_shape: &[usize],
    b: &[f32],
    out_shape: &[usize],
    f: impl Fn(f32, f32) -> f32,
    activation: Activation,
) -> Vec<f32> {
    if a_shape == b_shape {
        return a
            .iter()
            .zip(b)
            .map(|(&x, &y)| activation.apply(f(x, y)))
            .collect();
    }
    let (sa, sb) = (
        broadcast_strides(a_shape, out_shape),
        broadcast_strides(b_shape, out_shape),
    );
    let total: usize = out_shape.iter().product();
    let mut index = vec![0usize; out_shape.len()];
    let mut output = Vec::with_capacity(total);
    for _ in 0..total {
        let at = |strides: &[usize]| index.iter().zip(strides).map(|(i, s)| i * s).sum::<usize>();
        output.push(activation.apply(f(a[at(&sa)], b[at(&sb)])));
        for d in (0..out_shape.len()).rev() {
            index[d] += 1;
            if index[d] < out_shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    output
}

/// Row-major strides of `shape` aligned to the right of `out_shape`, 0 along the
/// dimensions it is broadcast over.
fn broadcast_strides(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let rank = out_shape.len();
    let mut dims = vec![1; rank - shape.len()];
    dims.extend(shape);
    let mut strides = vec![0; rank];
    let mut step = 1;
    for d in (0..rank).rev() {
        strides[d] = if dims[d] == 1 { 0 } else { step };
        step *= dims[d];
    }
    strides
}

/// PAD of an NHWC tensor with zeros; `paddings` is [4, 2] (before, after per axis).
fn pad(shape: &[usize], input: &[f32], paddings: &[i32], out_shape: &[usize]) -> Vec<f32> {
    let [batch, h, w, channels] = [shape[0], shape[1], shape[2], shape[3]];
    let [_, out_h, out_w, out_c] = [out_shape[0], out_shape[1], out_shape[2], out_shape[3]];
    let before: Vec<usize> = paddings.chunks(2).map(|p| p[0] as usize).collect();
    let mut output = vec![0.0f32; out_shape.iter().product()];
    for n in 0..batch {
        for y in 0..h {
            for x in 0..w {
                let from = ((n * h + y) * w + x) * channels;
                let to = (((n + before[0]) * out_h + y + before[1]) * out_w + x + before[2])
                    * out_c
                    + before[3];
                output[to..to + channels].copy_from_slice(&input[from..from + channels]);
            }
        }
    }
    output
}

/// FULLY_CONNECTED: [batch, in] times the [out, in] weights, plus bias.
fn fully_connected(
    input: &[f32],
    weights: &[f32],
    weights_shape: &[usize],
    bias: Option<&[f32]>,
    activation: Activation,
) -> Vec<f32> {
    let (outputs, depth) = (weights_shape[0], weights_shape[1]);
    let batch = input.len() / depth;
    let x = ArrayView2::from_shape((batch, depth), input).expect("checked input");
    let w = ArrayView2::from_shape((outputs, depth), weights).expect("checked weights");
    let mut output = vec![0.0f32; batch * outputs];
    let mut result =
        ArrayViewMut2::from_shape((batch, outputs), output.as_mut_slice()).expect("output matrix");
    general_mat_mul(1.0, &x, &w.t(), 0.0, &mut result);
    for row in output.chunks_exact_mut(outputs) {
        for (i, v) in row.iter_mut().enumerate() {
            *v = activation.apply(*v + bias.map_or(0.0, |b| b[i]));
        }
    }
    output
}

/// SOFTMAX over the last axis: `exp(beta * (x - max)) / sum`.
fn softmax(input: &[f32], classes: usize, beta: f32) -> Vec<f32> {
    let mut output = input.to_vec();
    for row in output.chunks_exact_mut(classes.max(1)) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0;
        for v in row.iter_mut() {
            *v = ((*v - max) * beta).exp();
            sum += *v;
        }
        for v in row.iter_mut() {
            *v /= sum;
        }
    }
    output
}

/// Checks that every operator has the inputs, types and shapes its kernel indexes by:
/// a file that passes runs without reading out of bounds.
pub fn check(model: &Model) -> Result<()> {
    let input = model.input()?;
    let output = model.output()?;
    ensure!(
        input.element == ElementType::F32 && input.data.is_none(),
        "the input is not a float32 activation"
    );
    ensure!(
        output.element == ElementType::F32,
        "the output is not float32"
    );
    for (index, operator) in model.operators.iter().enumerate() {
        check_operator(model, operator)
            .map_err(|e| anyhow!("operator {index} ({}): {e}", operator.op.name()))?;
    }
    Ok(())
}

fn check_operator(model: &Model, operator: &Operator) -> Result<()> {
    let arity = match operator.op {
        Op::Conv2d { .. } | Op::DepthwiseConv2d { .. } => 3..=3,
        Op::FullyConnected { .. } => 2..=3,
        Op::Add { .. } | Op::Mul { .. } | Op::Pad | Op::Reshape | Op::Mean { .. } => 2..=2,
        _ => 1..=1,
    };
    ensure!(
        arity.contains(&operator.inputs.len()),
        "{} inputs",
        operator.inputs.len()
    );
    ensure!(
        operator.outputs.len() == 1,
        "{} outputs",
        operator.outputs.len()
    );
    let tensor = |i: usize| &model.tensors[operator.inputs[i]];
    let out = &model.tensors[operator.outputs[0]];
    for &i in operator.inputs.iter().chain(&operator.outputs) {
        let t = &model.tensors[i];
        let integer_side = matches!(operator.op, Op::Pad | Op::Reshape | Op::Mean { .. })
            && i == operator.inputs[1];
        if !integer_side {
            ensure!(
                t.element == ElementType::F32,
                "tensor {} is {}, flowers' interpreter runs float32 operators",
                t.name,
                t.element.as_str()
            );
        }
    }
    ensure!(out.data.is_none(), "it writes the constant {}", out.name);
    let expected = output_shape(model, operator, tensor)?;
    ensure!(
        expected == out.shape,
        "its output {} has shape {:?}, the operator computes {expected:?}",
        out.name,
        out.shape
    );
    Ok(())
}

/// The output shape an operator computes from its inputs.
fn output_shape<'m>(
    model: &'m Model,
    operator: &Operator,
    tensor: impl Fn(usize) -> &'m super::ir::Tensor,
) -> Result<Vec<usize>> {
    let dims4 = |i: usize| -> Result<[usize; 4]> {
        let s = &tensor(i).shape;
        s.as_slice()
            .try_into()
            .map_err(|_| anyhow!("input {i} has shape {s:?}, not NHWC"))
    };
    let spatial = |x: [usize; 4],
                   k: [usize; 2],
                   stride: [usize; 2],
                   dilation: [usize; 2],
                   padding: Padding|
     -> Result<[usize; 2]> {
        let out = |axis: usize| {
            padding
                .output(x[axis + 1], k[axis], stride[axis], dilation[axis])
                .map(|(o, _)| o)
        };
        match (out(0), out(1)) {
            (Some(h), Some(w)) if h > 0 && w > 0 => Ok([h, w]),
            _ => bail!("the kernel {k:?} does not fit the input {x:?}"),
        }
    };
    Ok(match &operator.op {
        Op::Conv2d {
            stride,
            dilation,
            padding,
            ..
        } => {
            let (x, f) = (dims4(0)?, dims4(1)?);
            ensure!(
                f[3] == x[3],
                "the filter {f:?} does not match {} input channels",
                x[3]
            );
            constant_filter_and_bias(tensor(1), tensor(2), f[0])?;
            let [h, w] = spatial(x, [f[1], f[2]], *stride, *dilation, *padding)?;
            vec![x[0], h, w, f[0]]
        }
        Op::DepthwiseConv2d {
            stride,
            dilation,
            padding,
            ..
        } => {
            let (x, f) = (dims4(0)?, dims4(1)?);
            ensure!(
                f[0] == 1 && x[3] > 0 && f[3] % x[3] == 0,
                "the filter {f:?} does not match {} input channels",
                x[3]
            );
            constant_filter_and_bias(tensor(1), tensor(2), f[3])?;
            let [h, w] = spatial(x, [f[1], f[2]], *stride, *dilation, *padding)?;
            vec![x[0], h, w, f[3]]
        }
        Op::AveragePool2d {
            filter,
            stride,
            padding,
            ..
        } => {
            let x = dims4(0)?;
            let [h, w] = spatial(x, *filter, *stride, [1, 1], *padding)?;
            vec![x[0], h, w, x[3]]
        }
        Op::Mean { keep_dims } => {
            let x = dims4(0)?;
            let axes = model
                .constant_i32(operator.inputs[1])
                .ok_or_else(|| anyhow!("the axes are not an int32 constant"))?;
            ensure!(
                axes == [1, 2],
                "a mean over axes {axes:?}: flowers runs means over height and width"
            );
            if *keep_dims {
                vec![x[0], 1, 1, x[3]]
            } else {
                vec![x[0], x[3]]
            }
        }
        Op::Add { .. } | Op::Mul { .. } => broadcast(&tensor(0).shape, &tensor(1).shape)?,
        Op::Pad => {
            let x = dims4(0)?;
            let paddings = model
                .constant_i32(operator.inputs[1])
                .ok_or_else(|| anyhow!("the paddings are not an int32 constant"))?;
            ensure!(
                paddings.len() == 8 && paddings.iter().all(|&p| (0..=1 << 16).contains(&p)),
                "paddings {paddings:?}"
            );
            (0..4)
                .map(|a| x[a] + paddings[2 * a] as usize + paddings[2 * a + 1] as usize)
                .collect()
        }
        Op::Reshape => {
            let out = &model.tensors[operator.outputs[0]].shape;
            ensure!(
                out.iter().product::<usize>() == tensor(0).len(),
                "{:?} cannot become {out:?}",
                tensor(0).shape
            );
            out.clone()
        }
        Op::FullyConnected { .. } => {
            let w = &tensor(1).shape;
            ensure!(
                w.len() == 2 && w[1] > 0 && tensor(1).data.is_some(),
                "the weights {w:?} are not a constant matrix"
            );
            ensure!(
                tensor(0).len().is_multiple_of(w[1]),
                "{:?} inputs do not fill rows of {}",
                tensor(0).shape,
                w[1]
            );
            if operator.inputs.len() == 3 {
                ensure!(
                    tensor(2).shape == [w[0]] && tensor(2).data.is_some(),
                    "the bias is not a constant [{}]",
                    w[0]
                );
            }
            vec![tensor(0).len() / w[1], w[0]]
        }
        Op::Softmax { .. } | Op::Relu | Op::Relu6 => tensor(0).shape.clone(),
        Op::Quantize | Op::Dequantize => bail!("not run by flowers' float interpreter"),
    })
}

fn broadcast(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let rank = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i < rank - s.len() {
            1
        } else {
            s[i - (rank - s.len())]
        }
    };
    (0..rank)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            _ => bail!("shapes {a:?} and {b:?} do not broadcast"),
        })
        .collect()
}

/// A convolution's filter and bias are constants, one bias per output channel.
fn constant_filter_and_bias(filter: &Tensor, bias: &Tensor, channels: usize) -> Result<()> {
    ensure!(bias.shape == [channels], "the bias is not [{channels}]");
    ensure!(
        filter.data.is_some() && bias.data.is_some(),
        "the filter and bias are not constants"
    );
    Ok(())
}
