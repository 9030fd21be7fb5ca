//! The `extract` pipeline: bottlenecks into the shared cache and nothing else, for the
//! images of one shard (a cluster task) or all of them. A shard killed halfway and rerun
//! computes only what is missing; shards on one cache over NFS are safe because every entry
//! is written to a temporary name and renamed (see `bottleneck::cache`).

use std::io::Write;

use anyhow::Result;
use serde::Serialize;

use super::thread_pool;
use crate::backbone::Backbones;
use crate::bottleneck::{cache_dirs, extract_scoped, open_caches, parts, Scope};
use crate::dataset::Dataset;
use crate::exit;
use crate::options::ExtractOptions;
use crate::problem::Skipped;
use crate::util::messages::shown;

/// What `flowers extract --json` prints.
#[derive(Serialize)]
struct Summary<'a> {
    /// `K/N`, or `all`.
    shard: String,
    images: usize,
    computed: usize,
    cached: usize,
    other_shards: usize,
    skipped: &'a [Skipped],
    seconds: f64,
    cache: String,
}

/// `flowers extract`: prints one summary line (or JSON object) on `out`.
pub fn run_command(options: &ExtractOptions, out: &mut dyn Write) -> Result<u8> {
    let pool = thread_pool(options.threads)?;
    let dataset = Dataset::discover_classes(&options.image_dir, 1)?;
    for skipped in &dataset.skipped {
        crate::warn!("skipping {}: {}", shown(&skipped.path), skipped.problem);
    }
    let backbones = Backbones::load(&options.backbones)?;
    let caches = open_caches(&options.bottleneck_dir, &backbones)?;
    let parts = parts(&backbones, &caches);
    let scope = Scope {
        shard: options.shard,
        require_cached: false,
        // Extraction keeps no bottleneck for itself: stream, never map.
        matrix_memory: 0,
    };
    let (_, report) = pool.install(|| extract_scoped(&dataset.images, &parts, scope))?;
    let mut skipped = dataset.skipped.clone();
    skipped.extend(report.failed.iter().cloned());
    let summary = Summary {
        shard: options
            .shard
            .map_or("all".to_string(), |shard| shard.to_string()),
        images: dataset.images.len(),
        computed: report.computed,
        cached: report.cached,
        other_shards: report.other_shards,
        skipped: &skipped,
        seconds: report.elapsed.as_secs_f64(),
        cache: cache_dirs(&parts),
    };
    if options.json {
        let mut line = serde_json::to_vec(&summary).map_err(std::io::Error::other)?;
        line.push(b'\n');
        out.write_all(&line)?;
    } else {
        writeln!(
            out,
            "Shard {}: {} computed, {} cached, {} in other shards, {} skipped ({:.1}s, {})",
            summary.shard,
            summary.computed,
            summary.cached,
            summary.other_shards,
            skipped.len(),
            summary.seconds,
            summary.cache
        )?;
    }
    Ok(exit::SUCCESS)
}
