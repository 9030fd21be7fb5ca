//! A retrained TensorFlow graph (retrain.py's TensorFlow backbones, NHWC already) -> a
//! float TFLite [`Model`].
//!
//! The graph is first cut and cleaned as for tract ([`tensorflow::for_tract`]: the
//! batch normalisations and quantized weights folded), then constant subgraphs (the
//! `Rsqrt`/`Mul`/`Sub` of frozen batch normalisations) are computed here, and each
//! `Mul`/`Add`/`BiasAdd` by a per-channel constant right after a convolution or a matrix
//! product is folded into its weights and bias, as TensorFlow's converter does.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use ndarray::{ArrayD, IxDyn};
use tract_tensorflow::tfpb::tensorflow::{self as tfpb, attr_value::Value as AttrKind};

use super::ir::{Activation, Data, Model, Op, Operator, Padding, TensorId};
use crate::backbone::limits::quote;
use crate::backbone::tensorflow::{self, node_name, GraphDef};

/// The TensorFlow ops the exporter turns into TFLite builtins.
pub const SUPPORTED_TF_OPS: &str = "Conv2D, DepthwiseConv2dNative, BiasAdd, Add, AddV2, Sub, Mul, Relu, Relu6, AvgPool, Mean, Squeeze, Reshape, MatMul, Softmax, Identity, and constant Rsqrt/Sqrt/Mul/Add/Sub";

/// Converts a flowers TensorFlow graph fed at `input` with `[1, height, width, 3]`.
pub fn from_tensorflow(
    graph: &GraphDef,
    input: &str,
    output: &str,
    size: [usize; 2],
    display: &str,
) -> Result<Model> {
    let shape = [1, size[0] as i64, size[1] as i64, 3];
    let graph = tensorflow::for_tract(graph, input, output, shape)?;
    let mut converter = Converter::new(&graph);
    let input_id = converter
        .model
        .add_activation(node_name(input), vec![1, size[0], size[1], 3]);
    converter.model.inputs = vec![input_id];
    converter
        .values
        .insert(node_name(input).to_string(), input_id);
    for node in topological(&graph, output)? {
        if node.name == node_name(input) {
            continue;
        }
        converter
            .node(node)
            .with_context(|| format!("{display}: node {} ({})", quote(&node.name), node.op))?;
    }
    let id = converter.activation(output)?;
    converter.model.outputs = vec![id];
    Ok(converter.model)
}

/// The nodes `output` depends on, each after its inputs: frozen graphs (those rewritten
/// by TensorFlow's graph transforms, as the quantized MobileNets) need not list them so.
fn topological<'g>(graph: &'g tfpb::GraphDef, output: &str) -> Result<Vec<&'g tfpb::NodeDef>> {
    let by_name: HashMap<&str, &tfpb::NodeDef> =
        graph.node.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut order = Vec::new();
    let mut state: HashMap<&str, bool> = HashMap::new(); // false: entered, true: done
    let mut stack = vec![(node_name(output), false)];
    while let Some((name, inputs_done)) = stack.pop() {
        let node = by_name
            .get(name)
            .ok_or_else(|| anyhow!("the graph has no node {}", quote(name)))?;
        if inputs_done {
            state.insert(name, true);
            order.push(*node);
            continue;
        }
        match state.get(name) {
            Some(true) => continue,
            Some(false) => bail!("the graph has a cycle through {}", quote(name)),
            None => {}
        }
        state.insert(name, false);
        stack.push((name, true));
        for input in node.input.iter().rev() {
            let input = node_name(input);
            if state.get(input) != Some(&true) {
                stack.push((input, false));
            }
        }
    }
    Ok(order)
}

struct Converter {
    model: Model,
    values: HashMap<String, TensorId>,
    constants: HashMap<String, ArrayD<f32>>,
    readers: HashMap<String, usize>,
    producer: HashMap<TensorId, usize>,
}

impl Converter {
    fn new(graph: &tfpb::GraphDef) -> Converter {
        let mut readers = HashMap::new();
        for input in graph.node.iter().flat_map(|n| &n.input) {
            *readers.entry(node_name(input).to_string()).or_insert(0) += 1;
        }
        Converter {
            model: Model::default(),
            values: HashMap::new(),
            constants: HashMap::new(),
            readers,
            producer: HashMap::new(),
        }
    }

    fn activation(&self, name: &str) -> Result<TensorId> {
        self.values
            .get(node_name(name))
            .copied()
            .ok_or_else(|| anyhow!("input {} is not computed from the image", quote(name)))
    }

    fn constant(&self, name: &str) -> Option<&ArrayD<f32>> {
        self.constants.get(node_name(name))
    }

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

