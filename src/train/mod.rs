//! The new final layer (a softmax classifier on bottlenecks), trained by a hand-written
//! mini-batch SGD loop over ndarray, with retrain.py's class-balanced sampling.

mod examples;
mod final_layer;
mod pair;
mod products;
mod recipe;
mod standardize;

use std::borrow::Cow;

use anyhow::{bail, Result};
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

pub use examples::Examples;
use examples::{recycle, BatchBuffers};
use final_layer::StepScratch;
pub use final_layer::{accuracy, cross_entropy, predictions, FinalLayer};
pub use recipe::FinalLayerRecipe;
pub use standardize::Standardizer;

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
    /// retrain.py's `--intermediate_store_frequency`: hand the layer out every this many
    /// steps (not at step 0), for intermediate graphs.
    pub snapshot_every: Option<usize>,
    /// Standardisation and weight decay ([`FinalLayerRecipe::PLAIN`]: retrain.py's layer).
    pub final_layer: FinalLayerRecipe,
    /// Threads for the two products of every step (1 or 2; more count as 2): the second
    /// is a helper that spins while training runs, so callers that already train on every
    /// core (cross-validation fits in parallel) pass 1.
    pub product_threads: usize,
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

/// The most memory the bottlenecks of one training or validation batch may take: a batch
/// is gathered into memory whole, and past this a typing slip (`3000000` for `300`) would
/// ask the allocator for gigabytes and abort. 1 GiB holds 262,144 MobileNet bottlenecks
/// (1,024 floats) or 131,072 Inception ones; retrain.py's default batch is 100.
pub const MAX_BATCH_BYTES: usize = 1 << 30;

/// Trains a new final layer, calling `on_evaluation` every `eval_step_interval` steps and
/// at the last step, and `on_snapshot` with the step every `snapshot_every` steps.
///
/// Refuses, before the first step, batches whose bottlenecks exceed [`MAX_BATCH_BYTES`];
/// stops at the first step whose weights are no longer finite (SGD diverged), so neither
/// callback ever sees such a layer.
pub fn train(
    training: &Examples,
    validation: &Examples,
    class_count: usize,
    options: &TrainingOptions,
    mut on_evaluation: impl FnMut(&Evaluation, &FinalLayer),
    mut on_snapshot: impl FnMut(usize, &FinalLayer),
) -> Result<FinalLayer> {
    check_batch(
        "--train-batch-size",
        options.train_batch_size,
        training.dim(),
    )?;
    if let Some(size) = options.validation_batch_size {
        check_batch("--validation-batch-size", size, training.dim())?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let standardizer = options
        .final_layer
        .standardize
        .then(|| Standardizer::of(training))
        .transpose()?;
    let mut layer = FinalLayer::new(training.dim(), class_count, &mut rng);
    let mut scratch = StepScratch::with_threads(options.product_threads);
    let mut buffers = BatchBuffers::default();
    let mut spare_rows = Vec::new();
    let mut standardized = Vec::new();
    let mut probabilities = Array2::zeros((0, 0));
    for step in 0..options.steps {
        let mut features = recycle(std::mem::take(&mut spare_rows));
        let labels = training.batch_into(
            options.train_batch_size,
            &mut rng,
            &mut buffers,
            &mut features,
        )?;
        let standardized_rows;
        let rows = match &standardizer {
            Some(standardizer) => {
                standardized_rows = standardizer.apply(&features, &mut standardized);
                &standardized_rows
            }
            None => &features,
        };
        layer.sgd_step(
            rows,
            labels,
            options.learning_rate,
            options.final_layer.weight_decay,
            &mut scratch,
        );
        // One pass over the layer: 1/batch of the step's own arithmetic.
        if !layer.is_finite() {
            bail!(
                "training diverged at step {step}: the weights became NaN or infinite with --learning-rate {:?}; lower --learning-rate (retrain.py's default is 0.01)",
                options.learning_rate
            );
        }
        let last = step + 1 == options.steps;
        if last || step % options.eval_step_interval.max(1) == 0 {
            layer.probabilities_into(rows, &mut scratch.panel, &mut probabilities);
            let out = handed_out(&layer, standardizer.as_ref());
            let evaluation = Evaluation {
                step,
                train_accuracy: accuracy(&probabilities, labels),
                cross_entropy: cross_entropy(&probabilities, labels),
                validation: validate(&out, validation, options, &mut rng, &mut scratch)?,
            };
            on_evaluation(&evaluation, &out);
        }
        if options
            .snapshot_every
            .is_some_and(|every| step > 0 && step % every == 0)
        {
            on_snapshot(step, &handed_out(&layer, standardizer.as_ref()));
        }
        spare_rows = recycle(features);
    }
    Ok(handed_out(&layer, standardizer.as_ref()).into_owned())
}

/// The layer of raw bottlenecks: with standardisation, `layer` works on standardised
/// ones, and callbacks and callers always get it folded.
fn handed_out<'a>(
    layer: &'a FinalLayer,
    standardizer: Option<&Standardizer>,
) -> Cow<'a, FinalLayer> {
    match standardizer {
        Some(standardizer) => Cow::Owned(standardizer.fold(layer)),
        None => Cow::Borrowed(layer),
    }
}

