//! The pointwise tiles' 512-bit kernels, written once over [`F32x16`]: run with AVX-512F
//! registers ([`Zmm`]) behind the [`Avx512`] token, and with emulated lanes in the tests.
//!
//! Each takes two panels at once, so that twelve accumulators hide the FMA latency as the
//! AVX2 tiles' twelve do: 6 channels x 32 pixels from two full [`WIDE`] panels, or 16
//! channels x 12 pixels from two [`NARROW`] ones. Shorter runs go to the AVX2 tiles. The
//! safe entry points check every bound the unchecked loads and stores rely on.

use super::{Band, Pixels, NARROW, WIDE};
use crate::backbone::accel::cpu::Avx512;
use crate::backbone::accel::lanes::{F32x16, Zmm};

/// Rows of the pixel tile: the band of a [`super::Orientation::PixelLanes`] layer.
const PIXEL_ROWS: usize = 6;

/// A 6 x 32 tile, lanes along pixels, from `source` (two full [`WIDE`] runs of pixels).
pub(super) fn pixel_pair(isa: Avx512, band: &Band, source: Pixels, out: &mut [f32], stride: usize) {
    let _ = isa;
    check_pixel_pair(band, source, out, stride);
    // SAFETY: the token exists only on CPUs with AVX-512F; the bounds are checked.
    unsafe { pixel_pair_avx512(band, source, out, stride) }
}

/// A 16 x 12 tile, lanes along channels, from `source` (two runs of [`NARROW`] pixels).
pub(super) fn channel_pair(
    isa: Avx512,
    band: &Band,
    source: Pixels,
    out: &mut [f32],
    stride: usize,
) {
    let _ = isa;
    check_channel_pair(band, source, out, stride);
    // SAFETY: the token exists only on CPUs with AVX-512F; the bounds are checked.
    unsafe { channel_pair_avx512(band, source, out, stride) }
}

fn check_pixel_pair(band: &Band, source: Pixels, out: &[f32], stride: usize) {
    assert!(band.bias.len() == PIXEL_ROWS && band.weights.len().is_multiple_of(PIXEL_ROWS));
    assert!((1..=PIXEL_ROWS).contains(&band.channels));
    source.check(band.inputs(), 0, WIDE);
    source.check(band.inputs(), source.second, WIDE);
    assert!(out.len() >= (band.channels - 1) * stride + 2 * WIDE);
}

fn check_channel_pair(band: &Band, source: Pixels, out: &[f32], stride: usize) {
    assert!(band.bias.len() == 16 && band.weights.len().is_multiple_of(16));
    assert!((1..=16).contains(&band.channels));
    source.check(band.inputs(), 0, NARROW);
    source.check(band.inputs(), source.second, NARROW);
    assert!(out.len() >= (band.channels - 1) * stride + 2 * NARROW);
}

/// # Safety
/// AVX-512F; the bounds of [`check_pixel_pair`] hold.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn pixel_pair_avx512(band: &Band, source: Pixels, out: &mut [f32], stride: usize) {
    // SAFETY: AVX-512F is enabled here, and the caller checked the bounds.
    unsafe { pixel_pair_x16::<Zmm>(band, source, out, stride) }
}

/// # Safety
/// AVX-512F; the bounds of [`check_channel_pair`] hold.
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn channel_pair_avx512(band: &Band, source: Pixels, out: &mut [f32], stride: usize) {
    // SAFETY: AVX-512F is enabled here, and the caller checked the bounds.
    unsafe { channel_pair_x16::<Zmm>(band, source, out, stride) }
}

