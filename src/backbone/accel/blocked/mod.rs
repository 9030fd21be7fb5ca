//! flowers' ops on activations kept in blocks of eight channels, from the stem to the last
//! layer.
//!
//! Why: ops on channel-first planes, as tract keeps them, must pack each pointwise layer's
//! pixels into panels, transpose small images' tiles on their way out, read up to a
//! hundred and more input planes side by side, and split each depthwise plane into column
//! phases. All of it is moving data, not computing; flowers' earlier channel-first ops
//! lost to these (BENCHMARKS.md) and are gone. With the channels in blocks of eight, an
//! AVX2 register holds eight channels of one pixel wherever it is in the image: a
//! pointwise layer broadcasts one input channel of a pixel and multiplies it by eight
//! output channels' weights; a depthwise tap is one multiply for eight channels, whatever
//! the stride; every store is a whole vector. onnxruntime keeps the same layout ("NCHWc").
//!
//! The kernels, by [`Isa`]: `x86_64_avx2.rs` (a `__m256` is a block of one pixel),
//! `x86_64_avx512.rs` (a `__m512` is two blocks: of two pixels side by side in the
//! depthwise layers, of two output blocks of one pixel in the stem and the pointwise
//! layers), and `portable.rs`, plain Rust, the reference the others are tested against.
//! The layout is the same on every path, so the graph is too: blocks of eight rather than
//! sixteen channels cost the 512-bit kernels a shuffle where they read or write two
//! blocks at once, and spare MobileNet's narrow layers (8, 16, 24 channels) the padding.
//!
//! Layout: `C` channels of an `H x W` image become `[ceil(C / 8), H, W, 8]` (with the
//! leading batch axis of 1 when the model has one): channel `c` of pixel `(y, x)` is at
//! `((c / 8 * H + y) * W + x) * 8 + c % 8`. The lanes past `C` in the last block are
//! finite (computed from zero weights, or zero), never read as values.
//!
//! The graph: [`super::apply`] swaps the stem (channel-first RGB in, blocks out), every
//! depthwise and pointwise layer, and the residual additions between them (tract's own
//! `Add`, which is elementwise and indifferent to the layout); [`FromBlocked`] turns the
//! blocks back into planes wherever anything else reads them (the final pooling), and
//! [`ToBlocked`] turns planes into blocks wherever a blocked op reads a layer that is not
//! one.

mod dense;
mod depthwise;
mod direct;
mod pointwise;
mod portable;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86_64_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_64_avx512;

use rayon::prelude::*;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;

use super::cpu::{Avx2Fma, Avx512};
use super::layer::Geometry;

pub(crate) use dense::pack as pack_dense;
pub(crate) use direct::BlockedDirectConv;
pub(crate) use pointwise::{
    pack_owned as pack_pointwise, BlockedPointwise, Shape as PointwiseShape,
};

/// Channels per block: the lanes of an AVX2 vector, half those of an AVX-512 one.
pub(crate) const BLOCK: usize = 8;

/// The kernels a blocked op runs, fixed when the plan is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Isa {
    /// Plain Rust.
    Plain,
    Avx2(Avx2Fma),
    Avx512(Avx512),
}

impl Isa {
    /// Output blocks a pointwise tile takes at most, which the weights are packed for.
    /// AVX2: two blocks of six pixels keep twelve accumulators, and with the two blocks'
    /// weights and a broadcast input, 15 of the 16 registers; tiles of three and four
    /// blocks (of four and three pixels) need 16 and 17, and the compiler spilled them to
    /// the stack (BENCHMARKS.md). AVX-512: four blocks (two registers) of twelve pixels,
    /// 27 of the 32 registers.
    pub(crate) fn pointwise_group(self) -> usize {
        match self {
            Isa::Avx512(_) => 4,
            Isa::Plain | Isa::Avx2(_) => 2,
        }
    }

    /// Every path this CPU can run, for the tests.
    #[cfg(test)]
    pub(crate) fn supported() -> Vec<Isa> {
        let mut all = vec![Isa::Plain];
        all.extend(Avx2Fma::detect().map(Isa::Avx2));
        all.extend(Avx512::detect().map(Isa::Avx512));
        all
    }
}

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

