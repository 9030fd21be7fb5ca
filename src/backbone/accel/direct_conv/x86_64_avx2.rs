//! The direct convolution's AVX2 + FMA kernels. The safe entry points take the
//! [`Avx2Fma`] token, which only exists on CPUs with those features, and check every bound
//! the unchecked reads rely on.

use std::arch::x86_64::*;

use super::{Finish, Geometry};
use crate::backbone::accel::cpu::Avx2Fma;

/// Lane masks for a partial vector: `MASKS[8 - n..]` enables the first `n` lanes.
static MASKS: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

/// [`Geometry::fill_scratch`] compiled for AVX2, so the stride-2 gather is vectorised.
pub(super) fn fill(_isa: Avx2Fma, g: &Geometry, plane: &[f32], scratch: &mut [f32]) {
    // SAFETY: the token exists only on CPUs with AVX2 and FMA; the function itself only
    // uses bounds-checked slices.
    unsafe { fill_avx2(g, plane, scratch) }
}

#[target_feature(enable = "avx2,fma")]
fn fill_avx2(g: &Geometry, plane: &[f32], scratch: &mut [f32]) {
    g.fill_scratch(plane, scratch);
}

/// One output channel with AVX2 + FMA; 3x3 depthwise kernels get a fully unrolled tap loop.
///
/// Panics unless every tap of every output row reads inside `scratch`, one tap per
/// offset, and `out` holds whole rows: the kernel reads without bounds checks.
pub(super) fn rows(
    _isa: Avx2Fma,
    g: &Geometry,
    offsets: &[usize],
    scratch: &[f32],
    taps: &[f32],
    finish: Finish,
    out: &mut [f32],
) {
    g.check_rows(offsets, scratch, taps, out);
    // SAFETY: the token exists only on CPUs with AVX2 and FMA; the reads are in bounds by
    // `check_rows` (see `rows_avx2`).
    unsafe { rows_avx2(g, offsets, scratch, taps, finish, out) }
}

/// Two output channels of a dense layer (a stem) over the same rows of the scratch: each
/// input vector loaded once feeds both channels, so eight accumulators (two channels x 32
/// outputs) are in flight instead of four, enough to keep both FMA units busy through the
/// 27-tap chains; the rest of each row goes to [`row_fma`], one channel at a time.
///
/// Panics unless each channel's taps and rows pass [`Geometry::check_rows`] and both
/// outputs are the same length.
pub(super) fn rows_pair(
    _isa: Avx2Fma,
    g: &Geometry,
    offsets: &[usize],
    scratch: &[f32],
    taps: [&[f32]; 2],
    finish: [Finish; 2],
    out: [&mut [f32]; 2],
) {
    assert_eq!(out[0].len(), out[1].len());
    for (taps, out) in taps.iter().zip(&out) {
        g.check_rows(offsets, scratch, taps, out);
    }
    // SAFETY: the token exists only on CPUs with AVX2 and FMA; the reads are in bounds by
    // `check_rows`, for both channels (see `rows_pair_avx2`).
    unsafe { rows_pair_avx2(g, offsets, scratch, taps, finish, out) }
}

