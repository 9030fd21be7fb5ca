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
    assert!(g.out_w >= 1 && out.len().is_multiple_of(g.out_w) && taps.len() == offsets.len());
    let row_step = g.stride_h * g.phase_width();
    let last_row = (out.len() / g.out_w).saturating_sub(1) * row_step;
    assert!(offsets
        .iter()
        .all(|&o| last_row + o + g.out_w <= scratch.len()));
    // SAFETY: the token exists only on CPUs with AVX2 and FMA; the reads are in bounds by
    // the asserts above (see `rows_avx2`).
    unsafe { rows_avx2(g, offsets, scratch, taps, finish, out) }
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
    for (oy, row) in out.chunks_exact_mut(g.out_w).enumerate() {
        let base = &scratch[oy * row_step..];
        // SAFETY: the features are enabled on this function; every `offset + i` with
        // `i < out_w` is inside `base` by this function's contract.
        unsafe {
            if taps.len() == 9 {
                row_fma::<9>(base, offsets, taps, finish, row);
            } else {
                row_fma::<0>(base, offsets, taps, finish, row);
            }
        }
    }
}

/// `row[i] = bias + sum_t taps[t] * base[offsets[t] + i]`, sixteen outputs per step,
/// then eight, then a masked step for the last few. `N` is the tap count when known (0 means read it
/// from `taps`), so the 3x3 case unrolls.
///
/// # Safety
/// AVX2 and FMA; `offsets[t] + row.len() <= base.len()` for every tap; `taps` and
/// `offsets` at least `N` long (or equally long when `N` is 0).
#[inline(always)]
unsafe fn row_fma<const N: usize>(
    base: &[f32],
    offsets: &[usize],
    taps: &[f32],
    finish: Finish,
    row: &mut [f32],
) {
    let n_taps = if N == 0 { taps.len() } else { N };
    let (src, dst, len) = (base.as_ptr(), row.as_mut_ptr(), row.len());
    // SAFETY: by this function's contract, every load below reads `base` at `offsets[t] +
    // i` for `i < len`, and every store writes `row` below `len`.
    unsafe {
        let biasv = _mm256_set1_ps(finish.bias);
        let (low, high) = (_mm256_set1_ps(finish.low), _mm256_set1_ps(finish.high));
        let clamp = |a| _mm256_min_ps(_mm256_max_ps(a, low), high);
        let mut i = 0;
        while i + 16 <= len {
            let (mut a0, mut a1) = (biasv, biasv);
            for t in 0..n_taps {
                let k = _mm256_set1_ps(*taps.get_unchecked(t));
                let p = src.add(*offsets.get_unchecked(t) + i);
                a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p), k, a0);
                a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p.add(8)), k, a1);
            }
            _mm256_storeu_ps(dst.add(i), clamp(a0));
            _mm256_storeu_ps(dst.add(i + 8), clamp(a1));
            i += 16;
        }
        if i + 8 <= len {
            let load = |p| _mm256_loadu_ps(p);
            let a = sum8(src, offsets, taps, n_taps, i, biasv, load);
            _mm256_storeu_ps(dst.add(i), clamp(a));
            i += 8;
        }
        if i < len {
            // Masked loads never touch the disabled lanes; the store goes through a
            // buffer because AMD's masked store is microcoded and slow.
            let lanes = len - i;
            let mask = _mm256_loadu_si256(MASKS.as_ptr().add(8 - lanes) as *const __m256i);
            let load = |p| _mm256_maskload_ps(p, mask);
            let a = sum8(src, offsets, taps, n_taps, i, biasv, load);
            let mut buffer = [0f32; 8];
            _mm256_storeu_ps(buffer.as_mut_ptr(), clamp(a));
            std::ptr::copy_nonoverlapping(buffer.as_ptr(), dst.add(i), lanes);
        }
    }
}

/// `bias + sum_t taps[t] * load(src + offsets[t] + i)`: eight outputs from column `i`.
///
/// # Safety
/// As [`row_fma`]: `load` is given only addresses inside the row's source.
#[inline(always)]
unsafe fn sum8(
    src: *const f32,
    offsets: &[usize],
    taps: &[f32],
    n_taps: usize,
    i: usize,
    bias: __m256,
    load: impl Fn(*const f32) -> __m256,
) -> __m256 {
    let mut a = bias;
    for t in 0..n_taps {
        // SAFETY: `t < n_taps`, within `taps` and `offsets` by the caller's contract.
        unsafe {
            let k = _mm256_set1_ps(*taps.get_unchecked(t));
            a = _mm256_fmadd_ps(load(src.add(*offsets.get_unchecked(t) + i)), k, a);
        }
    }
    a
}
