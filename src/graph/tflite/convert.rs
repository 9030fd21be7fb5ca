//! A retrained ONNX graph (NCHW) -> a float TFLite [`Model`] (NHWC).
//!
//! ONNX nodes are taken in order (ONNX keeps them topologically sorted) and each becomes
//! zero, one or two TFLite operators: activations stay NHWC throughout, so weights and
//! per-channel constants are transposed once here (convolutions to OHWI, depthwise to
//! 1HW(C*M), Gemm to [out, in]). `Clip(0, 6)` and `Relu` are fused into the operator before
//! them when nothing else reads its output, `BatchNormalization` is folded into the
//! convolution before it, and ONNX's explicit paddings become TFLite's SAME when they are
//! what SAME computes, else a PAD before a VALID operator. Anything else is refused,
//! naming the node and its op.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use tract_onnx::pb::{self, ModelProto, NodeProto, TensorProto};

use super::ir::{Activation, Data, Model, Op, Operator, Padding, TensorId};
use crate::backbone::limits::quote;

/// The ONNX ops the exporter turns into TFLite builtins.
pub const SUPPORTED_ONNX_OPS: &str = "Conv, Clip (ReLU6), Relu, Add, Mul, BatchNormalization, AveragePool, GlobalAveragePool, ReduceMean, Pad, Flatten, Reshape, Squeeze, Gemm, MatMul, Softmax, Identity, Dropout";

/// Converts a flowers ONNX graph whose image input is NCHW `[N, 3, height, width]`.
pub fn from_onnx(proto: &ModelProto, height: usize, width: usize, display: &str) -> Result<Model> {
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| anyhow!("{display} has no graph"))?;
    let mut converter = Converter::new(graph, display)?;
    let input = converter.image_input(graph)?;
    let id = converter
        .model
        .add_activation(&input, vec![1, height, width, 3]);
    converter.model.inputs = vec![id];
    converter.values.insert(input, id);
    for node in &graph.node {
        converter
            .node(node)
            .with_context(|| format!("{display}: node {} ({})", quote(&node.name), node.op_type))?;
    }
    let output = graph
        .output
        .first()
        .ok_or_else(|| anyhow!("{display} has no output"))?;
    let id = converter.activation(&output.name)?;
    converter.model.outputs = vec![id];
    Ok(converter.model)
}

struct Converter<'a> {
    display: &'a str,
    model: Model,
    /// ONNX value name -> the tensor that holds it.
    values: HashMap<String, TensorId>,
    /// ONNX constants (initializers and `Constant` nodes), as floats, NCHW.
    constants: HashMap<String, ArrayD<f32>>,
    /// How many nodes (and graph outputs) read each ONNX value.
    readers: HashMap<String, usize>,
    /// Which operator wrote each tensor.
    producer: HashMap<TensorId, usize>,
}