/// The image a blocked tensor holds, and the channel-first shape it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Planes {
    /// Whether the channel-first tensor has a leading batch axis of 1.
    pub batched: bool,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl Planes {
    pub fn blocks(&self) -> usize {
        self.channels.div_ceil(BLOCK)
    }

    pub fn pixels(&self) -> usize {
        self.height * self.width
    }

    /// Floats in the blocked tensor.
    pub fn blocked_len(&self) -> usize {
        self.blocks() * self.pixels() * BLOCK
    }

    /// The channel-first shape, as tract's ops see it.
    pub fn planar_shape(&self) -> Vec<usize> {
        let mut shape = vec![self.channels, self.height, self.width];
        if self.batched {
            shape.insert(0, 1);
        }
        shape
    }

    /// The blocked shape flowers' ops exchange.
    pub fn blocked_shape(&self) -> Vec<usize> {
        let mut shape = vec![self.blocks(), self.height, self.width, BLOCK];
        if self.batched {
            shape.insert(0, 1);
        }
        shape
    }
}

/// The sizes and pointers of one group of a dense convolution (the stem), for the kernels
/// of every flavour: made only by [`Dense::checked`], so the kernels, which read and write
/// by these pointers without checks, rely on one statement of the layout.
#[derive(Clone, Copy)]
pub(super) struct Dense {
    pub g: Geometry,
    pub rows: usize,
    pub cols: usize,
    pub scratch: *const f32,
    pub weights: *const f32,
    pub bias: *const f32,
    pub output: *mut f32,
}

impl Dense {
    /// Checks the layouts of a dense group (`scratch` the input planes zero-padded to
    /// `rows x cols` each, `weights` `taps x count x 8`, `bias` `count x 8`, `output`
    /// `count x OH x OW x 8`, 1 to 4 output blocks) and returns the pointers with the count.
    pub(super) fn checked(
        g: &Geometry,
        (scratch, (rows, cols)): (&[f32], (usize, usize)),
        weights: &[f32],
        bias: &[f32],
        output: &mut [f32],
    ) -> (Dense, usize) {
        assert!(g.is_valid() && g.dense);
        let count = bias.len() / BLOCK;
        assert!((1..=4).contains(&count) && bias.len() == count * BLOCK);
        let taps = g.inputs * g.kernel_h * g.kernel_w;
        assert!(weights.len() == taps * count * BLOCK && scratch.len() == g.inputs * rows * cols);
        assert!(rows == (g.out_h - 1) * g.stride_h + g.kernel_h);
        assert!(cols == (g.out_w - 1) * g.stride_w + g.kernel_w);
        assert!(output.len() == count * g.out_h * g.out_w * BLOCK);
        let dense = Dense {
            g: *g,
            rows,
            cols,
            scratch: scratch.as_ptr(),
            weights: weights.as_ptr(),
            bias: bias.as_ptr(),
            output: output.as_mut_ptr(),
        };
        (dense, count)
    }
}

/// Lays channel-first planes into blocks ([`Planes`]); the lanes past the channels are
/// zero. Plain Rust: in the shared backbones nothing needs it (the stem writes blocks), so
/// it is the fallback for graphs where a blocked op reads some other op's output.
pub(crate) fn to_blocked(planes: &Planes, data: &[f32], blocked: &mut [f32]) {
    let pixels = planes.pixels();
    assert!(data.len() == planes.channels * pixels && blocked.len() == planes.blocked_len());
    blocked.fill(0.0);
    for (c, plane) in data.chunks_exact(pixels.max(1)).enumerate() {
        let block = &mut blocked[c / BLOCK * pixels * BLOCK..][..pixels * BLOCK];
        for (p, &value) in plane.iter().enumerate() {
            block[p * BLOCK + c % BLOCK] = value;
        }
    }
}

/// The inverse of [`to_blocked`]: the planes of the real channels.
pub(crate) fn from_blocked(planes: &Planes, blocked: &[f32], data: &mut [f32]) {
    let pixels = planes.pixels();
    assert!(data.len() == planes.channels * pixels && blocked.len() == planes.blocked_len());
    for (c, plane) in data.chunks_exact_mut(pixels.max(1)).enumerate() {
        let block = &blocked[c / BLOCK * pixels * BLOCK..][..pixels * BLOCK];
        for (p, value) in plane.iter_mut().enumerate() {
            *value = block[p * BLOCK + c % BLOCK];
        }
    }
}

/// Turns channel-first planes into blocks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ToBlocked(pub Planes);

/// Turns blocks back into channel-first planes, for the ops that are not flowers'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct FromBlocked(pub Planes);

