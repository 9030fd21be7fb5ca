//! Bottlenecks: the backbone's pooled feature vector for each image, computed on all cores
//! and cached on disk so reruns are instant.
//!
//! Cache layout: `<bottleneck-dir>/<backbone identity, 16 hex>/<image sha256[..2]>/<image sha256>.bn`.
//! The key is the image's *content* and the backbone's identity (model bytes, bottleneck
//! tensor, preprocessing), so an edited image or another model never reuses a stale vector.
//! Each entry carries a header and a checksum; anything truncated, zero-filled, copied from
//! another backbone or otherwise damaged is detected and recomputed. Entries are written to
//! a temporary file and renamed, so an interrupted run never leaves a half-written entry,
//! and two runs sharing one cache directory cannot corrupt each other.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rayon::prelude::*;
use sha2::{Digest, Sha256};

use crate::backbone::{hex, Backbone, Plan};
use crate::dataset::{io_reason, ImageEntry, Skipped};
use crate::matrix::{BottleneckMatrix, MatrixWriter};
use crate::progress::{shown, Progress};

const MAGIC: &[u8; 8] = b"FLWRBN01";
const HEADER_LEN: usize = 8 + 32 + 32 + 4;
const CHECKSUM_LEN: usize = 32;

/// The on-disk cache of one backbone.
pub struct Cache {
    dir: PathBuf,
    identity: [u8; 32],
}

impl Cache {
    /// Opens (creating) the cache for the backbone `identity` under `base`.
    pub fn open(base: &Path, identity: [u8; 32]) -> Result<Cache> {
        let dir = base.join(&hex(&identity)[..16]);
        fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create bottleneck cache {}: choose another with --bottleneck-dir",
                dir.display()
            )
        })?;
        Ok(Cache { dir, identity })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, image_sha: &[u8; 32]) -> PathBuf {
        let name = hex(image_sha);
        self.dir.join(&name[..2]).join(format!("{name}.bn"))
    }

    /// The cached vector for an image, if a valid entry exists.
    pub fn read(&self, image_sha: &[u8; 32]) -> Option<Vec<f32>> {
        let bytes = fs::read(self.entry_path(image_sha)).ok()?;
        decode_entry(&bytes, &self.identity, image_sha)
    }

    /// Stores a vector atomically (temporary file, then rename).
    pub fn write(&self, image_sha: &[u8; 32], vector: &[f32]) -> std::io::Result<()> {
        let path = self.entry_path(image_sha);
        let parent = path.parent().expect("entry paths have a parent");
        fs::create_dir_all(parent)?;
        let mut file = tempfile::NamedTempFile::new_in(parent)?;
        file.write_all(&encode_entry(&self.identity, image_sha, vector))?;
        file.persist(&path).map_err(|e| e.error)?;
        Ok(())
    }
}

fn encode_entry(identity: &[u8; 32], image_sha: &[u8; 32], vector: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + vector.len() * 4 + CHECKSUM_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(identity);
    bytes.extend_from_slice(image_sha);
    bytes.extend_from_slice(&(vector.len() as u32).to_le_bytes());
    for value in vector {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum);
    bytes
}

fn decode_entry(bytes: &[u8], identity: &[u8; 32], image_sha: &[u8; 32]) -> Option<Vec<f32>> {
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN || &bytes[..8] != MAGIC {
        return None;
    }
    let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if &body[8..40] != identity || &body[40..72] != image_sha {
        return None;
    }
    let len = u32::from_le_bytes(body[72..76].try_into().ok()?) as usize;
    let payload = &body[HEADER_LEN..];
    if payload.len() != len * 4 || Sha256::digest(body).as_slice() != checksum {
        return None;
    }
    let vector: Vec<f32> = payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    vector.iter().all(|v| v.is_finite()).then_some(vector)
}

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
    let (plan, writer) = match (misses, matrix.take()) {
        (0, Some(writer)) => (None, writer),
        (_, cached) => {
            let plan = backbone.extractor()?;
            let writer = match cached {
                Some(writer) if writer.dim() == plan.output_len => writer,
                _ => {
                    // No entry, or entries of another width: every vector is computed.
                    lookups = lookups.into_iter().map(Lookup::into_miss).collect();
                    MatrixWriter::create(cache.dir(), images.len(), plan.output_len)
                }
            };
            (Some(plan), writer)
        }
    };
    // Phase 2: compute what is missing.
    let progress = Progress::new(images.len() as u64, "bottlenecks");
    let results: Vec<Result<bool, String>> = images
        .par_iter()
        .enumerate()
        .zip(lookups.into_par_iter())
        .map(|((row, image), lookup)| {
            let result = match lookup {
                Lookup::Hit(_) => Ok(true),
                Lookup::Miss(sha) => compute(image, sha, plan.as_ref(), cache).map(|vector| {
                    writer.write_row(row, &vector);
                    false
                }),
                Lookup::Unreadable(reason) => Err(reason),
            };
            if let Err(reason) = &result {
                progress.warn(&format!("skipping {}: {reason}", shown(&image.path)));
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
            Err(reason) => report.failed.push(Skipped {
                path: image.path.clone(),
                reason,
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
    Unreadable(String),
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
    cell: OnceLock<MatrixWriter>,
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
        let writer = self
            .cell
            .get_or_init(|| MatrixWriter::create(self.dir, self.rows, vector.len()));
        let fits = writer.dim() == vector.len();
        if fits {
            writer.write_row(row, vector);
        }
        fits
    }

    fn take(self) -> Option<MatrixWriter> {
        self.cell.into_inner()
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
        Err(e) => Lookup::Unreadable(format!("cannot read: {}", io_reason(&e))),
    }
}

/// Reads, decodes and runs one image through the backbone, then caches the vector.
fn compute(
    image: &ImageEntry,
    sha: [u8; 32],
    plan: Option<&Plan>,
    cache: &Cache,
) -> Result<Vec<f32>, String> {
    let plan = plan.expect("a plan is loaded whenever an entry must be computed");
    let bytes = fs::read(&image.path).map_err(|e| format!("cannot read: {}", io_reason(&e)))?;
    let input = plan.preprocessing.tensor_from_bytes(&bytes)?;
    let vector = plan
        .run(input)
        .map_err(|e| format!("backbone failed on this image: {e:#}"))?;
    if let Err(e) = cache.write(&sha, &vector) {
        crate::progress::warn(&format!(
            "cannot write bottleneck cache entry for {}: {}",
            shown(&image.path),
            io_reason(&e)
        ));
    }
    Ok(vector)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), [7; 32]).unwrap();
        let image = [1; 32];
        let vector = vec![0.5, -1.25, 3.0];
        cache.write(&image, &vector).unwrap();
        assert_eq!(cache.read(&image), Some(vector.clone()));

        let path = cache.entry_path(&image);
        let good = fs::read(&path).unwrap();
        // Truncated.
        fs::write(&path, &good[..good.len() - 5]).unwrap();
        assert_eq!(cache.read(&image), None);
        // Zero-filled.
        fs::write(&path, vec![0; good.len()]).unwrap();
        assert_eq!(cache.read(&image), None);
        // One flipped payload bit.
        let mut flipped = good.clone();
        flipped[HEADER_LEN] ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert_eq!(cache.read(&image), None);
        // Written by another backbone.
        let other = Cache::open(dir.path(), [8; 32]).unwrap();
        other.write(&image, &vector).unwrap();
        fs::copy(other.entry_path(&image), &path).unwrap();
        assert_eq!(cache.read(&image), None);
    }
}