impl<'a> Converter<'a> {
    fn new(graph: &pb::GraphProto, display: &'a str) -> Result<Converter<'a>> {
        let mut constants = HashMap::new();
        for tensor in &graph.initializer {
            constants.insert(tensor.name.clone(), array(tensor)?);
        }
        let mut readers = HashMap::new();
        for name in graph.node.iter().flat_map(|n| &n.input) {
            *readers.entry(name.clone()).or_insert(0) += 1;
        }
        for output in &graph.output {
            *readers.entry(output.name.clone()).or_insert(0) += 1;
        }
        Ok(Converter {
            display,
            model: Model::default(),
            values: HashMap::new(),
            constants,
            readers,
            producer: HashMap::new(),
        })
    }

    /// The image input's name: the one graph input that is no initializer.
    fn image_input(&self, graph: &pb::GraphProto) -> Result<String> {
        let mut inputs = graph
            .input
            .iter()
            .filter(|i| !self.constants.contains_key(&i.name));
        match (inputs.next(), inputs.next()) {
            (Some(input), None) => Ok(input.name.clone()),
            _ => bail!("{} has no single image input", self.display),
        }
    }

    fn activation(&self, name: &str) -> Result<TensorId> {
        self.values
            .get(name)
            .copied()
            .ok_or_else(|| anyhow!("input {} is not computed from the image", quote(name)))
    }

    fn constant(&self, name: &str) -> Result<&ArrayD<f32>> {
        self.constants
            .get(name)
            .ok_or_else(|| anyhow!("input {} is not a constant", quote(name)))
    }

    fn shape(&self, id: TensorId) -> &[usize] {
        &self.model.tensors[id].shape
    }

    /// Appends an operator writing a new float tensor named `name` of `shape`.
    fn emit(&mut self, op: Op, inputs: Vec<TensorId>, name: &str, shape: Vec<usize>) -> TensorId {
        let output = self.model.add_activation(name, shape);
        self.model.operators.push(Operator {
            op,
            inputs,
            outputs: vec![output],
        });
        self.producer.insert(output, self.model.operators.len() - 1);
        self.values.insert(name.to_string(), output);
        output
    }

    fn node(&mut self, node: &NodeProto) -> Result<()> {
        match node.op_type.as_str() {
            "Constant" => self.constant_node(node),
            "Conv" => self.conv(node),
            "Clip" => {
                let activation = clip_activation(self, node)?;
                self.activation_node(node, activation)
            }
            "Relu" => self.activation_node(node, Activation::Relu),
            "Add" => self.binary(node, |activation| Op::Add { activation }),
            "Mul" => self.binary(node, |activation| Op::Mul { activation }),
            "BatchNormalization" => self.batch_norm(node),
            "AveragePool" => self.average_pool(node),
            "GlobalAveragePool" => self.mean(node, &[2, 3], true),
            "ReduceMean" => {
                let axes = reduce_axes(self, node)?;
                let keep = int_attribute(node, "keepdims").unwrap_or(1) != 0;
                self.mean(node, &axes, keep)
            }
            "Pad" => self.pad(node),
            "Flatten" | "Reshape" | "Squeeze" => self.reshape(node),
            "Gemm" | "MatMul" => self.fully_connected(node),
            "Softmax" => self.softmax(node),
            "Identity" | "Dropout" => {
                let input = self.activation(&node.input[0])?;
                self.values.insert(node.output[0].clone(), input);
                Ok(())
            }
            op => bail!(
                "the TensorFlow Lite export does not support {op}; it exports {SUPPORTED_ONNX_OPS}"
            ),
        }
    }

    fn constant_node(&mut self, node: &NodeProto) -> Result<()> {
        let tensor = node
            .attribute
            .iter()
            .find(|a| a.name == "value")
            .and_then(|a| a.t.as_ref())
            .ok_or_else(|| anyhow!("a Constant without a tensor value"))?;
        let output = node.output.first().ok_or_else(|| anyhow!("no output"))?;
        self.constants.insert(output.clone(), array(tensor)?);
        Ok(())
    }

    fn conv(&mut self, node: &NodeProto) -> Result<()> {
        let mut x = self.activation(&node.input[0])?;
        let weights = self.constant(&node.input[1])?.clone();
        let [out_channels, per_group, kh, kw] = dims4(weights.shape())?;
        if [out_channels, per_group, kh, kw].contains(&0) {
            bail!("an empty convolution kernel {:?}", weights.shape());
        }
        let bias = match node.input.get(2).filter(|b| !b.is_empty()) {
            Some(name) => self.constant(name)?.iter().copied().collect(),
            None => vec![0.0; out_channels],
        };
        let [_, h, w, channels] = dims4(self.shape(x))?;
        let stride = pair(node, "strides")?;
        let dilation = pair(node, "dilations")?;
        let group = int_attribute(node, "group").unwrap_or(1) as usize;
        let (padding, pads) = self.padding(node, [h, w], [kh, kw], stride, dilation)?;
        if let Some(pads) = pads {
            x = self.explicit_pad(x, pads, &format!("{}/pad", node.output[0]));
        }
        let [_, h, w, _] = dims4(self.shape(x))?;
        let out_h = padding.output(h, kh, stride[0], dilation[0]);
        let out_w = padding.output(w, kw, stride[1], dilation[1]);
        let (Some((out_h, _)), Some((out_w, _))) = (out_h, out_w) else {
            bail!("the kernel {kh}x{kw} does not fit the {h}x{w} input");
        };
        let shape = vec![1, out_h, out_w, out_channels];
        let name = &node.output[0];
        let bias =
            self.model
                .add_constant(&format!("{name}/bias"), vec![out_channels], Data::F32(bias));
        if group == 1 && per_group == channels {
            let filter = permuted(&weights, &[0, 2, 3, 1]);
            let filter = self.model.add_constant(
                &node.input[1],
                vec![out_channels, kh, kw, channels],
                Data::F32(filter),
            );
            let op = Op::Conv2d {
                stride,
                dilation,
                padding,
                activation: Activation::None,
            };
            self.emit(op, vec![x, filter, bias], name, shape);
        } else if group == channels && per_group == 1 && out_channels % channels == 0 {
            let filter = permuted(&weights, &[1, 2, 3, 0]);
            let filter = self.model.add_constant(
                &node.input[1],
                vec![1, kh, kw, out_channels],
                Data::F32(filter),
            );
            let op = Op::DepthwiseConv2d {
                stride,
                dilation,
                padding,
                multiplier: out_channels / channels,
                activation: Activation::None,
            };
            self.emit(op, vec![x, filter, bias], name, shape);
        } else {
            bail!("a grouped convolution ({group} groups of {channels} channels) has no TensorFlow Lite builtin");
        }
        Ok(())
    }

    /// TFLite's padding for ONNX's explicit `pads` (or `auto_pad`), and the explicit
    /// padding `[top, left, bottom, right]` to apply first when neither SAME nor VALID is it.
    fn padding(
        &self,
        node: &NodeProto,
        input: [usize; 2],
        kernel: [usize; 2],
        stride: [usize; 2],
        dilation: [usize; 2],
    ) -> Result<(Padding, Option<[usize; 4]>)> {
        match string_attribute(node, "auto_pad").as_deref() {
            None | Some("NOTSET") => {}
            Some("VALID") => return Ok((Padding::Valid, None)),
            Some("SAME_UPPER") => return Ok((Padding::Same, None)),
            Some(other) => bail!("auto_pad {other} has no TensorFlow Lite equivalent"),
        }
        let pads = ints_attribute(node, "pads").unwrap_or_else(|| vec![0; 4]);
        let pads: [usize; 4] = pads
            .iter()
            .map(|&p| usize::try_from(p).ok())
            .collect::<Option<Vec<_>>>()
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| anyhow!("pads {pads:?} are not four sizes"))?;
        if pads == [0; 4] {
            return Ok((Padding::Valid, None));
        }
        let same = (0..2).all(|axis| {
            let onnx_out =
                (input[axis] + pads[axis] + pads[axis + 2]).checked_sub((kernel[axis] - 1) * dilation[axis] + 1)
                    .map(|v| v / stride[axis] + 1);
            let tflite = Padding::Same.output(input[axis], kernel[axis], stride[axis], dilation[axis]);
            matches!((onnx_out, tflite), (Some(out), Some((same_out, before))) if out == same_out && before == pads[axis])
        });
        if same {
            Ok((Padding::Same, None))
        } else {
            Ok((Padding::Valid, Some(pads)))
        }
    }

