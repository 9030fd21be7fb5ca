//! Pools of distorted bottlenecks: retrain.py's augmentation at the cost of a few extra
//! extractions instead of one backbone run per image per training step.
//!
//! Each training image gets `copies` distorted versions, each drawn with its own seed (the
//! hash of the image content, the distortion settings and the copy number), run through
//! each backbone once and cached like any bottleneck, under that hash, in that backbone's
//! cache. The draw does not depend on the input size, so a backbone's copy is the same
//! whichever combination computed it, and every backbone of a combination sees the same
//! distortion (version 2 of the key: version 1 drew window positions per input size).
//! Training then samples a copy where retrain.py would have drawn a fresh distortion.
//! Rerunning with the same settings loads every copy from the cache; other settings or
//! another copy count only compute the copies that do not exist yet.

use std::fs;
use std::time::Instant;

use anyhow::{bail, Result};
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{cache_dirs, BottleneckMatrix, ExtractionReport, MatrixWriter, Part};
use crate::backbone::Plan;
use crate::dataset::ImageEntry;
use crate::image::{decode_rgb, Distortions, Draw};
use crate::problem::{Problem, Skipped};
use crate::util::messages::{io_reason, shown};
use crate::util::panic_guard::catching_panics;
use crate::util::progress::Progress;

/// The distorted bottlenecks of some images: row `slot * copies + k` is copy `k` of the
/// image in position `slot` of the list given to [`extract_distorted`].
pub struct DistortedPool {
    pub matrix: BottleneckMatrix,
    pub present: Vec<bool>,
    pub copies: usize,
}

/// What to distort and how.
#[derive(Clone, Copy, Debug)]
pub struct PoolSpec {
    pub distortions: Distortions,
    /// Distorted copies per image.
    pub copies: usize,
    /// The bottleneck width (the sum of the backbones').
    pub dim: usize,
    /// As [`super::Scope::matrix_memory`].
    pub matrix_memory: u64,
    /// As [`super::Scope::require_cached`]: fail rather than compute a missing copy.
    pub require_cached: bool,
}

/// The cache key, and the seed, of copy `k` of the image with content hash `image_sha`.
pub fn copy_key(image_sha: &[u8; 32], distortions: &Distortions, k: usize) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"flowers distorted copy v2\0");
    hasher.update(image_sha);
    hasher.update(distortions.descriptor().as_bytes());
    hasher.update((k as u64).to_le_bytes());
    hasher.finalize().into()
}

/// Gets `spec.copies` distorted bottlenecks of each image (given with its content hash),
/// from the caches where possible, computing the rest on the current rayon pool; a
/// backbone is loaded only if something of it is missing. A copy's row is the
/// concatenation of the parts' vectors of one distortion of the photo; the report counts
/// vectors (one per copy and backbone).
pub fn extract_distorted(
    images: &[(&ImageEntry, [u8; 32])],
    parts: &[Part],
    spec: &PoolSpec,
) -> Result<(DistortedPool, ExtractionReport)> {
    let start = Instant::now();
    let copies = spec.copies;
    let writer = MatrixWriter::create(
        parts[0].cache.dir(),
        images.len() * copies,
        spec.dim,
        spec.matrix_memory,
    )?;
    let missing: Vec<Vec<Missing>> = images
        .par_iter()
        .enumerate()
        .map(|(slot, (_, sha))| {
            (0..copies)
                .filter_map(|k| cached_copy(sha, k, parts, spec, &writer, slot * copies + k))
                .collect()
        })
        .collect();
    let to_compute: usize = missing.iter().flatten().map(Missing::count).sum();
    let vectors = images.len() * copies * parts.len();
    if spec.require_cached && to_compute > 0 {
        bail!(
            "{to_compute} of {vectors} distorted copies have no bottleneck in {}: run this retrain once \
             without --require-cached to compute them",
            cache_dirs(parts)
        );
    }
    let plans = distortion_plans(parts, &missing, spec)?;
    let progress = Progress::new(to_compute as u64, "distorted bottlenecks");
    let failures: Vec<Option<Problem>> = images
        .par_iter()
        .zip(missing.par_iter())
        .enumerate()
        .map(|(slot, ((image, sha), ks))| {
            if ks.is_empty() {
                return None;
            }
            let computed = compute_copies(image, sha, ks, &plans, parts, spec, &progress);
            match computed {
                Ok(rows) => {
                    for (missing, row) in ks.iter().zip(rows) {
                        writer.write_row(slot * copies + missing.k, &row);
                    }
                    None
                }
                Err(problem) => {
                    crate::warn!("skipping distortions of {}: {problem}", shown(&image.path));
                    Some(problem)
                }
            }
        })
        .collect();
    progress.finish();
    let mut report = ExtractionReport {
        computed: to_compute,
        cached: vectors - to_compute,
        ..Default::default()
    };
    let mut present = vec![true; images.len() * copies];
    for (slot, failure) in failures.into_iter().enumerate() {
        if let Some(problem) = failure {
            for missing in &missing[slot] {
                present[slot * copies + missing.k] = false;
                report.computed -= missing.count();
            }
            report.failed.push(Skipped {
                path: images[slot].0.path.clone(),
                problem,
            });
        }
    }
    report.elapsed = start.elapsed();
    let matrix = writer.finish()?;
    Ok((
        DistortedPool {
            matrix,
            present,
            copies,
        },
        report,
    ))
}

