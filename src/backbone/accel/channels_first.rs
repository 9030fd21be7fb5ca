//! TensorFlow's channel-last convolutions, rewritten channel-first so that flowers' ops take
//! them.
//!
//! retrain.py's MobileNet graphs keep activations NHWC and kernels HWIO, and each layer's
//! batch normalisation is still a `Mul` and an `Add` after the convolution (the frozen
//! graphs), or a bias `Add` (the quantized ones). tract loads them in that form, which
//! [`super::Layer::of`] does not take, so they ran on tract's generic ops. [`rewrite`] turns
//! each convolution the swap would take into the form ONNX backbones have: the input moved
//! channel-first, the kernel repacked to OIHW once, the per-channel `Mul` and `Add` that
//! follow folded into the weights and the bias, the clamp (ReLU6) kept after it in the same
//! order, then one move back to channels last for whatever else reads the layer. The move
//! back and the next layer's move forward cancel: a convolution whose input is such a move
//! reads the channel-first tensor under it, so a chain of layers stays channel-first from
//! the stem to the pooling, with one transpose at each end.
//!
//! TensorFlow's `SAME` padding puts the odd pixel of a stride-2 layer at the bottom and
//! right; tract computes it so (`SameUpper`), and [`super::Geometry`] keeps only the top and
//! left padding: the kernels read zeros past the input's last row and column.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat, PoolSpec};
use tract_onnx::tract_core::ops::math::{Add, Max, Min, Mul};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// NHWC to NCHW.
const TO_FIRST: AxisOp = AxisOp::Move(3, 1);
/// NCHW to NHWC.
const TO_LAST: AxisOp = AxisOp::Move(1, 3);

/// Rewrites, channel-first, the NHWC convolutions of `model` that `taken` accepts once
/// rewritten (the layers flowers' ops run: a rewrite elsewhere would only add transposes);
/// returns how many. A 1x1 layer is rewritten only when its input is already channel-first
/// (the previous layer's output): alone between tract's ops (Inception's, after a pooling
/// or a concatenation), tract's NHWC matrix product serves it as well and the rewrite
/// would only add two transposes. Run it after `prop_consts`, so that the batch
/// normalisation's statistics are constants.
pub(super) fn rewrite(
    model: &mut TypedModel,
    taken: impl Fn(&TypedModel, &TypedNode) -> TractResult<bool>,
) -> TractResult<usize> {
    let mut rewritten = 0;
    for id in model.eval_order()? {
        let Some(layer) = ChannelLast::of(model, model.node(id))? else {
            continue;
        };
        let chained = channel_first_input(model, model.node(id)).is_some();
        if layer.is_pointwise() && !chained {
            continue;
        }
        let (patch, conv) = layer.patch(model, model.node(id))?;
        if taken(&patch.model, patch.model.node(conv))? {
            patch.apply(model)?;
            rewritten += 1;
        }
    }
    Ok(rewritten)
}

/// A float NHWC convolution with constant HWIO kernel and bias, and what follows it that
/// can move with it: the per-channel affine ops, then the clamp.
struct ChannelLast {
    conv: Conv,
    /// OIHW, with the affine ops folded in.
    weights: Vec<f32>,
    /// The OIHW shape.
    kernel: [usize; 4],
    /// One per output channel, with the affine ops folded in.
    bias: Vec<f32>,
    /// The clamp's ops and their constant operands, in order.
    clamps: Vec<(TypedBinOp, Arc<Tensor>)>,
    /// The outlet whose readers the rewritten layer takes over.
    last: OutletId,
}

impl ChannelLast {
    fn of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<ChannelLast>> {
        let Some(conv) = node.op_as::<Conv>() else {
            return Ok(None);
        };
        let spec = &conv.pool_spec;
        let (inputs, outputs) = (conv.input_channels(), conv.output_channels());
        let depthwise = conv.group == inputs && outputs == inputs;
        let plain = conv.q_params.is_none()
            && conv.kernel_fmt == KernelFormat::HWIO
            && spec.data_format == DataFormat::NHWC
            && spec.kernel_shape.len() == 2
            && (conv.group == 1 || depthwise)
            && node.inputs.len() == 3;
        if !plain {
            return Ok(None);
        }
        let data = model.outlet_fact(node.inputs[0])?;
        let shape_fits = data.datum_type == f32::datum_type()
            && data.shape.as_concrete().is_some_and(|s| s.len() == 4);
        let (Some(kernel), Some(bias)) = (
            float_const(model, node.inputs[1])?,
            float_const(model, node.inputs[2])?,
        ) else {
            return Ok(None);
        };
        let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
        let per_group = if depthwise { 1 } else { inputs };
        let kernel_fits = kernel.len() == kh * kw * per_group * outputs;
        let bias = match bias.len() {
            1 => vec![bias[0]; outputs],
            n if n == outputs => bias,
            _ => return Ok(None),
        };
        if !(shape_fits && kernel_fits) {
            return Ok(None);
        }
        let mut layer = ChannelLast {
            conv: conv.clone(),
            weights: oihw(&kernel, [outputs, per_group, kh, kw], depthwise),
            kernel: [outputs, per_group, kh, kw],
            bias,
            clamps: Vec::new(),
            last: OutletId::new(node.id, 0),
        };
        layer.take_followers(model)?;
        Ok(Some(layer))
    }

