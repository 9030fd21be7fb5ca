//! Which final layer, on which bottleneck: stratified k-fold cross-validation of flowers'
//! own trainer on cached bottlenecks of one or more backbones, concatenated (issue 25).
//!
//!     cargo run --release --example final_layer_cv -- IMAGE_DIR BOTTLENECK_DIR \
//!         --backbone v1=embedded --backbone lite0=/path/efficientnet_lite0.onnx \
//!         --backbone lite2=/path/efficientnet_lite2.onnx:mean=127,std=128 \
//!         --combination v1 --combination v1+lite0 \
//!         --recipe sgd --recipe std --recipe std,wd=0.01 [--copies 0] \
//!         [--classes daisy,roses,tulips] [--folds 5] [--repeats 2] [--first-repeat 0] \
//!         [--transform none|sqrt|l2|sqrt+l2]
//!
//! Bottlenecks come through the library's own path (`bottleneck::extract_all`, and
//! `bottleneck::distorted::extract_distorted` for distorted copies): from the cache where
//! `flowers extract --bottleneck-dir` (or a retrain) put them, computed otherwise.
//!
//! Every configuration (combination x recipe x copies) is fitted on the same folds with the
//! same training seeds, so each is compared with the first one fit by fit: the paired gain.
//! With `--copies K` (K > 0, all four distortions at the tutorial's 10 %), a fit trains on
//! the K distorted copies of its training photos only; held-out photos are always scored
//! on their plain bottleneck.
//!
//! `--transform` maps each backbone's block of the bottleneck before concatenation (for
//! trying feature maps flowers' graph does not have: BENCHMARKS.md reports what they buy).
//! `--first-repeat` picks fresh fold seeds, to confirm a choice made on the first ones.
//!
//! Prints a markdown table on stdout, one line per fit on stderr.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use flowers::backbone::{Backbone, ModelSource, Overrides};
use flowers::bottleneck::distorted::{extract_distorted, PoolSpec};
use flowers::bottleneck::{extract_all, BottleneckMatrix, Cache, MatrixWriter, Part};
use flowers::dataset::{Dataset, ImageEntry};
use flowers::image::{parse_channels, Distortions};
use flowers::train::{accuracy, train, Examples, FinalLayerRecipe, TrainingOptions};

#[derive(Parser)]
struct Args {
    /// The photos, one folder per class.
    image_dir: PathBuf,
    /// The bottleneck cache (`flowers extract --bottleneck-dir`).
    bottleneck_dir: PathBuf,
    /// NAME=embedded or NAME=FILE[:mean=M,std=S] (M, S: one value or R,G,B).
    #[arg(long = "backbone", required = true)]
    backbones: Vec<String>,
    /// Backbone names joined by `+`; the first combination's first recipe is the baseline.
    #[arg(long = "combination", required = true)]
    combinations: Vec<String>,
    /// `default` (FinalLayerRecipe::default_for the combination), `sgd` (retrain.py's), or
    /// comma-separated `std`, `wd=F`, `lr=F`.
    #[arg(long = "recipe", default_value = "sgd")]
    recipes: Vec<String>,
    /// Distorted copies per training photo (0: plain bottlenecks), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    copies: Vec<usize>,
    /// Only these classes (comma-separated folder names).
    #[arg(long, value_delimiter = ',')]
    classes: Vec<String>,
    #[arg(long, default_value_t = 5)]
    folds: usize,
    /// Fold assignments, each with its own seed.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    #[arg(long, default_value_t = 4000)]
    steps: usize,
    /// What each backbone's block of the bottleneck goes through before concatenation:
    /// `none`, `sqrt` (signed square root), `l2` (scaled to the block's mean length over
    /// the photos), `sqrt+l2`.
    #[arg(long, default_value = "none")]
    transform: String,
    /// The first fold seed: `--first-repeat 2 --repeats 3` uses fold seeds 2, 3 and 4.
    #[arg(long, default_value_t = 0)]
    first_repeat: usize,
}

/// One backbone's bottlenecks of the photos, and what distorted copies need.
struct Source {
    name: String,
    backbone: Backbone,
    cache: Cache,
    plain: BottleneckMatrix,
}

/// A way of training the final layer: the library's recipe and retrain.py's options.
#[derive(Clone)]
struct Recipe {
    name: String,
    /// `None`: [`FinalLayerRecipe::default_for`] the combination's backbone count.
    final_layer: Option<FinalLayerRecipe>,
    learning_rate: f32,
}

