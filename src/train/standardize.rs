//! Per-feature standardisation of bottlenecks: the final layer trains on
//! `(x - mean) / std`, and the layer handed out has it folded into its weights and biases,
//! so the retrained graph takes the raw bottleneck and every writer (ONNX, TensorFlow,
//! TensorFlow Lite) stays as it is.
//!
//! Why: a bottleneck concatenated from several backbones mixes value ranges (ReLU6
//! averages of one network beside those of another), and one learning rate and one weight
//! decay suit them all only once each value has the same spread.

use anyhow::Result;
use ndarray::Axis;

use super::{Examples, FinalLayer};

/// The mean and standard deviation of each bottleneck value over the training examples.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    mean: Vec<f32>,
    /// Never zero: a value constant over the training set keeps a divisor of 1 (as
    /// scikit-learn's StandardScaler does), it carries nothing to learn from.
    std: Vec<f32>,
}

impl Standardizer {
    /// Measures the examples' bottlenecks (population standard deviation), a bounded
    /// number of rows at a time, accumulating in f64 in a fixed order: equal examples
    /// give bit-equal statistics.
    pub fn of(examples: &Examples) -> Result<Standardizer> {
        let dim = examples.dim();
        let mut sum = vec![0f64; dim];
        let mut squares = vec![0f64; dim];
        for chunk in examples.feature_chunks() {
            let (_, features) = chunk?;
            for row in features.axis_iter(Axis(0)) {
                for ((s, q), &x) in sum.iter_mut().zip(&mut squares).zip(row) {
                    let x = f64::from(x);
                    *s += x;
                    *q += x * x;
                }
            }
        }
        let n = examples.len().max(1) as f64;
        let (mean, std) = sum
            .iter()
            .zip(&squares)
            .map(|(&s, &q)| {
                let mean = s / n;
                let std = (q / n - mean * mean).max(0.0).sqrt() as f32;
                let std = if std > f32::MIN_POSITIVE { std } else { 1.0 };
                (mean as f32, std)
            })
            .unzip();
        Ok(Standardizer { mean, std })
    }

    /// The rows standardised, written into `out` and returned as slices of it.
    pub(super) fn apply<'a>(&self, rows: &[&[f32]], out: &'a mut Vec<f32>) -> Vec<&'a [f32]> {
        let dim = self.mean.len();
        out.clear();
        for row in rows {
            out.extend(
                row.iter()
                    .zip(&self.mean)
                    .zip(&self.std)
                    .map(|((&x, &m), &s)| (x - m) / s),
            );
        }
        out.chunks_exact(dim.max(1)).take(rows.len()).collect()
    }

    /// The layer that gives on raw bottlenecks what `layer` gives on standardised ones:
    /// `W' = W / std` row by row, `b' = b - sum_i W_i * mean_i / std_i`.
    pub fn fold(&self, layer: &FinalLayer) -> FinalLayer {
        let mut weights = layer.weights.clone();
        let mut shift = vec![0f64; layer.biases.len()];
        for ((mut row, &m), &s) in weights
            .rows_mut()
            .into_iter()
            .zip(&self.mean)
            .zip(&self.std)
        {
            row.mapv_inplace(|w| w / s);
            for (total, &w) in shift.iter_mut().zip(&row) {
                *total += f64::from(w) * f64::from(m);
            }
        }
        let biases = layer
            .biases
            .iter()
            .zip(&shift)
            .map(|(&b, &total)| (f64::from(b) - total) as f32)
            .collect();
        FinalLayer { weights, biases }
    }
}
