//! The AVX-512F kernels of the blocked ops, on the same layouts as the AVX2 ones: one
//! register is two blocks of eight channels.
//!
//! - pointwise and stem: the two blocks are two output blocks of one pixel, so a broadcast
//!   input meets sixteen output channels' weights at once, and with 32 registers a tile
//!   keeps four output blocks of twelve pixels;
//! - depthwise: the two blocks are one block of two neighbouring output pixels, whose
//!   inputs lie side by side at stride 1 (one load) and a stride apart otherwise (two
//!   halves); the borders and a last odd pixel take the AVX2 tile.
//!
//! Only AVX-512F instructions are used (the halves move with the `f64x4` forms), so the
//! [`Avx512`] token is proof enough. Each public function is safe: it takes the token and
//! checks every size the kernels then read and write by without checks.

use std::arch::x86_64::*;

use super::x86_64_avx2::{depthwise_tile, inside, Depthwise};
use super::{Dense, BLOCK};
use crate::backbone::accel::cpu::Avx512;
use crate::backbone::accel::layer::Geometry;

/// Floats in a register: two blocks.
const PAIR: usize = 2 * BLOCK;

/// Register `z` of a group of `OB` blocks laid side by side at `at` (a pixel's weights,
/// or the bias): blocks `2z` and `2z + 1`, the upper half zero when `2z + 1 == OB`.
///
/// # Safety
/// AVX-512F; `at` holds `OB * 8` floats, `2z < OB`.
#[inline(always)]
unsafe fn group_register<const OB: usize>(at: *const f32, z: usize) -> __m512 {
    // SAFETY: the caller's contract: the floats read are below `OB * 8`.
    unsafe {
        let at = at.add(z * PAIR);
        match 2 * z + 1 < OB {
            true => _mm512_loadu_ps(at),
            false => _mm512_zextps256_ps512(_mm256_loadu_ps(at)),
        }
    }
}

/// Blocks `2z` and `2z + 1` of one pixel, the blocks `step` floats apart from `at` (block
/// 0's); the upper half zero when `2z + 1 == OB`.
///
/// # Safety
/// AVX-512F; block `min(2z + 1, OB - 1)` of the pixel is inside the buffer.
#[inline(always)]
unsafe fn load_blocks<const OB: usize>(at: *const f32, step: usize, z: usize) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        let low = _mm512_zextps256_ps512(_mm256_loadu_ps(at.add(2 * z * step)));
        match 2 * z + 1 < OB {
            true => with_upper(low, at.add((2 * z + 1) * step)),
            false => low,
        }
    }
}

/// `low` with its upper half read from `upper` (8 floats).
///
/// # Safety
/// AVX-512F; 8 floats readable at `upper`.
#[inline(always)]
unsafe fn with_upper(low: __m512, upper: *const f32) -> __m512 {
    // SAFETY: the caller's contract.
    unsafe {
        let upper = _mm256_castps_pd(_mm256_loadu_ps(upper));
        _mm512_castpd_ps(_mm512_insertf64x4::<1>(_mm512_castps_pd(low), upper))
    }
}

/// Stores `v` clamped to `(low, high)` as blocks `2z` and `2z + 1` of one pixel (the upper
/// half dropped when `2z + 1 == OB`), the blocks `step` floats apart from `at`.
///
/// # Safety
/// AVX-512F; block `min(2z + 1, OB - 1)` of the pixel is inside the buffer.
#[inline(always)]
unsafe fn store_blocks<const OB: usize>(
    at: *mut f32,
    step: usize,
    z: usize,
    v: __m512,
    (low, high): (__m512, __m512),
) {
    // SAFETY: the caller's contract.
    unsafe {
        let v = _mm512_min_ps(_mm512_max_ps(v, low), high);
        _mm256_storeu_ps(at.add(2 * z * step), _mm512_castps512_ps256(v));
        if 2 * z + 1 < OB {
            let upper = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            _mm256_storeu_ps(at.add((2 * z + 1) * step), upper);
        }
    }
}