/// The 6 x 32 tile: per input, one vector of 16 pixels from each panel and a broadcast
/// weight per channel; bias first, clamp on the way out, as the AVX2 tile.
///
/// # Safety
/// `V`'s methods may run; the bounds of [`check_pixel_pair`] hold.
#[inline(always)]
unsafe fn pixel_pair_x16<V: F32x16>(band: &Band, source: Pixels, out: &mut [f32], stride: usize) {
    let inputs = band.inputs();
    let (w, x, step) = (band.weights.as_ptr(), source.floats.as_ptr(), source.step);
    // SAFETY: loads stay within `inputs x 6` weights and 16 floats per input of each half
    // of `source`, stores within `(channels - 1) * stride + 32` of `out`, by the contract.
    unsafe {
        let mut acc: [[V; 2]; PIXEL_ROWS] = std::array::from_fn(|r| [V::splat(band.bias[r]); 2]);
        let second = x.add(source.second);
        for i in 0..inputs {
            let xs = [V::load(x.add(i * step)), V::load(second.add(i * step))];
            for (r, row) in acc.iter_mut().enumerate() {
                let wv = V::splat(*w.add(i * PIXEL_ROWS + r));
                for (a, xv) in row.iter_mut().zip(xs) {
                    *a = wv.mul_add(xv, *a);
                }
            }
        }
        let (low, high) = (V::splat(band.clip.0), V::splat(band.clip.1));
        let dst = out.as_mut_ptr();
        for (r, row) in acc.iter().enumerate().take(band.channels) {
            for (v, a) in row.iter().enumerate() {
                a.clamp(low, high).store(dst.add(r * stride + v * WIDE));
            }
        }
    }
}

/// The 16 x 12 tile: per input, one vector of 16 channels' weights and a broadcast input
/// per pixel; the result is transposed on its way into the channel-major output.
///
/// # Safety
/// `V`'s methods may run; the bounds of [`check_channel_pair`] hold.
#[inline(always)]
unsafe fn channel_pair_x16<V: F32x16>(band: &Band, source: Pixels, out: &mut [f32], stride: usize) {
    const PIXELS: usize = 2 * NARROW;
    let inputs = band.inputs();
    let (w, x, step) = (band.weights.as_ptr(), source.floats.as_ptr(), source.step);
    // SAFETY: loads stay within `inputs x 16` weights and 6 floats per input of each half
    // of `source`, stores within `(channels - 1) * stride + 12` of `out`, by the contract.
    unsafe {
        let mut acc = [V::load(band.bias.as_ptr()); PIXELS];
        let second = x.add(source.second);
        for i in 0..inputs {
            let wv = V::load(w.add(i * 16));
            for (c, a) in acc.iter_mut().enumerate() {
                let panel = if c < NARROW { x } else { second };
                let xv = V::splat(*panel.add(i * step + c % NARROW));
                *a = wv.mul_add(xv, *a);
            }
        }
        let (low, high) = (V::splat(band.clip.0), V::splat(band.clip.1));
        let lanes: [[f32; 16]; PIXELS] =
            std::array::from_fn(|c| acc[c].clamp(low, high).to_array());
        let dst = out.as_mut_ptr();
        for r in 0..band.channels {
            for (c, lane) in lanes.iter().enumerate() {
                *dst.add(r * stride + c) = lane[r];
            }
        }
    }
}

/// [`pixel_pair`] and [`channel_pair`] with emulated lanes, for the tests.
#[cfg(test)]
pub(super) mod emulated {
    use super::*;
    use crate::backbone::accel::lanes::Emulated;

    pub(in super::super) fn pixel_pair(
        band: &Band,
        source: Pixels,
        out: &mut [f32],
        stride: usize,
    ) {
        check_pixel_pair(band, source, out, stride);
        // SAFETY: emulated lanes need no CPU feature; the bounds are checked.
        unsafe { pixel_pair_x16::<Emulated>(band, source, out, stride) }
    }

    pub(in super::super) fn channel_pair(
        band: &Band,
        source: Pixels,
        out: &mut [f32],
        stride: usize,
    ) {
        check_channel_pair(band, source, out, stride);
        // SAFETY: emulated lanes need no CPU feature; the bounds are checked.
        unsafe { channel_pair_x16::<Emulated>(band, source, out, stride) }
    }
}
