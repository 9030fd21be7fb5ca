//! The pointwise (1x1) convolution on blocked activations.
//!
//! Output block `o` of pixel `p` is `clamp(bias + sum over input channels i of
//! weights[o][i] x input[i][p])`: each input channel of a pixel is broadcast to a register
//! and multiplied by the eight weights of an output block. A tile keeps a few output blocks
//! of several pixels in registers ([`Isa::pointwise_group`]); the weights are packed
//! when the plan is built, a group of output blocks at a time, input-major, so the tile
//! reads them as one stream, and the pixels are read where they are, no packing, no
//! transposes.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::{groups, portable, Isa, Planes, BLOCK};
use crate::backbone::accel::op::{eval_f32, Clip};

/// One pointwise layer on blocked activations, fixed when the plan is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Shape {
    /// The input image (its channels are the layer's inputs).
    pub input: Planes,
    pub outputs: usize,
}

impl Shape {
    pub fn output(&self) -> Planes {
        Planes {
            channels: self.outputs,
            ..self.input
        }
    }

    /// Input channels the weights are laid out for: whole blocks.
    fn padded_inputs(&self) -> usize {
        self.input.blocks() * BLOCK
    }

    pub fn weights_len(&self) -> usize {
        self.output().blocks() * BLOCK * self.padded_inputs()
    }

    /// The groups of output blocks the tiles of `isa` take, as `(first block, count)`.
    pub fn groups(&self, isa: Isa) -> Vec<(usize, usize)> {
        groups(self.output().blocks(), isa.pointwise_group())
    }
}

/// Packs `kernel` (`outputs x inputs`, row-major) and `bias` for [`convolve`] with `isa`
/// (see [`pack_grouped`]); the plan packs with [`pack_owned`], which ends the same.
#[cfg(test)]
pub(crate) fn pack(
    shape: &Shape,
    isa: Isa,
    kernel: &[f32],
    bias: &[f32],
) -> TractResult<(Tensor, Tensor)> {
    let (inputs, outputs) = (shape.input.channels, shape.outputs);
    super::pack_grouped(
        kernel,
        bias,
        (outputs, inputs),
        shape.padded_inputs(),
        isa.pointwise_group(),
    )
}

/// [`pack`] for a kernel tensor whose memory the packed weights may take over (see
/// [`super::pack_grouped_owned`]).
pub(crate) fn pack_owned(
    shape: &Shape,
    isa: Isa,
    kernel: Arc<Tensor>,
    bias: &[f32],
) -> TractResult<(Tensor, Tensor)> {
    let (inputs, outputs) = (shape.input.channels, shape.outputs);
    super::pack_grouped_owned(
        kernel,
        bias,
        (outputs, inputs),
        shape.padded_inputs(),
        isa.pointwise_group(),
    )
}

/// Runs the layer: `data` and `output` blocked, `weights` and `bias` as [`pack`] lays them
/// out for `isa`. Slices of the wrong length panic here, before any kernel runs.
pub(crate) fn convolve(
    isa: Isa,
    shape: &Shape,
    clip: (f32, f32),
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    let out = shape.output();
    assert!(data.len() == shape.input.blocked_len() && output.len() == out.blocked_len());
    assert!(weights.len() == shape.weights_len() && bias.len() == out.blocks() * BLOCK);
    let (pixels, padded_inputs) = (shape.input.pixels(), shape.padded_inputs());
    let groups = shape.groups(isa);
    let run = |groups: &[(usize, usize)], output: &mut [f32]| {
        // `output` starts at the first group's blocks.
        let start = groups.first().map_or(0, |&(first, _)| first);
        for &(first, count) in groups {
            let weights =
                &weights[first * BLOCK * padded_inputs..][..count * BLOCK * padded_inputs];
            let bias = &bias[first * BLOCK..][..count * BLOCK];
            let output = &mut output[(first - start) * pixels * BLOCK..][..count * pixels * BLOCK];
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2(isa) => super::x86_64_avx2::pointwise_group(
                    isa, pixels, data, weights, bias, clip, output,
                ),
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512(isa) => super::x86_64_avx512::pointwise_group(
                    isa, pixels, data, weights, bias, clip, output,
                ),
                _ => portable::pointwise_group(pixels, data, weights, bias, clip, output),
            }
        }
    };
    let multiply_adds = pixels * padded_inputs * out.blocks() * BLOCK;
    if groups.len() < 2 || !worth_a_second_thread(multiply_adds) {
        return run(&groups, output);
    }
    // Groups write disjoint blocks of the output, each the same bits whoever runs it.
    let (mine, theirs) = groups.split_at(groups.len() / 2);
    let (my_output, their_output) = output.split_at_mut(theirs[0].0 * pixels * BLOCK);
    rayon::join(|| run(mine, my_output), || run(theirs, their_output));
}

/// Multiply-adds from which a layer offers half of its groups to the pool it runs on: a
/// one-image `label` leaves the pool's other threads idle, and waking one costs
/// microseconds against the milliseconds of a layer this size. Off a pool (a caller's own
/// thread, the one-thread speed measurements) or on a pool of one, the layer stays whole;
/// on a pool busy with other images the offered half is usually run by the same thread.
const SPLIT_FROM: usize = 1 << 20;

pub(super) fn worth_a_second_thread(multiply_adds: usize) -> bool {
    multiply_adds >= SPLIT_FROM
        && rayon::current_thread_index().is_some()
        && rayon::current_num_threads() > 1
}

/// The node: inputs are the blocked data, the weights and bias as [`pack`] lays them out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct BlockedPointwise {
    pub shape: Shape,
    /// The clamp applied as outputs are stored (a fused ReLU6).
    pub clip: Clip,
    pub isa: Isa,
}

impl Op for BlockedPointwise {
    fn name(&self) -> StaticName {
        "FlowersBlockedPointwise".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.shape)])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for BlockedPointwise {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = self.shape.output().blocked_shape();
        // SAFETY: `convolve` writes every output: each group's blocks over every pixel (its
        // asserts match `output` to the shape).
        unsafe {
            eval_f32(inputs, &shape, |data, weights, bias, output| {
                let clip = self.clip.bounds();
                convolve(self.isa, &self.shape, clip, data, weights, bias, output)
            })
        }
    }
}

impl TypedOp for BlockedPointwise {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 3,
            "a pointwise convolution takes data, packed weights and bias"
        );
        Ok(tvec!(f32::fact(self.shape.output().blocked_shape())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let s = &self.shape;
        let fmas = s.outputs * s.input.channels * s.input.pixels();
        Ok(tvec!((Cost::FMA(f32::datum_type()), fmas.into())))
    }

    as_op!();
}
