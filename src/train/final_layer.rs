//! The new final layer, `softmax(bottleneck · weights + biases)`, its SGD step, and the
//! measures of how well it does.

use anyhow::Result;
use ndarray::{s, Array1, Array2, ArrayView1, ArrayView2};
use rand::Rng;

use super::products::{self, Panel};
use super::Examples;

/// The trained layer: `softmax(bottleneck · weights + biases)`.
#[derive(Clone, Debug, PartialEq)]
pub struct FinalLayer {
    /// Shape (bottleneck size, class count).
    pub weights: Array2<f32>,
    pub biases: Array1<f32>,
}

impl FinalLayer {
    /// retrain.py's initialisation: weights from a normal of std 0.001 truncated at two
    /// standard deviations, biases zero.
    pub fn new(bottleneck_size: usize, class_count: usize, rng: &mut impl Rng) -> FinalLayer {
        let weights = Array2::from_shape_simple_fn((bottleneck_size, class_count), || {
            0.001 * truncated_normal(rng)
        });
        FinalLayer {
            weights,
            biases: Array1::zeros(class_count),
        }
    }

    /// Whether every weight and bias is a number: false once SGD has diverged.
    pub fn is_finite(&self) -> bool {
        // Checked after every step: a fold without early exit runs a vector at a time.
        let finite = |values: &[f32]| values.iter().fold(true, |ok, v| ok & v.is_finite());
        match (self.weights.as_slice(), self.biases.as_slice()) {
            (Some(weights), Some(biases)) => finite(weights) && finite(biases),
            _ => self
                .weights
                .iter()
                .chain(&self.biases)
                .all(|v| v.is_finite()),
        }
    }

    /// Class probabilities, one row per input row.
    pub fn probabilities(&self, features: ArrayView2<f32>) -> Array2<f32> {
        let features = features.as_standard_layout();
        let dim = features.ncols();
        let values = features.as_slice().expect("standard layout");
        let rows: Vec<&[f32]> = (0..features.nrows())
            .map(|r| &values[r * dim..(r + 1) * dim])
            .collect();
        self.probabilities_of_rows(&rows, &mut Panel::default())
    }

    /// [`FinalLayer::probabilities`] of bottlenecks given as rows.
    pub(super) fn probabilities_of_rows(&self, rows: &[&[f32]], panel: &mut Panel) -> Array2<f32> {
        let mut probabilities = Array2::zeros((rows.len(), self.biases.len()));
        self.probabilities_into(rows, panel, &mut probabilities);
        probabilities
    }

    /// [`FinalLayer::probabilities_of_rows`] into `out`, which is replaced only when the
    /// batch's shape changes: training takes its probabilities every step.
    pub(super) fn probabilities_into(
        &self,
        rows: &[&[f32]],
        panel: &mut Panel,
        out: &mut Array2<f32>,
    ) {
        let classes = self.biases.len();
        if out.dim() != (rows.len(), classes) || !out.is_standard_layout() {
            *out = Array2::zeros((rows.len(), classes));
        }
        let weights = self.weights.as_standard_layout();
        products::logits(
            rows,
            weights.as_slice().expect("standard layout"),
            classes,
            panel,
            out.as_slice_mut().expect("standard layout"),
        );
        *out += &self.biases;
        for mut row in out.rows_mut() {
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row /= sum;
        }
    }

    /// Class probabilities of every example, one row each, computed a chunk at a time.
    pub fn probabilities_of(&self, examples: &Examples) -> Result<Array2<f32>> {
        let mut all = Array2::zeros((examples.len(), self.biases.len()));
        for chunk in examples.feature_chunks() {
            let (start, features) = chunk?;
            let chunk = self.probabilities(features.view());
            all.slice_mut(s![start..start + chunk.nrows(), ..])
                .assign(&chunk);
        }
        Ok(all)
    }

    /// One SGD step on a batch: the gradient of the mean cross entropy is
    /// `(probabilities - one_hot) / batch` at the logits; `decay` adds L2 weight decay
    /// (`decay * w` to each weight's gradient, none to the biases).
    pub(super) fn sgd_step(
        &mut self,
        rows: &[&[f32]],
        labels: &[usize],
        rate: f32,
        decay: f32,
        scratch: &mut StepScratch,
    ) {
        let gradient = &mut scratch.gradient;
        self.probabilities_into(rows, &mut scratch.panel, gradient);
        for (row, &label) in labels.iter().enumerate() {
            gradient[[row, label]] -= 1.0;
        }
        *gradient /= labels.len() as f32;
        let (dim, classes) = self.weights.dim();
        scratch.weight_gradient.resize(dim * classes, 0.0);
        products::weight_gradient(
            rows,
            gradient.as_slice().expect("standard layout"),
            classes,
            &scratch.panel,
            &mut scratch.weight_gradient,
        );
        let weight_gradient = ArrayView2::from_shape((dim, classes), &scratch.weight_gradient)
            .expect("dim x classes values");
        if decay != 0.0 {
            // w - rate * (g + decay * w), with g taken at the old w.
            self.weights *= 1.0 - rate * decay;
        }
        self.weights.scaled_add(-rate, &weight_gradient);
        // The rows summed in order from zero, as ndarray's `sum_axis(Axis(0))` does.
        let bias_gradient = &mut scratch.bias_gradient;
        bias_gradient.clear();
        bias_gradient.resize(classes, 0.0);
        for row in gradient.rows() {
            for (total, &g) in bias_gradient.iter_mut().zip(row) {
                *total += g;
            }
        }
        self.biases
            .scaled_add(-rate, &ArrayView1::from(&bias_gradient[..]));
    }
}

