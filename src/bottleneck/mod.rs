//! Bottlenecks: the backbone's pooled feature vector for each image, computed on all cores
//! and cached on disk so reruns are instant.
//!
//! [`cache`] keeps one file per (image content, backbone) on disk; [`matrix`] holds the
//! run's vectors in a memory-mapped scratch file, one row per image; [`extract_all`] fills
//! the matrix from the cache and computes what is missing. With combined backbones
//! ([`extract_scoped`] with several [`Part`]s) a row is the concatenation of each
//! backbone's vector, each cached in its own backbone's folder.

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

use crate::backbone::{Backbone, Backbones, Plan};
use crate::dataset::ImageEntry;
use crate::image::decode_rgb;
use crate::problem::{Problem, Skipped};
use crate::util::messages::{io_reason, shown};
use crate::util::panic_guard::catching_panics;
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

/// One backbone of the run, and its cache: a combination of backbones has one of each per
/// backbone, so adding a backbone to a combination computes only its part.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    pub backbone: &'a Backbone,
    pub cache: &'a Cache,
}

/// One cache per backbone, under `base`.
pub fn open_caches(base: &Path, backbones: &Backbones) -> Result<Vec<Cache>> {
    backbones
        .parts()
        .iter()
        .map(|backbone| Cache::open(base, backbone.identity()))
        .collect()
}

/// Each backbone with its cache (from [`open_caches`]).
pub fn parts<'a>(backbones: &'a Backbones, caches: &'a [Cache]) -> Vec<Part<'a>> {
    backbones
        .parts()
        .iter()
        .zip(caches)
        .map(|(backbone, cache)| Part { backbone, cache })
        .collect()
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
    extract_scoped(images, &[Part { backbone, cache }], Scope::default())
}

