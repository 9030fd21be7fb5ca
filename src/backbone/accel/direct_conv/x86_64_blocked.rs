//! Depthwise layers computed eight channels at a time, lanes along channels, with AVX2 +
//! FMA.
//!
//! Why: on the small planes of a network's later layers (14x14, 7x7) the row kernels of
//! `x86_64_avx2.rs` spend most of each vector on a row's tail and their time on per-row
//! overhead, as each output row is only 7 or 14 wide. With the lanes along channels, every
//! vector is full whatever the plane's width, every tap is one FMA for eight channels, and
//! the padding is laid out once per block of eight channels.
//!
//! How: the eight planes of a block are transposed (8 x 8 at a time) into a zero-padded
//! scratch of `[row][column][8 channels]`; each output pixel is then `clamp(bias + sum of
//! tap vectors x input vectors)`, four pixels at a time; the block's outputs are transposed
//! back into the eight channel-first output planes. A last, partial block takes the
//! scalar transposes, its missing channels computed on zeros and never written out.

use std::arch::x86_64::*;

use super::Geometry;
use crate::backbone::accel::cpu::Avx2Fma;
use crate::backbone::accel::x86_64_transpose::transpose8;

/// Channels per block: the lanes of an AVX2 vector.
const LANES: usize = 8;

/// Output pixels computed together: independent accumulators for the FMA latency.
const PIXELS: usize = 4;

/// The whole depthwise layer: `data` `channels x H x W`, `kernel` `channels x KH x KW`,
/// `output` `channels x OH x OW`, clamped to `(low, high)`.
///
/// Panics, before any vector code runs, unless `g` is a valid depthwise geometry and the
/// slices have its sizes.
pub(super) fn depthwise(
    isa: Avx2Fma,
    g: &Geometry,
    clip: (f32, f32),
    data: &[f32],
    kernel: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    let _ = isa;
    assert!(g.is_valid() && !g.dense && g.inputs == g.channels);
    let (plane, out_plane, taps) = (
        g.height * g.width,
        g.out_h * g.out_w,
        g.kernel_h * g.kernel_w,
    );
    assert!(data.len() == g.channels * plane && kernel.len() == g.channels * taps);
    assert!(bias.len() == g.channels && output.len() == g.channels * out_plane);
    let (rows, cols) = (g.rows(), padded_cols(g));
    let mut scratch = vec![0f32; rows * cols * LANES];
    let mut outputs = vec![0f32; out_plane * LANES];
    let mut block_taps = vec![0f32; taps * LANES];
    for first in (0..g.channels).step_by(LANES) {
        let count = LANES.min(g.channels - first);
        let mut block_bias = [0f32; LANES];
        for lane in 0..count {
            block_bias[lane] = bias[first + lane];
            for t in 0..taps {
                block_taps[t * LANES + lane] = kernel[(first + lane) * taps + t];
            }
        }
        let planes = &data[first * plane..][..count * plane];
        let out = &mut output[first * out_plane..][..count * out_plane];
        // SAFETY: the token exists only on CPUs with AVX2 and FMA; each function checks
        // the bounds it reads and writes by (see their contracts).
        unsafe {
            fill(g, planes, count, &mut scratch);
            match (g.kernel_h, g.kernel_w) {
                (3, 3) => pixels::<3>(g, &scratch, &block_taps, &block_bias, clip, &mut outputs),
                (5, 5) => pixels::<5>(g, &scratch, &block_taps, &block_bias, clip, &mut outputs),
                _ => pixels::<0>(g, &scratch, &block_taps, &block_bias, clip, &mut outputs),
            }
            drain(&outputs, count, out_plane, out);
        }
    }
}

/// Padded columns actually read by some output.
fn padded_cols(g: &Geometry) -> usize {
    (g.out_w - 1) * g.stride_w + g.kernel_w
}

/// Lays `count` channel planes (`count x H x W`) into the interior of `scratch`
/// (`rows x cols x 8`), channel `l` in lane `l`; the padding is never written, so it stays
/// zero from the first fill on, and lanes past `count` keep what they held. Eight
/// consecutive pixels of the planes, wherever rows break among them, are one transpose.
///
/// # Safety
/// The CPU must support AVX2; `scratch` must be `rows x cols x 8` for `g` (checked here).
#[target_feature(enable = "avx2,fma")]
unsafe fn fill(g: &Geometry, planes: &[f32], count: usize, scratch: &mut [f32]) {
    let cols = padded_cols(g);
    assert!(scratch.len() == g.rows() * cols * LANES && planes.len() == count * g.height * g.width);
    let plane = g.height * g.width;
    // Input columns that land inside the padded columns read.
    let x_end = g.width.min(cols.saturating_sub(g.pad_left));
    // Where pixel (y, x) of a plane goes in the scratch, if some output reads it.
    let place = |y: usize, x: usize| {
        let row = y + g.pad_top;
        (row < g.rows() && x < x_end).then(|| (row * cols + x + g.pad_left) * LANES)
    };
    let (mut q, mut y, mut x) = (0, 0, 0);
    if count == LANES {
        while q + LANES <= plane {
            // SAFETY: pixels q..q + 8 of the 8 planes are inside `planes`.
            let columns = unsafe { transpose(planes.as_ptr().add(q), plane) };
            for column in columns {
                if let Some(at) = place(y, x) {
                    let dst = &mut scratch[at..at + LANES];
                    // SAFETY: `dst` is 8 floats.
                    unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), column) };
                }
                x += 1;
                if x == g.width {
                    (y, x) = (y + 1, 0);
                }
            }
            q += LANES;
        }
    }
    for _ in q..plane {
        if let Some(at) = place(y, x) {
            for lane in 0..count {
                scratch[at + lane] = planes[lane * plane + y * g.width + x];
            }
        }
        x += 1;
        if x == g.width {
            (y, x) = (y + 1, 0);
        }
    }
}