/// One group of output blocks of a pointwise layer over every pixel, with the layouts of
/// the AVX2 kernel: `data` `inputs / 8 x pixels x 8`, `weights` `inputs x count x 8`
/// (`inputs` a whole number of blocks), `bias` `count x 8`, `output` `count x pixels x 8`,
/// `count` 1 to 4 ([`super::Isa::pointwise_group`]).
pub(super) fn pointwise_group(
    isa: Avx512,
    pixels: usize,
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    clip: (f32, f32),
    output: &mut [f32],
) {
    let _ = isa;
    let count = bias.len() / BLOCK;
    assert!((1..=4).contains(&count) && bias.len() == count * BLOCK);
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
    // SAFETY: the token proves AVX-512F; the asserts above are the sizes `pointwise`
    // requires of `g`.
    unsafe {
        match count {
            1 => pointwise::<1, 1, 16>(g),
            2 => pointwise::<2, 1, 16>(g),
            3 => pointwise::<3, 2, 12>(g),
            _ => pointwise::<4, 2, 12>(g),
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

/// Input blocks per pass over the pixels, as in the AVX2 kernel: the chunk's weights stay
/// in L1 and the tiles read few input streams at a time.
const CHUNK_BLOCKS: usize = 8;

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

/// Tiles of `PX` pixels by `OB` output blocks (in `Z` registers), then the pixels left in
/// tiles of 8, 4, 2 and 1, a chunk of input blocks at a time: the first chunk starts from
/// the bias, the next ones from the sums stored, the last one clamps.
///
/// # Safety
/// AVX-512F; `g` as [`pointwise_group`] checks it, with `count == OB`, `Z == ceil(OB / 2)`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pointwise<const OB: usize, const Z: usize, const PX: usize>(g: Group) {
    let step = g.pixels * BLOCK;
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
        // SAFETY: each tile reads pixels p..p + its width of input blocks `first..first +
        // blocks` and writes them in every output block of the group, all below `pixels`.
        unsafe {
            while p + PX <= g.pixels {
                pointwise_tile::<OB, Z, PX>(g, c, step, p);
                p += PX;
            }
            if PX > 8 && p + 8 <= g.pixels {
                pointwise_tile::<OB, Z, 8>(g, c, step, p);
                p += 8;
            }
            if p + 4 <= g.pixels {
                pointwise_tile::<OB, Z, 4>(g, c, step, p);
                p += 4;
            }
            if p + 2 <= g.pixels {
                pointwise_tile::<OB, Z, 2>(g, c, step, p);
                p += 2;
            }
            if p < g.pixels {
                pointwise_tile::<OB, Z, 1>(g, c, step, p);
            }
        }
        first += blocks;
    }
}

/// `OB` output blocks of pixels `p..p + PX`, over the input blocks of `c`.
///
/// # Safety
/// AVX-512F; `p + PX <= g.pixels`, `c` inside `g.in_blocks`, `g` as [`pointwise_group`]
/// checks it, `Z == ceil(OB / 2)`.
#[inline(always)]
unsafe fn pointwise_tile<const OB: usize, const Z: usize, const PX: usize>(
    g: Group,
    c: Chunk,
    step: usize,
    p: usize,
) {
    // SAFETY: input block `ib` of pixel `p + n` is at `ib * step + (p + n) * 8`, inside
    // `data`; the chunk's weights start at `first * 8 * OB * 8`, `OB * 8` per input;
    // output block `o` of pixel `p + n` is at `o * step + (p + n) * 8`, inside `output`.
    unsafe {
        let clip = (_mm512_set1_ps(g.clip.0), _mm512_set1_ps(g.clip.1));
        let dst = g.output.add(p * BLOCK);
        let mut acc = [[_mm512_setzero_ps(); PX]; Z];
        for (z, row) in acc.iter_mut().enumerate() {
            for (n, a) in row.iter_mut().enumerate() {
                *a = match c.resume {
                    true => load_blocks::<OB>(dst.add(n * BLOCK), step, z),
                    false => group_register::<OB>(g.bias, z),
                };
            }
        }
        let mut w = g.weights.add(c.first * BLOCK * OB * BLOCK);
        let src = g.data.add(p * BLOCK + c.first * step);
        for ib in 0..c.blocks {
            let src = src.add(ib * step);
            for lane in 0..BLOCK {
                let mut wv = [_mm512_setzero_ps(); Z];
                for (z, wv) in wv.iter_mut().enumerate() {
                    *wv = group_register::<OB>(w, z);
                }
                for n in 0..PX {
                    let x = _mm512_set1_ps(*src.add(n * BLOCK + lane));
                    for (row, wv) in acc.iter_mut().zip(wv) {
                        row[n] = _mm512_fmadd_ps(wv, x, row[n]);
                    }
                }
                w = w.add(OB * BLOCK);
            }
        }
        let no_clip = (
            _mm512_set1_ps(f32::NEG_INFINITY),
            _mm512_set1_ps(f32::INFINITY),
        );
        let clip = if c.finish { clip } else { no_clip };
        for (z, row) in acc.iter().enumerate() {
            for (n, a) in row.iter().enumerate() {
                store_blocks::<OB>(dst.add(n * BLOCK), step, z, *a, clip);
            }
        }
    }
}

/// Pixel pairs a depthwise tile takes: eight output pixels.
const DEPTHWISE_PAIRS: usize = 4;

/// One block of a depthwise layer, with the layouts of the AVX2 kernel: `data` `H x W x
/// 8`, `taps` `KH x KW x 8`, `bias` 8, `output` `OH x OW x 8`. Taps falling in the padding
/// are skipped: the border pixels take the AVX2 tile, a few taps each.
pub(super) fn depthwise_block(
    isa: Avx512,
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
    // SAFETY: the token proves AVX-512F (and AVX2 and FMA); the asserts are what
    // `depthwise` requires.
    unsafe {
        match (g.kernel_h, g.kernel_w, g.stride_w) {
            (3, 3, 1) => depthwise::<3, true>(d, bias.as_ptr(), clip),
            (3, 3, _) => depthwise::<3, false>(d, bias.as_ptr(), clip),
            (5, 5, 1) => depthwise::<5, true>(d, bias.as_ptr(), clip),
            (5, 5, _) => depthwise::<5, false>(d, bias.as_ptr(), clip),
            (_, _, 1) => depthwise::<0, true>(d, bias.as_ptr(), clip),
            _ => depthwise::<0, false>(d, bias.as_ptr(), clip),
        }
    }
}

/// Every output pixel of one block: the interior (every tap inside the input's columns)
/// in tiles of pixel pairs, the rest with the AVX2 tile. `K` is the kernel's side when
/// known at compile time (0: read it from the geometry); `UNIT` says the stride is 1.
///
/// # Safety
/// AVX-512F, AVX2 and FMA; `d` as [`depthwise_block`] checks it, 8 floats at `bias`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn depthwise<const K: usize, const UNIT: bool>(
    d: Depthwise,
    bias: *const f32,
    (low, high): (f32, f32),
) {
    let g = &d.g;
    let kw = if K == 0 { g.kernel_w } else { K };
    // SAFETY: 8 floats at `bias`, by the contract.
    let bias = unsafe { _mm256_loadu_ps(bias) };
    let half = (bias, _mm256_set1_ps(low), _mm256_set1_ps(high));
    let whole = (
        _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_castps_pd(bias))),
        _mm512_set1_ps(low),
        _mm512_set1_ps(high),
    );
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
        let (bias, low, high) = half;
        // SAFETY: for every tap read, row `iy + ky` is in `0..H` (`rows`) and column
        // `at(ox) + kx` in `0..W` (`inside`, or the interior's definition: pixels below
        // `last`); every pixel written is `(oy, ox)` with `ox < OW`.
        unsafe {
            for ox in (0..first).chain(last..g.out_w) {
                let cols = inside(at(ox), kw, g.width);
                depthwise_tile::<K, 1>(&d, iy, rows, at(ox), cols, (oy, ox), bias, low, high);
            }
            let mut ox = first;
            while ox + 2 * DEPTHWISE_PAIRS <= last {
                depthwise_pairs::<K, UNIT, DEPTHWISE_PAIRS>(&d, iy, rows, at(ox), (oy, ox), whole);
                ox += 2 * DEPTHWISE_PAIRS;
            }
            while ox + 2 <= last {
                depthwise_pairs::<K, UNIT, 1>(&d, iy, rows, at(ox), (oy, ox), whole);
                ox += 2;
            }
            if ox < last {
                depthwise_tile::<K, 1>(&d, iy, rows, at(ox), (0, kw), (oy, ox), bias, low, high);
            }
        }
    }
}

