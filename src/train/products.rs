//! The two matrix products of an SGD step, computed straight from the batch's rows:
//! `bottlenecks · weights` (the logits) and `bottlenecksᵀ · gradient` (the weights'
//! gradient).
//!
//! Why not ndarray's `dot`: with a batch of a hundred bottlenecks and a handful of classes,
//! matrixmultiply spends more time packing both operands into its tile layout than
//! multiplying them, and training multiplies twice a step for thousands of steps.
//!
//! The results are bit for bit those of `dot`, so a seed gives the same graph it always
//! gave: as in matrixmultiply, every output element is one multiply-add chain over the
//! shared dimension in order, restarted from zero every [`KC`] terms with the partial sums
//! added in order, and the multiply-adds are fused exactly when matrixmultiply's kernel
//! fuses them (it depends on the CPU; [`Arithmetic::of_ndarray`] asks `dot` once).

use std::sync::OnceLock;

use super::pair::Pair;

/// matrixmultiply's `S_KC`: how many terms of the shared dimension one pass sums before
/// adding the partial sum to the output.
const KC: usize = 256;

/// Classes of the logits computed together: one 256-bit vector.
const LANES: usize = 8;

/// How a multiply-add rounds.
trait MulAdd {
    fn mul_add(a: f32, b: f32, acc: f32) -> f32;
}

/// `a * b + acc` rounded once (an FMA instruction).
struct Fused;

impl MulAdd for Fused {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, acc: f32) -> f32 {
        a.mul_add(b, acc)
    }
}

/// `a * b` rounded, then the sum rounded.
struct Separate;

impl MulAdd for Separate {
    #[inline(always)]
    fn mul_add(a: f32, b: f32, acc: f32) -> f32 {
        a * b + acc
    }
}

/// The arithmetic `dot` uses on this CPU, and how this module runs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arithmetic {
    /// Fused, with this module compiled for AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    FusedAvx2,
    Fused,
    Separate,
}

impl Arithmetic {
    fn get() -> Arithmetic {
        static ARITHMETIC: OnceLock<Arithmetic> = OnceLock::new();
        *ARITHMETIC.get_or_init(Arithmetic::of_ndarray)
    }

    /// Asks `dot` itself, so the answer follows matrixmultiply's own kernel choice: the
    /// second product of `[-(1 + 2⁻¹¹), 1 + 2⁻¹²] · [1, 1 + 2⁻¹²]` is `1 + 2⁻¹¹ + 2⁻²⁴`,
    /// which a fused multiply-add keeps (the sum is 2⁻²⁴) and a separate one rounds to
    /// `1 + 2⁻¹¹` (the sum is 0).
    fn of_ndarray() -> Arithmetic {
        let a = ndarray::arr2(&[[-(1.0 + 2f32.powi(-11)), 1.0 + 2f32.powi(-12)]]);
        let b = ndarray::arr2(&[[1.0f32], [1.0 + 2f32.powi(-12)]]);
        if a.dot(&b)[[0, 0]] == 0.0 {
            return Arithmetic::Separate;
        }
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return Arithmetic::FusedAvx2;
        }
        Arithmetic::Fused
    }
}

/// What the products keep across steps: scratch space, so that a step allocates nothing
/// large, and the second thread that computes half of each product.
#[derive(Debug, Default)]
pub(super) struct Panel {
    /// The weights in groups of [`LANES`] classes: `[group][dim][lane]`, zero-padded.
    values: Vec<f32>,
    pair: Pair,
}

impl Panel {
    /// A panel whose products use `threads` threads (two at most; 1: the caller's only).
    pub(super) fn with_threads(threads: usize) -> Panel {
        Panel {
            values: Vec::new(),
            pair: Pair::new(threads),
        }
    }
}