/// The `Op`, `EvalOp` and `TypedOp` of a layout conversion: `$convert` from `$from` to
/// `$to` shapes.
macro_rules! conversion_op {
    ($op:ident, $name:literal, $convert:ident, $from:ident, $to:ident) => {
        impl Op for $op {
            fn name(&self) -> StaticName {
                $name.into()
            }

            fn info(&self) -> TractResult<Vec<String>> {
                Ok(vec![format!("{:?}", self.0)])
            }

            op_as_typed_op!();
        }

        impl EvalOp for $op {
            op_out_of_plan!();

            fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
                let input = args_1!(inputs);
                let input = input.try_as_plain_ram()?;
                let mut output = Tensor::zero::<f32>(&self.0.$to())?;
                $convert(
                    &self.0,
                    input.as_slice::<f32>()?,
                    output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
                );
                Ok(tvec!(output.into_tvalue()))
            }
        }

        impl TypedOp for $op {
            fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
                ensure!(
                    inputs.len() == 1 && inputs[0].shape.as_concrete() == Some(&self.0.$from()),
                    "{} expects {:?}",
                    $name,
                    self.0.$from()
                );
                Ok(tvec!(f32::fact(self.0.$to())))
            }

            as_op!();
        }
    };
}

conversion_op!(
    ToBlocked,
    "FlowersToBlocked",
    to_blocked,
    planar_shape,
    blocked_shape
);
conversion_op!(
    FromBlocked,
    "FlowersFromBlocked",
    from_blocked,
    blocked_shape,
    planar_shape
);

/// Lays a convolution's weights for the blocked kernels: `kernel` is `channels x taps`
/// (OIHW with the input and spatial axes flattened), the result `[blocks][taps][8]`, the
/// lanes past `channels` zero; the bias is padded to whole blocks.
pub(crate) fn pack_taps(
    kernel: &[f32],
    bias: &[f32],
    channels: usize,
    taps: usize,
) -> TractResult<(Tensor, Tensor)> {
    ensure!(kernel.len() == channels * taps && bias.len() == channels);
    let blocks = channels.div_ceil(BLOCK);
    let mut packed = vec![0f32; blocks * taps * BLOCK];
    for (c, row) in kernel.chunks_exact(taps.max(1)).enumerate() {
        for (t, &w) in row.iter().enumerate() {
            packed[((c / BLOCK) * taps + t) * BLOCK + c % BLOCK] = w;
        }
    }
    let mut padded = vec![0f32; blocks * BLOCK];
    padded[..channels].copy_from_slice(bias);
    Ok((
        tensor1(&packed).into_shape(&[blocks, taps, BLOCK])?,
        tensor1(&padded),
    ))
}

/// Output blocks a stem tile takes, on every path: with AVX2, four blocks of three pixels.
/// The stem reads its input once per group, with broadcasts at the stride's step, and that
/// read costs more than the spill (BENCHMARKS.md). With AVX-512, the same four blocks are
/// two registers, of twelve pixels.
pub(crate) const DENSE_GROUP: usize = 4;

/// The output blocks each tile takes, in order, as `(first block, count)`: groups of `max`
/// blocks, the remainder split so no group has a single block when it can be avoided (a
/// single block keeps few accumulators busy per weight loaded).
pub(crate) fn groups(blocks: usize, max: usize) -> Vec<(usize, usize)> {
    let max = max.max(1);
    let mut groups = Vec::new();
    let mut first = 0;
    while first < blocks {
        let left = blocks - first;
        let count = if left == max + 1 && max > 2 {
            max - 1
        } else {
            left.min(max)
        };
        groups.push((first, count));
        first += count;
    }
    groups
}

/// Writes `matrix` (rows of `columns` values) transposed into `out` (rows of `stride`
/// values, `stride` at least `matrix`'s row count), in squares of sixteen: each square
/// reads sixteen whole cache lines and writes sixteen. Row by row instead, the reads or the
/// writes go down a column whose elements lie a power of two apart and all fall in one
/// set of the first-level cache.
fn transpose(matrix: &[f32], columns: usize, out: &mut [f32], stride: usize) {
    const SQUARE: usize = 16;
    let rows = matrix.len() / columns;
    for row0 in (0..rows).step_by(SQUARE) {
        for column0 in (0..columns).step_by(SQUARE) {
            let width = SQUARE.min(columns - column0);
            for row in row0..rows.min(row0 + SQUARE) {
                let values = &matrix[row * columns + column0..][..width];
                for (i, &value) in values.iter().enumerate() {
                    out[(column0 + i) * stride + row] = value;
                }
            }
        }
    }
}