/// [`extract_all`] for the images of `scope` only, through every backbone of `parts`: an
/// image's row is the concatenation of the parts' vectors, in order. Images of other
/// shards are hashed but neither read from the cache nor computed, and have no row. The
/// counts of the report are of vectors (one per image and backbone).
pub fn extract_scoped(
    images: &[ImageEntry],
    parts: &[Part],
    scope: Scope,
) -> Result<(Bottlenecks, ExtractionReport)> {
    let start = Instant::now();
    // Phase 1: hash every image; rows wholly cached go straight into the matrix, which
    // takes its width from the first one (so a warm run loads no model). The photos'
    // hashes are remembered in the first backbone's cache, whatever the others.
    let cache_dir = parts[0].cache.dir();
    let matrix = LazyMatrix::new(cache_dir, images.len(), scope.matrix_memory);
    let memo = HashMemo::open(cache_dir);
    let mut lookups: Vec<Lookup> = images
        .par_iter()
        .enumerate()
        .map(|(row, image)| lookup(row, image, parts, &matrix, &memo, scope.shard))
        .collect();
    if let Err(e) = memo.save() {
        crate::warn!(
            "cannot remember the photos' hashes in {}: {} (the next run hashes them again)",
            cache_dir.display(),
            io_reason(&e)
        );
    }
    let misses = lookups.iter().filter(|l| l.is_miss()).count();
    if scope.require_cached && misses > 0 {
        bail!(
            "{misses} of {} images have no bottleneck in {}: run `flowers extract` for them \
             (every shard), or leave out --require-cached to compute them here",
            images.len(),
            cache_dirs(parts)
        );
    }
    let (plans, writer) = match (misses, matrix.take()?) {
        (0, Some(writer)) => (parts.iter().map(|_| None).collect(), writer),
        (_, cached) => {
            let plans = load_plans(parts, |p| needs_plan(p, parts[p].cache, &lookups))?;
            let widths = widths(parts, &plans);
            let width = widths.as_ref().map(|w| w.iter().sum::<usize>());
            match (cached, width) {
                (Some(writer), Some(width)) if writer.dim() == width => (plans, writer),
                (None, Some(width)) => {
                    let dir = parts[0].cache.dir();
                    let memory = scope.matrix_memory;
                    let writer = MatrixWriter::create(dir, images.len(), width, memory)?;
                    (plans, writer)
                }
                _ => {
                    // Entries of another width: every vector is computed.
                    lookups = lookups.into_iter().map(Lookup::into_miss).collect();
                    let plans = load_plans(parts, |_| true)?;
                    let width = plans.iter().flatten().map(|p| p.output_len).sum();
                    let dir = parts[0].cache.dir();
                    let memory = scope.matrix_memory;
                    let writer = MatrixWriter::create(dir, images.len(), width, memory)?;
                    (plans, writer)
                }
            }
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
                Lookup::Hit(_) => Ok(Outcome::Cached(parts.len())),
                Lookup::Elsewhere => Ok(Outcome::Elsewhere),
                Lookup::Miss(sha, cached) => {
                    compute(image, sha, cached, &plans, parts).map(|(vector, computed)| {
                        writer.write_row(row, &vector);
                        Outcome::Computed(computed, parts.len() - computed)
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
        present.push(matches!(
            result,
            Ok(Outcome::Cached(_) | Outcome::Computed(..))
        ));
        match result {
            Ok(Outcome::Cached(vectors)) => report.cached += vectors,
            Ok(Outcome::Computed(computed, cached)) => {
                report.computed += computed;
                report.cached += cached;
            }
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

/// The cache folders of `parts`, for messages.
pub fn cache_dirs(parts: &[Part]) -> String {
    let dirs: Vec<String> = parts
        .iter()
        .map(|p| p.cache.dir().display().to_string())
        .collect();
    dirs.join(" and ")
}

/// The plans of the parts `needed` says must compute something, each telling its cache
/// the width its entries must have.
fn load_plans(parts: &[Part], needed: impl Fn(usize) -> bool) -> Result<Vec<Option<Plan>>> {
    let load = |part: &Part| -> Result<Plan> {
        let plan = part.backbone.extractor()?;
        part.cache.expect_width(plan.output_len);
        Ok(plan)
    };
    (0..parts.len())
        .map(|p| needed(p).then(|| load(&parts[p])).transpose())
        .collect()
}

/// Whether part `p` must be loaded: some image misses its vector, or no entry told its
/// width.
fn needs_plan(p: usize, cache: &Cache, lookups: &[Lookup]) -> bool {
    cache.width().is_none()
        || lookups.iter().any(|l| match l {
            Lookup::Miss(_, cached) => cached.get(p).is_none_or(Option::is_none),
            _ => false,
        })
}

/// Each part's width, from its plan or else its cache; `None` when a cache's entries have
/// another width than its backbone gives.
fn widths(parts: &[Part], plans: &[Option<Plan>]) -> Option<Vec<usize>> {
    parts
        .iter()
        .zip(plans)
        .map(|(part, plan)| match (plan, part.cache.width()) {
            (Some(plan), Some(cached)) if cached != plan.output_len => None,
            (Some(plan), _) => Some(plan.output_len),
            (None, cached) => cached,
        })
        .collect()
}

enum Lookup {
    Hit([u8; 32]),
    /// Some part is not cached: the vectors of the parts that are, in part order.
    Miss([u8; 32], Vec<Option<Vec<f32>>>),
    /// Another shard's image.
    Elsewhere,
    Unreadable(Problem),
}

/// How one image's bottleneck was had.
enum Outcome {
    /// From the cache: this many vectors.
    Cached(usize),
    /// Vectors computed, and vectors from the cache.
    Computed(usize, usize),
    Elsewhere,
}

impl Lookup {
    fn sha(&self) -> Option<[u8; 32]> {
        match self {
            Lookup::Hit(sha) | Lookup::Miss(sha, _) => Some(*sha),
            Lookup::Elsewhere | Lookup::Unreadable(_) => None,
        }
    }

    fn is_miss(&self) -> bool {
        matches!(self, Lookup::Miss(..))
    }

    /// Everything of this image to be computed.
    fn into_miss(self) -> Lookup {
        match self {
            Lookup::Hit(sha) | Lookup::Miss(sha, _) => Lookup::Miss(sha, Vec::new()),
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
    parts: &[Part],
    matrix: &LazyMatrix,
    memo: &HashMemo,
    shard: Option<Shard>,
) -> Lookup {
    match memo.sha256_of(&image.path) {
        Ok(sha) => {
            if shard.is_some_and(|shard| !shard.contains(&sha)) {
                return Lookup::Elsewhere;
            }
            cached_row(row, sha, parts, matrix)
        }
        Err(e) => Lookup::Unreadable(Problem::from_io(&e)),
    }
}

/// The image's row from the caches: stored if every part has its vector, else a miss
/// keeping the vectors found.
fn cached_row(row: usize, sha: [u8; 32], parts: &[Part], matrix: &LazyMatrix) -> Lookup {
    if let [only] = parts {
        return match only.cache.read(&sha) {
            Some(vector) if matrix.store(row, &vector) => Lookup::Hit(sha),
            _ => Lookup::Miss(sha, Vec::new()),
        };
    }
    let cached: Vec<Option<Vec<f32>>> = parts.iter().map(|p| p.cache.read(&sha)).collect();
    if cached.iter().all(Option::is_some) {
        let row_values: Vec<f32> = cached.iter().flatten().flatten().copied().collect();
        if matrix.store(row, &row_values) {
            return Lookup::Hit(sha);
        }
    }
    Lookup::Miss(sha, cached)
}

/// Reads and decodes one image once, runs it through every backbone whose vector was not
/// cached (caching it), and returns the row with the number of vectors computed.
fn compute(
    image: &ImageEntry,
    sha: [u8; 32],
    mut cached: Vec<Option<Vec<f32>>>,
    plans: &[Option<Plan>],
    parts: &[Part],
) -> Result<(Vec<f32>, usize), Problem> {
    cached.resize(parts.len(), None);
    let bytes = fs::read(&image.path).map_err(|e| Problem::from_io(&e))?;
    let rgb = catching_panics(|| decode_rgb(&bytes))?;
    let mut row = Vec::new();
    let mut computed = 0;
    for ((plan, part), cached) in plans.iter().zip(parts).zip(cached) {
        let vector = match (cached, plan) {
            (Some(vector), _) => vector,
            (None, None) => {
                return Err(Problem::InferenceFailed(format!(
                    "its bottleneck of {} left the cache during the run",
                    part.backbone.name
                )))
            }
            (None, Some(plan)) => {
                computed += 1;
                let input = catching_panics(|| plan.preprocessing.tensor_from_rgb(rgb.clone()))?;
                let vector = plan
                    .run(input)
                    .map_err(|e| Problem::InferenceFailed(format!("{e:#}")))?;
                if let Err(e) = part.cache.write(&sha, &vector) {
                    crate::warn!(
                        "cannot write bottleneck cache entry for {}: {}",
                        shown(&image.path),
                        io_reason(&e)
                    );
                }
                vector
            }
        };
        row.extend_from_slice(&vector);
    }
    Ok((row, computed))
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
