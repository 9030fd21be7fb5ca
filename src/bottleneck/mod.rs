//! Bottlenecks: the backbone's pooled feature vector for each image, computed on all cores
//! and cached on disk so reruns are instant.
//!
//! [`cache`] keeps one file per (image content, backbone) on disk; [`matrix`] holds the
//! run's vectors in a memory-mapped scratch file, one row per image; [`extract_all`] fills
//! the matrix from the cache and computes what is missing.

pub mod cache;
pub mod distorted;
pub mod hash_memo;
pub mod matrix;

use std::fs;
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use rayon::prelude::*;
#[cfg(test)]
use sha2::{Digest, Sha256};

pub use cache::Cache;
use hash_memo::HashMemo;
pub use matrix::{BottleneckMatrix, MatrixWriter, DEFAULT_MATRIX_MEMORY};

use crate::backbone::{Backbone, Plan};
use crate::dataset::ImageEntry;
use crate::problem::{Problem, Skipped};
use crate::util::messages::{io_reason, shown};
use crate::util::progress::Progress;

/// Which images one extraction is responsible for, and how their bottlenecks are held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scope {
    /// Only the images whose content hash falls in this shard (`flowers extract --shard`).
    pub shard: Option<Shard>,
    /// Refuse to compute anything: every image must be in the cache already (the final
    /// step of a cluster run, which must not quietly redo a failed shard's work).
    pub require_cached: bool,
    /// The most bytes of bottleneck values held mapped; a larger matrix is streamed from
    /// its scratch file (`--training-memory`).
    pub matrix_memory: u64,
}

impl Default for Scope {
    fn default() -> Scope {
        Scope {
            shard: None,
            require_cached: false,
            matrix_memory: DEFAULT_MATRIX_MEMORY,
        }
    }
}

