//! What flowers' two convolution ops share: the fused clamp and the unpacking of their
//! inputs into plain `f32` slices.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

/// The bounds a fused clamp (ReLU6, or ReLU) puts on a layer's outputs, kept as `f32` bits
/// so that the ops stay `Eq` and `Hash` as tract wants; the default is no clamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub(crate) struct Clip(Option<[u32; 2]>);

impl Clip {
    pub(crate) fn new(low: f32, high: f32) -> Clip {
        Clip(Some([low.to_bits(), high.to_bits()]))
    }

    /// `(low, high)`; infinite when nothing was fused.
    pub(crate) fn bounds(self) -> (f32, f32) {
        match self.0 {
            Some([low, high]) => (f32::from_bits(low), f32::from_bits(high)),
            None => (f32::NEG_INFINITY, f32::INFINITY),
        }
    }
}

/// `eval` of flowers' ops, which all take data, weights and bias: hands `compute` the three
/// as `f32` slices and a new output of `shape`, left uninitialised because zeroing every
/// layer's output first would be a pass over memory for nothing.
///
/// # Safety
/// `compute` must write every element of the output before returning (or panic).
pub(crate) unsafe fn eval_f32(
    inputs: TVec<TValue>,
    shape: &[usize],
    compute: impl FnOnce(&[f32], &[f32], &[f32], &mut [f32]),
) -> TractResult<TVec<TValue>> {
    let (data, weights, bias) = args_3!(inputs);
    let data = data.try_as_plain_ram()?;
    let weights = weights.try_as_plain_ram()?;
    let bias = bias.try_as_plain_ram()?;
    // SAFETY: the values are read only after `compute` has written every one of them, by
    // this function's contract.
    let mut output = unsafe { Tensor::uninitialized::<f32>(shape)? };
    compute(
        data.as_slice::<f32>()?,
        weights.as_slice::<f32>()?,
        bias.as_slice::<f32>()?,
        output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
    );
    Ok(tvec!(output.into_tvalue()))
}
