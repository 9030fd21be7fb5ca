//! The 8 x 8 transpose of AVX2 registers that flowers' ops share: the channel-blocked
//! depthwise layers turn channel planes into pixels of eight channels and back with it,
//! and the pointwise channel tiles turn their pixel-major sums into channel rows.

use std::arch::x86_64::*;

/// Transposes 8 x 8 floats held in registers: vector `j` of the result is lane `j` of
/// every row, in order.
///
/// # Safety
/// The CPU must support AVX (called from a function compiled with AVX2 enabled, where it
/// inlines into 24 shuffles).
#[inline(always)]
pub(crate) unsafe fn transpose8(rows: [__m256; 8]) -> [__m256; 8] {
    let r = rows;
    // SAFETY: plain register shuffles, available by the contract.
    unsafe {
        let t = [
            _mm256_unpacklo_ps(r[0], r[1]),
            _mm256_unpackhi_ps(r[0], r[1]),
            _mm256_unpacklo_ps(r[2], r[3]),
            _mm256_unpackhi_ps(r[2], r[3]),
            _mm256_unpacklo_ps(r[4], r[5]),
            _mm256_unpackhi_ps(r[4], r[5]),
            _mm256_unpacklo_ps(r[6], r[7]),
            _mm256_unpackhi_ps(r[6], r[7]),
        ];
        let u = [
            _mm256_shuffle_ps::<0x44>(t[0], t[2]),
            _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
            _mm256_shuffle_ps::<0x44>(t[1], t[3]),
            _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
            _mm256_shuffle_ps::<0x44>(t[4], t[6]),
            _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
            _mm256_shuffle_ps::<0x44>(t[5], t[7]),
            _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
        ];
        std::array::from_fn(|j| {
            if j < 4 {
                _mm256_permute2f128_ps::<0x20>(u[j], u[j + 4])
            } else {
                _mm256_permute2f128_ps::<0x31>(u[j - 4], u[j])
            }
        })
    }
}
