//! Which instruction sets flowers' kernels may use, decided once at run time.
//!
//! A kernel compiled with `#[target_feature(enable = "avx2,fma")]` is undefined behaviour
//! on a CPU without those features, so calling one must be impossible without having
//! checked. [`Avx2Fma`] and [`Avx512`] are those checks made into values: only their
//! `detect` functions create one, and only on a CPU that has the features, so every safe
//! function that takes one may call the kernels compiled for them. [`Kernels`] is the
//! choice an op keeps: the best path the CPU has, or the one `FLOWERS_KERNELS` names.

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

/// Proof that this CPU supports AVX-512F as well as AVX2 and FMA: the 512-bit kernels
/// hand their short tails to the AVX2 ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Avx512 {
    _private: (),
}

impl Avx512 {
    /// The token, if this CPU has AVX-512F, AVX2 and FMA.
    pub(crate) fn detect() -> Option<Avx512> {
        Avx2Fma::detect()?;
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx512f") {
            return Some(Avx512 { _private: () });
        }
        None
    }
}

/// The path a backbone's plan takes, fixed when the plan is built.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kernels {
    /// tract's own plan: no layer is swapped.
    Portable,
    /// flowers' blocked ops in plain Rust: the reference the vector kernels are tested
    /// against, and the path for CPUs without AVX2 when asked for.
    Plain,
    /// The blocked ops with 256-bit vectors and FMA.
    Avx2(Avx2Fma),
    /// The blocked ops with 512-bit vectors.
    Avx512(Avx512),
}

/// The environment variable that picks a path: `portable` (tract's own plan), `plain`
/// (flowers' ops in plain Rust), `avx2` or `avx512`. Unset, empty or `auto`, the best path
/// the CPU has is taken; a path the CPU lacks falls back to the best it has.
pub(crate) const KERNELS_VARIABLE: &str = "FLOWERS_KERNELS";

impl Kernels {
    /// The path to take on this CPU: the best it supports, or the one [`KERNELS_VARIABLE`]
    /// asks for when the CPU has it.
    pub(crate) fn detect() -> Kernels {
        let best = Self::best();
        match std::env::var(KERNELS_VARIABLE).as_deref() {
            Ok("portable") => Kernels::Portable,
            Ok("plain") => Kernels::Plain,
            Ok("avx2") => Avx2Fma::detect().map_or(best, Kernels::Avx2),
            Ok("avx512") => Avx512::detect().map_or(best, Kernels::Avx512),
            _ => best,
        }
    }

    /// The fastest path on this CPU. Without AVX2, tract's plan: its own vector kernels
    /// (SSE, or NEON on ARM) beat the plain Rust ops, which the compiler vectorises for
    /// the baseline instruction set only.
    fn best() -> Kernels {
        if let Some(avx512) = Avx512::detect() {
            return Kernels::Avx512(avx512);
        }
        Avx2Fma::detect().map_or(Kernels::Portable, Kernels::Avx2)
    }

    /// Every path this CPU can run, for the tests that force each one.
    #[cfg(test)]
    pub(crate) fn supported() -> Vec<Kernels> {
        let mut all = vec![Kernels::Portable, Kernels::Plain];
        all.extend(Avx2Fma::detect().map(Kernels::Avx2));
        all.extend(Avx512::detect().map(Kernels::Avx512));
        all
    }
}
