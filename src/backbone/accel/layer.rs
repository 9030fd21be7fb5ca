//! Which convolutions of a tract model flowers' ops can run, and the shapes they run them
//! with: the matching half of [`super::apply`], apart from the ops themselves.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

/// Dense convolutions with at most this many input channels (a network's stem, on RGB) are
/// flowers' too: tract lowers them to a matrix product with a 27-deep inner dimension, its
/// least efficient shape. Deeper inputs are tract's, unless they are 1x1 ([`pointwise`]).
const MAX_DENSE_INPUTS: usize = 4;

/// The geometry of `node` if it is a float convolution with a geometry of its own that the
/// blocked ops run (depthwise, or dense on a few input channels): batch one, channels
/// first, constant OIHW kernel and bias, no dilation, concrete shapes.
pub(crate) fn direct(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Geometry>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let (inputs, channels) = (conv.input_channels(), conv.output_channels());
    let depthwise = conv.group == inputs && channels == inputs;
    let dense = conv.group == 1 && inputs <= MAX_DENSE_INPUTS;
    let plain = conv.q_params.is_none()
        && conv.kernel_fmt == KernelFormat::OIHW
        && (depthwise || dense)
        && spec.kernel_shape.len() == 2
        && spec.dilations().iter().all(|&d| d == 1)
        && node.inputs.len() == 3;
    if !plain {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    let kernel = model.outlet_fact(node.inputs[1])?;
    let bias = model.outlet_fact(node.inputs[2])?;
    let Some(shape) = input.shape.as_concrete() else {
        return Ok(None);
    };
    let batched = match (spec.data_format, shape.len()) {
        (DataFormat::NCHW, 4) if shape[0] == 1 => true,
        (DataFormat::CHW, 3) => false,
        _ => return Ok(None),
    };
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    let consts_fit = kernel
        .konst
        .as_ref()
        .is_some_and(|k| k.shape() == [channels, if dense { inputs } else { 1 }, kh, kw])
        && bias.konst.as_ref().is_some_and(|b| b.len() == channels);
    if input.datum_type != f32::datum_type() || !consts_fit {
        return Ok(None);
    }
    let hw = &shape[shape.len() - 2..];
    let padded = spec.computed_padding(hw);
    if padded.iter().any(|d| d.convoluted == 0) {
        return Ok(None);
    }
    Ok(Some(Geometry {
        batched,
        dense,
        inputs,
        channels,
        height: hw[0],
        width: hw[1],
        kernel_h: kh,
        kernel_w: kw,
        stride_h: spec.stride(0),
        stride_w: spec.stride(1),
        pad_top: padded[0].pad_before,
        pad_left: padded[1].pad_before,
        out_h: padded[0].convoluted,
        out_w: padded[1].convoluted,
    }))
}

/// Everything about one layer that is fixed when the plan is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Geometry {
    /// Whether the tensors carry a leading batch axis of 1 (NCHW) or none (CHW).
    pub batched: bool,
    /// Every output channel reads every input channel (else channel `c` reads channel `c`).
    pub dense: bool,
    /// Input channels.
    pub inputs: usize,
    /// Output channels.
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Geometry {
    /// Whether every size the kernels divide by or count down from is at least one.
    pub(crate) fn is_valid(&self) -> bool {
        [self.out_h, self.out_w, self.stride_h, self.stride_w]
            .iter()
            .chain(&[self.kernel_h, self.kernel_w, self.channels, self.inputs])
            .all(|&n| n >= 1)
    }
}

/// Shape of one pointwise layer, fixed when the plan is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Pointwise {
    /// Whether the tensors carry a leading batch axis of 1 (NCHW) or none (CHW).
    pub batched: bool,
    pub inputs: usize,
    pub outputs: usize,
    pub height: usize,
    pub width: usize,
}

/// A pointwise layer the blocked ops can take over, found by [`pointwise`].
pub(crate) struct Eligible {
    pub shape: Pointwise,
    /// The kernel, `outputs x inputs`, row-major: the graph's own constant, not a copy,
    /// and once [`super::release_kernel`] has run, the only hold on it.
    pub kernel: Arc<Tensor>,
    pub bias: Arc<Tensor>,
}

/// `node` as a pointwise layer, if it is one the blocked ops can run: a float 1x1 `Conv` with unit
/// stride and no padding, batch one, channels first, constant OIHW kernel and bias,
/// concrete shapes. Anything else stays tract's.
///
/// This matches the model before tract's declutter, which would turn such a convolution
/// into an `EinSum` and, on the way, copy its weights several times.
pub(crate) fn pointwise(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Eligible>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let (inputs, outputs) = (conv.input_channels(), conv.output_channels());
    let plain = conv.q_params.is_none()
        && conv.kernel_fmt == KernelFormat::OIHW
        && conv.group == 1
        && spec.kernel_shape.as_slice() == [1, 1]
        && (0..2).all(|axis| spec.stride(axis) == 1)
        && node.inputs.len() == 3;
    if !plain {
        return Ok(None);
    }
    let facts = [0, 1, 2].map(|slot| model.outlet_fact(node.inputs[slot]));
    let [data, kernel, bias] = facts;
    let (data, kernel, bias) = (data?, kernel?, bias?);
    let Some(dims) = data.shape.as_concrete() else {
        return Ok(None);
    };
    let batched = match (spec.data_format, dims.len()) {
        (DataFormat::NCHW, 4) if dims[0] == 1 => true,
        (DataFormat::CHW, 3) => false,
        _ => return Ok(None),
    };
    let (height, width) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let unpadded = spec
        .computed_padding(&[height, width])
        .iter()
        .zip([height, width])
        .all(|(p, size)| p.pad_before == 0 && p.convoluted == size);
    let (Some(kernel), Some(bias)) = (&kernel.konst, &bias.konst) else {
        return Ok(None);
    };
    let fits = kernel.shape() == [outputs, inputs, 1, 1] && bias.len() == outputs;
    let floats = [data.datum_type, kernel.datum_type(), bias.datum_type()]
        .iter()
        .all(|&t| t == f32::datum_type());
    if !(unpadded && fits && floats) {
        return Ok(None);
    }
    let shape = Pointwise {
        batched,
        inputs,
        outputs,
        height,
        width,
    };
    Ok(Some(Eligible {
        shape,
        kernel: kernel.clone(),
        bias: bias.clone(),
    }))
}
