//! The node for the stem ([`super::dense`]) and the depthwise layers ([`super::depthwise`]),
//! the two convolutions with a geometry of their own (kernel, stride, padding): the tract
//! glue, apart from the kernels.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::{dense, depthwise, output_planes, Isa};
use crate::backbone::accel::layer::Geometry;
use crate::backbone::accel::op::{eval_f32, Clip};

/// The node: inputs are the data (channel-first planes for the stem, blocks for a
/// depthwise layer), the weights and bias as [`dense::pack`] or [`super::pack_taps`] lays
/// them out; the output is blocked.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BlockedDirectConv {
    pub geometry: Geometry,
    /// The clamp applied as outputs are stored (a fused ReLU6).
    pub clip: Clip,
    pub isa: Isa,
}

impl Op for BlockedDirectConv {
    fn name(&self) -> StaticName {
        "FlowersBlockedDirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.geometry)])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for BlockedDirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = output_planes(&self.geometry).blocked_shape();
        let convolve = match self.geometry.dense {
            true => dense::convolve,
            false => depthwise::convolve,
        };
        // SAFETY: both `convolve`s write every output: every pixel of every block (their
        // asserts match `output` to the geometry).
        unsafe {
            eval_f32(inputs, &shape, |data, weights, bias, output| {
                let clip = self.clip.bounds();
                convolve(self.isa, &self.geometry, clip, data, weights, bias, output)
            })
        }
    }
}

impl TypedOp for BlockedDirectConv {
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
        let planes = if g.dense { g.inputs } else { 1 };
        let fmas = g.channels * g.out_h * g.out_w * g.kernel_h * g.kernel_w * planes;
        Ok(tvec!((Cost::FMA(f32::datum_type()), fmas.into())))
    }

    as_op!();
}
