//! The pointwise tiles in portable Rust: what runs on CPUs without AVX2 and FMA, and the
//! reference the AVX2 kernels are tested against.

use super::Band;

/// Either tile one multiply-add at a time; `pixel(i, c)` reads input `i` of the tile's
/// pixel `c`, and output channel `r` of pixel `c` goes to `out[r * stride + c]`.
pub(super) fn tile(
    band: &Band,
    pixel: impl Fn(usize, usize) -> f32,
    width: usize,
    out: &mut [f32],
    stride: usize,
) {
    let lanes = band.bias.len();
    let (low, high) = band.clip;
    for r in 0..band.channels {
        for c in 0..width {
            let mut sum = band.bias[r];
            for (i, w) in band.weights.chunks_exact(lanes).enumerate() {
                sum += w[r] * pixel(i, c);
            }
            out[r * stride + c] = sum.max(low).min(high);
        }
    }
}
