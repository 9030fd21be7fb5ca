//! The stem on blocked activations: a dense convolution reading a few channel-first planes
//! (RGB) and writing blocks, so the network is blocked from its first layer on.
//!
//! The planes are copied once into a zero-padded scratch, so every tap reads inside it;
//! each output pixel then broadcasts its taps' inputs and multiplies them by the weights of
//! four output blocks at a time.

use tract_onnx::prelude::*;

use super::{groups, output_planes, portable, Isa, BLOCK, DENSE_GROUP};
use crate::backbone::accel::layer::Geometry;

/// Taps of one output channel: every input plane's `KH x KW`.
pub(crate) fn taps(g: &Geometry) -> usize {
    g.inputs * g.kernel_h * g.kernel_w
}

/// Rows and columns of the padded input some output reads.
fn padded(g: &Geometry) -> (usize, usize) {
    (
        (g.out_h - 1) * g.stride_h + g.kernel_h,
        (g.out_w - 1) * g.stride_w + g.kernel_w,
    )
}

/// Copies the input planes into `scratch` (`inputs x rows x cols`, zeroed), shifted by
/// the padding; what no output reads is left out.
fn fill(g: &Geometry, data: &[f32], (rows, cols): (usize, usize), scratch: &mut [f32]) {
    let width = g.width.min(cols.saturating_sub(g.pad_left));
    for (plane, padded) in data
        .chunks_exact(g.height * g.width)
        .zip(scratch.chunks_exact_mut(rows * cols))
    {
        for (y, row) in plane.chunks_exact(g.width).enumerate() {
            let start = (y + g.pad_top) * cols;
            let Some(padded) = padded.get_mut(start..start + cols) else {
                break;
            };
            padded[g.pad_left..][..width].copy_from_slice(&row[..width]);
        }
    }
}

/// Lays the kernel (`channels x taps`, OIHW) and bias out for [`convolve`].
pub(crate) fn pack(g: &Geometry, kernel: &[f32], bias: &[f32]) -> TractResult<(Tensor, Tensor)> {
    let taps = taps(g);
    super::pack_grouped(kernel, bias, (g.channels, taps), taps, DENSE_GROUP)
}

/// Runs the layer: `data` channel-first (`inputs x H x W`), `weights` and `bias` as
/// [`pack`] lays them out, `output` blocked. Slices of
/// the wrong length panic here, before any kernel runs.
pub(crate) fn convolve(
    isa: Isa,
    g: &Geometry,
    clip: (f32, f32),
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    let out = output_planes(g);
    assert!(g.dense && g.is_valid() && data.len() == g.inputs * g.height * g.width);
    assert!(weights.len() == out.blocks() * BLOCK * taps(g) && bias.len() == out.blocks() * BLOCK);
    assert!(output.len() == out.blocked_len());
    let (rows, cols) = padded(g);
    SCRATCH.with_borrow_mut(|scratch| {
        // Zeroed again each time: the padding must be zero, and the buffer may have held
        // another geometry's planes.
        scratch.clear();
        scratch.resize(g.inputs * rows * cols, 0.0);
        fill(g, data, (rows, cols), scratch);
        let (per_block, plane) = (taps(g) * BLOCK, out.pixels() * BLOCK);
        for (first, count) in groups(out.blocks(), DENSE_GROUP) {
            let weights = &weights[first * per_block..][..count * per_block];
            let bias = &bias[first * BLOCK..][..count * BLOCK];
            let output = &mut output[first * plane..][..count * plane];
            let padded = (scratch.as_slice(), (rows, cols));
            match isa {
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2(isa) => {
                    super::x86_64_avx2::dense_group(isa, g, padded, weights, bias, clip, output)
                }
                #[cfg(target_arch = "x86_64")]
                Isa::Avx512(isa) => {
                    super::x86_64_avx512::dense_group(isa, g, padded, weights, bias, clip, output)
                }
                _ => portable::dense_group(g, padded, weights, bias, clip, output),
            }
        }
    });
}

thread_local! {
    /// The padded planes, kept from one image to the next: a fresh allocation of this size
    /// comes from the system as new pages, each faulted in on first touch.
    static SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}