/// Shard `index` (0-based) of `count`: the images whose sha256, read as a little-endian
/// number from its first 8 bytes, is `index` modulo `count`. The content decides, so every
/// machine agrees whatever order it lists the files in, and renamed files stay put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// `K/N` with K counted from 1, as `--shard` takes it.
    pub fn parse(text: &str) -> Result<Shard, String> {
        let parsed = text.split_once('/').and_then(|(k, n)| {
            Some((
                k.trim().parse::<usize>().ok()?,
                n.trim().parse::<usize>().ok()?,
            ))
        });
        match parsed {
            Some((k, n)) if n >= 1 && (1..=n).contains(&k) => Ok(Shard {
                index: k - 1,
                count: n,
            }),
            _ => Err(format!(
                "--shard takes K/N with 1 <= K <= N (e.g. 2/3), got {text:?}"
            )),
        }
    }

    pub fn contains(&self, image_sha: &[u8; 32]) -> bool {
        let mut first = [0u8; 8];
        first.copy_from_slice(&image_sha[..8]);
        (u64::from_le_bytes(first) % self.count as u64) as usize == self.index
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

/// What an extraction did.
#[derive(Debug, Default)]
pub struct ExtractionReport {
    pub cached: usize,
    pub computed: usize,
    /// Images left to other shards.
    pub other_shards: usize,
    pub failed: Vec<Skipped>,
    pub elapsed: Duration,
}

/// The bottleneck of every image: row `i` of `matrix` belongs to image `i` of the list
/// given to [`extract_all`]; rows of images that could not be used are zero, and absent.
pub struct Bottlenecks {
    pub matrix: BottleneckMatrix,
    pub present: Vec<bool>,
    /// The content hash of each image that could be read (the cache key).
    pub sha256: Vec<Option<[u8; 32]>>,
}

impl Bottlenecks {
    pub fn dim(&self) -> usize {
        self.matrix.dim()
    }

    /// Image `index`'s bottleneck, if it has one.
    pub fn get(&self, index: usize) -> Result<Option<Vec<f32>>> {
        self.present[index]
            .then(|| self.matrix.row(index))
            .transpose()
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
    extract_scoped(images, backbone, cache, Scope::default())
}

/// [`extract_all`] for the images of `scope` only: images of other shards are hashed but
/// neither read from the cache nor computed, and have no row.
pub fn extract_scoped(
    images: &[ImageEntry],
    backbone: &Backbone,
    cache: &Cache,
    scope: Scope,
) -> Result<(Bottlenecks, ExtractionReport)> {
    let start = Instant::now();
    // Phase 1: hash every image; cached vectors go straight into the matrix, which takes
    // its width from the first one (so a warm run loads no model).
    let matrix = LazyMatrix::new(cache.dir(), images.len(), scope.matrix_memory);
    let memo = HashMemo::open(cache.dir());
    let mut lookups: Vec<Lookup> = images
        .par_iter()
        .enumerate()
        .map(|(row, image)| lookup(row, image, cache, &matrix, &memo, scope.shard))
        .collect();
    if let Err(e) = memo.save() {
        crate::warn!(
            "cannot remember the photos' hashes in {}: {} (the next run hashes them again)",
            cache.dir().display(),
            io_reason(&e)
        );
    }
    let misses = lookups
        .iter()
        .filter(|l| matches!(l, Lookup::Miss(_)))
        .count();
    if scope.require_cached && misses > 0 {
        bail!(
            "{misses} of {} images have no bottleneck in {}: run `flowers extract` for them \
             (every shard), or leave out --require-cached to compute them here",
            images.len(),
            cache.dir().display()
        );
    }
    let (plan, writer) = match (misses, matrix.take()?) {
        (0, Some(writer)) => (None, writer),
        (_, cached) => {
            let plan = backbone.extractor()?;
            cache.expect_width(plan.output_len);
            let writer = match cached {
                Some(writer) if writer.dim() == plan.output_len => writer,
                _ => {
                    // No entry, or entries of another width: every vector is computed.
                    lookups = lookups.into_iter().map(Lookup::into_miss).collect();
                    MatrixWriter::create(
                        cache.dir(),
                        images.len(),
                        plan.output_len,
                        scope.matrix_memory,
                    )?
                }
            };
            (Some(plan), writer)
        }
    };
    let sha256 = lookups.iter().map(Lookup::sha).collect();
    // Phase 2: compute what is missing.
    let progress = Progress::new(images.len() as u64, "bottlenecks");
    let results: Vec<Result<Outcome, Problem>> = images
        .par_iter()
        .enumerate()
        .zip(lookups.into_par_iter())
        .map(|((row, image), lookup)| {
            let result = match lookup {
                Lookup::Hit(_) => Ok(Outcome::Cached),
                Lookup::Elsewhere => Ok(Outcome::Elsewhere),
                Lookup::Miss(sha) => {
                    let plan = plan
                        .as_ref()
                        .expect("a plan is loaded whenever there are misses");
                    compute(image, sha, plan, cache).map(|vector| {
                        writer.write_row(row, &vector);
                        Outcome::Computed
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
        present.push(matches!(result, Ok(Outcome::Cached | Outcome::Computed)));
        match result {
            Ok(Outcome::Cached) => report.cached += 1,
            Ok(Outcome::Computed) => report.computed += 1,
            Ok(Outcome::Elsewhere) => report.other_shards += 1,
            Err(problem) => report.failed.push(Skipped {
                path: image.path.clone(),
                problem,
            }),
        }
    }
    report.elapsed = start.elapsed();
    let matrix = writer.finish()?;
    Ok((
        Bottlenecks {
            matrix,
            present,
            sha256,
        },
        report,
    ))
}

enum Lookup {
    Hit([u8; 32]),
    Miss([u8; 32]),
    /// Another shard's image.
    Elsewhere,
    Unreadable(Problem),
}

/// How one image's bottleneck was had.
enum Outcome {
    Cached,
    Computed,
    Elsewhere,
}

impl Lookup {
    fn sha(&self) -> Option<[u8; 32]> {
        match self {
            Lookup::Hit(sha) | Lookup::Miss(sha) => Some(*sha),
            Lookup::Elsewhere | Lookup::Unreadable(_) => None,
        }
    }

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
    memory: u64,
    cell: OnceLock<Result<MatrixWriter>>,
}

impl<'a> LazyMatrix<'a> {
    fn new(dir: &'a Path, rows: usize, memory: u64) -> LazyMatrix<'a> {
        LazyMatrix {
            dir,
            rows,
            memory,
            cell: OnceLock::new(),
        }
    }

    /// Stores `vector` as row `row` if the matrix has (or can be given) its width.
    fn store(&self, row: usize, vector: &[f32]) -> bool {
        let created = self
            .cell
            .get_or_init(|| MatrixWriter::create(self.dir, self.rows, vector.len(), self.memory));
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

fn lookup(
    row: usize,
    image: &ImageEntry,
    cache: &Cache,
    matrix: &LazyMatrix,
    memo: &HashMemo,
    shard: Option<Shard>,
) -> Lookup {
    match memo.sha256_of(&image.path) {
        Ok(sha) => {
            if shard.is_some_and(|shard| !shard.contains(&sha)) {
                return Lookup::Elsewhere;
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_disjoint_and_cover_everything() {
        let shards: Vec<Shard> = (1..=3)
            .map(|k| Shard::parse(&format!("{k}/3")).unwrap())
            .collect();
        let mut per_shard = [0usize; 3];
        for i in 0u32..3000 {
            let sha: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
            let owners: Vec<usize> = (0..3).filter(|&s| shards[s].contains(&sha)).collect();
            assert_eq!(owners.len(), 1, "image {i} belongs to {owners:?}");
            per_shard[owners[0]] += 1;
        }
        assert!(
            per_shard.iter().all(|&n| (850..1150).contains(&n)),
            "{per_shard:?}"
        );
        assert_eq!(shards[1].to_string(), "2/3");
        for bad in ["0/3", "4/3", "3", "a/b", "1/0"] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
    }
}