/// What one configuration trains on.
struct Configuration {
    name: String,
    dim: usize,
    recipe: Recipe,
    final_layer: FinalLayerRecipe,
    plain: Arc<BottleneckMatrix>,
    /// Row `photo * copies + k`: copy k of the photo; `None` when training on plain rows.
    distorted: Option<(Arc<BottleneckMatrix>, usize)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let (images, class_count) = photos(&args.image_dir, &args.classes)?;
    let labels: Vec<usize> = images.iter().map(|image| image.class).collect();
    let sources = args
        .backbones
        .iter()
        .map(|spec| source(spec, &images, &args.bottleneck_dir))
        .collect::<Result<Vec<_>>>()?;
    let recipes = args
        .recipes
        .iter()
        .map(|r| recipe(r))
        .collect::<Result<Vec<_>>>()?;
    let mut configurations = Vec::new();
    for combination in &args.combinations {
        let parts = parts(combination, &sources)?;
        let plain = Arc::new(concatenated(
            &parts.iter().map(|s| &s.plain).collect::<Vec<_>>(),
            &args.bottleneck_dir,
            &args.transform,
        )?);
        for &copies in &args.copies {
            let distorted = match copies {
                0 => None,
                k => Some((
                    Arc::new(distorted(&parts, &images, k, &args.bottleneck_dir)?),
                    k,
                )),
            };
            for recipe in &recipes {
                let mut recipe = recipe.clone();
                let final_layer = *recipe
                    .final_layer
                    .get_or_insert(FinalLayerRecipe::default_for(parts.len()));
                let name = match copies {
                    0 => format!("{combination}, {}", recipe.name),
                    k => format!("{combination}, {}, K={k}", recipe.name),
                };
                configurations.push(Configuration {
                    name,
                    dim: plain.dim(),
                    recipe,
                    final_layer,
                    plain: plain.clone(),
                    distorted: distorted.clone(),
                });
            }
        }
    }
    let fits = fold_assignments(
        &labels,
        class_count,
        args.folds,
        args.first_repeat..args.first_repeat + args.repeats,
    );
    let jobs: Vec<(usize, usize)> = (0..configurations.len())
        .flat_map(|c| (0..fits.len()).map(move |f| (c, f)))
        .collect();
    let scores: Vec<f64> = jobs
        .par_iter()
        .map(|&(c, f)| {
            let score = fit(
                &configurations[c],
                &fits[f],
                &labels,
                class_count,
                args.steps,
            );
            if let Ok(score) = score {
                eprintln!("{}\tfit {f}\t{:.2}", configurations[c].name, 100.0 * score);
            }
            score
        })
        .collect::<Result<_>>()?;
    let per_configuration: Vec<&[f64]> = scores.chunks(fits.len()).collect();
    print_table(&configurations, &per_configuration, images.len());
    Ok(())
}

/// The photos (of `classes` only, if given), with class indices counted among those kept.
fn photos(root: &Path, classes: &[String]) -> Result<(Vec<ImageEntry>, usize)> {
    let dataset = Dataset::discover(root)?;
    if classes.is_empty() {
        return Ok((dataset.images, dataset.labels.len()));
    }
    let mut kept = Vec::new();
    for (new, name) in classes.iter().enumerate() {
        let Some(old) = dataset.labels.iter().position(|l| l == name) else {
            bail!("--classes: no class {name:?} in {}", root.display());
        };
        kept.extend(
            dataset
                .images
                .iter()
                .filter(|image| image.class == old)
                .map(|image| ImageEntry {
                    class: new,
                    ..image.clone()
                }),
        );
    }
    Ok((kept, classes.len()))
}

/// Loads a backbone from `NAME=embedded` or `NAME=FILE[:mean=..,std=..]` and gets the
/// photos' bottlenecks; every photo must have one.
fn source(spec: &str, images: &[ImageEntry], bottleneck_dir: &Path) -> Result<Source> {
    let (name, rest) = spec
        .split_once('=')
        .with_context(|| format!("--backbone {spec:?}: expected NAME=SOURCE"))?;
    let (file, settings) = rest.split_once(':').unwrap_or((rest, ""));
    let mut overrides = Overrides::default();
    for setting in settings.split(',').filter(|s| !s.is_empty()) {
        let value = |key: &str| setting.strip_prefix(key).map(|v| parse_channels(v, key));
        match (value("mean="), value("std=")) {
            (Some(mean), _) => overrides.mean = Some(mean.map_err(anyhow::Error::msg)?),
            (_, Some(std)) => overrides.std = Some(std.map_err(anyhow::Error::msg)?),
            _ => bail!("--backbone {spec:?}: unknown setting {setting:?}"),
        }
    }
    let model = match file {
        "embedded" => ModelSource::Embedded,
        path => ModelSource::File(path.into()),
    };
    let backbone = Backbone::load(&model, &overrides)?;
    let cache = Cache::open(bottleneck_dir, backbone.identity())?;
    let (bottlenecks, report) = extract_all(images, &backbone, &cache)?;
    eprintln!(
        "{name}: {} values, {} cached, {} computed ({})",
        bottlenecks.dim(),
        report.cached,
        report.computed,
        cache.dir().display()
    );
    if !report.failed.is_empty() {
        bail!("{name}: {} photos have no bottleneck", report.failed.len());
    }
    Ok(Source {
        name: name.to_string(),
        backbone,
        cache,
        plain: bottlenecks.matrix,
    })
}