    fn is_pointwise(&self) -> bool {
        self.conv.group == 1 && self.kernel[2] * self.kernel[3] == 1
    }

    /// Folds the per-channel `Mul`s and `Add`s that follow into the weights and bias, then
    /// takes the `Max`/`Min` clamp after them, while each is the only reader of the one
    /// before.
    fn take_followers(&mut self, model: &TypedModel) -> TractResult<()> {
        let outputs = self.bias.len();
        while let Some((next, op, operand)) = sole_binary_reader(model, self.last)? {
            let per_channel = operand.len() == 1 || operand.len() == outputs;
            let values = operand.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
            let value = |c: usize| values[if values.len() == 1 { 0 } else { c }];
            if op.0.is::<Mul>() && self.clamps.is_empty() && per_channel {
                let per_output = self.weights.len() / outputs;
                for (c, row) in self.weights.chunks_exact_mut(per_output).enumerate() {
                    row.iter_mut().for_each(|w| *w *= value(c));
                    self.bias[c] *= value(c);
                }
            } else if op.0.is::<Add>() && self.clamps.is_empty() && per_channel {
                self.bias
                    .iter_mut()
                    .enumerate()
                    .for_each(|(c, b)| *b += value(c));
            } else if (op.0.is::<Max>() || op.0.is::<Min>()) && operand.len() == 1 {
                self.clamps.push((op.clone(), operand));
            } else {
                break;
            }
            self.last = OutletId::new(next, 0);
        }
        Ok(())
    }

    /// The patch putting the channel-first layer in place of `node` and its followers, and
    /// the id of the new convolution in the patch.
    fn patch(self, model: &TypedModel, node: &TypedNode) -> TractResult<(TypedModelPatch, usize)> {
        let mut patch = TypedModelPatch::default();
        let name = &node.name;
        let data = match channel_first_input(model, node) {
            Some(planes) => patch.tap_model(model, planes)?,
            None => {
                let tap = patch.tap_model(model, node.inputs[0])?;
                patch.wire_node(format!("{name}.channels_first"), TO_FIRST, &[tap])?[0]
            }
        };
        let weights = Tensor::from_shape(&self.kernel, &self.weights)?;
        let weights = patch.add_const(format!("{name}.oihw"), weights)?;
        let bias = patch.add_const(format!("{name}.folded_bias"), tensor1(&self.bias))?;
        let conv = Conv {
            pool_spec: PoolSpec {
                data_format: DataFormat::NCHW,
                ..self.conv.pool_spec.clone()
            },
            kernel_fmt: KernelFormat::OIHW,
            ..self.conv
        };
        let mut wire = patch.wire_node(name, conv, &[data, weights, bias])?[0];
        let conv = wire.node;
        for (i, (op, operand)) in self.clamps.into_iter().enumerate() {
            let operand = patch.add_const(format!("{name}.clamp_{i}.bound"), operand)?;
            wire = patch.wire_node(format!("{name}.clamp_{i}"), op, &[wire, operand])?[0];
        }
        let back = patch.wire_node(format!("{name}.channels_last"), TO_LAST, &[wire])?[0];
        patch.shunt_outside(model, self.last, back)?;
        Ok((patch, conv))
    }
}

/// The channel-first tensor `node` reads through a move to channels last, if it does.
fn channel_first_input(model: &TypedModel, node: &TypedNode) -> Option<OutletId> {
    let producer = model.node(node.inputs.first()?.node);
    (producer.op_as::<AxisOp>() == Some(&TO_LAST)).then(|| producer.inputs[0])
}

/// An HWIO kernel (`[kh, kw, per_group, outputs]`; a depthwise one `[kh, kw, channels, 1]`)
/// in OIHW order, `dims` being `[outputs, per_group, kh, kw]`.
fn oihw(kernel: &[f32], dims: [usize; 4], depthwise: bool) -> Vec<f32> {
    let [outputs, per_group, kh, kw] = dims;
    let mut oihw = Vec::with_capacity(kernel.len());
    for o in 0..outputs {
        for i in 0..per_group {
            for tap in 0..kh * kw {
                // A depthwise kernel's output channel is its input channel.
                let hwio = if depthwise {
                    tap * outputs + o
                } else {
                    (tap * per_group + i) * outputs + o
                };
                oihw.push(kernel[hwio]);
            }
        }
    }
    oihw
}