    fn node(&mut self, node: &tfpb::NodeDef) -> Result<()> {
        if node.op == "Const" {
            let tensor = match node.attr.get("value").and_then(|v| v.value.as_ref()) {
                Some(AttrKind::Tensor(tensor)) => tensor,
                _ => bail!("a constant without a value"),
            };
            self.constants
                .insert(node.name.clone(), const_array(tensor)?);
            return Ok(());
        }
        if !node.input.is_empty() && node.input.iter().all(|i| self.constant(i).is_some()) {
            let folded = self.fold_constant(node)?;
            self.constants.insert(node.name.clone(), folded);
            return Ok(());
        }
        match node.op.as_str() {
            "Conv2D" | "DepthwiseConv2dNative" => self.conv(node),
            "BiasAdd" | "Add" | "AddV2" | "Sub" | "Mul" => self.binary(node),
            "Relu" => self.activation_node(node, Activation::Relu),
            "Relu6" => self.activation_node(node, Activation::Relu6),
            "AvgPool" => self.average_pool(node),
            "Mean" => self.mean(node),
            "Squeeze" | "Reshape" => self.reshape(node),
            "MatMul" => self.matmul(node),
            "Softmax" => {
                let x = self.activation(&node.input[0])?;
                let shape = self.model.tensors[x].shape.clone();
                self.emit(Op::Softmax { beta: 1.0 }, vec![x], &node.name, shape);
                Ok(())
            }
            "Identity" => {
                let x = self.activation(&node.input[0])?;
                self.values.insert(node.name.clone(), x);
                Ok(())
            }
            op => bail!(
                "the TensorFlow Lite export does not support {op}; it exports {SUPPORTED_TF_OPS}"
            ),
        }
    }

    /// A node of constants only, computed now.
    fn fold_constant(&self, node: &tfpb::NodeDef) -> Result<ArrayD<f32>> {
        let arg = |i: usize| -> Result<&ArrayD<f32>> {
            node.input
                .get(i)
                .and_then(|n| self.constant(n))
                .ok_or_else(|| anyhow!("missing input {i}"))
        };
        Ok(match node.op.as_str() {
            "Identity" => arg(0)?.clone(),
            "Rsqrt" => arg(0)?.mapv(|v| 1.0 / v.sqrt()),
            "Sqrt" => arg(0)?.mapv(f32::sqrt),
            "Reciprocal" => arg(0)?.mapv(|v| 1.0 / v),
            "Mul" => broadcast_op(arg(0)?, arg(1)?, |a, b| a * b)?,
            "Add" | "AddV2" | "BiasAdd" => broadcast_op(arg(0)?, arg(1)?, |a, b| a + b)?,
            "Sub" => broadcast_op(arg(0)?, arg(1)?, |a, b| a - b)?,
            "RealDiv" => broadcast_op(arg(0)?, arg(1)?, |a, b| a / b)?,
            op => bail!("cannot compute {op} of constants; it folds {SUPPORTED_TF_OPS}"),
        })
    }