/// Refuses a batch of `size` bottlenecks of `dim` floats over [`MAX_BATCH_BYTES`], naming
/// the flag and the largest size that fits.
pub fn check_batch(flag: &str, size: usize, dim: usize) -> Result<()> {
    let bytes = size.saturating_mul(dim).saturating_mul(4);
    if bytes > MAX_BATCH_BYTES {
        bail!(
            "{flag} {size} needs {} MiB for one batch of bottlenecks ({dim} floats each), over the limit of {} MiB: lower it to at most {}",
            bytes >> 20,
            MAX_BATCH_BYTES >> 20,
            MAX_BATCH_BYTES / (dim * 4)
        );
    }
    Ok(())
}

fn validate(
    layer: &FinalLayer,
    validation: &Examples,
    options: &TrainingOptions,
    rng: &mut impl Rng,
    scratch: &mut StepScratch,
) -> Result<Option<ValidationScore>> {
    if validation.is_empty() {
        return Ok(None);
    }
    let (probabilities, labels) = match options.validation_batch_size {
        None => (
            layer.probabilities_of(validation)?,
            validation.labels.clone(),
        ),
        Some(size) => {
            let picks = validation.sample_rows(size, rng);
            let mut values = Vec::new();
            let (features, labels) = validation.rows_in(&picks, &mut values)?;
            let probabilities = layer.probabilities_of_rows(&features, &mut scratch.panel);
            (probabilities, labels)
        }
    };
    Ok(Some(ValidationScore {
        accuracy: accuracy(&probabilities, &labels),
        cross_entropy: cross_entropy(&probabilities, &labels),
        n: labels.len(),
    }))
}

