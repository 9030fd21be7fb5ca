//! The AVX2 + FMA kernels of the blocked ops: one register is eight channels of a pixel.
//!
//! Each public function is safe: it takes the [`Avx2Fma`] token, proof that the CPU has
//! the features the kernels are compiled for, and checks every size the kernels then read
//! and write by without checks.

use std::arch::x86_64::*;

use super::{Dense, BLOCK};
use crate::backbone::accel::cpu::Avx2Fma;
use crate::backbone::accel::layer::Geometry;

/// One group of output blocks of a pointwise layer over every pixel: `data` is `inputs / 8
/// x pixels x 8`, `weights` `inputs x count x 8` (`inputs` a whole number of blocks),
/// `bias` `count x 8`, `output` `count x pixels x 8`, with `count` (1 or 2) the blocks of
/// the group ([`super::POINTWISE_GROUP`]).
pub(super) fn pointwise_group(
    isa: Avx2Fma,
    pixels: usize,
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    clip: (f32, f32),
    output: &mut [f32],
) {
    let _ = isa;
    let count = bias.len() / BLOCK;
    assert!((1..=2).contains(&count) && bias.len() == count * BLOCK);
    let inputs = weights.len() / (count * BLOCK);
    assert!(weights.len() == inputs * count * BLOCK && inputs.is_multiple_of(BLOCK));
    assert!(data.len() == inputs * pixels && output.len() == count * pixels * BLOCK);
    let g = Group {
        pixels,
        in_blocks: inputs / BLOCK,
        data: data.as_ptr(),
        weights: weights.as_ptr(),
        bias: bias.as_ptr(),
        clip,
        output: output.as_mut_ptr(),
    };
    // SAFETY: the token proves AVX2 and FMA; the asserts above are the sizes `group`
    // requires of `g`.
    unsafe {
        match count {
            1 => pointwise::<1, 8>(g),
            _ => pointwise::<2, 6>(g),
        }
    }
}

/// The pointers of [`pointwise_group`], checked there.
#[derive(Clone, Copy)]
struct Group {
    pixels: usize,
    in_blocks: usize,
    data: *const f32,
    weights: *const f32,
    bias: *const f32,
    clip: (f32, f32),
    output: *mut f32,
}

/// Input blocks per pass over the pixels: their weights for a group of output blocks stay
/// in L1, and the tiles read this many input streams at a time, not every one (blocks of
/// a large image lie a multiple of 4 KiB apart, so many streams compete for the same
/// cache sets).
const CHUNK_BLOCKS: usize = 8;

/// Tiles of `PX` pixels by `OB` output blocks, then the pixels left one at a time, a chunk
/// of input blocks at a time: the first chunk starts from the bias, the next ones from
/// the sums stored, the last one clamps.
///
/// # Safety
/// AVX2 and FMA; `g` as [`pointwise_group`] checks it, with `count == OB`.
#[target_feature(enable = "avx2,fma")]
unsafe fn pointwise<const OB: usize, const PX: usize>(g: Group) {
    let step = g.pixels * BLOCK;
    let (low, high) = (_mm256_set1_ps(g.clip.0), _mm256_set1_ps(g.clip.1));
    let mut first = 0;
    while first < g.in_blocks {
        let blocks = CHUNK_BLOCKS.min(g.in_blocks - first);
        let c = Chunk {
            first,
            blocks,
            resume: first > 0,
            finish: first + blocks == g.in_blocks,
        };
        let mut p = 0;
        // SAFETY: each tile reads pixels p..p + PX (or p) of input blocks `first..first +
        // blocks` and writes them in every output block of the group, all below `pixels`.
        unsafe {
            while p + PX <= g.pixels {
                pointwise_tile::<OB, PX>(g, c, step, p, low, high);
                p += PX;
            }
            // The tail in tiles of 4 and 2 where they fit: a lone pixel loads as many
            // weights per multiply as it has accumulators.
            if PX > 4 && p + 4 <= g.pixels {
                pointwise_tile::<OB, 4>(g, c, step, p, low, high);
                p += 4;
            }
            if PX > 2 && p + 2 <= g.pixels {
                pointwise_tile::<OB, 2>(g, c, step, p, low, high);
                p += 2;
            }
            while p < g.pixels {
                pointwise_tile::<OB, 1>(g, c, step, p, low, high);
                p += 1;
            }
        }
        first += blocks;
    }
}

/// The input blocks one pass of [`pointwise`] adds.
#[derive(Clone, Copy)]
struct Chunk {
    first: usize,
    blocks: usize,
    /// Whether the sums start from the output (else from the bias).
    resume: bool,
    /// Whether the sums are final (clamped as they are stored).
    finish: bool,
}