    /// A PAD of `pads` (`[top, left, bottom, right]`) with zeros.
    fn explicit_pad(&mut self, x: TensorId, pads: [usize; 4], name: &str) -> TensorId {
        let [n, h, w, c] = dims4(self.shape(x)).expect("activations are NHWC");
        let paddings = vec![
            0,
            0,
            pads[0] as i32,
            pads[2] as i32,
            pads[1] as i32,
            pads[3] as i32,
            0,
            0,
        ];
        let paddings =
            self.model
                .add_constant(&format!("{name}/paddings"), vec![4, 2], Data::I32(paddings));
        let shape = vec![n, h + pads[0] + pads[2], w + pads[1] + pads[3], c];
        self.emit(Op::Pad, vec![x, paddings], name, shape)
    }

    /// ReLU or ReLU6: fused into the operator before when it writes only for this node.
    fn activation_node(&mut self, node: &NodeProto, activation: Activation) -> Result<()> {
        let input = self.activation(&node.input[0])?;
        let sole_reader = self.readers.get(&node.input[0]) == Some(&1);
        if let Some(&index) = self.producer.get(&input).filter(|_| sole_reader) {
            if let Some(fused) = self.model.operators[index].op.activation_mut() {
                if *fused == Activation::None {
                    *fused = activation;
                    self.values.insert(node.output[0].clone(), input);
                    return Ok(());
                }
            }
        }
        let op = match activation {
            Activation::Relu6 => Op::Relu6,
            _ => Op::Relu,
        };
        let shape = self.shape(input).to_vec();
        self.emit(op, vec![input], &node.output[0], shape);
        Ok(())
    }