/// The rows of a standard-layout matrix as slices, as training hands batches to the products.
#[cfg(test)]
fn rows_of(features: &Array2<f32>) -> Vec<&[f32]> {
    features
        .rows()
        .into_iter()
        .map(|r| r.to_slice().unwrap())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::final_layer::truncated_normal;
    use super::*;
    use crate::bottleneck::MatrixWriter;
    use ndarray::{Array1, Array2};
    use std::sync::Arc;

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
        examples_of(features, labels, classes)
    }

    /// Examples made of the rows of `features`, in a bottleneck matrix as retrain makes.
    fn examples_of(features: Array2<f32>, labels: Vec<usize>, classes: usize) -> Examples {
        let (rows, dim) = features.dim();
        let writer = MatrixWriter::create(&std::env::temp_dir(), rows, dim, 1 << 20).unwrap();
        for (row, values) in features.outer_iter().enumerate() {
            writer.write_row(row, values.as_slice().unwrap());
        }
        let matrix = Arc::new(writer.finish().unwrap());
        Examples::new(matrix, (0..rows).collect(), labels, classes)
    }

    /// retrain.py's class-balanced sampling as it was written before the kept buffers.
    fn reference_picks(
        labels: &[usize],
        classes: usize,
        count: usize,
        rng: &mut impl Rng,
    ) -> Vec<usize> {
        let mut by_class = vec![Vec::new(); classes];
        for (example, &label) in labels.iter().enumerate() {
            by_class[label].push(example);
        }
        let used: Vec<&Vec<usize>> = by_class.iter().filter(|r| !r.is_empty()).collect();
        (0..count)
            .map(|_| {
                let rows = used[rng.random_range(0..used.len())];
                let pick = rng.random_range(0..=crate::dataset::MAX_NUM_IMAGES_PER_CLASS) as usize;
                rows[pick % rows.len()]
            })
            .collect()
    }

    /// The batch a step takes through its kept buffers is the one retrain.py's sampling
    /// picks with the same random numbers: mapped or streamed, with every class or with
    /// some that have no example.
    #[test]
    fn batches_from_kept_buffers_are_the_sampled_rows() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let features = Array2::from_shape_simple_fn((40, 6), || rng.random_range(-1.0f32..1.0));
        for memory in [1 << 20, 64] {
            let writer = MatrixWriter::create(&std::env::temp_dir(), 40, 6, memory).unwrap();
            for (row, values) in features.outer_iter().enumerate() {
                writer.write_row(row, values.as_slice().unwrap());
            }
            let matrix = Arc::new(writer.finish().unwrap());
            assert_eq!(matrix.is_streamed(), memory == 64);
            for (classes, names) in [(3, [0, 1, 2]), (5, [0, 1, 3])] {
                let labels: Vec<usize> = (0..40).map(|r| names[r % 3]).collect();
                let examples =
                    Examples::new(matrix.clone(), (0..40).collect(), labels.clone(), classes);
                let (mut old_rng, mut new_rng) =
                    (ChaCha8Rng::seed_from_u64(9), ChaCha8Rng::seed_from_u64(9));
                let mut buffers = BatchBuffers::default();
                let mut spare = Vec::new();
                for count in [7, 32, 1, 32] {
                    let picks = reference_picks(&labels, classes, count, &mut old_rng);
                    let expected_labels: Vec<usize> = picks.iter().map(|&e| labels[e]).collect();
                    let expected_rows: Vec<Vec<f32>> =
                        picks.iter().map(|&e| features.row(e).to_vec()).collect();
                    let mut rows = recycle(std::mem::take(&mut spare));
                    let labels = examples
                        .batch_into(count, &mut new_rng, &mut buffers, &mut rows)
                        .unwrap();
                    assert_eq!(labels, &expected_labels[..]);
                    assert_eq!(
                        rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
                        expected_rows
                    );
                    spare = recycle(rows);
                }
            }
        }
    }

    fn options(steps: usize) -> TrainingOptions {
        TrainingOptions {
            steps,
            learning_rate: 0.1,
            train_batch_size: 32,
            validation_batch_size: None,
            eval_step_interval: 10,
            seed: 42,
            snapshot_every: Some(100),
            final_layer: FinalLayerRecipe::PLAIN,
            product_threads: 2,
        }
    }

    #[test]
    fn sgd_separates_a_separable_toy_set() {
        let training = blobs(50, 1);
        let validation = blobs(20, 2);
        let mut last = None;
        let mut snapshots = Vec::new();
        let layer = train(
            &training,
            &validation,
            3,
            &options(300),
            |e, _| last = Some(e.clone()),
            |step, _| snapshots.push(step),
        )
        .unwrap();
        assert_eq!(snapshots, [100, 200]);
        let probabilities = layer.probabilities_of(&validation).unwrap();
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
        let empty = examples_of(Array2::zeros((0, 8)), vec![], 3);
        let a = train(&training, &empty, 3, &options(50), |_, _| {}, |_, _| {}).unwrap();
        let b = train(&training, &empty, 3, &options(50), |_, _| {}, |_, _| {}).unwrap();
        assert_eq!(a, b);
    }

    /// Blobs whose values have very different offsets and spreads, as concatenated
    /// bottlenecks of two backbones may.
    fn uneven_blobs(per_class: usize, seed: u64) -> (Array2<f32>, Vec<usize>) {
        let examples = blobs(per_class, seed);
        let (mut features, labels) = examples
            .gather(&(0..examples.len()).collect::<Vec<_>>())
            .unwrap();
        for (d, mut column) in features.columns_mut().into_iter().enumerate() {
            let (scale, offset) = (10f32.powi(d as i32 % 4 - 2), d as f32);
            column.mapv_inplace(|x| x * scale + offset);
        }
        (features, labels)
    }

    #[test]
    fn standardised_training_is_training_on_standardised_bottlenecks_folded() {
        let (features, labels) = uneven_blobs(30, 6);
        let raw = examples_of(features.clone(), labels.clone(), 3);
        let standardizer = Standardizer::of(&raw).unwrap();
        let rows = rows_of(&features);
        let mut values = Vec::new();
        let standardized = standardizer.apply(&rows, &mut values);
        let standardized = Array2::from_shape_vec(features.dim(), standardized.concat()).unwrap();
        let on_standardized = examples_of(standardized.clone(), labels.clone(), 3);
        let empty = examples_of(Array2::zeros((0, 8)), vec![], 3);
        let mut options = options(200);
        options.final_layer.weight_decay = 0.05;
        let plain = train(&on_standardized, &empty, 3, &options, |_, _| {}, |_, _| {}).unwrap();
        options.final_layer.standardize = true;
        let mut evaluated = Vec::new();
        let folded = train(
            &raw,
            &empty,
            3,
            &options,
            |_, layer| evaluated.push(layer.clone()),
            |_, _| {},
        )
        .unwrap();
        // The same weights were trained, bit for bit; the caller gets them folded.
        assert_eq!(folded, standardizer.fold(&plain));
        assert_eq!(evaluated.last(), Some(&folded));
        assert_ne!(folded, plain);
        let on_raw = folded.probabilities(features.view());
        let reference = plain.probabilities(standardized.view());
        let largest = (&on_raw - &reference)
            .mapv(f32::abs)
            .fold(0f32, |m, &v| m.max(v));
        assert!(largest < 1e-5, "{largest}");
        assert_eq!(accuracy(&on_raw, &labels), 1.0);
    }

    #[test]
    fn standardizer_measures_each_value_and_leaves_constant_ones_unscaled() {
        let features = Array2::from_shape_vec(
            (4, 3),
            vec![
                1.0, 5.0, 2.0, //
                3.0, 5.0, 4.0, //
                1.0, 5.0, 6.0, //
                3.0, 5.0, 8.0,
            ],
        )
        .unwrap();
        let examples = examples_of(features.clone(), vec![0, 1, 0, 1], 2);
        let standardizer = Standardizer::of(&examples).unwrap();
        let rows = rows_of(&features);
        let mut values = Vec::new();
        let standardized = standardizer.apply(&rows, &mut values);
        assert_eq!(standardized[0], [-1.0, 0.0, (2.0 - 5.0) / 5f32.sqrt()]);
        assert_eq!(standardized[3], [1.0, 0.0, (8.0 - 5.0) / 5f32.sqrt()]);
        assert_eq!(standardized.len(), 4);
    }

    #[test]
    fn weight_decay_shrinks_the_weights_and_still_separates() {
        let training = blobs(40, 7);
        let validation = blobs(20, 8);
        let empty = examples_of(Array2::zeros((0, 8)), vec![], 3);
        let mut options = options(300);
        let norm = |layer: &FinalLayer| layer.weights.mapv(|w| w * w).sum().sqrt();
        let plain = train(&training, &empty, 3, &options, |_, _| {}, |_, _| {}).unwrap();
        options.final_layer.weight_decay = 0.5;
        let decayed = train(&training, &empty, 3, &options, |_, _| {}, |_, _| {}).unwrap();
        assert!(
            norm(&decayed) < 0.8 * norm(&plain),
            "{} {}",
            norm(&decayed),
            norm(&plain)
        );
        let probabilities = decayed.probabilities_of(&validation).unwrap();
        assert_eq!(accuracy(&probabilities, &validation.labels), 1.0);
    }

    #[test]
    fn a_diverging_rate_stops_at_the_first_non_finite_step() {
        let training = blobs(20, 4);
        let empty = examples_of(Array2::zeros((0, 8)), vec![], 3);
        let mut seen = Vec::new();
        let mut options = options(50);
        options.learning_rate = 1e38;
        options.eval_step_interval = 1;
        let error = train(
            &training,
            &empty,
            3,
            &options,
            |e, layer| seen.push((e.step, layer.is_finite())),
            |_, _| panic!("no snapshot in 50 steps"),
        )
        .unwrap_err()
        .to_string();
        let step = seen.len();
        assert!(seen.iter().all(|&(_, finite)| finite), "{seen:?}");
        assert!(
            error.starts_with(&format!("training diverged at step {step}:")),
            "{error}"
        );
        assert!(error.contains("lower --learning-rate"), "{error}");
        assert!(step < 5, "diverged late: {error}");
    }

    #[test]
    fn batches_over_the_memory_limit_are_refused_before_training() {
        let training = blobs(5, 5);
        let run = |train_batch_size, validation_batch_size| {
            let options = TrainingOptions {
                train_batch_size,
                validation_batch_size,
                ..options(10)
            };
            let mut evaluations = 0;
            let result = train(
                &training,
                &training,
                3,
                &options,
                |_, _| evaluations += 1,
                |_, _| {},
            );
            (result.err().map(|e| e.to_string()), evaluations)
        };
        // Bottlenecks of 8 floats: 2^25 of them fill the limit.
        let most = MAX_BATCH_BYTES / (8 * 4);
        assert_eq!(most, 1 << 25);
        let (error, evaluations) = run(most + 1, None);
        let error = error.unwrap();
        assert_eq!(evaluations, 0);
        assert!(
            error.starts_with("--train-batch-size 33554433 needs 1024 MiB"),
            "{error}"
        );
        assert!(error.ends_with("lower it to at most 33554432"), "{error}");
        let (error, _) = run(usize::MAX, None);
        assert!(error.unwrap().contains("--train-batch-size"));
        let (error, _) = run(32, Some(most + 1));
        assert!(error
            .unwrap()
            .starts_with("--validation-batch-size 33554433"));
        assert_eq!(run(32, Some(32)).0, None);
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