/// Output pixels `(oy, ox..ox + 2 * PAIRS)`, every column of taps inside the input, rows
/// `ky_lo..ky_hi`.
///
/// # Safety
/// AVX-512F; every tap read inside the input, every pixel written inside the output (see
/// [`depthwise`]).
#[inline(always)]
unsafe fn depthwise_pairs<const K: usize, const UNIT: bool, const PAIRS: usize>(
    d: &Depthwise,
    iy: isize,
    (ky_lo, ky_hi): (usize, usize),
    ix: isize,
    (oy, ox): (usize, usize),
    (bias, low, high): (__m512, __m512, __m512),
) {
    let g = &d.g;
    let kw = if K == 0 { g.kernel_w } else { K };
    // The second pixel of a pair reads `stride` pixels further, the next pair twice that.
    let stride = if UNIT { BLOCK } else { g.stride_w * BLOCK };
    // SAFETY: the caller's contract.
    unsafe {
        let mut acc = [bias; PAIRS];
        for ky in ky_lo..ky_hi {
            let row = (iy + ky as isize) as usize * g.width;
            let src = d.data.offset((row as isize + ix) * BLOCK as isize);
            let w = d.taps.add(ky * kw * BLOCK);
            for kx in 0..kw {
                let tap = _mm256_castps_pd(_mm256_loadu_ps(w.add(kx * BLOCK)));
                let tap = _mm512_castpd_ps(_mm512_broadcast_f64x4(tap));
                for (n, a) in acc.iter_mut().enumerate() {
                    let at = src.add(kx * BLOCK + 2 * n * stride);
                    let x = match UNIT {
                        true => _mm512_loadu_ps(at),
                        false => {
                            with_upper(_mm512_castps256_ps512(_mm256_loadu_ps(at)), at.add(stride))
                        }
                    };
                    *a = _mm512_fmadd_ps(x, tap, *a);
                }
            }
        }
        let dst = d.output.add((oy * g.out_w + ox) * BLOCK);
        for (n, a) in acc.iter().enumerate() {
            _mm512_storeu_ps(
                dst.add(n * PAIR),
                _mm512_min_ps(_mm512_max_ps(*a, low), high),
            );
        }
    }
}