/// `out[r][c] = rows[r] · weights[..][c]`: `weights` is `dim x classes` and `out`
/// `rows.len() x classes`, both row-major.
pub(super) fn logits(
    rows: &[&[f32]],
    weights: &[f32],
    classes: usize,
    panel: &mut Panel,
    out: &mut [f32],
) {
    let dim = weights.len() / classes.max(1);
    assert!(rows.iter().all(|row| row.len() == dim) && out.len() == rows.len() * classes);
    pack_panel(weights, dim, classes, &mut panel.values);
    let (pair, panel) = (&panel.pair, &panel.values);
    let one_half = |rows: &[&[f32]], out: &mut [f32]| match Arithmetic::get() {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: FusedAvx2 is chosen only where the CPU has AVX2 and FMA.
        Arithmetic::FusedAvx2 => unsafe { logits_avx2(rows, panel, dim, classes, out) },
        Arithmetic::Fused => logits_with::<Fused>(rows, panel, dim, classes, out),
        Arithmetic::Separate => logits_with::<Separate>(rows, panel, dim, classes, out),
    };
    if !worth_splitting(rows.len() * dim * classes) {
        return one_half(rows, out);
    }
    // Every row's logits are chains of their own: halves of the rows give the same bits.
    let (first, second) = rows.split_at(rows.len() / 2);
    let (out_first, out_second) = out.split_at_mut(first.len() * classes);
    pair.join(
        || one_half(first, out_first),
        || one_half(second, out_second),
    );
}

/// Multiply-adds below which a product stays on the caller's thread: the hand-off to the
/// helper costs a few cache-line trips, which a tiny product does not repay.
const SPLIT_FROM: usize = 16 * 1024;

fn worth_splitting(multiply_adds: usize) -> bool {
    multiply_adds >= SPLIT_FROM
}

/// `out[d][c] = Σ_r rows[r][d] · gradient[r][c]`: `gradient` is `rows.len() x classes`
/// and `out` `dim x classes`, both row-major.
pub(super) fn weight_gradient(
    rows: &[&[f32]],
    gradient: &[f32],
    classes: usize,
    panel: &Panel,
    out: &mut [f32],
) {
    let dim = out.len() / classes.max(1);
    assert!(rows.iter().all(|row| row.len() == dim) && gradient.len() == rows.len() * classes);
    let part = |values: std::ops::Range<usize>, out: &mut [f32]| {
        let at = Span {
            rows,
            gradient,
            values,
            classes,
        };
        match Arithmetic::get() {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: FusedAvx2 is chosen only where the CPU has AVX2 and FMA.
            Arithmetic::FusedAvx2 => unsafe { gradient_avx2(at, out) },
            Arithmetic::Fused => gradient_with::<Fused>(at, out),
            Arithmetic::Separate => gradient_with::<Separate>(at, out),
        }
    };
    if !worth_splitting(rows.len() * dim * classes) {
        return part(0..dim, out);
    }
    // Every output is a chain over the rows of its own: halves of the bottleneck values
    // give the same bits. The cut falls on a whole tile of values.
    let middle = dim / 2 / 16 * 16;
    let (out_first, out_second) = out.split_at_mut(middle * classes);
    panel.pair.join(
        || part(0..middle, out_first),
        || part(middle..dim, out_second),
    );
}

/// The part of the weights' gradient one call computes: bottleneck values `values` of
/// every class, into an `out` that starts at the first of them.
#[derive(Clone)]
struct Span<'a> {
    rows: &'a [&'a [f32]],
    gradient: &'a [f32],
    values: std::ops::Range<usize>,
    classes: usize,
}

