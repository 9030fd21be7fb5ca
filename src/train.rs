//! The new final layer (a softmax classifier on bottlenecks), trained by a hand-written
//! mini-batch SGD loop over ndarray, with retrain.py's class-balanced sampling.

use std::sync::Arc;

use ndarray::{s, Array1, Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::MAX_NUM_IMAGES_PER_CLASS;
use crate::matrix::BottleneckMatrix;

/// Bottlenecks of one split: rows of a shared bottleneck matrix, with their class indices.
/// Cloning or sampling copies row indices, never bottleneck values.
#[derive(Clone, Debug)]
pub struct Examples {
    matrix: Arc<BottleneckMatrix>,
    /// The matrix row of each example (in retrain, the image's index in the dataset).
    pub origin: Vec<usize>,
    pub labels: Vec<usize>,
    /// Example indices of each class, for class-balanced sampling.
    by_class: Vec<Vec<usize>>,
}

/// Rows gathered at a time when a whole split is evaluated, so evaluation memory does
/// not grow with the split (4096 rows of 1024 floats: 16 MB).
const EVALUATION_CHUNK: usize = 4096;

impl Examples {
    /// Examples made of matrix rows `rows`, of classes `labels`.
    pub fn new(
        matrix: Arc<BottleneckMatrix>,
        rows: Vec<usize>,
        labels: Vec<usize>,
        class_count: usize,
    ) -> Examples {
        assert_eq!(rows.len(), labels.len(), "one label per row");
        assert!(
            rows.iter().all(|&r| r < matrix.rows()),
            "rows inside the matrix"
        );
        let mut by_class = vec![Vec::new(); class_count];
        for (example, &label) in labels.iter().enumerate() {
            by_class[label].push(example);
        }
        Examples {
            matrix,
            origin: rows,
            labels,
            by_class,
        }
    }

    /// Examples held in memory, one per row of `features`.
    pub fn from_array(features: Array2<f32>, labels: Vec<usize>, class_count: usize) -> Examples {
        let rows = (0..features.nrows()).collect();
        let matrix = Arc::new(BottleneckMatrix::from_array(features));
        Examples::new(matrix, rows, labels, class_count)
    }

    /// The bottleneck size.
    pub fn dim(&self) -> usize {
        self.matrix.dim()
    }

    /// A class-balanced sample with replacement, as retrain.py draws its batches.
    pub fn sample(&self, count: usize, rng: &mut impl Rng) -> Examples {
        let picks = self.sample_rows(count, rng);
        let rows = picks.iter().map(|&e| self.origin[e]).collect();
        let labels = picks.iter().map(|&e| self.labels[e]).collect();
        Examples::new(self.matrix.clone(), rows, labels, self.by_class.len())
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Classes with no example in this split.
    pub fn empty_classes(&self) -> Vec<usize> {
        (0..self.by_class.len())
            .filter(|&c| self.by_class[c].is_empty())
            .collect()
    }

    /// The features of every example, a bounded number of rows at a time: each item is the
    /// index of its first example and the gathered rows.
    pub fn feature_chunks(&self) -> impl Iterator<Item = (usize, Array2<f32>)> + '_ {
        (0..self.len()).step_by(EVALUATION_CHUNK).map(|start| {
            let end = (start + EVALUATION_CHUNK).min(self.len());
            let picks: Vec<usize> = (start..end).collect();
            (start, self.gather(&picks).0)
        })
    }

    /// retrain.py's sampling: pick a class uniformly, then an image of it uniformly, with
    /// replacement. Classes without examples are never picked.
    fn sample_rows(&self, count: usize, rng: &mut impl Rng) -> Vec<usize> {
        let classes: Vec<&Vec<usize>> = self.by_class.iter().filter(|r| !r.is_empty()).collect();
        (0..count)
            .map(|_| {
                let rows = classes[rng.random_range(0..classes.len())];
                let pick = rng.random_range(0..=MAX_NUM_IMAGES_PER_CLASS) as usize;
                rows[pick % rows.len()]
            })
            .collect()
    }

    /// Features and labels of the examples `picks`.
    fn gather(&self, picks: &[usize]) -> (Array2<f32>, Vec<usize>) {
        let rows: Vec<usize> = picks.iter().map(|&e| self.origin[e]).collect();
        let features = self.matrix.view().select(Axis(0), &rows);
        let labels = picks.iter().map(|&e| self.labels[e]).collect();
        (features, labels)
    }
}

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
    pub fn probabilities_of(&self, examples: &Examples) -> Array2<f32> {
        let mut all = Array2::zeros((examples.len(), self.biases.len()));
        for (start, features) in examples.feature_chunks() {
            let chunk = self.probabilities(features.view());
            all.slice_mut(s![start..start + chunk.nrows(), ..])
                .assign(&chunk);
        }
        all
    }

    /// One SGD step on a batch: the gradient of the mean cross entropy is
    /// `(probabilities - one_hot) / batch` at the logits.
    fn sgd_step(&mut self, features: &Array2<f32>, labels: &[usize], rate: f32) {
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

fn truncated_normal(rng: &mut impl Rng) -> f32 {
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

/// retrain.py's training options.
#[derive(Clone, Debug)]
pub struct TrainingOptions {
    pub steps: usize,
    pub learning_rate: f32,
    pub train_batch_size: usize,
    /// `None`: the whole validation set at each evaluation.
    pub validation_batch_size: Option<usize>,
    pub eval_step_interval: usize,
    pub seed: u64,
}

/// What an evaluation step measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub step: usize,
    pub train_accuracy: f64,
    pub cross_entropy: f64,
    /// `None` when there are no validation images.
    pub validation: Option<ValidationScore>,
}

/// The final layer measured on (a sample of) the validation set.
#[derive(Clone, Debug, PartialEq)]
pub struct ValidationScore {
    pub accuracy: f64,
    pub cross_entropy: f64,
    /// Number of validation images measured.
    pub n: usize,
}

/// Trains a new final layer, calling `on_evaluation` every `eval_step_interval` steps and
/// at the last step.
pub fn train(
    training: &Examples,
    validation: &Examples,
    class_count: usize,
    options: &TrainingOptions,
    mut on_evaluation: impl FnMut(&Evaluation, &FinalLayer),
) -> FinalLayer {
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut layer = FinalLayer::new(training.dim(), class_count, &mut rng);
    for step in 0..options.steps {
        let rows = training.sample_rows(options.train_batch_size, &mut rng);
        let (features, labels) = training.gather(&rows);
        layer.sgd_step(&features, &labels, options.learning_rate);
        let last = step + 1 == options.steps;
        if last || step % options.eval_step_interval.max(1) == 0 {
            let probabilities = layer.probabilities(features.view());
            let evaluation = Evaluation {
                step,
                train_accuracy: accuracy(&probabilities, &labels),
                cross_entropy: cross_entropy(&probabilities, &labels),
                validation: validate(&layer, validation, options, &mut rng),
            };
            on_evaluation(&evaluation, &layer);
        }
    }
    layer
}

fn validate(
    layer: &FinalLayer,
    validation: &Examples,
    options: &TrainingOptions,
    rng: &mut impl Rng,
) -> Option<ValidationScore> {
    if validation.is_empty() {
        return None;
    }
    let (probabilities, labels) = match options.validation_batch_size {
        None => (
            layer.probabilities_of(validation),
            validation.labels.clone(),
        ),
        Some(size) => {
            let rows = validation.sample_rows(size, rng);
            let (features, labels) = validation.gather(&rows);
            (layer.probabilities(features.view()), labels)
        }
    };
    Some(ValidationScore {
        accuracy: accuracy(&probabilities, &labels),
        cross_entropy: cross_entropy(&probabilities, &labels),
        n: labels.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three well separated Gaussian blobs in 8 dimensions.
    fn blobs(per_class: usize, seed: u64) -> Examples {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let classes = 3;
        let mut features = Array2::zeros((per_class * classes, 8));
        let mut labels = Vec::new();
        for class in 0..classes {
            for i in 0..per_class {
                let row = class * per_class + i;
                for d in 0..8 {
                    let centre = if d % classes == class { 3.0 } else { 0.0 };
                    features[[row, d]] = centre + 0.3 * truncated_normal(&mut rng);
                }
                labels.push(class);
            }
        }
        Examples::from_array(features, labels, classes)
    }

    fn options(steps: usize) -> TrainingOptions {
        TrainingOptions {
            steps,
            learning_rate: 0.1,
            train_batch_size: 32,
            validation_batch_size: None,
            eval_step_interval: 10,
            seed: 42,
        }
    }

    #[test]
    fn sgd_separates_a_separable_toy_set() {
        let training = blobs(50, 1);
        let validation = blobs(20, 2);
        let mut last = None;
        let layer = train(&training, &validation, 3, &options(300), |e, _| {
            last = Some(e.clone())
        });
        let probabilities = layer.probabilities_of(&validation);
        assert_eq!(accuracy(&probabilities, &validation.labels), 1.0);
        let last = last.unwrap();
        assert_eq!(last.step, 299);
        let validation = last.validation.unwrap();
        assert_eq!((validation.accuracy, validation.n), (1.0, 60));
        assert!(last.cross_entropy < 0.2, "{}", last.cross_entropy);
    }

    #[test]
    fn training_is_reproducible_with_a_seed() {
        let training = blobs(20, 3);
        let empty = Examples::from_array(Array2::zeros((0, 8)), vec![], 3);
        let a = train(&training, &empty, 3, &options(50), |_, _| {});
        let b = train(&training, &empty, 3, &options(50), |_, _| {});
        assert_eq!(a, b);
    }

    #[test]
    fn initial_weights_are_small_and_truncated() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let layer = FinalLayer::new(100, 10, &mut rng);
        assert!(layer.weights.iter().all(|w| w.abs() <= 0.002));
        assert!(layer.biases.iter().all(|&b| b == 0.0));
        let std = (layer.weights.mapv(|w| w * w).mean().unwrap()).sqrt();
        assert!((0.0007..0.0011).contains(&std), "{std}");
    }

    #[test]
    fn probabilities_are_a_softmax() {
        let layer = FinalLayer {
            weights: Array2::from_shape_vec((2, 2), vec![1.0, 0.0, 0.0, 1.0]).unwrap(),
            biases: Array1::from(vec![0.0, 0.0]),
        };
        let p = layer.probabilities(
            Array2::from_shape_vec((1, 2), vec![1000.0, 0.0])
                .unwrap()
                .view(),
        );
        assert_eq!(p[[0, 0]], 1.0);
        assert_eq!(p[[0, 1]], 0.0);
    }
}
