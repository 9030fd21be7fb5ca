//! Sixteen `f32` lanes, as the 512-bit kernels see them: an AVX-512F register ([`Zmm`]),
//! or, in tests, an array in portable Rust ([`Emulated`]).
//!
//! Why a trait: the 512-bit kernels are written once, generic over [`F32x16`], so that
//! their blocking, tails and masks run in the tests on any CPU through [`Emulated`], and
//! on AVX-512 CPUs through [`Zmm`], whose methods are one intrinsic each. Every method is
//! `#[inline(always)]`: inlined into a kernel compiled with AVX-512F enabled, each becomes
//! that one instruction.

/// Sixteen `f32` lanes and the operations the kernels need.
///
/// # Safety
/// For [`Zmm`], every method may only run on a CPU with AVX-512F, that is from code that
/// holds the [`super::cpu::Avx512`] token. Pointer arguments must be valid for the lanes
/// each method documents.
pub(crate) unsafe trait F32x16: Copy {
    /// Every lane `value`.
    unsafe fn splat(value: f32) -> Self;
    /// Lanes from `p[0..16]`.
    unsafe fn load(p: *const f32) -> Self;
    /// The first `n` lanes from `p[0..n]` (`n <= 16`), the rest zero; reads nothing else.
    unsafe fn load_first(p: *const f32, n: usize) -> Self;
    /// Writes the lanes to `p[0..16]`.
    unsafe fn store(self, p: *mut f32);
    /// Writes the first `n` lanes to `p[0..n]` (`n <= 16`); writes nothing else.
    unsafe fn store_first(self, p: *mut f32, n: usize);
    /// `self * b + c`, fused.
    unsafe fn mul_add(self, b: Self, c: Self) -> Self;
    /// `min(max(self, low), high)`.
    unsafe fn clamp(self, low: Self, high: Self) -> Self;
    /// The lanes, in order.
    unsafe fn to_array(self) -> [f32; 16];
}

/// An AVX-512F register.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub(crate) struct Zmm(std::arch::x86_64::__m512);

/// The mask enabling the first `n` lanes (`n <= 16`).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn first_lanes(n: usize) -> u16 {
    debug_assert!(n <= 16);
    ((1u32 << n) - 1) as u16
}

// SAFETY: each method is one AVX-512F intrinsic, sound under the trait's contract (an
// AVX-512F CPU, pointers valid for the lanes read or written; the masked forms touch only
// the enabled lanes' memory).
#[cfg(target_arch = "x86_64")]
unsafe impl F32x16 for Zmm {
    #[inline(always)]
    unsafe fn splat(value: f32) -> Self {
        // SAFETY: the trait's contract.
        unsafe { Zmm(std::arch::x86_64::_mm512_set1_ps(value)) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the trait's contract.
        unsafe { Zmm(std::arch::x86_64::_mm512_loadu_ps(p)) }
    }
    #[inline(always)]
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        // SAFETY: the trait's contract; disabled lanes are not read.
        unsafe { Zmm(std::arch::x86_64::_mm512_maskz_loadu_ps(first_lanes(n), p)) }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the trait's contract.
        unsafe { std::arch::x86_64::_mm512_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn store_first(self, p: *mut f32, n: usize) {
        // SAFETY: the trait's contract; disabled lanes are not written.
        unsafe { std::arch::x86_64::_mm512_mask_storeu_ps(p, first_lanes(n), self.0) }
    }
    #[inline(always)]
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        // SAFETY: the trait's contract.
        unsafe { Zmm(std::arch::x86_64::_mm512_fmadd_ps(self.0, b.0, c.0)) }
    }
    #[inline(always)]
    unsafe fn clamp(self, low: Self, high: Self) -> Self {
        use std::arch::x86_64::{_mm512_max_ps, _mm512_min_ps};
        // SAFETY: the trait's contract.
        unsafe { Zmm(_mm512_min_ps(_mm512_max_ps(self.0, low.0), high.0)) }
    }
    #[inline(always)]
    unsafe fn to_array(self) -> [f32; 16] {
        let mut lanes = [0f32; 16];
        // SAFETY: the trait's contract; `lanes` holds 16 floats.
        unsafe { std::arch::x86_64::_mm512_storeu_ps(lanes.as_mut_ptr(), self.0) };
        lanes
    }
}

/// Sixteen lanes in portable Rust, with the semantics of [`Zmm`] (a fused multiply-add,
/// `max` then `min` as AVX-512 computes them for non-NaN values).
#[cfg(test)]
#[derive(Clone, Copy)]
pub(crate) struct Emulated([f32; 16]);

// SAFETY: plain Rust; the pointer contracts are those of the reads and writes below.
#[cfg(test)]
unsafe impl F32x16 for Emulated {
    unsafe fn splat(value: f32) -> Self {
        Emulated([value; 16])
    }
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: the trait's contract: `p` valid for 16 reads.
        unsafe { Self::load_first(p, 16) }
    }
    unsafe fn load_first(p: *const f32, n: usize) -> Self {
        assert!(n <= 16);
        let mut lanes = [0f32; 16];
        for (i, lane) in lanes.iter_mut().enumerate().take(n) {
            // SAFETY: the trait's contract: `p` valid for `n` reads.
            *lane = unsafe { p.add(i).read_unaligned() };
        }
        Emulated(lanes)
    }
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: the trait's contract: `p` valid for 16 writes.
        unsafe { self.store_first(p, 16) }
    }
    unsafe fn store_first(self, p: *mut f32, n: usize) {
        assert!(n <= 16);
        for (i, lane) in self.0.iter().enumerate().take(n) {
            // SAFETY: the trait's contract: `p` valid for `n` writes.
            unsafe { p.add(i).write_unaligned(*lane) };
        }
    }
    unsafe fn mul_add(self, b: Self, c: Self) -> Self {
        Emulated(std::array::from_fn(|i| self.0[i].mul_add(b.0[i], c.0[i])))
    }
    unsafe fn clamp(self, low: Self, high: Self) -> Self {
        Emulated(std::array::from_fn(|i| {
            self.0[i].max(low.0[i]).min(high.0[i])
        }))
    }
    unsafe fn to_array(self) -> [f32; 16] {
        self.0
    }
}
