//! The depthwise convolution on blocked activations: each tap is one multiply for the eight
//! channels of a block, at any stride, read straight from the input, with no padded copy.

use super::{input_planes, output_planes, portable, Isa, BLOCK};
use crate::backbone::accel::layer::Geometry;

/// Runs the layer: `data` and `output` blocked, `taps` `[blocks][KH x KW][8]` and `bias`
/// padded to whole blocks ([`super::pack_taps`]). Slices of the wrong length, and
/// geometries that are not depthwise, panic here, before any kernel runs.
pub(crate) fn convolve(
    isa: Isa,
    g: &Geometry,
    clip: (f32, f32),
    data: &[f32],
    taps: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    let (input, out) = (input_planes(g), output_planes(g));
    assert!(!g.dense && g.inputs == g.channels && g.is_valid());
    assert!(data.len() == input.blocked_len() && output.len() == out.blocked_len());
    let per_block = g.kernel_h * g.kernel_w * BLOCK;
    assert!(taps.len() == input.blocks() * per_block && bias.len() == input.blocks() * BLOCK);
    let (plane, out_plane) = (input.pixels() * BLOCK, out.pixels() * BLOCK);
    for b in 0..input.blocks() {
        let data = &data[b * plane..][..plane];
        let taps = &taps[b * per_block..][..per_block];
        let bias = &bias[b * BLOCK..][..BLOCK];
        let output = &mut output[b * out_plane..][..out_plane];
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2(isa) => {
                super::x86_64_avx2::depthwise_block(isa, g, data, taps, bias, clip, output)
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512(isa) => {
                super::x86_64_avx512::depthwise_block(isa, g, data, taps, bias, clip, output)
            }
            _ => portable::depthwise_block(g, data, taps, bias, clip, output),
        }
    }
}