/// `OB` output blocks of pixels `p..p + PX`, over the input blocks of `c`.
///
/// # Safety
/// AVX2 and FMA; `p + PX <= g.pixels`, `c` inside `g.in_blocks`, `g` as
/// [`pointwise_group`] checks it.
#[inline(always)]
unsafe fn pointwise_tile<const OB: usize, const PX: usize>(
    g: Group,
    c: Chunk,
    step: usize,
    p: usize,
    low: __m256,
    high: __m256,
) {
    // SAFETY: input block `ib` of pixel `p + n` is at `ib * step + (p + n) * 8`, inside
    // `data`; the chunk's weights start at `first * 8 * OB * 8` and are read once each;
    // output block `o` of pixel `p + n` is at `o * step + (p + n) * 8`, inside `output`.
    unsafe {
        let dst = g.output.add(p * BLOCK);
        let mut acc = [[_mm256_setzero_ps(); PX]; OB];
        for (o, row) in acc.iter_mut().enumerate() {
            for (n, a) in row.iter_mut().enumerate() {
                *a = match c.resume {
                    true => _mm256_loadu_ps(dst.add(o * step + n * BLOCK)),
                    false => _mm256_loadu_ps(g.bias.add(o * BLOCK)),
                };
            }
        }
        let mut w = g.weights.add(c.first * BLOCK * OB * BLOCK);
        let src = g.data.add(p * BLOCK + c.first * step);
        for ib in 0..c.blocks {
            let src = src.add(ib * step);
            for lane in 0..BLOCK {
                // The weights stay in registers while each pixel's input is broadcast
                // and used at once: `OB + 1 + OB x PX` registers.
                let mut wv = [_mm256_setzero_ps(); OB];
                for (o, wv) in wv.iter_mut().enumerate() {
                    *wv = _mm256_loadu_ps(w.add(o * BLOCK));
                }
                for n in 0..PX {
                    let x = _mm256_broadcast_ss(&*src.add(n * BLOCK + lane));
                    for (row, wv) in acc.iter_mut().zip(wv) {
                        row[n] = _mm256_fmadd_ps(wv, x, row[n]);
                    }
                }
                w = w.add(OB * BLOCK);
            }
        }
        for (o, row) in acc.iter().enumerate() {
            for (n, a) in row.iter().enumerate() {
                let v = match c.finish {
                    true => _mm256_min_ps(_mm256_max_ps(*a, low), high),
                    false => *a,
                };
                _mm256_storeu_ps(dst.add(o * step + n * BLOCK), v);
            }
        }
    }
}

/// Output pixels computed together by the depthwise kernel.
const DEPTHWISE_PIXELS: usize = 4;

/// One block of a depthwise layer: `data` `H x W x 8`, `taps` `KH x KW x 8`, `bias` 8,
/// `output` `OH x OW x 8`. Taps falling in the padding are skipped, not multiplied by
/// zeros: the pixels whose taps all fall inside take the unchecked tiles, the rest (the
/// borders) a few taps each.
pub(super) fn depthwise_block(
    isa: Avx2Fma,
    g: &Geometry,
    data: &[f32],
    taps: &[f32],
    bias: &[f32],
    clip: (f32, f32),
    output: &mut [f32],
) {
    let _ = isa;
    assert!(g.is_valid() && !g.dense);
    assert!(data.len() == g.height * g.width * BLOCK && bias.len() == BLOCK);
    assert!(taps.len() == g.kernel_h * g.kernel_w * BLOCK);
    assert!(output.len() == g.out_h * g.out_w * BLOCK);
    let d = Depthwise {
        g: *g,
        data: data.as_ptr(),
        taps: taps.as_ptr(),
        output: output.as_mut_ptr(),
    };
    // SAFETY: the token proves AVX2 and FMA; the asserts are what `depthwise` requires.
    unsafe {
        let bias = _mm256_loadu_ps(bias.as_ptr());
        match (g.kernel_h, g.kernel_w) {
            (3, 3) => depthwise::<3>(d, bias, clip),
            (5, 5) => depthwise::<5>(d, bias, clip),
            _ => depthwise::<0>(d, bias, clip),
        }
    }
}

/// The pointers of [`depthwise_block`], checked there (and in the AVX-512 kernels', which
/// take the borders with [`depthwise_tile`]).
#[derive(Clone, Copy)]
pub(super) struct Depthwise {
    pub g: Geometry,
    pub data: *const f32,
    pub taps: *const f32,
    pub output: *mut f32,
}