fn pack_panel(weights: &[f32], dim: usize, classes: usize, panel: &mut Vec<f32>) {
    let groups = classes.div_ceil(LANES);
    panel.clear();
    panel.resize(groups * dim * LANES, 0.0);
    for (group, lanes) in panel.chunks_exact_mut(dim * LANES).enumerate() {
        let first = group * LANES;
        let width = (classes - first).min(LANES);
        for (row, lanes) in weights
            .chunks_exact(classes)
            .zip(lanes.chunks_exact_mut(LANES))
        {
            lanes[..width].copy_from_slice(&row[first..first + width]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn logits_avx2(rows: &[&[f32]], panel: &[f32], dim: usize, classes: usize, out: &mut [f32]) {
    logits_with::<Fused>(rows, panel, dim, classes, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gradient_avx2(at: Span, out: &mut [f32]) {
    gradient_with::<Fused>(at, out)
}

/// Eight rows at a time (eight independent chains keep the multiply-add units busy),
/// then the rest in tiles of four, two and one. The terms go [`SUB`] at a time through
/// every tile, so that stretch of the panel stays in the first-level cache; each tile's
/// partial sums wait in `acc` meanwhile, which changes no chain's order.
#[inline(always)]
fn logits_with<M: MulAdd>(
    rows: &[&[f32]],
    panel: &[f32],
    dim: usize,
    classes: usize,
    out: &mut [f32],
) {
    let mut acc = vec![[0.0; LANES]; rows.len()];
    let mut total = vec![[0.0; LANES]; rows.len()];
    for group in 0..classes.div_ceil(LANES) {
        let panel = &panel[group * dim * LANES..(group + 1) * dim * LANES];
        for pass in (0..dim).step_by(KC) {
            acc.fill([0.0; LANES]);
            let end = (pass + KC).min(dim);
            for sub in (pass..end).step_by(SUB) {
                let terms = sub..(sub + SUB).min(end);
                let mut start = 0;
                while start < rows.len() {
                    let (rows, acc) = (&rows[start..], &mut acc[start..]);
                    start += match rows.len() {
                        8.. => logits_tile::<M, 8>(rows, acc, panel, terms.clone()),
                        4..=7 => logits_tile::<M, 4>(rows, acc, panel, terms.clone()),
                        2..=3 => logits_tile::<M, 2>(rows, acc, panel, terms.clone()),
                        _ => logits_tile::<M, 1>(rows, acc, panel, terms.clone()),
                    };
                }
            }
            for (total, acc) in total.iter_mut().zip(&acc) {
                add_block::<1, LANES>(
                    std::array::from_mut(total),
                    std::array::from_ref(acc),
                    pass == 0,
                );
            }
        }
        let first = group * LANES;
        let width = (classes - first).min(LANES);
        for (row, lanes) in total.iter().enumerate() {
            out[row * classes + first..row * classes + first + width]
                .copy_from_slice(&lanes[..width]);
        }
    }
}

/// Terms of a pass taken through all rows at a time: 128 terms of the panel are 4 KiB.
const SUB: usize = 128;

/// Carries the chains of the first `R` rows over `terms`; returns `R`.
#[inline(always)]
fn logits_tile<M: MulAdd, const R: usize>(
    rows: &[&[f32]],
    acc: &mut [[f32; LANES]],
    panel: &[f32],
    terms: std::ops::Range<usize>,
) -> usize {
    let rows: [&[f32]; R] = std::array::from_fn(|i| &rows[i][terms.clone()]);
    let mut chains: [[f32; LANES]; R] = std::array::from_fn(|i| acc[i]);
    let panel = &panel[terms.start * LANES..terms.end * LANES];
    for (k, w) in panel.chunks_exact(LANES).enumerate() {
        for i in 0..R {
            let x = rows[i][k];
            for l in 0..LANES {
                chains[i][l] = M::mul_add(x, w[l], chains[i][l]);
            }
        }
    }
    acc[..R].copy_from_slice(&chains);
    R
}

/// Adds one pass's partial sums to the total, as matrixmultiply does between passes (the
/// first pass is the total).
#[inline(always)]
fn add_block<const R: usize, const W: usize>(
    total: &mut [[f32; W]; R],
    acc: &[[f32; W]; R],
    first: bool,
) {
    if first {
        *total = *acc;
    } else {
        for (total, acc) in total.iter_mut().zip(acc) {
            for (t, a) in total.iter_mut().zip(acc) {
                *t += *a;
            }
        }
    }
}

/// Tiles of up to five classes (a whole class count as small as retrain's usual ones) by
/// sixteen bottleneck values; values left over at the end of a row one at a time.
#[inline(always)]
fn gradient_with<M: MulAdd>(at: Span, out: &mut [f32]) {
    let mut first = 0;
    while first < at.classes {
        first += match at.classes - first {
            5.. => gradient_classes::<M, 5, 16>(&at, first, out),
            4 => gradient_classes::<M, 4, 16>(&at, first, out),
            3 => gradient_classes::<M, 3, 16>(&at, first, out),
            2 => gradient_classes::<M, 2, 16>(&at, first, out),
            _ => gradient_classes::<M, 1, 32>(&at, first, out),
        };
    }
}

/// The gradient of `CT` classes from class `first` on; returns `CT`.
#[inline(always)]
fn gradient_classes<M: MulAdd, const CT: usize, const DT: usize>(
    at: &Span,
    first: usize,
    out: &mut [f32],
) -> usize {
    let (start, end) = (at.values.start, at.values.end);
    let whole = start + (end - start) / DT * DT;
    let store = |tile: &[[f32; DT]; CT], d: usize, out: &mut [f32]| {
        store_gradient(tile, d - start, at.classes, first, out)
    };
    for d in (start..whole).step_by(DT) {
        let tile = gradient_tile::<M, CT, DT>(at.rows, at.gradient, at.classes, first, d);
        store(&tile, d, out);
    }
    for d in whole..end {
        let tile = gradient_tile::<M, CT, 1>(at.rows, at.gradient, at.classes, first, d);
        store_gradient(&tile, d - start, at.classes, first, out);
    }
    CT
}

#[inline(always)]
fn gradient_tile<M: MulAdd, const CT: usize, const DT: usize>(
    rows: &[&[f32]],
    gradient: &[f32],
    classes: usize,
    first: usize,
    d: usize,
) -> [[f32; DT]; CT] {
    let mut total = [[0.0; DT]; CT];
    for start in (0..rows.len()).step_by(KC) {
        let end = (start + KC).min(rows.len());
        let mut acc = [[0.0; DT]; CT];
        for r in start..end {
            let x: &[f32; DT] = rows[r][d..d + DT].try_into().expect("DT values");
            let g = &gradient[r * classes + first..r * classes + first + CT];
            for j in 0..CT {
                for l in 0..DT {
                    acc[j][l] = M::mul_add(x[l], g[j], acc[j][l]);
                }
            }
        }
        add_block(&mut total, &acc, start == 0);
    }
    total
}

#[inline(always)]
fn store_gradient<const CT: usize, const DT: usize>(
    tile: &[[f32; DT]; CT],
    d: usize,
    classes: usize,
    first: usize,
    out: &mut [f32],
) {
    for (j, values) in tile.iter().enumerate() {
        for (l, &v) in values.iter().enumerate() {
            out[(d + l) * classes + first + j] = v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rows_of;
    use super::*;
    use ndarray::Array2;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rows: usize, cols: usize, rng: &mut ChaCha8Rng) -> Array2<f32> {
        Array2::from_shape_simple_fn((rows, cols), || rng.random_range(-1.0f32..1.0))
    }

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    /// Shapes around every boundary: tiles of rows, lanes of classes, passes of KC terms.
    const SHAPES: [(usize, usize, usize); 8] = [
        (100, 1024, 5),
        (37, 1000, 11),
        (1, 256, 1),
        (9, 257, 8),
        (300, 513, 3),
        (8, 31, 17),
        (513, 40, 4),
        (0, 16, 2),
    ];

    /// Both on the caller alone and split with the helper thread: the same bits.
    #[test]
    fn logits_are_dot_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for threads in [1, 2] {
            let mut panel = Panel::with_threads(threads);
            for (batch, dim, classes) in SHAPES {
                let x = random(batch, dim, &mut rng);
                let w = random(dim, classes, &mut rng);
                let rows = rows_of(&x);
                let mut out = vec![f32::NAN; batch * classes];
                logits(&rows, w.as_slice().unwrap(), classes, &mut panel, &mut out);
                let expected = x.dot(&w);
                assert_eq!(
                    bits(&out),
                    bits(expected.as_slice().unwrap()),
                    "{batch}x{dim}x{classes}, {threads} threads"
                );
            }
        }
    }

    #[test]
    fn weight_gradients_are_dot_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for threads in [1, 2] {
            let panel = Panel::with_threads(threads);
            for (batch, dim, classes) in SHAPES {
                let x = random(batch, dim, &mut rng);
                let g = random(batch, classes, &mut rng);
                let rows = rows_of(&x);
                let mut out = vec![f32::NAN; dim * classes];
                weight_gradient(&rows, g.as_slice().unwrap(), classes, &panel, &mut out);
                let expected = x.t().dot(&g);
                let expected = expected.as_standard_layout();
                assert_eq!(
                    bits(&out),
                    bits(expected.as_slice().unwrap()),
                    "{batch}x{dim}x{classes}, {threads} threads"
                );
            }
        }
    }

    /// matrixmultiply's arithmetic written out one element at a time.
    fn chains<M: MulAdd>(terms: usize, product: impl Fn(usize) -> (f32, f32)) -> f32 {
        let mut total = 0.0;
        for pass in (0..terms).step_by(KC) {
            let mut acc = 0.0;
            for k in pass..(pass + KC).min(terms) {
                let (a, b) = product(k);
                acc = M::mul_add(a, b, acc);
            }
            total = if pass == 0 { acc } else { total + acc };
        }
        total
    }

    /// Both arithmetics, whichever this CPU's `dot` uses: the unfused one is what
    /// matrixmultiply computes on CPUs without FMA.
    fn check_against_the_chains<M: MulAdd>() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let mut panel = Vec::new();
        for (batch, dim, classes) in SHAPES {
            let x = random(batch, dim, &mut rng);
            let w = random(dim, classes, &mut rng);
            let g = random(batch, classes, &mut rng);
            let rows = rows_of(&x);
            pack_panel(w.as_slice().unwrap(), dim, classes, &mut panel);
            let mut logits = vec![f32::NAN; batch * classes];
            logits_with::<M>(&rows, &panel, dim, classes, &mut logits);
            let mut gradient = vec![f32::NAN; dim * classes];
            let at = Span {
                rows: &rows,
                gradient: g.as_slice().unwrap(),
                values: 0..dim,
                classes,
            };
            gradient_with::<M>(at, &mut gradient);
            for r in 0..batch {
                for c in 0..classes {
                    let expected = chains::<M>(dim, |k| (x[[r, k]], w[[k, c]]));
                    assert_eq!(logits[r * classes + c].to_bits(), expected.to_bits());
                }
            }
            for d in 0..dim {
                for c in 0..classes {
                    let expected = chains::<M>(batch, |r| (x[[r, d]], g[[r, c]]));
                    assert_eq!(gradient[d * classes + c].to_bits(), expected.to_bits());
                }
            }
        }
    }

    #[test]
    fn fused_products_are_the_chains_written_out() {
        check_against_the_chains::<Fused>();
    }

    #[test]
    fn separate_products_are_the_chains_written_out() {
        check_against_the_chains::<Separate>();
    }

    #[test]
    fn the_probe_sees_the_fma_kernel_where_the_cpu_has_one() {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("avx2")
            && std::env::var_os("MMTEST_FEATURE").is_none()
        {
            assert_eq!(Arithmetic::get(), Arithmetic::FusedAvx2);
        }
    }
}