/// Copy `k` of an image some part has no cached vector of: the vectors the others have.
struct Missing {
    k: usize,
    cached: Vec<Option<Vec<f32>>>,
}

impl Missing {
    /// The vectors to compute.
    fn count(&self) -> usize {
        self.cached.iter().filter(|v| v.is_none()).count()
    }
}

/// Copy `k` of the image `sha` from the caches: written as `row` if every part has it.
fn cached_copy(
    sha: &[u8; 32],
    k: usize,
    parts: &[Part],
    spec: &PoolSpec,
    writer: &MatrixWriter,
    row: usize,
) -> Option<Missing> {
    let key = copy_key(sha, &spec.distortions, k);
    let cached: Vec<Option<Vec<f32>>> = parts.iter().map(|p| p.cache.read(&key)).collect();
    if cached.iter().all(Option::is_some) {
        let values: Vec<f32> = cached.iter().flatten().flatten().copied().collect();
        if values.len() == spec.dim {
            writer.write_row(row, &values);
            return None;
        }
        return Some(Missing {
            k,
            cached: vec![None; parts.len()],
        });
    }
    Some(Missing { k, cached })
}

/// The plans of the parts with a copy to compute; together with the cached parts they
/// must give `spec.dim` values, the width of the plain bottlenecks.
fn distortion_plans(
    parts: &[Part],
    missing: &[Vec<Missing>],
    spec: &PoolSpec,
) -> Result<Vec<Option<Plan>>> {
    let needed = |p: usize| missing.iter().flatten().any(|m| m.cached[p].is_none());
    let plans = (0..parts.len())
        .map(|p| needed(p).then(|| parts[p].backbone.extractor()).transpose())
        .collect::<Result<Vec<_>>>()?;
    let width: Option<usize> = parts
        .iter()
        .zip(&plans)
        .map(|(part, plan)| plan.as_ref().map(|p| p.output_len).or(part.cache.width()))
        .sum();
    if plans.iter().any(Option::is_some) && width != Some(spec.dim) {
        bail!(
            "the backbones give {} values per image, the cached bottlenecks {}: clear {}",
            width.map_or("other".to_string(), |w| w.to_string()),
            spec.dim,
            cache_dirs(parts)
        );
    }
    Ok(plans)
}

/// Decodes one image once and computes its missing distorted copies, each drawn once
/// and given to every backbone that lacks it; each vector is cached, each row returned.
fn compute_copies(
    image: &ImageEntry,
    sha: &[u8; 32],
    ks: &[Missing],
    plans: &[Option<Plan>],
    parts: &[Part],
    spec: &PoolSpec,
    progress: &Progress,
) -> Result<Vec<Vec<f32>>, Problem> {
    let bytes = fs::read(&image.path).map_err(|e| Problem::from_io(&e))?;
    let rgb = catching_panics(|| decode_rgb(&bytes))?;
    let mut rows = Vec::with_capacity(ks.len());
    for missing in ks {
        let key = copy_key(sha, &spec.distortions, missing.k);
        let draw = Draw::new(&spec.distortions, &mut ChaCha8Rng::from_seed(key));
        let mut row = Vec::with_capacity(spec.dim);
        for ((part, plan), cached) in parts.iter().zip(plans).zip(&missing.cached) {
            let vector = match (cached, plan) {
                (Some(vector), _) => vector.clone(),
                (None, None) => {
                    return Err(Problem::InferenceFailed(format!(
                        "its distorted bottleneck of {} left the cache during the run",
                        part.backbone.name
                    )))
                }
                (None, Some(plan)) => {
                    let vector = distorted_vector(&rgb, &draw, plan, spec)?;
                    if let Err(e) = part.cache.write(&key, &vector) {
                        crate::warn!(
                            "cannot write distorted bottleneck cache entry for {}: {}",
                            shown(&image.path),
                            io_reason(&e)
                        );
                    }
                    progress.inc();
                    vector
                }
            };
            row.extend_from_slice(&vector);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// One backbone's vector of one distorted copy.
fn distorted_vector(
    rgb: &RgbImage,
    draw: &Draw,
    plan: &Plan,
    spec: &PoolSpec,
) -> Result<Vec<f32>, Problem> {
    let input = catching_panics(|| {
        plan.preprocessing
            .drawn_tensor(rgb.clone(), &spec.distortions, draw)
    })?;
    plan.run(input)
        .map_err(|e| Problem::InferenceFailed(format!("{e:#}")))
}