    /// Add or Mul: of two activations, or of an activation and a constant (transposed to
    /// NHWC when the activation is 4-d).
    fn binary(&mut self, node: &NodeProto, op: impl Fn(Activation) -> Op) -> Result<()> {
        let operand = |name: &String| -> Result<TensorId> { self.activation(name) };
        let (a, b) = (&node.input[0], &node.input[1]);
        let (x, y) = match (operand(a), operand(b)) {
            (Ok(x), Ok(y)) => (x, y),
            (Ok(x), Err(_)) => (x, self.nhwc_constant(b, x)?),
            (Err(_), Ok(y)) => (self.nhwc_constant(a, y)?, y),
            (Err(error), Err(_)) => return Err(error),
        };
        let shape = broadcast(self.shape(x), self.shape(y)).ok_or_else(|| {
            anyhow!(
                "shapes {:?} and {:?} do not broadcast",
                self.shape(x),
                self.shape(y)
            )
        })?;
        self.emit(op(Activation::None), vec![x, y], &node.output[0], shape);
        Ok(())
    }

    /// The constant `name`, laid out to broadcast against activation `like`.
    fn nhwc_constant(&mut self, name: &str, like: TensorId) -> Result<TensorId> {
        let value = self.constant(name)?.clone();
        let rank = self.shape(like).len();
        if value.ndim() > rank {
            bail!(
                "constant {} has more dimensions than the tensor it meets",
                quote(name)
            );
        }
        let mut dims = vec![1; rank - value.ndim()];
        dims.extend(value.shape());
        let value = value.into_shape_with_order(IxDyn(&dims))?;
        let (shape, values) = if rank == 4 {
            let values = permuted(&value, &[0, 2, 3, 1]);
            (vec![dims[0], dims[2], dims[3], dims[1]], values)
        } else {
            (dims, value.iter().copied().collect())
        };
        Ok(self.model.add_constant(name, shape, Data::F32(values)))
    }

