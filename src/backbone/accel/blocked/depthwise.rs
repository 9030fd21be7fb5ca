//! The depthwise convolution on blocked activations: each tap is one multiply for the eight
//! channels of a block, at any stride, read straight from the input, with no padded copy.

use super::direct::{input_planes, output_planes};
use super::{x86_64_avx2, BLOCK};
use crate::backbone::accel::cpu::Avx2Fma;
use crate::backbone::accel::direct_conv::Geometry;

/// Runs the layer: `data` and `output` blocked, `taps` `[blocks][KH x KW][8]` and `bias`
/// padded to whole blocks ([`super::pack_taps`]). Slices of the wrong length, and
/// geometries that are not depthwise, panic here, before any kernel runs.
pub(crate) fn convolve(
    isa: Avx2Fma,
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
        x86_64_avx2::depthwise_block(
            isa,
            g,
            &data[b * plane..][..plane],
            &taps[b * per_block..][..per_block],
            &bias[b * BLOCK..][..BLOCK],
            clip,
            &mut output[b * out_plane..][..out_plane],
        );
    }
}