/// Lays `kernel` (`outputs x inputs`, row-major) out for the tiles of [`groups`] of at most
/// `max` blocks: the group starting at block `b` holds `[input][block of the group][8]`
/// from `b * 8 * rows` on, `rows >= inputs` inputs per output (the rows past `inputs`
/// zero, as are the channels past `outputs`); the bias is padded to whole blocks.
pub(crate) fn pack_grouped(
    kernel: &[f32],
    bias: &[f32],
    (outputs, inputs): (usize, usize),
    rows: usize,
    max: usize,
) -> TractResult<(Tensor, Tensor)> {
    ensure!(kernel.len() == inputs * outputs && bias.len() == outputs && rows >= inputs);
    let blocks = outputs.div_ceil(BLOCK);
    // Packed straight into the tensor the plan keeps: the weights are the graph's bulk,
    // and every copy of them is page faults on a one-image `label`.
    let mut tensor = Tensor::zero::<f32>(&[blocks * BLOCK * rows])?;
    // The groups are independent, and on a one-image `label` the other cores are idle
    // while the graph is prepared; on a pool's worker they are shared out with its peers.
    for_each_group(&mut tensor, (blocks, max, rows), |first, count, group| {
        let width = count * BLOCK;
        let valid = width.min(outputs - first * BLOCK);
        let rows = &kernel[first * BLOCK * inputs..][..valid * inputs];
        transpose(rows, inputs, group, width);
    })?;
    Ok((tensor, padded_bias(bias, blocks)))
}

/// [`pack_grouped`] for a kernel tensor (`outputs x inputs` values) it may take over: when
/// this is its only owner and the layout needs no padding (whole blocks of outputs,
/// `rows == inputs`), each group of the packed layout occupies the same span as the
/// group's outputs in the kernel, so the kernel's own memory becomes the packed weights,
/// each group transposed through a scratch buffer of its size. The weights are the
/// graph's bulk, and memory the process has not touched yet costs more than the copy.
pub(crate) fn pack_grouped_owned(
    kernel: Arc<Tensor>,
    bias: &[f32],
    (outputs, inputs): (usize, usize),
    rows: usize,
    max: usize,
) -> TractResult<(Tensor, Tensor)> {
    let blocks = outputs.div_ceil(BLOCK);
    let unpadded = rows == inputs && blocks * BLOCK == outputs;
    let copy = |kernel: &Tensor| {
        let values = kernel.try_as_plain_ram()?.as_slice::<f32>()?;
        pack_grouped(values, bias, (outputs, inputs), rows, max)
    };
    let kernel = match Arc::try_unwrap(kernel) {
        Ok(owned) if unpadded => owned,
        Ok(owned) => return copy(&owned),
        Err(shared) => return copy(&shared),
    };
    ensure!(kernel.len() == inputs * outputs && bias.len() == outputs);
    let mut tensor = kernel.into_shape(&[outputs * inputs])?;
    // Each of the pool's workers gets a scratch buffer of its own (a clone of this one).
    let mut scratch = Vec::new();
    for_each_group(&mut tensor, (blocks, max, rows), move |_, count, group| {
        scratch.clear();
        scratch.extend_from_slice(group);
        transpose(&scratch, inputs, group, count * BLOCK);
    })?;
    Ok((tensor, padded_bias(bias, blocks)))
}

/// Runs `pack(first block, count, span)` on the span of `packed` of each of [`groups`] of
/// at most `max` of its `blocks` (`rows` values per output), on the pool.
fn for_each_group(
    packed: &mut Tensor,
    (blocks, max, rows): (usize, usize, usize),
    pack: impl FnMut(usize, usize, &mut [f32]) + Clone + Send,
) -> TractResult<()> {
    let mut plain = packed.try_as_plain_ram_mut()?;
    let mut rest = plain.as_slice_mut::<f32>()?;
    let mut spans = Vec::new();
    for (first, count) in groups(blocks, max) {
        let (span, after) = rest.split_at_mut(count * BLOCK * rows);
        spans.push((first, count, span));
        rest = after;
    }
    spans
        .into_par_iter()
        .for_each_with(pack, |pack, (first, count, span)| pack(first, count, span));
    Ok(())
}

/// `bias` with zeros up to whole blocks.
fn padded_bias(bias: &[f32], blocks: usize) -> Tensor {
    let mut padded = vec![0f32; blocks * BLOCK];
    padded[..bias.len()].copy_from_slice(bias);
    tensor1(&padded)
}