/// # Safety
/// As [`rows_avx2`], for both channels; both outputs are the same length.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_pair_avx2(
    g: &Geometry,
    offsets: &[usize],
    scratch: &[f32],
    taps: [&[f32]; 2],
    finish: [Finish; 2],
    out: [&mut [f32]; 2],
) {
    let row_step = g.stride_h * g.phase_width();
    let reach = offsets.iter().max().copied().unwrap_or(0);
    let rows = out[0].len() / g.out_w;
    let [out0, out1] = out;
    let dst = [out0.as_mut_ptr(), out1.as_mut_ptr()];
    // SAFETY: as in `rows_avx2`: every read is `oy * row_step + offset + i` with `i` below
    // the row's width (or its rounding up to 8 when `whole` says it is inside), every write
    // within the row; the same bounds hold for both channels.
    unsafe {
        let bounds = finish.map(|f| (_mm256_set1_ps(f.low), _mm256_set1_ps(f.high)));
        let bias = finish.map(|f| _mm256_set1_ps(f.bias));
        for oy in 0..rows {
            let (read, written) = (oy * row_step, oy * g.out_w);
            let src = scratch.as_ptr().add(read);
            let mut i = 0;
            while i + 32 <= g.out_w {
                let mut acc = [[bias[0]; 4], [bias[1]; 4]];
                for (t, &offset) in offsets.iter().enumerate() {
                    let k = [_mm256_set1_ps(taps[0][t]), _mm256_set1_ps(taps[1][t])];
                    let p = src.add(offset + i);
                    let [first, second] = &mut acc;
                    for (v, (a, b)) in first.iter_mut().zip(second).enumerate() {
                        let x = _mm256_loadu_ps(p.add(8 * v));
                        *a = _mm256_fmadd_ps(x, k[0], *a);
                        *b = _mm256_fmadd_ps(x, k[1], *b);
                    }
                }
                for ((d, acc), (low, high)) in dst.iter().zip(acc).zip(bounds) {
                    for (v, a) in acc.into_iter().enumerate() {
                        let a = _mm256_min_ps(_mm256_max_ps(a, low), high);
                        _mm256_storeu_ps(d.add(written + i + 8 * v), a);
                    }
                }
                i += 32;
            }
            if i < g.out_w {
                let whole = whole_tail(g, read + reach, scratch.len(), written, out0.len());
                for ((d, taps), finish) in dst.iter().zip(taps).zip(finish) {
                    let (src, d) = (src.add(i), d.add(written + i));
                    row_fma::<0>(src, offsets, taps, finish, d, g.out_w - i, whole);
                }
            }
        }
    }
}

/// # Safety
/// The CPU must support AVX2 and FMA; for every row `oy` of `out` and every offset `o`,
/// `oy * row_step + o + out_w <= scratch.len()`; `taps.len() == offsets.len()`.
#[target_feature(enable = "avx2,fma")]
unsafe fn rows_avx2(
    g: &Geometry,
    offsets: &[usize],
    scratch: &[f32],
    taps: &[f32],
    finish: Finish,
    out: &mut [f32],
) {
    let row_step = g.stride_h * g.phase_width();
    let reach = offsets.iter().max().copied().unwrap_or(0);
    let (src, dst, rows) = (scratch.as_ptr(), out.as_mut_ptr(), out.len() / g.out_w);
    for oy in 0..rows {
        let (read, written) = (oy * row_step, oy * g.out_w);
        // A row whose width is not a multiple of 8 ends in a partial vector. Where a whole
        // vector there still reads inside the scratch and writes inside `out`, it is
        // computed whole: the lanes past the row land on the next rows' outputs, which are
        // written after this one, and the masked loads and the buffered store are spared.
        let whole = whole_tail(g, read + reach, scratch.len(), written, out.len());
        // SAFETY: the features are enabled on this function; every `offset + i` with
        // `i < out_w` is inside the scratch by this function's contract, and with `whole`
        // every `i` below `out_w` rounded up to 8 is inside it and inside `out`, as just
        // checked.
        unsafe {
            let (src, dst) = (src.add(read), dst.add(written));
            if taps.len() == 9 {
                row_fma::<9>(src, offsets, taps, finish, dst, g.out_w, whole);
            } else {
                row_fma::<0>(src, offsets, taps, finish, dst, g.out_w, whole);
            }
        }
    }
}

/// Whether an output row starting at `written`, whose farthest tap starts at `read` in the
/// scratch, may end in a whole vector: the row's width rounded up to 8 stays inside both.
fn whole_tail(g: &Geometry, read: usize, scratch: usize, written: usize, out: usize) -> bool {
    let width = g.out_w.next_multiple_of(8);
    read + width <= scratch && written + width <= out
}

