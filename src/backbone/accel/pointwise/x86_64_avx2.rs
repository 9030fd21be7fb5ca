//! The pointwise tiles' AVX2 + FMA kernels. The safe entry points take the [`Avx2Fma`]
//! token, which only exists on CPUs with those features, and check every bound the
//! unchecked loads and stores rely on.

use std::arch::x86_64::*;

use super::{Band, Pixels, NARROW};
use crate::backbone::accel::cpu::Avx2Fma;
use crate::backbone::accel::x86_64_transpose::transpose8;

/// A 6 x 16 (or 6 x 8) tile, lanes along pixels, from `source`.
pub(super) fn pixel_tile(
    _isa: Avx2Fma,
    band: &Band,
    source: Pixels,
    width: usize,
    out: &mut [f32],
    stride: usize,
) {
    assert!(band.bias.len() == 6 && band.weights.len().is_multiple_of(6));
    assert!((1..=16).contains(&width) && (1..=6).contains(&band.channels));
    let lanes = if width > 8 { 16 } else { 8 };
    source.check(band.inputs(), 0, lanes);
    assert!(out.len() >= (band.channels - 1) * stride + width);
    let (panel, step) = (source.floats, source.step);
    // SAFETY: the token exists only on CPUs with AVX2 and FMA; the checks above bound
    // every read of `band` and `source` and every write to `out` (see the contracts).
    unsafe {
        if width > 8 {
            pixel_tile_avx2::<2>(band, panel, step, width, out, stride)
        } else {
            pixel_tile_avx2::<1>(band, panel, step, width, out, stride)
        }
    }
}

/// A 16 x 6 tile, lanes along channels, from `source` (6 pixels per input).
pub(super) fn channel_tile(
    _isa: Avx2Fma,
    band: &Band,
    source: Pixels,
    width: usize,
    out: &mut [f32],
    stride: usize,
) {
    assert!(band.bias.len() == 16 && band.weights.len().is_multiple_of(16));
    assert!((1..=NARROW).contains(&width) && (1..=16).contains(&band.channels));
    source.check(band.inputs(), 0, NARROW);
    assert!(out.len() >= (band.channels - 1) * stride + width);
    // SAFETY: as in `pixel_tile`.
    unsafe { channel_tile_avx2(band, source.floats, source.step, width, out, stride) }
}

/// A 6 x `8V` tile, lanes along pixels: `V` vectors of 8 pixels per channel.
///
/// # Safety
/// The CPU must support AVX2 and FMA; the band has 6 channels of bias and `inputs x 6`
/// weights, at most 6 of them real; `panel` holds `8V` floats from each multiple of `step`
/// below `inputs x step`; `width <= 8V`; and `out` reaches
/// `(band.channels - 1) * stride + width`.
#[target_feature(enable = "avx2,fma")]
unsafe fn pixel_tile_avx2<const V: usize>(
    band: &Band,
    panel: &[f32],
    step: usize,
    width: usize,
    out: &mut [f32],
    stride: usize,
) {
    const ROWS: usize = 6;
    let (w, x) = (band.weights.as_ptr(), panel.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); V]; ROWS];
    // SAFETY: the features are enabled on this function; loads stay within `inputs x 6`
    // weights and `8V` panel floats per input, stores within the reach of `out`, by the
    // contract above.
    unsafe {
        for (r, row) in acc.iter_mut().enumerate() {
            *row = [_mm256_broadcast_ss(&band.bias[r]); V];
        }
        for i in 0..band.inputs() {
            let mut xs = [_mm256_setzero_ps(); V];
            for (v, xv) in xs.iter_mut().enumerate() {
                *xv = _mm256_loadu_ps(x.add(i * step + v * 8));
            }
            for (r, row) in acc.iter_mut().enumerate() {
                let wv = _mm256_broadcast_ss(&*w.add(i * ROWS + r));
                for (a, xv) in row.iter_mut().zip(xs) {
                    *a = _mm256_fmadd_ps(wv, xv, *a);
                }
            }
        }
        let (low, high) = (_mm256_set1_ps(band.clip.0), _mm256_set1_ps(band.clip.1));
        let dst = out.as_mut_ptr();
        for (r, row) in acc.iter().enumerate().take(band.channels) {
            let dst = dst.add(r * stride);
            if width == 8 * V {
                for (v, a) in row.iter().enumerate() {
                    let a = _mm256_min_ps(_mm256_max_ps(*a, low), high);
                    _mm256_storeu_ps(dst.add(v * 8), a);
                }
            } else {
                let mut buffer = [[0f32; 8]; V];
                for (b, a) in buffer.iter_mut().zip(row) {
                    let a = _mm256_min_ps(_mm256_max_ps(*a, low), high);
                    _mm256_storeu_ps(b.as_mut_ptr(), a);
                }
                std::ptr::copy_nonoverlapping(buffer.as_ptr() as *const f32, dst, width);
            }
        }
    }
}