/// Rows of taps `ky_lo..ky_hi` and columns `kx_lo..kx_hi` that fall inside the input for
/// the output pixel whose first tap is at `(iy, ix)` (either may be negative, in the
/// padding).
#[inline(always)]
pub(super) fn inside(start: isize, kernel: usize, size: usize) -> (usize, usize) {
    let low = (-start).clamp(0, kernel as isize) as usize;
    let high = (size as isize - start).clamp(0, kernel as isize) as usize;
    (low, high.max(low))
}

/// Every output pixel of one block. `K` is the kernel's side when known at compile time
/// (0: read it from the geometry), so the 3x3 and 5x5 tap loops unroll.
///
/// # Safety
/// AVX2 and FMA; `d` as [`depthwise_block`] checks it.
#[target_feature(enable = "avx2,fma")]
unsafe fn depthwise<const K: usize>(d: Depthwise, bias: __m256, (low, high): (f32, f32)) {
    let g = &d.g;
    let kw = if K == 0 { g.kernel_w } else { K };
    let (low, high) = (_mm256_set1_ps(low), _mm256_set1_ps(high));
    // Output columns whose taps are all inside the input's columns.
    let first = g.pad_left.div_ceil(g.stride_w).min(g.out_w);
    let last = match (g.width + g.pad_left).checked_sub(kw) {
        Some(room) => (room / g.stride_w + 1).min(g.out_w),
        None => 0,
    };
    let last = last.max(first);
    for oy in 0..g.out_h {
        let iy = (oy * g.stride_h) as isize - g.pad_top as isize;
        let rows = inside(iy, g.kernel_h, g.height);
        let at = |ox: usize| (ox * g.stride_w) as isize - g.pad_left as isize;
        // SAFETY: for every tap read, row `iy + ky` is in `0..H` (`rows`) and column
        // `at(ox) + kx` in `0..W` (`inside`, or the interior's definition); every pixel
        // written is `(oy, ox)` with `ox < OW`.
        unsafe {
            for ox in (0..first).chain(last..g.out_w) {
                let cols = inside(at(ox), kw, g.width);
                depthwise_tile::<K, 1>(&d, iy, rows, at(ox), cols, (oy, ox), bias, low, high);
            }
            let mut ox = first;
            while ox + DEPTHWISE_PIXELS <= last {
                let cols = (0, kw);
                let pixel = (oy, ox);
                depthwise_tile::<K, DEPTHWISE_PIXELS>(
                    &d,
                    iy,
                    rows,
                    at(ox),
                    cols,
                    pixel,
                    bias,
                    low,
                    high,
                );
                ox += DEPTHWISE_PIXELS;
            }
            for ox in ox..last {
                depthwise_tile::<K, 1>(&d, iy, rows, at(ox), (0, kw), (oy, ox), bias, low, high);
            }
        }
    }
}

/// Output pixels `(oy, ox..ox + PX)` from taps `rows x cols` (the ranges inside the input).
///
/// # Safety
/// AVX2 and FMA; every tap read inside the input, every pixel written inside the output
/// (see [`depthwise`]).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn depthwise_tile<const K: usize, const PX: usize>(
    d: &Depthwise,
    iy: isize,
    (ky_lo, ky_hi): (usize, usize),
    ix: isize,
    (kx_lo, kx_hi): (usize, usize),
    (oy, ox): (usize, usize),
    bias: __m256,
    low: __m256,
    high: __m256,
) {
    let g = &d.g;
    let kw = if K == 0 { g.kernel_w } else { K };
    let full = kx_lo == 0 && kx_hi == kw;
    let step = g.stride_w * BLOCK;
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc = [bias; PX];
        for ky in ky_lo..ky_hi {
            let row = (iy + ky as isize) as usize * g.width;
            let src = d.data.offset((row as isize + ix) * BLOCK as isize);
            let w = d.taps.add(ky * kw * BLOCK);
            if full {
                for kx in 0..kw {
                    let tap = _mm256_loadu_ps(w.add(kx * BLOCK));
                    for (n, a) in acc.iter_mut().enumerate() {
                        let x = _mm256_loadu_ps(src.add(kx * BLOCK + n * step));
                        *a = _mm256_fmadd_ps(x, tap, *a);
                    }
                }
            } else {
                for kx in kx_lo..kx_hi {
                    let tap = _mm256_loadu_ps(w.add(kx * BLOCK));
                    for (n, a) in acc.iter_mut().enumerate() {
                        let x = _mm256_loadu_ps(src.add(kx * BLOCK + n * step));
                        *a = _mm256_fmadd_ps(x, tap, *a);
                    }
                }
            }
        }
        let dst = d.output.add((oy * g.out_w + ox) * BLOCK);
        for (n, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(
                dst.add(n * BLOCK),
                _mm256_min_ps(_mm256_max_ps(*a, low), high),
            );
        }
    }
}