fn parts<'a>(combination: &str, sources: &'a [Source]) -> Result<Vec<&'a Source>> {
    combination
        .split('+')
        .map(|name| {
            sources
                .iter()
                .find(|s| s.name == name)
                .with_context(|| format!("--combination {combination:?}: no --backbone {name}"))
        })
        .collect()
}

/// `default` (flowers' choice for the combination), `sgd`, or comma-separated `std`,
/// `wd=F`, `lr=F`.
fn recipe(spec: &str) -> Result<Recipe> {
    let mut recipe = Recipe {
        name: spec.to_string(),
        final_layer: (spec != "default").then_some(FinalLayerRecipe::PLAIN),
        learning_rate: 0.01,
    };
    let Some(final_layer) = &mut recipe.final_layer else {
        return Ok(recipe);
    };
    for part in spec.split(',').filter(|p| *p != "sgd") {
        match part.split_once('=') {
            None if part == "std" => final_layer.standardize = true,
            Some(("wd", v)) => final_layer.weight_decay = v.parse()?,
            Some(("lr", v)) => recipe.learning_rate = v.parse()?,
            _ => bail!("--recipe {spec:?}: unknown part {part:?}"),
        }
    }
    Ok(recipe)
}

/// The rows of `matrices` side by side, each block through `transform`, in a new matrix
/// beside the cache.
fn concatenated(
    matrices: &[&BottleneckMatrix],
    dir: &Path,
    transform: &str,
) -> Result<BottleneckMatrix> {
    let rows = matrices[0].rows();
    let dim = matrices.iter().map(|m| m.dim()).sum();
    let (sqrt, l2) = match transform {
        "none" => (false, false),
        "sqrt" => (true, false),
        "l2" => (false, true),
        "sqrt+l2" => (true, true),
        other => bail!("--transform {other:?}: expected none, sqrt, l2 or sqrt+l2"),
    };
    let block = |matrix: &BottleneckMatrix, row: usize| -> Result<Vec<f32>> {
        let mut values = matrix.row(row)?;
        if sqrt {
            values
                .iter_mut()
                .for_each(|v| *v = v.signum() * v.abs().sqrt());
        }
        Ok(values)
    };
    let norm = |values: &[f32]| values.iter().map(|v| v * v).sum::<f32>().sqrt();
    let mut mean_norms = Vec::new();
    for matrix in matrices {
        let mut total = 0.0;
        for row in 0..rows {
            total += norm(&block(matrix, row)?);
        }
        mean_norms.push(total / rows.max(1) as f32);
    }
    let writer = MatrixWriter::create(dir, rows, dim, 1 << 32)?;
    for row in 0..rows {
        let mut values = Vec::with_capacity(dim);
        for (matrix, mean_norm) in matrices.iter().zip(&mean_norms) {
            let mut part = block(matrix, row)?;
            if l2 {
                let scale = mean_norm / norm(&part).max(f32::MIN_POSITIVE);
                part.iter_mut().for_each(|v| *v *= scale);
            }
            values.extend(part);
        }
        writer.write_row(row, &values);
    }
    writer.finish()
}

/// `copies` distorted copies of every photo through each backbone (the tutorial's four
/// distortions at 10 %), concatenated: copy k of each backbone is the same distortion.
fn distorted(
    parts: &[&Source],
    images: &[ImageEntry],
    copies: usize,
    dir: &Path,
) -> Result<BottleneckMatrix> {
    let distortions = Distortions {
        flip_left_right: true,
        random_crop: 10.0,
        random_scale: 10.0,
        random_brightness: 10.0,
    };
    let hashed: Vec<(&ImageEntry, [u8; 32])> = images
        .iter()
        .map(|image| Ok((image, sha256_of(&image.path)?)))
        .collect::<Result<_>>()?;
    let mut pools = Vec::new();
    for part in parts {
        let spec = PoolSpec {
            distortions,
            copies,
            dim: part.plain.dim(),
            matrix_memory: 1 << 32,
            require_cached: false,
        };
        let only = [Part {
            backbone: &part.backbone,
            cache: &part.cache,
        }];
        let (pool, report) = extract_distorted(&hashed, &only, &spec)?;
        eprintln!(
            "{}: {copies} distorted copies per photo, {} cached, {} computed",
            part.name, report.cached, report.computed
        );
        if !report.failed.is_empty() {
            bail!(
                "{}: {} photos have no distorted copies",
                part.name,
                report.failed.len()
            );
        }
        pools.push(pool.matrix);
    }
    concatenated(&pools.iter().collect::<Vec<_>>(), dir, "none")
}