/// `dst[i] = bias + sum_t taps[t] * src[offsets[t] + i]` for `i < len`, thirty-two outputs
/// per step while they last (four accumulators keep both FMA units busy through the
/// chain of taps), then sixteen, eight, and a last partial vector: whole when `whole`
/// allows, masked otherwise. `N` is the tap count when known (0 means read it from `taps`),
/// so the 3x3 case unrolls.
///
/// # Safety
/// AVX2 and FMA; `src + offsets[t] + i` readable and `dst + i` writable for every tap and
/// every `i < len`, or every `i < len` rounded up to 8 when `whole`; `taps` and `offsets`
/// at least `N` long (or equally long when `N` is 0).
#[inline(always)]
unsafe fn row_fma<const N: usize>(
    src: *const f32,
    offsets: &[usize],
    taps: &[f32],
    finish: Finish,
    dst: *mut f32,
    len: usize,
    whole: bool,
) {
    let n_taps = if N == 0 { taps.len() } else { N };
    // SAFETY: by this function's contract, every load below reads `src` at `offsets[t] + i`
    // within the allowed reach, and every store writes `dst` within it.
    unsafe {
        let bias = _mm256_set1_ps(finish.bias);
        let (low, high) = (_mm256_set1_ps(finish.low), _mm256_set1_ps(finish.high));
        let clamp = |a| _mm256_min_ps(_mm256_max_ps(a, low), high);
        let load = |p| _mm256_loadu_ps(p);
        let mut i = 0;
        while i + 32 <= len {
            let a = sums::<4>(src, offsets, taps, n_taps, i, bias, load);
            for (v, a) in a.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(i + 8 * v), clamp(a));
            }
            i += 32;
        }
        if whole && i + 16 < len {
            // Up to 24 outputs left: one step of three independent accumulators rather
            // than a step of two and a step of one, each waiting on its chain of taps.
            let a = sums::<3>(src, offsets, taps, n_taps, i, bias, load);
            for (v, a) in a.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(i + 8 * v), clamp(a));
            }
            i = len;
        }
        if i + 16 <= len {
            let a = sums::<2>(src, offsets, taps, n_taps, i, bias, load);
            for (v, a) in a.into_iter().enumerate() {
                _mm256_storeu_ps(dst.add(i + 8 * v), clamp(a));
            }
            i += 16;
        }
        while i + 8 <= len || (whole && i < len) {
            let [a] = sums::<1>(src, offsets, taps, n_taps, i, bias, load);
            _mm256_storeu_ps(dst.add(i), clamp(a));
            i += 8;
        }
        if i < len {
            // Masked loads never touch the disabled lanes; the store goes through a
            // buffer because AMD's masked store is microcoded and slow.
            let lanes = len - i;
            let mask = _mm256_loadu_si256(MASKS.as_ptr().add(8 - lanes) as *const __m256i);
            let load = |p| _mm256_maskload_ps(p, mask);
            let [a] = sums::<1>(src, offsets, taps, n_taps, i, bias, load);
            let mut buffer = [0f32; 8];
            _mm256_storeu_ps(buffer.as_mut_ptr(), clamp(a));
            std::ptr::copy_nonoverlapping(buffer.as_ptr(), dst.add(i), lanes);
        }
    }
}

/// `bias + sum_t taps[t] * load(src + offsets[t] + i + 8v)` for `v < V`: `8V` outputs from
/// column `i`, in `V` independent accumulators.
///
/// # Safety
/// As [`row_fma`]: `load` is given only addresses inside the row's source.
#[inline(always)]
unsafe fn sums<const V: usize>(
    src: *const f32,
    offsets: &[usize],
    taps: &[f32],
    n_taps: usize,
    i: usize,
    bias: __m256,
    load: impl Fn(*const f32) -> __m256,
) -> [__m256; V] {
    let mut a = [bias; V];
    for t in 0..n_taps {
        // SAFETY: `t < n_taps`, within `taps` and `offsets` by the caller's contract.
        unsafe {
            let k = _mm256_set1_ps(*taps.get_unchecked(t));
            let p = src.add(*offsets.get_unchecked(t) + i);
            for (v, a) in a.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(load(p.add(8 * v)), k, *a);
            }
        }
    }
    a
}