/// Every output pixel of the block: `outputs[p * 8 + l] = clamp(bias[l] + sum_t taps[t *
/// 8 + l] * input)`, four pixels of an output row at a time.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the sizes are checked here.
#[target_feature(enable = "avx2,fma")]
unsafe fn pixels<const K: usize>(
    g: &Geometry,
    scratch: &[f32],
    taps: &[f32],
    bias: &[f32; LANES],
    (low, high): (f32, f32),
    outputs: &mut [f32],
) {
    let cols = padded_cols(g);
    assert!(scratch.len() == g.rows() * cols * LANES);
    assert!(
        taps.len() == g.kernel_h * g.kernel_w * LANES && outputs.len() == g.out_h * g.out_w * LANES
    );
    let (src, dst, w) = (scratch.as_ptr(), outputs.as_mut_ptr(), taps.as_ptr());
    // SAFETY: pixel (oy, ox) reads scratch pixels (oy * sh + ky, ox * sw + kx), at most
    // (rows - 1, cols - 1) by the definitions of `rows` and `cols`, so inside `scratch`;
    // it writes output pixel oy * OW + ox < OH * OW; taps are read below KH * KW * 8.
    unsafe {
        let bias = _mm256_loadu_ps(bias.as_ptr());
        let (low, high) = (_mm256_set1_ps(low), _mm256_set1_ps(high));
        let step = g.stride_w * LANES;
        // `K` is the kernel's side when known at compile time (0: read it from `g`), so
        // the 3x3 tap loops unroll.
        let (kernel_h, kernel_w) = if K == 0 {
            (g.kernel_h, g.kernel_w)
        } else {
            (K, K)
        };
        for oy in 0..g.out_h {
            let mut ox = 0;
            while ox < g.out_w {
                let n = PIXELS.min(g.out_w - ox);
                let mut acc = [bias; PIXELS];
                for ky in 0..kernel_h {
                    let row = src.add(((oy * g.stride_h + ky) * cols + ox * g.stride_w) * LANES);
                    for kx in 0..kernel_w {
                        let tap = _mm256_loadu_ps(w.add((ky * kernel_w + kx) * LANES));
                        let at = row.add(kx * LANES);
                        if n == PIXELS {
                            for (j, a) in acc.iter_mut().enumerate() {
                                *a = _mm256_fmadd_ps(_mm256_loadu_ps(at.add(j * step)), tap, *a);
                            }
                        } else {
                            for (j, a) in acc.iter_mut().enumerate().take(n) {
                                *a = _mm256_fmadd_ps(_mm256_loadu_ps(at.add(j * step)), tap, *a);
                            }
                        }
                    }
                }
                let out = dst.add((oy * g.out_w + ox) * LANES);
                for (j, a) in acc.iter().enumerate().take(n) {
                    _mm256_storeu_ps(
                        out.add(j * LANES),
                        _mm256_min_ps(_mm256_max_ps(*a, low), high),
                    );
                }
                ox += n;
            }
        }
    }
}

/// Writes the block's outputs (`pixels x 8`) into the first `count` channel planes of
/// `out` (`count x pixels`).
///
/// # Safety
/// The CPU must support AVX2; the sizes are checked here.
#[target_feature(enable = "avx2,fma")]
unsafe fn drain(outputs: &[f32], count: usize, pixels: usize, out: &mut [f32]) {
    assert!(outputs.len() == pixels * LANES && out.len() == count * pixels);
    let mut p = 0;
    if count == LANES {
        while p + LANES <= pixels {
            // SAFETY: outputs pixels p..p + 8 are inside `outputs`; channel rows
            // `l * pixels + p .. + 8` for `l < 8` are inside `out` (8 planes).
            unsafe {
                let columns = transpose(outputs.as_ptr().add(p * LANES), LANES);
                for (lane, column) in columns.into_iter().enumerate() {
                    _mm256_storeu_ps(out.as_mut_ptr().add(lane * pixels + p), column);
                }
            }
            p += LANES;
        }
    }
    for p in p..pixels {
        for lane in 0..count {
            out[lane * pixels + p] = outputs[p * LANES + lane];
        }
    }
}

/// Transposes an 8 x 8 block: row `i` is the 8 floats at `src + i * src_stride`; the
/// result's vector `j` is column `j`.
///
/// # Safety
/// AVX2; those 8 rows readable.
#[inline(always)]
unsafe fn transpose(src: *const f32, src_stride: usize) -> [__m256; 8] {
    // SAFETY: by the contract, each load reads one of the 8 rows, and AVX2 is there for
    // the shuffles.
    unsafe {
        let rows: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * src_stride)));
        transpose8(rows)
    }
}