    /// BatchNormalization: folded into the convolution before it, else MUL then ADD.
    fn batch_norm(&mut self, node: &NodeProto) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let epsilon = float_attribute(node, "epsilon").unwrap_or(1e-5);
        let get = |i: usize| -> Result<Vec<f32>> {
            Ok(self.constant(&node.input[i])?.iter().copied().collect())
        };
        let (gamma, beta, mean, variance) = (get(1)?, get(2)?, get(3)?, get(4)?);
        let scale: Vec<f32> = gamma
            .iter()
            .zip(&variance)
            .map(|(g, v)| g / (v + epsilon).sqrt())
            .collect();
        let shift: Vec<f32> = (0..scale.len())
            .map(|c| beta[c] - mean[c] * scale[c])
            .collect();
        if self.fold_into_conv(x, &node.input[0], &scale, &shift) {
            self.values.insert(node.output[0].clone(), x);
            return Ok(());
        }
        let channels = scale.len();
        let name = &node.output[0];
        let scale =
            self.model
                .add_constant(&format!("{name}/scale"), vec![channels], Data::F32(scale));
        let shift =
            self.model
                .add_constant(&format!("{name}/shift"), vec![channels], Data::F32(shift));
        let shape = self.shape(x).to_vec();
        let scaled = self.emit(
            Op::Mul {
                activation: Activation::None,
            },
            vec![x, scale],
            &format!("{name}/scaled"),
            shape.clone(),
        );
        self.emit(
            Op::Add {
                activation: Activation::None,
            },
            vec![scaled, shift],
            name,
            shape,
        );
        Ok(())
    }

    /// Scales the output channels of the convolution that wrote `x` (read only here) by
    /// `scale` and adds `shift`; false when there is no such convolution.
    fn fold_into_conv(&mut self, x: TensorId, name: &str, scale: &[f32], shift: &[f32]) -> bool {
        let Some(&index) = self.producer.get(&x) else {
            return false;
        };
        if self.readers.get(name) != Some(&1) {
            return false;
        }
        let operator = &self.model.operators[index];
        let (filter, bias) = (operator.inputs[1], operator.inputs[2]);
        let per_output_first = match operator.op {
            Op::Conv2d {
                activation: Activation::None,
                ..
            } => true,
            Op::DepthwiseConv2d {
                activation: Activation::None,
                ..
            } => false,
            _ => return false,
        };
        let channels = scale.len();
        if self.model.tensors[bias].len() != channels {
            return false;
        }
        if let Some(Data::F32(weights)) = &mut self.model.tensors[filter].data {
            let per_channel = weights.len() / channels;
            for (i, w) in weights.iter_mut().enumerate() {
                let channel = if per_output_first {
                    i / per_channel
                } else {
                    i % channels
                };
                *w *= scale[channel];
            }
        }
        if let Some(Data::F32(biases)) = &mut self.model.tensors[bias].data {
            for (c, b) in biases.iter_mut().enumerate() {
                *b = *b * scale[c] + shift[c];
            }
        }
        true
    }

    fn average_pool(&mut self, node: &NodeProto) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let [_, h, w, c] = dims4(self.shape(x))?;
        let filter = pair(node, "kernel_shape")?;
        let stride = pair(node, "strides")?;
        if int_attribute(node, "ceil_mode").unwrap_or(0) != 0 {
            bail!("AveragePool with ceil_mode has no TensorFlow Lite equivalent");
        }
        let (padding, explicit) = self.padding(node, [h, w], filter, stride, [1, 1])?;
        let counts_padding = int_attribute(node, "count_include_pad").unwrap_or(0) != 0;
        if explicit.is_some() || (padding == Padding::Same && counts_padding) {
            bail!("AveragePool with these pads has no TensorFlow Lite equivalent");
        }
        let out = |size: usize, axis: usize| padding.output(size, filter[axis], stride[axis], 1);
        let (Some((out_h, _)), Some((out_w, _))) = (out(h, 0), out(w, 1)) else {
            bail!("the pool {filter:?} does not fit the {h}x{w} input");
        };
        let op = Op::AveragePool2d {
            filter,
            stride,
            padding,
            activation: Activation::None,
        };
        self.emit(op, vec![x], &node.output[0], vec![1, out_h, out_w, c]);
        Ok(())
    }

    /// A mean over NCHW `axes` of a 4-d activation.
    fn mean(&mut self, node: &NodeProto, axes: &[i64], keep_dims: bool) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let [n, _, _, c] = dims4(self.shape(x))?;
        let mut sorted: Vec<i64> = axes
            .iter()
            .map(|&a| if a < 0 { a + 4 } else { a })
            .collect();
        sorted.sort_unstable();
        if sorted != [2, 3] {
            bail!("a mean over axes {axes:?} (not the spatial axes) is not exported");
        }
        let name = &node.output[0];
        let axes = self
            .model
            .add_constant(&format!("{name}/axes"), vec![2], Data::I32(vec![1, 2]));
        let shape = if keep_dims {
            vec![n, 1, 1, c]
        } else {
            vec![n, c]
        };
        self.emit(Op::Mean { keep_dims }, vec![x, axes], name, shape);
        Ok(())
    }

    fn pad(&mut self, node: &NodeProto) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let mode = string_attribute(node, "mode").unwrap_or_else(|| "constant".into());
        let value = match node.input.get(2).filter(|v| !v.is_empty()) {
            Some(name) => self.constant(name)?.iter().copied().next().unwrap_or(0.0),
            None => float_attribute(node, "value").unwrap_or(0.0),
        };
        if mode != "constant" || value != 0.0 {
            bail!("only zero padding is exported (mode {mode}, value {value})");
        }
        let pads: Vec<i64> = match node.input.get(1).filter(|p| !p.is_empty()) {
            Some(name) => self.constant(name)?.iter().map(|&v| v as i64).collect(),
            None => ints_attribute(node, "pads").unwrap_or_default(),
        };
        let [_, _, h0, w0, _, _, h1, w1] = pads[..] else {
            bail!("pads {pads:?} are not those of a 4-d tensor");
        };
        if pads.iter().any(|&p| p < 0) || pads[0] | pads[1] | pads[4] | pads[5] != 0 {
            bail!("only non-negative spatial padding is exported, not {pads:?}");
        }
        let pads = [h0 as usize, w0 as usize, h1 as usize, w1 as usize];
        let padded = self.explicit_pad(x, pads, &node.output[0]);
        self.values.insert(node.output[0].clone(), padded);
        Ok(())
    }

    /// Flatten, Reshape and Squeeze of a pooled activation, where NCHW and NHWC order
    /// agree (at most one of channels and height x width above 1).
    fn reshape(&mut self, node: &NodeProto) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let shape = self.shape(x).to_vec();
        let nchw: Vec<usize> = match shape[..] {
            [n, h, w, c] if h * w == 1 || c == 1 => vec![n, c, h, w],
            [_, _, _, _] => {
                bail!("reshaping a {shape:?} feature map would need NCHW order; it is not exported")
            }
            _ => shape.clone(),
        };
        let total: usize = nchw.iter().product();
        let target: Vec<usize> = match node.op_type.as_str() {
            "Flatten" => {
                let rank = nchw.len() as i64;
                let axis = int_attribute(node, "axis").unwrap_or(1);
                let axis = if axis < 0 { axis + rank } else { axis };
                if !(0..=rank).contains(&axis) {
                    bail!("Flatten axis {axis} of a rank-{rank} tensor");
                }
                let axis = axis as usize;
                vec![nchw[..axis].iter().product(), nchw[axis..].iter().product()]
            }
            "Squeeze" => nchw.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>(),
            _ => {
                let spec: Vec<i64> = self
                    .constant(&node.input[1])?
                    .iter()
                    .map(|&v| v as i64)
                    .collect();
                resolve_shape(&spec, &nchw, total)?
            }
        };
        let target = match target[..] {
            [n, c, h, w] if h * w == 1 || c == 1 => vec![n, h, w, c],
            [_, _, _, _] => bail!(
                "reshaping to a {target:?} feature map would need NCHW order; it is not exported"
            ),
            _ => target,
        };
        if target.iter().product::<usize>() != total {
            bail!("cannot reshape {shape:?} to {target:?}");
        }
        let name = &node.output[0];
        let dims: Vec<i32> = target.iter().map(|&d| d as i32).collect();
        let spec =
            self.model
                .add_constant(&format!("{name}/shape"), vec![dims.len()], Data::I32(dims));
        self.emit(Op::Reshape, vec![x, spec], name, target);
        Ok(())
    }

    /// Gemm (or MatMul) of a [batch, in] activation by constant weights.
    fn fully_connected(&mut self, node: &NodeProto) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let [batch, inputs] = self.shape(x)[..] else {
            bail!(
                "the input {:?} is not a [batch, features] matrix",
                self.shape(x)
            );
        };
        let weights = self.constant(&node.input[1])?;
        let gemm = node.op_type == "Gemm";
        if gemm && int_attribute(node, "transA").unwrap_or(0) != 0 {
            bail!("Gemm with transA is not exported");
        }
        let trans_b = gemm && int_attribute(node, "transB").unwrap_or(0) != 0;
        let alpha = if gemm {
            float_attribute(node, "alpha").unwrap_or(1.0)
        } else {
            1.0
        };
        let beta = if gemm {
            float_attribute(node, "beta").unwrap_or(1.0)
        } else {
            1.0
        };
        let weights = if trans_b {
            weights.clone()
        } else {
            weights.t().to_owned()
        };
        let [outputs, k] = weights.shape()[..] else {
            bail!("the weights are not a matrix");
        };
        if k != inputs {
            bail!("weights of {k} inputs meet {inputs} features");
        }
        let filter: Vec<f32> = weights.iter().map(|w| w * alpha).collect();
        let bias: Vec<f32> = match node.input.get(2).filter(|b| !b.is_empty() && gemm) {
            Some(name) => {
                let bias = self.constant(name)?;
                let bias: Vec<f32> = bias.iter().map(|b| b * beta).collect();
                match bias.len() {
                    1 => vec![bias[0]; outputs],
                    n if n == outputs => bias,
                    n => bail!("a bias of {n} values for {outputs} outputs"),
                }
            }
            None => vec![0.0; outputs],
        };
        let name = &node.output[0];
        let filter =
            self.model
                .add_constant(&node.input[1], vec![outputs, inputs], Data::F32(filter));
        let bias = self
            .model
            .add_constant(&format!("{name}/bias"), vec![outputs], Data::F32(bias));
        let op = Op::FullyConnected {
            activation: Activation::None,
        };
        self.emit(op, vec![x, filter, bias], name, vec![batch, outputs]);
        Ok(())
    }

    fn softmax(&mut self, node: &NodeProto) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let shape = self.shape(x).to_vec();
        let axis = int_attribute(node, "axis").unwrap_or(-1);
        let last = shape.len() as i64 - 1;
        if shape.len() != 2 || (axis != -1 && axis != last) {
            bail!("a softmax over axis {axis} of {shape:?} is not exported");
        }
        self.emit(Op::Softmax { beta: 1.0 }, vec![x], &node.output[0], shape);
        Ok(())
    }
}