    fn conv(&mut self, node: &tfpb::NodeDef) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let filter = self
            .constant(&node.input[1])
            .ok_or_else(|| anyhow!("the filter is not a constant"))?
            .clone();
        let [kh, kw, channels, depth] = dims4(filter.shape())?;
        let [_, h, w, c] = dims4(&self.model.tensors[x].shape)?;
        if channels != c || [kh, kw, channels, depth].contains(&0) {
            bail!("a {:?} filter meets {c} channels", filter.shape());
        }
        if string_attr(node, "data_format").is_some_and(|f| f != "NHWC") {
            bail!("only NHWC convolutions are exported");
        }
        let stride = nhwc_pair(node, "strides")?;
        let dilation = nhwc_pair(node, "dilations")?;
        let padding = match string_attr(node, "padding").as_deref() {
            Some("SAME") => Padding::Same,
            Some("VALID") => Padding::Valid,
            other => bail!("padding {other:?} is not exported"),
        };
        let depthwise = node.op == "DepthwiseConv2dNative";
        let out_channels = if depthwise { channels * depth } else { depth };
        let out = |axis: usize, size: usize, k: usize| {
            padding.output(size, k, stride[axis], dilation[axis])
        };
        let (Some((out_h, _)), Some((out_w, _))) = (out(0, h, kh), out(1, w, kw)) else {
            bail!("the kernel {kh}x{kw} does not fit the {h}x{w} input");
        };
        let name = &node.name;
        let (filter, filter_shape, op) = if depthwise {
            let values = filter.iter().copied().collect();
            let op = Op::DepthwiseConv2d {
                stride,
                dilation,
                padding,
                multiplier: depth,
                activation: Activation::None,
            };
            (values, vec![1, kh, kw, out_channels], op)
        } else {
            let values = filter
                .view()
                .permuted_axes(IxDyn(&[3, 0, 1, 2]))
                .iter()
                .copied()
                .collect();
            let op = Op::Conv2d {
                stride,
                dilation,
                padding,
                activation: Activation::None,
            };
            (values, vec![out_channels, kh, kw, channels], op)
        };
        let filter =
            self.model
                .add_constant(&format!("{name}/filter"), filter_shape, Data::F32(filter));
        let bias = self.model.add_constant(
            &format!("{name}/bias"),
            vec![out_channels],
            Data::F32(vec![0.0; out_channels]),
        );
        self.emit(
            op,
            vec![x, filter, bias],
            name,
            vec![1, out_h, out_w, out_channels],
        );
        Ok(())
    }

    /// `x op constant` folded into the convolution or matrix product before it when it
    /// alone reads its output; else an ADD or MUL.
    fn binary(&mut self, node: &tfpb::NodeDef) -> Result<()> {
        let (a, b) = (&node.input[0], &node.input[1]);
        let operands = (
            self.activation(a).ok(),
            self.constant(b).cloned(),
            self.activation(b).ok(),
            self.constant(a).cloned(),
        );
        let (x, constant) = match operands {
            (Some(x), Some(c), _, _) => (x, c),
            (_, _, Some(y), Some(c)) if node.op != "Sub" => (y, c),
            (Some(x), None, Some(y), None) => {
                let shape = self.model.tensors[x].shape.clone();
                if self.model.tensors[y].shape != shape {
                    bail!("adding tensors of different shapes is not exported");
                }
                let op = match node.op.as_str() {
                    "Mul" => Op::Mul {
                        activation: Activation::None,
                    },
                    "Sub" => bail!("a Sub of two computed tensors is not exported"),
                    _ => Op::Add {
                        activation: Activation::None,
                    },
                };
                self.emit(op, vec![x, y], &node.name, shape);
                return Ok(());
            }
            _ => bail!("its inputs are neither computed nor constant"),
        };
        let mut constant: Vec<f32> = constant.iter().copied().collect();
        let multiply = node.op == "Mul";
        if node.op == "Sub" {
            constant.iter_mut().for_each(|v| *v = -*v);
        }
        let shape = self.model.tensors[x].shape.clone();
        let channels = *shape.last().unwrap_or(&1);
        let constant = match constant.len() {
            1 => vec![constant[0]; channels],
            n if n == channels => constant,
            n => bail!("a constant of {n} values meets {channels} channels"),
        };
        if self.fold(x, &node.input[0], &constant, multiply) {
            self.values.insert(node.name.clone(), x);
            return Ok(());
        }
        let name = &node.name;
        let c = self.model.add_constant(
            &format!("{name}/constant"),
            vec![channels],
            Data::F32(constant),
        );
        let op = if multiply {
            Op::Mul {
                activation: Activation::None,
            }
        } else {
            Op::Add {
                activation: Activation::None,
            }
        };
        self.emit(op, vec![x, c], name, shape);
        Ok(())
    }

    /// Multiplies (or adds to) the output channels of the operator that wrote `x`.
    fn fold(&mut self, x: TensorId, name: &str, constant: &[f32], multiply: bool) -> bool {
        let Some(&index) = self.producer.get(&x) else {
            return false;
        };
        if self.readers.get(node_name(name)) != Some(&1) {
            return false;
        }
        let operator = &self.model.operators[index];
        let channel_first = match operator.op {
            Op::Conv2d {
                activation: Activation::None,
                ..
            }
            | Op::FullyConnected {
                activation: Activation::None,
            } => true,
            Op::DepthwiseConv2d {
                activation: Activation::None,
                ..
            } => false,
            _ => return false,
        };
        let (filter, bias) = (operator.inputs[1], operator.inputs[2]);
        let channels = constant.len();
        if multiply {
            if let Some(Data::F32(weights)) = &mut self.model.tensors[filter].data {
                let per_channel = weights.len() / channels;
                for (i, w) in weights.iter_mut().enumerate() {
                    *w *= constant[if channel_first {
                        i / per_channel
                    } else {
                        i % channels
                    }];
                }
            }
        }
        if let Some(Data::F32(biases)) = &mut self.model.tensors[bias].data {
            for (b, c) in biases.iter_mut().zip(constant) {
                *b = if multiply { *b * c } else { *b + c };
            }
        }
        true
    }

    fn activation_node(&mut self, node: &tfpb::NodeDef, activation: Activation) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let sole_reader = self.readers.get(node_name(&node.input[0])) == Some(&1);
        if let Some(&index) = self.producer.get(&x).filter(|_| sole_reader) {
            if let Some(fused) = self.model.operators[index].op.activation_mut() {
                if *fused == Activation::None {
                    *fused = activation;
                    self.values.insert(node.name.clone(), x);
                    return Ok(());
                }
            }
        }
        let op = if activation == Activation::Relu6 {
            Op::Relu6
        } else {
            Op::Relu
        };
        let shape = self.model.tensors[x].shape.clone();
        self.emit(op, vec![x], &node.name, shape);
        Ok(())
    }

    fn average_pool(&mut self, node: &tfpb::NodeDef) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let [_, h, w, c] = dims4(&self.model.tensors[x].shape)?;
        let filter = nhwc_pair(node, "ksize")?;
        let stride = nhwc_pair(node, "strides")?;
        let padding = match string_attr(node, "padding").as_deref() {
            Some("SAME") => Padding::Same,
            Some("VALID") => Padding::Valid,
            other => bail!("padding {other:?} is not exported"),
        };
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
        self.emit(op, vec![x], &node.name, vec![1, out_h, out_w, c]);
        Ok(())
    }

    fn mean(&mut self, node: &tfpb::NodeDef) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let [n, _, _, c] = dims4(&self.model.tensors[x].shape)?;
        let axes = self
            .constant(&node.input[1])
            .ok_or_else(|| anyhow!("the axes are not constant"))?;
        let mut axes: Vec<i64> = axes
            .iter()
            .map(|&a| if a < 0.0 { a as i64 + 4 } else { a as i64 })
            .collect();
        axes.sort_unstable();
        if axes != [1, 2] {
            bail!("a mean over axes {axes:?} (not height and width) is not exported");
        }
        let keep_dims = matches!(
            node.attr.get("keep_dims").and_then(|v| v.value.as_ref()),
            Some(AttrKind::B(true))
        );
        let axes = self.model.add_constant(
            &format!("{}/axes", node.name),
            vec![2],
            Data::I32(vec![1, 2]),
        );
        let shape = if keep_dims {
            vec![n, 1, 1, c]
        } else {
            vec![n, c]
        };
        self.emit(Op::Mean { keep_dims }, vec![x, axes], &node.name, shape);
        Ok(())
    }

    fn reshape(&mut self, node: &tfpb::NodeDef) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let shape = self.model.tensors[x].shape.clone();
        let total: usize = shape.iter().product();
        let target: Vec<usize> = if node.op == "Squeeze" {
            let dims: Vec<i64> = match node.attr.get("squeeze_dims").and_then(|v| v.value.as_ref())
            {
                Some(AttrKind::List(list)) => list.i.clone(),
                _ => vec![],
            };
            let rank = shape.len() as i64;
            let dims: Vec<usize> = dims
                .iter()
                .map(|&d| (if d < 0 { d + rank } else { d }) as usize)
                .collect();
            shape
                .iter()
                .enumerate()
                .filter(|&(i, &d)| !(d == 1 && (dims.is_empty() || dims.contains(&i))))
                .map(|(_, &d)| d)
                .collect()
        } else {
            let spec = self
                .constant(&node.input[1])
                .ok_or_else(|| anyhow!("the shape is not constant"))?;
            let spec: Vec<i64> = spec.iter().map(|&v| v as i64).collect();
            let known: usize = spec
                .iter()
                .filter(|&&d| d > 0)
                .map(|&d| d as usize)
                .product();
            spec.iter()
                .map(|&d| {
                    if d < 0 {
                        total / known.max(1)
                    } else {
                        d as usize
                    }
                })
                .collect()
        };
        if target.iter().product::<usize>() != total {
            bail!("cannot reshape {shape:?} to {target:?}");
        }
        let name = &node.name;
        let dims: Vec<i32> = target.iter().map(|&d| d as i32).collect();
        let spec =
            self.model
                .add_constant(&format!("{name}/shape"), vec![dims.len()], Data::I32(dims));
        self.emit(Op::Reshape, vec![x, spec], name, target);
        Ok(())
    }

    fn matmul(&mut self, node: &tfpb::NodeDef) -> Result<()> {
        let x = self.activation(&node.input[0])?;
        let [batch, inputs] = self.model.tensors[x].shape[..] else {
            bail!("the input is not a [batch, features] matrix");
        };
        let weights = self
            .constant(&node.input[1])
            .ok_or_else(|| anyhow!("the weights are not constant"))?;
        let flag = |name: &str| {
            matches!(
                node.attr.get(name).and_then(|v| v.value.as_ref()),
                Some(AttrKind::B(true))
            )
        };
        if flag("transpose_a") {
            bail!("MatMul with transpose_a is not exported");
        }
        let weights = if flag("transpose_b") {
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
        let name = &node.name;
        let values = weights.iter().copied().collect();
        let filter = self.model.add_constant(
            &format!("{name}/weights"),
            vec![outputs, inputs],
            Data::F32(values),
        );
        let bias = self.model.add_constant(
            &format!("{name}/bias"),
            vec![outputs],
            Data::F32(vec![0.0; outputs]),
        );
        let op = Op::FullyConnected {
            activation: Activation::None,
        };
        self.emit(op, vec![x, filter, bias], name, vec![batch, outputs]);
        Ok(())
    }
}

