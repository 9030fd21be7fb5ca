//! Pools of distorted bottlenecks: retrain.py's augmentation at the cost of a few extra
//! extractions instead of one backbone run per image per training step.
//!
//! Each training image gets `copies` distorted versions, each drawn with its own seed (the
//! hash of the image content, the distortion settings and the copy number), run through the
//! backbone once and cached like any bottleneck, under that hash. Training then samples a
//! copy where retrain.py would have drawn a fresh distortion. Rerunning with the same
//! settings loads every copy from the cache; other settings or another copy count only
//! compute the copies that do not exist yet.

use std::fs;
use std::time::Instant;

use anyhow::{bail, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use super::{BottleneckMatrix, Cache, ExtractionReport, MatrixWriter};
use crate::backbone::{Backbone, Plan};
use crate::dataset::ImageEntry;
use crate::image::{decode_rgb, Distortions};
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
    /// The bottleneck width (the backbone's).
    pub dim: usize,
    /// As [`super::Scope::matrix_memory`].
    pub matrix_memory: u64,
    /// As [`super::Scope::require_cached`]: fail rather than compute a missing copy.
    pub require_cached: bool,
}

/// The cache key, and the seed, of copy `k` of the image with content hash `image_sha`.
pub fn copy_key(image_sha: &[u8; 32], distortions: &Distortions, k: usize) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(b"flowers distorted copy v1\0");
    hasher.update(image_sha);
    hasher.update(distortions.descriptor().as_bytes());
    hasher.update((k as u64).to_le_bytes());
    hasher.finalize().into()
}

/// Gets `spec.copies` distorted bottlenecks of each image (given with its content hash),
/// from the cache where possible, computing the rest on the current rayon pool; the
/// backbone is loaded only if something is missing.
pub fn extract_distorted(
    images: &[(&ImageEntry, [u8; 32])],
    backbone: &Backbone,
    cache: &Cache,
    spec: &PoolSpec,
) -> Result<(DistortedPool, ExtractionReport)> {
    let start = Instant::now();
    let copies = spec.copies;
    let writer = MatrixWriter::create(
        cache.dir(),
        images.len() * copies,
        spec.dim,
        spec.matrix_memory,
    )?;
    let missing: Vec<Vec<usize>> = images
        .par_iter()
        .enumerate()
        .map(|(slot, (_, sha))| {
            (0..copies)
                .filter(
                    |&k| match cache.read(&copy_key(sha, &spec.distortions, k)) {
                        Some(vector) if vector.len() == spec.dim => {
                            writer.write_row(slot * copies + k, &vector);
                            false
                        }
                        _ => true,
                    },
                )
                .collect()
        })
        .collect();
    let to_compute: usize = missing.iter().map(Vec::len).sum();
    if spec.require_cached && to_compute > 0 {
        bail!(
            "{to_compute} of {} distorted copies have no bottleneck in {}: run this retrain once \
             without --require-cached to compute them",
            images.len() * copies,
            cache.dir().display()
        );
    }
    let plan = match to_compute {
        0 => None,
        _ => Some(backbone.extractor()?),
    };
    if let Some(plan) = &plan {
        if plan.output_len != spec.dim {
            bail!(
                "the backbone gives {} values per image, the cached bottlenecks {}: clear {}",
                plan.output_len,
                spec.dim,
                cache.dir().display()
            );
        }
    }
    let progress = Progress::new(to_compute as u64, "distorted bottlenecks");
    let failures: Vec<Option<Problem>> = images
        .par_iter()
        .zip(&missing)
        .enumerate()
        .map(|(slot, ((image, sha), ks))| {
            let plan = match (&plan, ks.is_empty()) {
                (Some(plan), false) => plan,
                _ => return None,
            };
            let computed = compute_copies(image, sha, ks, plan, cache, spec, &progress);
            match computed {
                Ok(vectors) => {
                    for (k, vector) in ks.iter().zip(vectors) {
                        writer.write_row(slot * copies + k, &vector);
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
        cached: images.len() * copies - to_compute,
        ..Default::default()
    };
    let mut present = vec![true; images.len() * copies];
    for (slot, failure) in failures.into_iter().enumerate() {
        if let Some(problem) = failure {
            for &k in &missing[slot] {
                present[slot * copies + k] = false;
            }
            report.computed -= missing[slot].len();
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

/// Decodes one image once and computes its distorted copies `ks`, caching each.
fn compute_copies(
    image: &ImageEntry,
    sha: &[u8; 32],
    ks: &[usize],
    plan: &Plan,
    cache: &Cache,
    spec: &PoolSpec,
    progress: &Progress,
) -> Result<Vec<Vec<f32>>, Problem> {
    let bytes = fs::read(&image.path).map_err(|e| Problem::from_io(&e))?;
    let rgb = catching_panics(|| decode_rgb(&bytes))?;
    let mut vectors = Vec::with_capacity(ks.len());
    for &k in ks {
        let key = copy_key(sha, &spec.distortions, k);
        let mut rng = ChaCha8Rng::from_seed(key);
        let input = catching_panics(|| {
            plan.preprocessing
                .distorted_tensor(rgb.clone(), &spec.distortions, &mut rng)
        })?;
        let vector = plan
            .run(input)
            .map_err(|e| Problem::InferenceFailed(format!("{e:#}")))?;
        if let Err(e) = cache.write(&key, &vector) {
            crate::warn!(
                "cannot write distorted bottleneck cache entry for {}: {}",
                shown(&image.path),
                io_reason(&e)
            );
        }
        progress.inc();
        vectors.push(vector);
    }
    Ok(vectors)
}
