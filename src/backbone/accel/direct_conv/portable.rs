//! The direct convolution in portable Rust: what runs on CPUs without AVX2 and FMA, and
//! the reference the AVX2 kernels are tested against.

use super::{Finish, Geometry};

/// One output channel: one tap at a time over a row. Its loop over rows repeats the AVX2
/// kernel's on purpose: one shared loop calling an AVX2 row function per row was measured
/// slower (BENCHMARKS.md), since the row kernel can then no longer be inlined into a loop
/// compiled with AVX2 enabled.
pub(super) fn rows(
    g: &Geometry,
    offsets: &[usize],
    scratch: &[f32],
    taps: &[f32],
    finish: Finish,
    out: &mut [f32],
) {
    let row_step = g.stride_h * g.phase_width();
    for (oy, row) in out.chunks_exact_mut(g.out_w).enumerate() {
        row.fill(finish.bias);
        for (&tap, &offset) in taps.iter().zip(offsets) {
            let src = &scratch[oy * row_step + offset..][..g.out_w];
            for (o, s) in row.iter_mut().zip(src) {
                *o += tap * s;
            }
        }
        for o in row.iter_mut() {
            *o = o.max(finish.low).min(finish.high);
        }
    }
}