/// A 16 x 6 tile, lanes along channels: two vectors of 8 channels per pixel; the
/// result is transposed in registers into the channel-major output (through a buffer for
/// a last tile of fewer than 6 pixels).
///
/// # Safety
/// The CPU must support AVX2 and FMA; the band has 16 channels of bias and `inputs x 16`
/// weights, at most 16 of them real; `panel` holds 6 floats from each multiple of `step`
/// below `inputs x step`; `width <= 6`; and `out` reaches
/// `(band.channels - 1) * stride + width`.
#[target_feature(enable = "avx2,fma")]
unsafe fn channel_tile_avx2(
    band: &Band,
    panel: &[f32],
    step: usize,
    width: usize,
    out: &mut [f32],
    stride: usize,
) {
    let (w, x) = (band.weights.as_ptr(), panel.as_ptr());
    let mut acc = [[_mm256_setzero_ps(); 2]; NARROW];
    // SAFETY: the features are enabled on this function; loads stay within `inputs x 16`
    // weights and 6 panel floats per input, stores within the reach of `out`, by the
    // contract above.
    unsafe {
        let bias = [
            _mm256_loadu_ps(&band.bias[0]),
            _mm256_loadu_ps(&band.bias[8]),
        ];
        acc.fill(bias);
        for i in 0..band.inputs() {
            let ws = [
                _mm256_loadu_ps(w.add(i * 16)),
                _mm256_loadu_ps(w.add(i * 16 + 8)),
            ];
            for (c, pixel) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*x.add(i * step + c));
                for (a, wv) in pixel.iter_mut().zip(ws) {
                    *a = _mm256_fmadd_ps(wv, xv, *a);
                }
            }
        }
        let (low, high) = (_mm256_set1_ps(band.clip.0), _mm256_set1_ps(band.clip.1));
        let dst = out.as_mut_ptr();
        if width == NARROW {
            // A whole tile: each half's 8 x 6 sums transposed in registers (two rows of
            // zeros make it 8 x 8), then 6 floats stored per channel.
            for half in 0..2 {
                let mut rows = [_mm256_setzero_ps(); 8];
                for (row, pixel) in rows.iter_mut().zip(&acc) {
                    *row = _mm256_min_ps(_mm256_max_ps(pixel[half], low), high);
                }
                let channels = band.channels.saturating_sub(half * 8);
                for (j, column) in transpose8(rows).into_iter().enumerate().take(channels) {
                    let d = dst.add((half * 8 + j) * stride);
                    _mm_storeu_ps(d, _mm256_castps256_ps128(column));
                    let last_two = _mm_castps_pd(_mm256_extractf128_ps::<1>(column));
                    _mm_store_sd(d.add(4).cast::<f64>(), last_two);
                }
            }
            return;
        }
        // A last tile of fewer pixels: through a buffer, one float at a time.
        let mut buffer = [[0f32; 16]; NARROW];
        for (b, pixel) in buffer.iter_mut().zip(&acc) {
            for (v, a) in pixel.iter().enumerate() {
                let a = _mm256_min_ps(_mm256_max_ps(*a, low), high);
                _mm256_storeu_ps(b.as_mut_ptr().add(v * 8), a);
            }
        }
        for r in 0..band.channels {
            for (c, b) in buffer.iter().enumerate().take(width) {
                *dst.add(r * stride + c) = b[r];
            }
        }
    }
}