/// NumPy-style broadcast of two constants.
fn broadcast_op(
    a: &ArrayD<f32>,
    b: &ArrayD<f32>,
    f: impl Fn(f32, f32) -> f32,
) -> Result<ArrayD<f32>> {
    let rank = a.ndim().max(b.ndim());
    let padded = |x: &ArrayD<f32>| -> Result<ArrayD<f32>> {
        let mut dims = vec![1; rank - x.ndim()];
        dims.extend(x.shape());
        Ok(x.clone().into_shape_with_order(IxDyn(&dims))?)
    };
    let (a, b) = (padded(a)?, padded(b)?);
    let shape: Vec<usize> = (0..rank)
        .map(|i| match (a.shape()[i], b.shape()[i]) {
            (x, y) if x == y => Ok(x),
            (1, y) => Ok(y),
            (x, 1) => Ok(x),
            (x, y) => bail!("constants of {x} and {y} values do not broadcast"),
        })
        .collect::<Result<_>>()?;
    let a = a
        .broadcast(IxDyn(&shape))
        .ok_or_else(|| anyhow!("broadcast"))?;
    let b = b
        .broadcast(IxDyn(&shape))
        .ok_or_else(|| anyhow!("broadcast"))?;
    Ok(ndarray::Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y)))
}

/// A float or int32 TensorFlow constant as floats, shaped.
fn const_array(tensor: &tfpb::TensorProto) -> Result<ArrayD<f32>> {
    let dims: Vec<usize> = tensor
        .tensor_shape
        .as_ref()
        .map(|s| s.dim.iter().map(|d| d.size.max(0) as usize).collect())
        .unwrap_or_default();
    let count: usize = dims.iter().product();
    let content = &tensor.tensor_content;
    let mut values: Vec<f32> = if tensor.dtype == tfpb::DataType::DtFloat as i32 {
        if content.is_empty() {
            tensor.float_val.clone()
        } else {
            content
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        }
    } else if tensor.dtype == tfpb::DataType::DtInt32 as i32 {
        if content.is_empty() {
            tensor.int_val.iter().map(|&v| v as f32).collect()
        } else {
            content
                .chunks_exact(4)
                .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f32)
                .collect()
        }
    } else {
        // Strings (flowers' metadata) and other types never reach an exported op.
        return Ok(ArrayD::zeros(IxDyn(&[0])));
    };
    // TensorFlow repeats the last listed value up to the declared size.
    if values.len() < count {
        let last = values.last().copied().unwrap_or(0.0);
        values.resize(count, last);
    }
    ArrayD::from_shape_vec(IxDyn(&dims), values)
        .map_err(|_| anyhow!("a constant does not hold its shape's values"))
}

fn string_attr(node: &tfpb::NodeDef, name: &str) -> Option<String> {
    match node.attr.get(name)?.value.as_ref()? {
        AttrKind::S(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
        _ => None,
    }
}

/// The height and width of an NHWC list attribute (strides, dilations, ksize); 1s if absent.
fn nhwc_pair(node: &tfpb::NodeDef, name: &str) -> Result<[usize; 2]> {
    match node.attr.get(name).and_then(|v| v.value.as_ref()) {
        None => Ok([1, 1]),
        Some(AttrKind::List(list)) => match list.i[..] {
            [1, h, w, 1] if h > 0 && w > 0 => Ok([h as usize, w as usize]),
            _ => bail!("{name} {:?} is not [1, h, w, 1]", list.i),
        },
        Some(_) => bail!("{name} is not a list"),
    }
}

fn dims4(shape: &[usize]) -> Result<[usize; 4]> {
    shape
        .try_into()
        .map_err(|_| anyhow!("expected a 4-d tensor, got shape {shape:?}"))
}
