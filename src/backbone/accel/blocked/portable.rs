//! The blocked ops' kernels in plain Rust, over the same layouts as the vector kernels:
//! the reference those are tested against, and the path for CPUs without AVX2 when
//! `FLOWERS_KERNELS=plain` asks for it. A block is a `[f32; 8]`, which the compiler turns
//! into vector operations of whatever width the baseline instruction set has. They are
//! not the default anywhere: where there is no AVX2, tract's own kernels are faster (see
//! [`crate::backbone::accel::cpu::Kernels`]).

use super::BLOCK;
use crate::backbone::accel::layer::Geometry;

/// Eight channels of one pixel.
type Block = [f32; BLOCK];

/// Output blocks a pointwise or stem group may have, here as in the vector kernels.
const MAX_GROUP: usize = 4;

/// Pixels a pointwise tile takes: each weight read is used for that many pixels.
const PIXELS: usize = 4;

/// `block` clamped to `(low, high)`, stored at `dst`.
fn store(dst: &mut [f32], block: &Block, (low, high): (f32, f32)) {
    for (d, v) in dst[..BLOCK].iter_mut().zip(block) {
        *d = v.max(low).min(high);
    }
}

/// The blocks of a group's bias (`count x 8`).
fn bias_blocks(bias: &[f32]) -> [Block; MAX_GROUP] {
    let mut blocks = [[0f32; BLOCK]; MAX_GROUP];
    for (block, b) in blocks.iter_mut().zip(bias.chunks_exact(BLOCK)) {
        block.copy_from_slice(b);
    }
    blocks
}

/// One group of output blocks of a pointwise layer over every pixel, with the layouts of
/// `x86_64_avx2::pointwise_group`: `data` `inputs / 8 x pixels x 8`, `weights` `inputs x
/// count x 8`, `bias` `count x 8`, `output` `count x pixels x 8`, `count` at most 4.
pub(super) fn pointwise_group(
    pixels: usize,
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    clip: (f32, f32),
    output: &mut [f32],
) {
    let count = bias.len() / BLOCK;
    assert!((1..=MAX_GROUP).contains(&count) && bias.len() == count * BLOCK);
    let inputs = weights.len() / (count * BLOCK);
    assert!(weights.len() == inputs * count * BLOCK && inputs.is_multiple_of(BLOCK));
    assert!(data.len() == inputs * pixels && output.len() == count * pixels * BLOCK);
    let step = pixels * BLOCK;
    let bias = bias_blocks(bias);
    for first in (0..pixels).step_by(PIXELS) {
        let tile = PIXELS.min(pixels - first);
        let mut acc = [bias; PIXELS];
        for (i, w) in weights.chunks_exact(count * BLOCK).enumerate() {
            let src = &data[(i / BLOCK) * step + first * BLOCK + i % BLOCK..];
            for (n, acc) in acc[..tile].iter_mut().enumerate() {
                let x = src[n * BLOCK];
                for (a, w) in acc.iter_mut().zip(w.chunks_exact(BLOCK)) {
                    for (a, w) in a.iter_mut().zip(w) {
                        *a += w * x;
                    }
                }
            }
        }
        for (n, acc) in acc[..tile].iter().enumerate() {
            for (o, block) in acc[..count].iter().enumerate() {
                store(&mut output[o * step + (first + n) * BLOCK..], block, clip);
            }
        }
    }
}

/// One block of a depthwise layer, with the layouts of `x86_64_avx2::depthwise_block`:
/// `data` `H x W x 8`, `taps` `KH x KW x 8`, `bias` 8, `output` `OH x OW x 8`; taps in
/// the padding are skipped.
pub(super) fn depthwise_block(
    g: &Geometry,
    data: &[f32],
    taps: &[f32],
    bias: &[f32],
    clip: (f32, f32),
    output: &mut [f32],
) {
    assert!(g.is_valid() && !g.dense);
    assert!(data.len() == g.height * g.width * BLOCK && bias.len() == BLOCK);
    assert!(taps.len() == g.kernel_h * g.kernel_w * BLOCK);
    assert!(output.len() == g.out_h * g.out_w * BLOCK);
    let bias: Block = bias.try_into().expect("one block of bias");
    for (o, dst) in output.chunks_exact_mut(BLOCK).enumerate() {
        let (oy, ox) = (o / g.out_w, o % g.out_w);
        let mut acc = bias;
        for ky in 0..g.kernel_h {
            let Some(iy) = (oy * g.stride_h + ky).checked_sub(g.pad_top) else {
                continue;
            };
            if iy >= g.height {
                continue;
            }
            for kx in 0..g.kernel_w {
                let Some(ix) = (ox * g.stride_w + kx).checked_sub(g.pad_left) else {
                    continue;
                };
                if ix >= g.width {
                    continue;
                }
                let x = &data[(iy * g.width + ix) * BLOCK..][..BLOCK];
                let w = &taps[(ky * g.kernel_w + kx) * BLOCK..][..BLOCK];
                for ((a, x), w) in acc.iter_mut().zip(x).zip(w) {
                    *a += x * w;
                }
            }
        }
        store(dst, &acc, clip);
    }
}

/// One group of output blocks of a dense convolution on few input planes (the stem), with
/// the layouts of `x86_64_avx2::dense_group`: `padded` the input planes zero-padded to
/// `rows x cols`, `weights` `taps x count x 8` (taps in OIHW order), `bias` `count x 8`,
/// `output` `count x OH x OW x 8`.
pub(super) fn dense_group(
    g: &Geometry,
    (scratch, (rows, cols)): (&[f32], (usize, usize)),
    weights: &[f32],
    bias: &[f32],
    clip: (f32, f32),
    output: &mut [f32],
) {
    let (_, count) = super::Dense::checked(g, (scratch, (rows, cols)), weights, bias, output);
    let plane = g.out_h * g.out_w * BLOCK;
    let bias = bias_blocks(bias);
    for oy in 0..g.out_h {
        for ox in 0..g.out_w {
            let mut acc = bias;
            let mut w = weights.chunks_exact(count * BLOCK);
            for input in 0..g.inputs {
                for ky in 0..g.kernel_h {
                    let row = (input * rows + oy * g.stride_h + ky) * cols + ox * g.stride_w;
                    for &x in &scratch[row..][..g.kernel_w] {
                        let w = w.next().expect("a weight per tap");
                        for (a, w) in acc.iter_mut().zip(w.chunks_exact(BLOCK)) {
                            for (a, w) in a.iter_mut().zip(w) {
                                *a += w * x;
                            }
                        }
                    }
                }
            }
            let at = (oy * g.out_w + ox) * BLOCK;
            for (o, block) in acc[..count].iter().enumerate() {
                store(&mut output[o * plane + at..], block, clip);
            }
        }
    }
}