/// The float values of a constant outlet.
fn float_const(model: &TypedModel, outlet: OutletId) -> TractResult<Option<Vec<f32>>> {
    let fact = model.outlet_fact(outlet)?;
    match &fact.konst {
        Some(k) if k.datum_type() == f32::datum_type() => {
            Ok(Some(k.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()))
        }
        _ => Ok(None),
    }
}

/// The binary op that alone reads `outlet` (not a model output) with a float constant,
/// all of whose axes but the last (the channels) have size one, keeping `outlet`'s shape:
/// the node, the op and the constant.
fn sole_binary_reader(
    model: &TypedModel,
    outlet: OutletId,
) -> TractResult<Option<(usize, TypedBinOp, Arc<Tensor>)>> {
    let Some((next, op, konst)) = super::sole_binary_reader(model, outlet)? else {
        return Ok(None);
    };
    let shape = konst.shape();
    let channel_only = shape.len() <= 4
        && shape.iter().rev().skip(1).all(|&d| d == 1)
        && konst.datum_type() == f32::datum_type();
    Ok(channel_only.then(|| (next.id, op.clone(), konst)))
}

#[cfg(test)]
mod tests {
    use super::super::{run_swapped, Kernels};
    use super::*;
    use crate::backbone::{tensorflow, Backbone, BackboneGraph, Fetch, ModelSource, Overrides};

    /// retrain.py's genuine MobileNet v1 0.25 224 (`tests/fixtures/tf`), cut at `bottleneck`.
    fn mobilenet(bottleneck: &str) -> (Backbone, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let archive = "mobilenet_v1_0.25_224_frozen.tgz";
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tf/");
        std::fs::copy(format!("{fixture}{archive}"), dir.path().join(archive)).unwrap();
        let source = ModelSource::Architecture(Fetch {
            name: "mobilenet_0.25_224".into(),
            model_dir: dir.path().to_path_buf(),
            // Nothing listens there: the archive in place is used.
            base_url: Some("http://127.0.0.1:9/".into()),
            quiet: true,
            max_download_size: None,
        });
        let overrides = Overrides {
            bottleneck_tensor: Some(bottleneck.into()),
            ..Default::default()
        };
        (Backbone::load(&source, &overrides).unwrap(), dir)
    }

    /// The typed model tract builds from the backbone's graph, as `Plan` builds it.
    fn typed(backbone: &Backbone) -> TypedModel {
        let BackboneGraph::TensorFlow(graph) = &backbone.graph else {
            panic!("a TensorFlow backbone");
        };
        let output = tensorflow::node_name(&backbone.bottleneck);
        let graph =
            tensorflow::for_tract(graph, &backbone.input_name, output, [1, 224, 224, 3]).unwrap();
        tract_tensorflow::tensorflow()
            .model_for_proto_model(&graph)
            .unwrap()
            .with_input_fact(0, f32::fact([1, 224, 224, 3]).into())
            .unwrap()
            .with_outputs_by_name([output])
            .unwrap()
            .into_typed()
            .unwrap()
    }

    /// Every path against tract's own plan of the NHWC graph, on a real photo: the stem,
    /// the 13 depthwise and 13 pointwise layers rewritten and swapped, the batch
    /// normalisation folded, results to float rounding.
    #[test]
    fn tensorflow_mobilenet_runs_flowers_ops_with_tracts_results() {
        let photo = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/flower_sample/daisy/10172379554_b296050f82_n.jpg"
        );
        // The logits' 1x1 layer, after the pooling, stays tract's.
        for bottleneck in [
            "MobilenetV1/Logits/AvgPool_1a/AvgPool",
            "MobilenetV1/Predictions/Reshape",
        ] {
            let (backbone, _dir) = mobilenet(bottleneck);
            let input = backbone
                .preprocessing
                .tensor_from_bytes(&std::fs::read(photo).unwrap())
                .unwrap();
            let run = |kernels| run_swapped(typed(&backbone), kernels, &input);
            let (none, _, tracts) = run(Kernels::Portable);
            assert_eq!(none, 0);
            assert!(tracts.iter().any(|&v| v > 0.5), "a degenerate output");
            for kernels in Kernels::supported().into_iter().skip(1) {
                let (replaced, conversions, ours) = run(kernels);
                assert_eq!(replaced, 27, "{bottleneck}, {kernels:?}");
                if let Kernels::Avx2(_) = kernels {
                    // Blocked from the stem on, back to planes once, for the pooling.
                    assert_eq!(conversions, (1, 0), "{bottleneck}, {kernels:?}");
                }
                let largest = tracts
                    .iter()
                    .zip(&ours)
                    .map(|(a, b)| (a - b).abs() / a.abs().max(1.0))
                    .fold(0f32, f32::max);
                assert!(
                    largest < 1e-4,
                    "{bottleneck}, {kernels:?}: outputs differ by {largest}"
                );
            }
        }
    }
}
