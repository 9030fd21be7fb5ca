//! The examples of one split: rows of the shared bottleneck matrix with their classes, and
//! retrain.py's class-balanced sampling of training batches.

use std::sync::Arc;

use anyhow::Result;
use ndarray::Array2;
use rand::Rng;

use crate::bottleneck::BottleneckMatrix;
use crate::dataset::MAX_NUM_IMAGES_PER_CLASS;

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

/// What taking a training batch needs, kept from one step to the next so that a step
/// allocates nothing.
#[derive(Debug, Default)]
pub(super) struct BatchBuffers {
    picks: Vec<usize>,
    rows: Vec<usize>,
    labels: Vec<usize>,
    /// The batch's values when the matrix is streamed from its file.
    values: Vec<f32>,
}

/// An empty vector of row slices with `rows`' allocation: lets the buffer of a step's
/// borrowed rows outlive the borrows, since it is empty whenever it is kept. (Collecting
/// a vector's `into_iter` into one of the same layout reuses its allocation.)
pub(super) fn recycle<'b>(mut rows: Vec<&[f32]>) -> Vec<&'b [f32]> {
    rows.clear();
    rows.into_iter()
        .map(|_| -> &'b [f32] { unreachable!("cleared") })
        .collect()
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
    pub fn feature_chunks(&self) -> impl Iterator<Item = Result<(usize, Array2<f32>)>> + '_ {
        (0..self.len()).step_by(EVALUATION_CHUNK).map(|start| {
            let end = (start + EVALUATION_CHUNK).min(self.len());
            let picks: Vec<usize> = (start..end).collect();
            Ok((start, self.gather(&picks)?.0))
        })
    }

    /// retrain.py's sampling: pick a class uniformly, then an image of it uniformly, with
    /// replacement. Classes without examples are never picked.
    pub(super) fn sample_rows(&self, count: usize, rng: &mut impl Rng) -> Vec<usize> {
        let mut picks = Vec::with_capacity(count);
        self.sample_rows_into(count, rng, &mut picks);
        picks
    }

    /// [`Examples::sample_rows`] into `picks`, allocating nothing once it has the room.
    pub(super) fn sample_rows_into(
        &self,
        count: usize,
        rng: &mut impl Rng,
        picks: &mut Vec<usize>,
    ) {
        let classes = self.by_class.iter().filter(|r| !r.is_empty());
        let used = classes.clone().count();
        let every_class = used == self.by_class.len();
        picks.clear();
        picks.extend((0..count).map(|_| {
            let class = rng.random_range(0..used);
            let rows = if every_class {
                &self.by_class[class]
            } else {
                classes.clone().nth(class).expect("a class with examples")
            };
            let pick = rng.random_range(0..=MAX_NUM_IMAGES_PER_CLASS) as usize;
            rows[pick % rows.len()]
        }));
    }

    /// The bottlenecks of the examples `picks` as rows (see [`BottleneckMatrix::rows_in`]),
    /// and their labels.
    pub(super) fn rows_in<'a>(
        &'a self,
        picks: &[usize],
        scratch: &'a mut Vec<f32>,
    ) -> Result<(Vec<&'a [f32]>, Vec<usize>)> {
        let rows: Vec<usize> = picks.iter().map(|&e| self.origin[e]).collect();
        let features = self.matrix.rows_in(&rows, scratch)?;
        let labels = picks.iter().map(|&e| self.labels[e]).collect();
        Ok((features, labels))
    }

    /// A training batch: `count` examples sampled as [`Examples::sample_rows`] does, their
    /// bottlenecks as rows into `features` and their labels, all in buffers kept from one
    /// step to the next.
    pub(super) fn batch_into<'a>(
        &'a self,
        count: usize,
        rng: &mut impl Rng,
        buffers: &'a mut BatchBuffers,
        features: &mut Vec<&'a [f32]>,
    ) -> Result<&'a [usize]> {
        let BatchBuffers {
            picks,
            rows,
            labels,
            values,
        } = buffers;
        self.sample_rows_into(count, rng, picks);
        rows.clear();
        rows.extend(picks.iter().map(|&e| self.origin[e]));
        labels.clear();
        labels.extend(picks.iter().map(|&e| self.labels[e]));
        self.matrix.rows_into(rows, values, features)?;
        Ok(labels)
    }

    /// Features and labels of the examples `picks`.
    pub(super) fn gather(&self, picks: &[usize]) -> Result<(Array2<f32>, Vec<usize>)> {
        let rows: Vec<usize> = picks.iter().map(|&e| self.origin[e]).collect();
        let features = self.matrix.gather(&rows)?;
        let labels = picks.iter().map(|&e| self.labels[e]).collect();
        Ok((features, labels))
    }
}