/// What an SGD step needs besides the batch, kept from one step to the next.
#[derive(Debug, Default)]
pub(super) struct StepScratch {
    pub(super) panel: Panel,
    /// The batch's probabilities, then the gradient at the logits.
    gradient: Array2<f32>,
    weight_gradient: Vec<f32>,
    bias_gradient: Vec<f32>,
}

impl StepScratch {
    /// Scratch whose products use `threads` threads (two at most).
    pub(super) fn with_threads(threads: usize) -> StepScratch {
        StepScratch {
            panel: Panel::with_threads(threads),
            ..StepScratch::default()
        }
    }
}

pub(super) fn truncated_normal(rng: &mut impl Rng) -> f32 {
    loop {
        // Box-Muller.
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
        if z.abs() <= 2.0 {
            return z as f32;
        }
    }
}

/// Fraction of rows whose most probable class is the label.
pub fn accuracy(probabilities: &Array2<f32>, labels: &[usize]) -> f64 {
    if labels.is_empty() {
        return 0.0;
    }
    let correct = predictions(probabilities)
        .iter()
        .zip(labels)
        .filter(|(p, l)| p == l)
        .count();
    correct as f64 / labels.len() as f64
}

/// Mean cross entropy of the labels under the probabilities.
pub fn cross_entropy(probabilities: &Array2<f32>, labels: &[usize]) -> f64 {
    let total: f64 = labels
        .iter()
        .enumerate()
        .map(|(row, &label)| -f64::from(probabilities[[row, label]].max(1e-30)).ln())
        .sum();
    total / labels.len().max(1) as f64
}

/// The most probable class of each row (first one on ties).
pub fn predictions(probabilities: &Array2<f32>) -> Vec<usize> {
    probabilities
        .rows()
        .into_iter()
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &p)| {
                    if p > best.1 {
                        (i, p)
                    } else {
                        best
                    }
                })
                .0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Axis;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The SGD step as it was written on ndarray's `dot`, before the products had their
    /// own loops: the reference the step must still match bit for bit.
    fn dot_step(layer: &mut FinalLayer, features: &Array2<f32>, labels: &[usize], rate: f32) {
        let mut gradient = features.dot(&layer.weights) + &layer.biases;
        for mut row in gradient.rows_mut() {
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row /= sum;
        }
        for (row, &label) in labels.iter().enumerate() {
            gradient[[row, label]] -= 1.0;
        }
        gradient /= labels.len() as f32;
        let weight_gradient = features.t().dot(&gradient);
        layer.weights.scaled_add(-rate, &weight_gradient);
        layer.biases.scaled_add(-rate, &gradient.sum_axis(Axis(0)));
    }

    #[test]
    fn weight_decay_scales_the_weights_before_the_gradient_and_spares_the_biases() {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let (batch, dim, classes) = (10, 6, 3);
        let layer = FinalLayer::new(dim, classes, &mut rng);
        let features = Array2::from_shape_simple_fn((batch, dim), || rng.random_range(0.0f32..6.0));
        let rows: Vec<&[f32]> = features
            .rows()
            .into_iter()
            .map(|r| r.to_slice().unwrap())
            .collect();
        let labels: Vec<usize> = (0..batch).map(|r| r % classes).collect();
        let (rate, decay) = (0.1, 2.0);
        let mut plain = layer.clone();
        plain.sgd_step(&rows, &labels, rate, 0.0, &mut StepScratch::default());
        let mut decayed = layer.clone();
        decayed.sgd_step(&rows, &labels, rate, decay, &mut StepScratch::default());
        assert_eq!(decayed.biases, plain.biases);
        // w - rate * (g + decay * w) = (plain step) - rate * decay * w
        let expected = &plain.weights - &(layer.weights.mapv(|w| rate * decay * w));
        let largest = (&decayed.weights - &expected)
            .mapv(f32::abs)
            .fold(0f32, |m, &v| m.max(v));
        assert!(largest < 1e-7, "{largest}");
        assert_ne!(decayed.weights, plain.weights);
    }

    #[test]
    fn steps_match_the_dot_products_bit_for_bit() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (batch, dim, classes) = (100, 600, 5);
        let mut ours = FinalLayer::new(dim, classes, &mut rng);
        let mut reference = ours.clone();
        let mut scratch = StepScratch::default();
        for step in 0..60 {
            // Batches of other sizes now and then: the kept probabilities are reshaped.
            let batch = if step % 7 == 3 { batch - 37 } else { batch };
            let features =
                Array2::from_shape_simple_fn((batch, dim), || rng.random_range(0.0f32..6.0));
            let labels: Vec<usize> = (0..batch).map(|r| (r * 7 + step) % classes).collect();
            let rows: Vec<&[f32]> = features
                .rows()
                .into_iter()
                .map(|r| r.to_slice().unwrap())
                .collect();
            ours.sgd_step(&rows, &labels, 0.01, 0.0, &mut scratch);
            dot_step(&mut reference, &features, &labels, 0.01);
            assert_eq!(ours, reference, "step {step}");
            let bits = |values: &[f32]| values.iter().map(|w| w.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(ours.weights.as_slice().unwrap()),
                bits(reference.weights.as_slice().unwrap())
            );
            assert_eq!(
                bits(ours.biases.as_slice().unwrap()),
                bits(reference.biases.as_slice().unwrap())
            );
        }
    }
}
