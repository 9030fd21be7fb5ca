//! The depthwise convolution on blocked activations: each tap is one multiply for the eight
//! channels of a block, at any stride, read straight from the input, with no padded copy.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::{x86_64_avx2, Planes, BLOCK};
use crate::backbone::accel::cpu::Avx2Fma;
use crate::backbone::accel::direct_conv::Geometry;
use crate::backbone::accel::op::{eval_f32, Clip};

/// The input image of a layer of geometry `g`.
pub(crate) fn input_planes(g: &Geometry) -> Planes {
    Planes {
        batched: g.batched,
        channels: g.inputs,
        height: g.height,
        width: g.width,
    }
}

/// The output image of a layer of geometry `g`.
pub(crate) fn output_planes(g: &Geometry) -> Planes {
    Planes {
        batched: g.batched,
        channels: g.channels,
        height: g.out_h,
        width: g.out_w,
    }
}

/// Runs the layer: `data` and `output` blocked, `taps` `[blocks][KH x KW][8]` and `bias`
/// padded to whole blocks ([`super::pack_taps`]). Slices of the wrong length, and
/// geometries that are not depthwise, panic here, before any kernel runs.
pub(crate) fn convolve(
    isa: Avx2Fma,
    g: &Geometry,
    clip: (f32, f32),
    data: &[f32],
    taps: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    let (input, out) = (input_planes(g), output_planes(g));
    assert!(!g.dense && g.inputs == g.channels && g.is_valid());
    assert!(data.len() == input.blocked_len() && output.len() == out.blocked_len());
    let per_block = g.kernel_h * g.kernel_w * BLOCK;
    assert!(taps.len() == input.blocks() * per_block && bias.len() == input.blocks() * BLOCK);
    let (plane, out_plane) = (input.pixels() * BLOCK, out.pixels() * BLOCK);
    for b in 0..input.blocks() {
        x86_64_avx2::depthwise_block(
            isa,
            g,
            &data[b * plane..][..plane],
            &taps[b * per_block..][..per_block],
            &bias[b * BLOCK..][..BLOCK],
            clip,
            &mut output[b * out_plane..][..out_plane],
        );
    }
}

/// The node: inputs are the blocked data, the taps and bias as [`super::pack_taps`] lays
/// them out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BlockedDepthwise {
    pub geometry: Geometry,
    /// The clamp applied as outputs are stored (a fused ReLU6).
    pub clip: Clip,
    pub isa: Avx2Fma,
}

impl Op for BlockedDepthwise {
    fn name(&self) -> StaticName {
        "FlowersBlockedDepthwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.geometry)])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for BlockedDepthwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = output_planes(&self.geometry).blocked_shape();
        // SAFETY: `convolve` writes every output: every pixel of every block (its asserts
        // match `output` to the geometry).
        unsafe {
            eval_f32(inputs, &shape, |data, taps, bias, output| {
                let clip = self.clip.bounds();
                convolve(self.isa, &self.geometry, clip, data, taps, bias, output)
            })
        }
    }
}

impl TypedOp for BlockedDepthwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 3,
            "a convolution takes data, kernel and bias"
        );
        Ok(tvec!(f32::fact(
            output_planes(&self.geometry).blocked_shape()
        )))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let g = &self.geometry;
        let fmas = g.channels * g.out_h * g.out_w * g.kernel_h * g.kernel_w;
        Ok(tvec!((Cost::FMA(f32::datum_type()), fmas.into())))
    }

    as_op!();
}
