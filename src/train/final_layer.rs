//! The new final layer, `softmax(bottleneck · weights + biases)`, its SGD step, and the
//! measures of how well it does.

use anyhow::Result;
use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::Rng;

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
        self.weights
            .iter()
            .chain(&self.biases)
            .all(|v| v.is_finite())
    }

    /// Class probabilities, one row per input row.
    pub fn probabilities(&self, features: ArrayView2<f32>) -> Array2<f32> {
        let mut logits = features.dot(&self.weights) + &self.biases;
        for mut row in logits.rows_mut() {
            let max = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            row.mapv_inplace(|v| (v - max).exp());
            let sum = row.sum();
            row /= sum;
        }
        logits
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
    /// `(probabilities - one_hot) / batch` at the logits.
    pub(super) fn sgd_step(&mut self, features: &Array2<f32>, labels: &[usize], rate: f32) {
        let mut gradient = self.probabilities(features.view());
        for (row, &label) in labels.iter().enumerate() {
            gradient[[row, label]] -= 1.0;
        }
        gradient /= labels.len() as f32;
        let weight_gradient = features.t().dot(&gradient);
        self.weights.scaled_add(-rate, &weight_gradient);
        self.biases.scaled_add(-rate, &gradient.sum_axis(Axis(0)));
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
