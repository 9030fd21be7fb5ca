//! Which instruction sets flowers' kernels may use, decided once at run time.
//!
//! A kernel compiled with `#[target_feature(enable = "avx2,fma")]` is undefined behaviour
//! on a CPU without those features, so calling one must be impossible without having
//! checked. [`Avx2Fma`] is that check made into a value: only [`Avx2Fma::detect`] creates
//! one, and only on a CPU that has both features, so every safe function that takes one
//! may call the AVX2 kernels. Portable code runs wherever no token is given.

/// Proof that this CPU supports AVX2 and FMA. It cannot be built outside this module
/// except through [`Avx2Fma::detect`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Avx2Fma {
    _private: (),
}

impl Avx2Fma {
    /// The token, if this CPU has AVX2 and FMA (cached by the standard library).
    pub(crate) fn detect() -> Option<Avx2Fma> {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Some(Avx2Fma { _private: () });
        }
        None
    }
}
