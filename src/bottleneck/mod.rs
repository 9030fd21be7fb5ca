//! Bottlenecks: the backbone's pooled feature vector for each image, computed on all cores
//! and cached on disk so reruns are instant.
//!
//! [`cache`] keeps one file per (image content, backbone) on disk; [`matrix`] holds the
//! run's vectors in a memory-mapped scratch file, one row per image; [`extract_all`] fills
//! the matrix from the cache and computes what is missing.

pub mod cache;
pub mod matrix;

use std::fs;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::Result;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

pub use cache::Cache;
pub use matrix::{BottleneckMatrix, MatrixWriter};

use crate::backbone::{Backbone, Plan};
use crate::dataset::ImageEntry;
use crate::problem::{Problem, Skipped};
use crate::util::messages::{io_reason, shown};
use crate::util::progress::Progress;

/// What an extraction did.
#[derive(Debug, Default)]
pub struct ExtractionReport {
    pub cached: usize,
    pub computed: usize,
    pub failed: Vec<Skipped>,
    pub elapsed: Duration,
}

/// The bottleneck of every image: row `i` of `matrix` belongs to image `i` of the list
/// given to [`extract_all`]; rows of images that could not be used are zero, and absent.
pub struct Bottlenecks {
    pub matrix: BottleneckMatrix,
    pub present: Vec<bool>,
}

impl Bottlenecks {
    pub fn dim(&self) -> usize {
        self.matrix.dim()
    }

    /// Image `index`'s bottleneck, if it has one.
    pub fn get(&self, index: usize) -> Option<&[f32]> {
        self.present[index].then(|| self.matrix.row(index))
    }
}

/// Gets the bottleneck of every image, from the cache where possible, computing the rest on
/// the current rayon pool. Images that cannot be read or decoded are reported, not fatal.
/// Vectors go straight into a file-backed [`BottleneckMatrix`], so memory does not grow
/// with the number of images.
pub fn extract_all(
    images: &[ImageEntry],
    backbone: &Backbone,
    cache: &Cache,
) -> Result<(Bottlenecks, ExtractionReport)> {
    let start = Instant::now();
    // Phase 1: hash every image; cached vectors go straight into the matrix, which takes
    // its width from the first one (so a warm run loads no model).
    let matrix = LazyMatrix::new(cache.dir(), images.len());
    let mut lookups: Vec<Lookup> = images
        .par_iter()
        .enumerate()
        .map(|(row, image)| lookup(row, image, cache, &matrix))
        .collect();
    let misses = lookups
        .iter()
        .filter(|l| matches!(l, Lookup::Miss(_)))
        .count();
    let (plan, writer) = match (misses, matrix.take()?) {
        (0, Some(writer)) => (None, writer),
        (_, cached) => {
            let plan = backbone.extractor()?;
            let writer = match cached {
                Some(writer) if writer.dim() == plan.output_len => writer,
                _ => {
                    // No entry, or entries of another width: every vector is computed.
                    lookups = lookups.into_iter().map(Lookup::into_miss).collect();
                    MatrixWriter::create(cache.dir(), images.len(), plan.output_len)?
                }
            };
            (Some(plan), writer)
        }
    };
    // Phase 2: compute what is missing.
    let progress = Progress::new(images.len() as u64, "bottlenecks");
    let results: Vec<Result<bool, Problem>> = images
        .par_iter()
        .enumerate()
        .zip(lookups.into_par_iter())
        .map(|((row, image), lookup)| {
            let result = match lookup {
                Lookup::Hit(_) => Ok(true),
                Lookup::Miss(sha) => {
                    let plan = plan
                        .as_ref()
                        .expect("a plan is loaded whenever there are misses");
                    compute(image, sha, plan, cache).map(|vector| {
                        writer.write_row(row, &vector);
                        false
                    })
                }
                Lookup::Unreadable(problem) => Err(problem),
            };
            if let Err(problem) = &result {
                crate::warn!("skipping {}: {problem}", shown(&image.path));
            }
            progress.inc();
            result
        })
        .collect();
    progress.finish();
    let mut report = ExtractionReport::default();
    let mut present = Vec::with_capacity(images.len());
    for (image, result) in images.iter().zip(results) {
        present.push(result.is_ok());
        match result {
            Ok(true) => report.cached += 1,
            Ok(false) => report.computed += 1,
            Err(problem) => report.failed.push(Skipped {
                path: image.path.clone(),
                problem,
            }),
        }
    }
    report.elapsed = start.elapsed();
    let matrix = writer.finish()?;
    Ok((Bottlenecks { matrix, present }, report))
}

enum Lookup {
    Hit([u8; 32]),
    Miss([u8; 32]),
    Unreadable(Problem),
}

impl Lookup {
    fn into_miss(self) -> Lookup {
        match self {
            Lookup::Hit(sha) => Lookup::Miss(sha),
            other => other,
        }
    }
}

/// The matrix of phase 1, created when the first cached vector tells its width.
struct LazyMatrix<'a> {
    dir: &'a Path,
    rows: usize,
    cell: OnceLock<Result<MatrixWriter>>,
}

impl<'a> LazyMatrix<'a> {
    fn new(dir: &'a Path, rows: usize) -> LazyMatrix<'a> {
        LazyMatrix {
            dir,
            rows,
            cell: OnceLock::new(),
        }
    }

    /// Stores `vector` as row `row` if the matrix has (or can be given) its width.
    fn store(&self, row: usize, vector: &[f32]) -> bool {
        let created = self
            .cell
            .get_or_init(|| MatrixWriter::create(self.dir, self.rows, vector.len()));
        match created {
            Ok(writer) if writer.dim() == vector.len() => {
                writer.write_row(row, vector);
                true
            }
            _ => false,
        }
    }

    /// The matrix, if a cached vector created one; the error if that failed.
    fn take(self) -> Result<Option<MatrixWriter>> {
        self.cell.into_inner().transpose()
    }
}

fn lookup(row: usize, image: &ImageEntry, cache: &Cache, matrix: &LazyMatrix) -> Lookup {
    match fs::read(&image.path) {
        Ok(bytes) => {
            let sha: [u8; 32] = Sha256::digest(&bytes).into();
            match cache.read(&sha) {
                Some(vector) if matrix.store(row, &vector) => Lookup::Hit(sha),
                _ => Lookup::Miss(sha),
            }
        }
        Err(e) => Lookup::Unreadable(Problem::from_io(&e)),
    }
}

/// Reads, decodes and runs one image through the backbone, then caches the vector.
fn compute(
    image: &ImageEntry,
    sha: [u8; 32],
    plan: &Plan,
    cache: &Cache,
) -> Result<Vec<f32>, Problem> {
    let bytes = fs::read(&image.path).map_err(|e| Problem::from_io(&e))?;
    let input = plan.preprocessing.tensor_from_bytes(&bytes)?;
    let vector = plan
        .run(input)
        .map_err(|e| Problem::InferenceFailed(format!("{e:#}")))?;
    if let Err(e) = cache.write(&sha, &vector) {
        crate::warn!(
            "cannot write bottleneck cache entry for {}: {}",
            shown(&image.path),
            io_reason(&e)
        );
    }
    Ok(vector)
}