fn sha256_of(path: &Path) -> Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    Ok(Sha256::digest(&bytes).into())
}

/// One fit: which photos are held out, and the training seed.
struct Fit {
    held_out: Vec<bool>,
    seed: u64,
}

/// `repeats` stratified `folds`-fold assignments: each class's photos shuffled with the
/// repeat's seed and dealt round the folds.
fn fold_assignments(
    labels: &[usize],
    classes: usize,
    folds: usize,
    repeats: std::ops::Range<usize>,
) -> Vec<Fit> {
    let mut fits = Vec::new();
    for repeat in repeats {
        let mut rng = ChaCha8Rng::seed_from_u64(repeat as u64);
        let mut fold_of = vec![0; labels.len()];
        for class in 0..classes {
            let mut members: Vec<usize> =
                (0..labels.len()).filter(|&i| labels[i] == class).collect();
            members.shuffle(&mut rng);
            for (position, &photo) in members.iter().enumerate() {
                fold_of[photo] = position % folds;
            }
        }
        for fold in 0..folds {
            fits.push(Fit {
                held_out: fold_of.iter().map(|&f| f == fold).collect(),
                seed: (repeat * folds + fold) as u64,
            });
        }
    }
    fits
}

/// Trains on the fit's training photos (their distorted copies, if any) and returns the
/// accuracy on its held-out photos' plain bottlenecks.
fn fit(
    configuration: &Configuration,
    fit: &Fit,
    labels: &[usize],
    class_count: usize,
    steps: usize,
) -> Result<f64> {
    let photos = |held_out: bool| (0..labels.len()).filter(move |&i| fit.held_out[i] == held_out);
    let plain = |rows: Vec<usize>| {
        let classes = rows.iter().map(|&i| labels[i]).collect();
        Examples::new(configuration.plain.clone(), rows, classes, class_count)
    };
    let training = match &configuration.distorted {
        None => plain(photos(false).collect()),
        Some((matrix, copies)) => {
            let rows: Vec<usize> = photos(false)
                .flat_map(|i| (0..*copies).map(move |k| i * copies + k))
                .collect();
            let classes = rows.iter().map(|&row| labels[row / copies]).collect();
            Examples::new(matrix.clone(), rows, classes, class_count)
        }
    };
    let held_out = plain(photos(true).collect());
    let none = plain(Vec::new());
    let options = TrainingOptions {
        steps,
        learning_rate: configuration.recipe.learning_rate,
        train_batch_size: 100,
        validation_batch_size: None,
        eval_step_interval: steps.max(1),
        seed: fit.seed,
        snapshot_every: None,
        final_layer: configuration.final_layer,
        // The fits already run in parallel, one per core.
        product_threads: 1,
    };
    let layer = train(
        &training,
        &none,
        class_count,
        &options,
        |_, _| {},
        |_, _| {},
    )?;
    Ok(accuracy(
        &layer.probabilities_of(&held_out)?,
        &held_out.labels,
    ))
}

fn mean_sd(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, var.sqrt())
}

fn print_table(configurations: &[Configuration], scores: &[&[f64]], photos: usize) {
    let fits = scores[0].len();
    println!("{photos} photos, {fits} fits; accuracy in %, mean +- sd over the fits; paired gain against the first row on the same folds");
    println!();
    println!("| configuration | values | CV accuracy | paired gain | fits better / worse / tied |");
    println!("|---|---:|---|---|---|");
    let baseline = scores[0];
    for (configuration, scores) in configurations.iter().zip(scores) {
        let (mean, sd) = mean_sd(scores);
        let gains: Vec<f64> = scores.iter().zip(baseline).map(|(s, b)| s - b).collect();
        let (gain, gain_sd) = mean_sd(&gains);
        let count = |f: fn(f64) -> bool| gains.iter().filter(|&&g| f(g)).count();
        println!(
            "| {} | {} | {:.2} +- {:.2} | {:+.2} +- {:.2} | {} / {} / {} |",
            configuration.name,
            configuration.dim,
            100.0 * mean,
            100.0 * sd,
            100.0 * gain,
            100.0 * gain_sd,
            count(|g| g > 0.0),
            count(|g| g < 0.0),
            count(|g| g == 0.0)
        );
    }
}