/// ReLU6 or ReLU for a Clip's range (inputs from opset 11, attributes before).
fn clip_activation(converter: &Converter, node: &NodeProto) -> Result<Activation> {
    let bound = |index: usize, attribute: &str| -> Result<Option<f32>> {
        match node.input.get(index).filter(|n| !n.is_empty()) {
            Some(name) => Ok(converter.constant(name)?.iter().copied().next()),
            None => Ok(float_attribute(node, attribute)),
        }
    };
    let (min, max) = (bound(1, "min")?, bound(2, "max")?);
    match (min, max) {
        (Some(min), Some(max)) if min == 0.0 && max == 6.0 => Ok(Activation::Relu6),
        (Some(0.0), None) => Ok(Activation::Relu),
        (Some(min), Some(max)) if min == 0.0 && max == f32::INFINITY => Ok(Activation::Relu),
        _ => bail!("Clip to [{min:?}, {max:?}] is not exported (only ReLU6 and ReLU clips are)"),
    }
}

/// ReduceMean's axes: an attribute, or the second input from opset 18.
fn reduce_axes(converter: &Converter, node: &NodeProto) -> Result<Vec<i64>> {
    if let Some(axes) = ints_attribute(node, "axes") {
        return Ok(axes);
    }
    match node.input.get(1).filter(|n| !n.is_empty()) {
        Some(name) => Ok(converter
            .constant(name)?
            .iter()
            .map(|&v| v as i64)
            .collect()),
        None => bail!("a ReduceMean over every axis is not exported"),
    }
}