/// One group of output blocks of a dense convolution on few input planes (the stem), with
/// the layouts of the AVX2 kernel: `padded` the input planes zero-padded to `rows x cols`
/// each, `weights` `taps x count x 8` with taps in OIHW order, `bias` `count x 8`, `output`
/// `count x OH x OW x 8`.
pub(super) fn dense_group(
    isa: Avx512,
    g: &Geometry,
    (scratch, (rows, cols)): (&[f32], (usize, usize)),
    weights: &[f32],
    bias: &[f32],
    clip: (f32, f32),
    output: &mut [f32],
) {
    let _ = isa;
    let (d, count) = Dense::checked(g, (scratch, (rows, cols)), weights, bias, output);
    // SAFETY: the token proves AVX-512F; `Dense::checked` checked what `dense` requires.
    unsafe {
        match count {
            1 => dense::<1, 1, 16>(d, clip),
            2 => dense::<2, 1, 16>(d, clip),
            3 => dense::<3, 2, 12>(d, clip),
            _ => dense::<4, 2, 12>(d, clip),
        }
    }
}

/// Every output row, `PX` pixels at a time, then 4, then one at a time.
///
/// # Safety
/// AVX-512F; `d` as [`dense_group`] checks it, with `count == OB`, `Z == ceil(OB / 2)`.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn dense<const OB: usize, const Z: usize, const PX: usize>(d: Dense, clip: (f32, f32)) {
    let clip = (_mm512_set1_ps(clip.0), _mm512_set1_ps(clip.1));
    for oy in 0..d.g.out_h {
        let mut ox = 0;
        // SAFETY: each tile reads scratch rows `oy * sh + ky < rows` and columns
        // `(ox + n) * sw + kx < cols` of each plane, and writes pixels `(oy, ox + n)`
        // with `ox + n < OW`.
        unsafe {
            while ox + PX <= d.g.out_w {
                dense_tile::<OB, Z, PX>(&d, oy, ox, clip);
                ox += PX;
            }
            if ox + 4 <= d.g.out_w {
                dense_tile::<OB, Z, 4>(&d, oy, ox, clip);
                ox += 4;
            }
            while ox < d.g.out_w {
                dense_tile::<OB, Z, 1>(&d, oy, ox, clip);
                ox += 1;
            }
        }
    }
}

/// `OB` output blocks of pixels `(oy, ox..ox + PX)`.
///
/// # Safety
/// AVX-512F; `ox + PX <= OW`, `oy < OH`, `d` as [`dense_group`] checks it.
#[inline(always)]
unsafe fn dense_tile<const OB: usize, const Z: usize, const PX: usize>(
    d: &Dense,
    oy: usize,
    ox: usize,
    clip: (__m512, __m512),
) {
    let g = &d.g;
    let plane = g.out_h * g.out_w * BLOCK;
    // SAFETY: the caller's contract: see [`dense`].
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); PX]; Z];
        for (z, row) in acc.iter_mut().enumerate() {
            *row = [group_register::<OB>(d.bias, z); PX];
        }
        let mut w = d.weights;
        for input in 0..g.inputs {
            for ky in 0..g.kernel_h {
                let row = (input * d.rows + oy * g.stride_h + ky) * d.cols + ox * g.stride_w;
                let src = d.scratch.add(row);
                for kx in 0..g.kernel_w {
                    let mut wv = [_mm512_setzero_ps(); Z];
                    for (z, wv) in wv.iter_mut().enumerate() {
                        *wv = group_register::<OB>(w, z);
                    }
                    for n in 0..PX {
                        let x = _mm512_set1_ps(*src.add(n * g.stride_w + kx));
                        for (row, wv) in acc.iter_mut().zip(wv) {
                            row[n] = _mm512_fmadd_ps(wv, x, row[n]);
                        }
                    }
                    w = w.add(OB * BLOCK);
                }
            }
        }
        let dst = d.output.add((oy * g.out_w + ox) * BLOCK);
        for (z, row) in acc.iter().enumerate() {
            for (n, a) in row.iter().enumerate() {
                store_blocks::<OB>(dst.add(n * BLOCK), plane, z, *a, clip);
            }
        }
    }
}
