//! Makes a large dataset whose bottlenecks are already cached, to measure a warm retrain's
//! memory at a scale no photo folder here reaches (see BENCHMARKS.md, "Memory at 100k").
//!
//!     cargo run --release --example synthetic_dataset -- IMAGE_DIR BOTTLENECK_DIR COUNT
//!
//! Writes COUNT distinct 8x8 PNGs in five class folders, and for each one a cache entry for
//! the embedded backbone holding a synthetic 1024-value bottleneck (a class-dependent
//! pattern plus noise, so the final layer has something to learn). `flowers retrain
//! --image-dir IMAGE_DIR --bottleneck-dir BOTTLENECK_DIR` then finds every bottleneck cached.
use std::path::PathBuf;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use flowers::backbone::{Backbone, ModelSource, Overrides};
use flowers::bottleneck::Cache;

const CLASSES: [&str; 5] = ["daisy", "dandelion", "roses", "sunflowers", "tulips"];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [images, bottlenecks, count] = &args[..] else {
        anyhow::bail!("usage: synthetic_dataset IMAGE_DIR BOTTLENECK_DIR COUNT");
    };
    let (images, count) = (PathBuf::from(images), count.parse::<usize>()?);
    let backbone = Backbone::load(&ModelSource::Embedded, &Overrides::default())?;
    let cache = Cache::open(bottlenecks.as_ref(), backbone.identity())?;
    for class in CLASSES {
        std::fs::create_dir_all(images.join(class))?;
    }
    for i in 0..count {
        let class = i % CLASSES.len();
        let bytes = png(i)?;
        let path = images.join(CLASSES[class]).join(format!("{i:07}.png"));
        std::fs::write(&path, &bytes).with_context(|| path.display().to_string())?;
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        cache.write(&sha, &bottleneck(i, class))?;
    }
    eprintln!(
        "wrote {count} images to {} and their bottlenecks to {}",
        images.display(),
        cache.dir().display()
    );
    Ok(())
}

/// A distinct image per index: the index is spelled in the first pixel.
fn png(i: usize) -> Result<Vec<u8>> {
    let image = image::RgbImage::from_fn(8, 8, |x, y| {
        let v = (i >> (8 * (x % 3))) as u8;
        image::Rgb([v, (x * 31 + y) as u8, (i % 251) as u8])
    });
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, image::ImageFormat::Png)?;
    Ok(bytes.into_inner())
}

/// One of every five values marks the class; the rest is noise in [0, 1).
fn bottleneck(i: usize, class: usize) -> Vec<f32> {
    (0..1024)
        .map(|d| {
            let noise = ((i * 1024 + d) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            let signal = if d % CLASSES.len() == class { 1.0 } else { 0.0 };
            signal + (noise as f32 / (1u64 << 24) as f32)
        })
        .collect()
}