/// One group of output blocks of a dense convolution on few input planes (the stem):
/// `scratch` is the input planes zero-padded to `rows x cols` each (`rows` and `cols`
/// those some output reads), `weights` `taps x count x 8` with taps in OIHW order, `bias`
/// `count x 8`, `output` `count x OH x OW x 8`.
pub(super) fn dense_group(
    isa: Avx2Fma,
    g: &Geometry,
    (scratch, (rows, cols)): (&[f32], (usize, usize)),
    weights: &[f32],
    bias: &[f32],
    clip: (f32, f32),
    output: &mut [f32],
) {
    let _ = isa;
    let (d, count) = Dense::checked(g, (scratch, (rows, cols)), weights, bias, output);
    // SAFETY: the token proves AVX2 and FMA; `Dense::checked` checked what `dense` requires.
    unsafe {
        match count {
            1 => dense::<1, 8>(d, clip),
            2 => dense::<2, 6>(d, clip),
            3 => dense::<3, 4>(d, clip),
            _ => dense::<4, 3>(d, clip),
        }
    }
}

/// Every output row, `PX` pixels at a time, then the pixels left one at a time.
///
/// # Safety
/// AVX2 and FMA; `d` as [`dense_group`] checks it, with `count == OB`.
#[target_feature(enable = "avx2,fma")]
unsafe fn dense<const OB: usize, const PX: usize>(d: Dense, (low, high): (f32, f32)) {
    let (low, high) = (_mm256_set1_ps(low), _mm256_set1_ps(high));
    for oy in 0..d.g.out_h {
        let mut ox = 0;
        // SAFETY: each tile reads scratch rows `oy * sh + ky < rows` and columns
        // `(ox + n) * sw + kx < cols` of each plane, and writes pixels `(oy, ox + n)`
        // with `ox + n < OW`.
        unsafe {
            while ox + PX <= d.g.out_w {
                dense_tile::<OB, PX>(&d, oy, ox, low, high);
                ox += PX;
            }
            if OB <= 2 && ox + 4 <= d.g.out_w {
                dense_tile::<OB, 4>(&d, oy, ox, low, high);
                ox += 4;
            }
            while ox < d.g.out_w {
                dense_tile::<OB, 1>(&d, oy, ox, low, high);
                ox += 1;
            }
        }
    }
}

/// `OB` output blocks of pixels `(oy, ox..ox + PX)`.
///
/// # Safety
/// AVX2 and FMA; `ox + PX <= OW`, `oy < OH`, `d` as [`dense_group`] checks it.
#[inline(always)]
unsafe fn dense_tile<const OB: usize, const PX: usize>(
    d: &Dense,
    oy: usize,
    ox: usize,
    low: __m256,
    high: __m256,
) {
    let g = &d.g;
    let plane = g.out_h * g.out_w * BLOCK;
    // SAFETY: the caller's contract: see [`dense`].
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); PX]; OB];
        for (o, row) in acc.iter_mut().enumerate() {
            *row = [_mm256_loadu_ps(d.bias.add(o * BLOCK)); PX];
        }
        let mut w = d.weights;
        for input in 0..g.inputs {
            for ky in 0..g.kernel_h {
                let row = (input * d.rows + oy * g.stride_h + ky) * d.cols + ox * g.stride_w;
                let src = d.scratch.add(row);
                for kx in 0..g.kernel_w {
                    let mut x = [_mm256_setzero_ps(); PX];
                    for (n, x) in x.iter_mut().enumerate() {
                        *x = _mm256_broadcast_ss(&*src.add(n * g.stride_w + kx));
                    }
                    for (o, row) in acc.iter_mut().enumerate() {
                        let wv = _mm256_loadu_ps(w.add(o * BLOCK));
                        for (a, x) in row.iter_mut().zip(x) {
                            *a = _mm256_fmadd_ps(wv, x, *a);
                        }
                    }
                    w = w.add(OB * BLOCK);
                }
            }
        }
        let dst = d.output.add((oy * g.out_w + ox) * BLOCK);
        for (o, row) in acc.iter().enumerate() {
            for (n, a) in row.iter().enumerate() {
                let v = _mm256_min_ps(_mm256_max_ps(*a, low), high);
                _mm256_storeu_ps(dst.add(o * plane + n * BLOCK), v);
            }
        }
    }
}