/// An ONNX reshape spec (0 copies, -1 infers) resolved against `input`.
fn resolve_shape(spec: &[i64], input: &[usize], total: usize) -> Result<Vec<usize>> {
    let mut dims = Vec::with_capacity(spec.len());
    let mut inferred = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            0 => dims.push(
                *input
                    .get(i)
                    .ok_or_else(|| anyhow!("reshape spec {spec:?}"))?,
            ),
            -1 if inferred.is_none() => {
                inferred = Some(i);
                dims.push(1);
            }
            d if d > 0 => dims.push(d as usize),
            _ => bail!("reshape spec {spec:?} is not supported"),
        }
    }
    if let Some(i) = inferred {
        let known: usize = dims.iter().product();
        if known == 0 || !total.is_multiple_of(known) {
            bail!("reshape spec {spec:?} does not divide {total} values");
        }
        dims[i] = total / known;
    }
    Ok(dims)
}

/// NumPy broadcasting of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
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
            (x, y) if x == y => Some(x),
            (1, y) => Some(y),
            (x, 1) => Some(x),
            _ => None,
        })
        .collect()
}

fn dims4(shape: &[usize]) -> Result<[usize; 4]> {
    shape
        .try_into()
        .map_err(|_| anyhow!("expected a 4-d tensor, got shape {shape:?}"))
}

