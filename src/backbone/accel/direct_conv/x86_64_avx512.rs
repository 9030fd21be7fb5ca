//! The direct convolution's 512-bit kernel, written once over [`F32x16`]: run with
//! AVX-512F registers ([`Zmm`]) behind the [`Avx512`] token, and with emulated lanes in
//! the tests. The safe entry points check every bound the unchecked reads rely on.

use super::{Finish, Geometry};
use crate::backbone::accel::cpu::Avx512;
use crate::backbone::accel::lanes::{F32x16, Zmm};

/// One output channel (or a band of its rows) with AVX-512F.
///
/// Panics unless every tap of every output row reads inside `scratch`, one tap per
/// offset, and `out` holds whole rows: the kernel reads without bounds checks.
pub(super) fn rows(
    _isa: Avx512,
    g: &Geometry,
    offsets: &[usize],
    scratch: &[f32],
    taps: &[f32],
    finish: Finish,
    out: &mut [f32],
) {
    g.check_rows(offsets, scratch, taps, out);
    // SAFETY: the token exists only on CPUs with AVX-512F; the reads are in bounds by
    // `check_rows` (see `rows_x16`).
    unsafe { rows_avx512(g, offsets, scratch, taps, finish, out) }
}

/// [`rows`] with emulated lanes, for the tests.
#[cfg(test)]
pub(super) fn rows_emulated(
    g: &Geometry,
    offsets: &[usize],
    scratch: &[f32],
    taps: &[f32],
    finish: Finish,
    out: &mut [f32],
) {
    use crate::backbone::accel::lanes::Emulated;
    g.check_rows(offsets, scratch, taps, out);
    // SAFETY: emulated lanes need no CPU feature; the reads are in bounds by `check_rows`.
    unsafe { rows_x16::<Emulated>(g, offsets, scratch, taps, finish, out) }
}

/// # Safety
/// The CPU must support AVX-512F; the bounds of `Geometry::check_rows` hold.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn rows_avx512(
    g: &Geometry,
    offsets: &[usize],
    scratch: &[f32],
    taps: &[f32],
    finish: Finish,
    out: &mut [f32],
) {
    // SAFETY: AVX-512F is enabled here, and the caller checked the bounds.
    unsafe { rows_x16::<Zmm>(g, offsets, scratch, taps, finish, out) }
}

/// Every output row: `row[i] = clamp(bias + sum_t taps[t] * scratch[row start + offsets[t]
/// + i])`.
///
/// # Safety
/// `V`'s methods may run (for [`Zmm`], AVX-512F is enabled); for every row `oy` of `out`
/// and every offset `o`, `oy * row_step + o + out_w <= scratch.len()`; `taps.len() ==
/// offsets.len()`.
#[inline(always)]
unsafe fn rows_x16<V: F32x16>(
    g: &Geometry,
    offsets: &[usize],
    scratch: &[f32],
    taps: &[f32],
    finish: Finish,
    out: &mut [f32],
) {
    let row_step = g.stride_h * g.phase_width();
    let (src, dst) = (scratch.as_ptr(), out.as_mut_ptr());
    for oy in 0..out.len() / g.out_w {
        // SAFETY: by this function's contract, every tap of this row reads inside the
        // scratch and the row is inside `out`.
        unsafe {
            let (src, dst) = (src.add(oy * row_step), dst.add(oy * g.out_w));
            if taps.len() == 9 {
                row_x16::<V, 9>(src, offsets, taps, finish, dst, g.out_w);
            } else {
                row_x16::<V, 0>(src, offsets, taps, finish, dst, g.out_w);
            }
        }
    }
}

/// `dst[i] = clamp(bias + sum_t taps[t] * src[offsets[t] + i])` for `i < len`: sixty-four
/// outputs per step while they last (four accumulators keep both FMA units busy through
/// the chain of taps), then thirty-two, sixteen, and a masked step for the rest. `N` is
/// the tap count when known (0 means read it from `taps`), so the 3x3 case unrolls.
///
/// # Safety
/// `V`'s methods may run; `src + offsets[t] + i` readable and `dst + i` writable for every
/// tap and every `i < len`; `taps` and `offsets` at least `N` long (or equally long when
/// `N` is 0).
#[inline(always)]
unsafe fn row_x16<V: F32x16, const N: usize>(
    src: *const f32,
    offsets: &[usize],
    taps: &[f32],
    finish: Finish,
    dst: *mut f32,
    len: usize,
) {
    let n_taps = if N == 0 { taps.len() } else { N };
    // SAFETY: by this function's contract, every load reads `src` at `offsets[t] + i` for
    // `i < len` (the masked step reads only its first `len - i` lanes), and every store
    // writes `dst` below `len`.
    unsafe {
        let bias = V::splat(finish.bias);
        let (low, high) = (V::splat(finish.low), V::splat(finish.high));
        let mut i = 0;
        while i + 64 <= len {
            let sums = sums_x16::<V, 4>(src, offsets, taps, n_taps, i, bias, |p| V::load(p));
            for (v, a) in sums.into_iter().enumerate() {
                a.clamp(low, high).store(dst.add(i + 16 * v));
            }
            i += 64;
        }
        if i + 32 <= len {
            let sums = sums_x16::<V, 2>(src, offsets, taps, n_taps, i, bias, |p| V::load(p));
            for (v, a) in sums.into_iter().enumerate() {
                a.clamp(low, high).store(dst.add(i + 16 * v));
            }
            i += 32;
        }
        while i < len {
            let lanes = (len - i).min(16);
            let load = |p| V::load_first(p, lanes);
            let [a] = sums_x16::<V, 1>(src, offsets, taps, n_taps, i, bias, load);
            a.clamp(low, high).store_first(dst.add(i), lanes);
            i += lanes;
        }
    }
}

/// `bias + sum_t taps[t] * load(src + offsets[t] + i + 16v)` for `v < W`: `16W` outputs
/// from column `i`, in `W` independent accumulators.
///
/// # Safety
/// As [`row_x16`]: `load` is given only addresses inside the row's source.
#[inline(always)]
unsafe fn sums_x16<V: F32x16, const W: usize>(
    src: *const f32,
    offsets: &[usize],
    taps: &[f32],
    n_taps: usize,
    i: usize,
    bias: V,
    load: impl Fn(*const f32) -> V,
) -> [V; W] {
    let mut sums = [bias; W];
    for t in 0..n_taps {
        // SAFETY: `t < n_taps`, within `taps` and `offsets` by the caller's contract.
        unsafe {
            let k = V::splat(*taps.get_unchecked(t));
            let p = src.add(*offsets.get_unchecked(t) + i);
            for (v, sum) in sums.iter_mut().enumerate() {
                *sum = load(p.add(16 * v)).mul_add(k, *sum);
            }
        }
    }
    sums
}