/// The values of `array` with its axes in `order`, row-major.
fn permuted(array: &ArrayD<f32>, order: &[usize]) -> Vec<f32> {
    array
        .view()
        .permuted_axes(IxDyn(order))
        .iter()
        .copied()
        .collect()
}

/// An ONNX constant as floats (integers converted), shaped by its dims.
fn array(tensor: &TensorProto) -> Result<ArrayD<f32>> {
    use pb::tensor_proto::DataType as T;
    let raw = &tensor.raw_data;
    let values: Vec<f32> = match T::try_from(tensor.data_type) {
        Ok(T::Float) if raw.is_empty() => tensor.float_data.clone(),
        Ok(T::Float) => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Ok(T::Int64) if raw.is_empty() => tensor.int64_data.iter().map(|&v| v as f32).collect(),
        Ok(T::Int64) => raw
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        Ok(T::Int32) if raw.is_empty() => tensor.int32_data.iter().map(|&v| v as f32).collect(),
        Ok(T::Int32) => raw
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
            .collect(),
        _ => bail!(
            "constant {} has an element type the export does not read",
            quote(&tensor.name)
        ),
    };
    let dims: Vec<usize> = tensor.dims.iter().map(|&d| d.max(0) as usize).collect();
    ArrayD::from_shape_vec(IxDyn(&dims), values).map_err(|_| {
        anyhow!(
            "constant {} does not hold its shape's values",
            quote(&tensor.name)
        )
    })
}

fn attribute<'n>(node: &'n NodeProto, name: &str) -> Option<&'n pb::AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn int_attribute(node: &NodeProto, name: &str) -> Option<i64> {
    attribute(node, name).map(|a| a.i)
}

fn float_attribute(node: &NodeProto, name: &str) -> Option<f32> {
    attribute(node, name).map(|a| a.f)
}

fn ints_attribute(node: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attribute(node, name).map(|a| a.ints.clone())
}

fn string_attribute(node: &NodeProto, name: &str) -> Option<String> {
    attribute(node, name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
}

/// A pair attribute (strides, dilations, kernel_shape), 1s when absent.
fn pair(node: &NodeProto, name: &str) -> Result<[usize; 2]> {
    match ints_attribute(node, name) {
        None => Ok([1, 1]),
        Some(values) => match values[..] {
            [a, b] if a > 0 && b > 0 => Ok([a as usize, b as usize]),
            _ => bail!("{name} {values:?} is not two positive sizes"),
        },
    }
}
