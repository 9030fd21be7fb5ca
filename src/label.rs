//! Classifying images with a retrained graph. Preprocessing comes from the graph's own
//! metadata, never from flags, so it cannot drift from what retrain did.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use crate::backbone::{decode_model, Plan};
use crate::dataset::io_reason;
use crate::export::keys;
use crate::preprocess::{Layout, Preprocessing, ResizeRule};
use crate::progress::{shown, Progress};

/// The labels file read when neither `--labels` nor the graph gives labels.
pub const DEFAULT_LABELS: &str = "retrained_labels.txt";

/// A retrained graph ready to label images.
pub struct RetrainedGraph {
    pub labels: Vec<String>,
    pub preprocessing: Preprocessing,
    plan: Plan,
}

/// One class and its probability.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Prediction {
    pub label: String,
    pub score: f32,
    /// Index of the label in output order.
    #[serde(skip)]
    pub class: usize,
}

impl RetrainedGraph {
    /// Loads a graph written by `flowers retrain`. `labels_file`, when given, must agree
    /// with the labels the graph carries; a graph without labels needs one.
    pub fn load(path: &Path, labels_file: Option<&Path>) -> Result<RetrainedGraph> {
        let bytes = fs::read(path)
            .map_err(|e| anyhow!("cannot read graph {}: {}", path.display(), io_reason(&e)))?;
        let display = path.display().to_string();
        // Consumed, so its memory is freed for the copies tract makes next (see `Plan::new`).
        let proto = decode_model(bytes, &display)?;
        let metadata: HashMap<&str, &str> = proto
            .metadata_props
            .iter()
            .map(|p| (p.key.as_str(), p.value.as_str()))
            .collect();
        let preprocessing = preprocessing_from(&metadata).with_context(|| {
            format!("{display} lacks flowers metadata: was it written by `flowers retrain`?")
        })?;
        let output = proto
            .graph
            .as_ref()
            .and_then(|g| g.output.first())
            .map(|o| o.name.clone())
            .ok_or_else(|| anyhow!("{display} has no output"))?;
        let labels = resolve_labels(&metadata, labels_file, &display)?;
        let plan = Plan::new(Cow::Owned(proto), &preprocessing, &output)
            .with_context(|| format!("cannot prepare {display} for inference"))?;
        if labels.len() != plan.output_len {
            bail!(
                "{display} has {} outputs but {} labels: pass the labels file written with this graph",
                plan.output_len,
                labels.len()
            );
        }
        Ok(RetrainedGraph {
            labels,
            preprocessing,
            plan,
        })
    }

    /// Probabilities for one image's bytes, in label order.
    pub fn probabilities(&self, bytes: &[u8]) -> Result<Vec<f32>, String> {
        let input = self.preprocessing.tensor_from_bytes(bytes)?;
        self.plan
            .run(input)
            .map_err(|e| format!("inference failed: {e:#}"))
    }

    /// The `k` most probable labels, best first.
    pub fn top_k(&self, probabilities: &[f32], k: usize) -> Vec<Prediction> {
        let mut order: Vec<usize> = (0..probabilities.len()).collect();
        order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
        order
            .into_iter()
            .take(k)
            .map(|i| Prediction {
                label: self.labels[i].clone(),
                score: probabilities[i],
                class: i,
            })
            .collect()
    }

    /// Reads and classifies one file.
    pub fn label_file(&self, path: &Path, k: usize) -> Result<Vec<Prediction>, String> {
        let bytes = fs::read(path).map_err(|e| format!("cannot read: {}", io_reason(&e)))?;
        let probabilities = self.probabilities(&bytes)?;
        Ok(self.top_k(&probabilities, k))
    }

    /// The most probable class of each file, on the current rayon pool, in input order.
    pub fn classify_files(
        &self,
        paths: &[PathBuf],
        progress: &Progress,
    ) -> Vec<Result<usize, String>> {
        paths
            .par_iter()
            .map(|path| {
                let result = self.label_file(path, 1).map(|best| best[0].class);
                if let Err(reason) = &result {
                    progress.warn(&format!("skipping {}: {reason}", shown(path)));
                }
                progress.inc();
                result
            })
            .collect()
    }

    /// Labels many files on `pool`'s threads and hands each result to `emit` in input
    /// order as soon as it and all before it are done: output streams, all cores stay busy,
    /// and there is no batch barrier. Stops early if `emit` fails (a closed pipe).
    pub fn label_in_order<E>(
        &self,
        pool: &rayon::ThreadPool,
        paths: &[PathBuf],
        k: usize,
        mut emit: impl FnMut(&Path, Result<Vec<Prediction>, String>) -> Result<(), E>,
    ) -> Result<(), E> {
        let (sender, receiver) = std::sync::mpsc::channel();
        let stop = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|scope| {
            let stop = &stop;
            scope.spawn(move || {
                pool.install(|| {
                    paths
                        .par_iter()
                        .enumerate()
                        .for_each_with(sender, |sender, (i, path)| {
                            if !stop.load(std::sync::atomic::Ordering::Relaxed) {
                                let _ = sender.send((i, self.label_file(path, k)));
                            }
                        })
                })
            });
            let mut pending = std::collections::BTreeMap::new();
            let mut next = 0;
            for (index, result) in receiver {
                pending.insert(index, result);
                while let Some(result) = pending.remove(&next) {
                    if let Err(e) = emit(&paths[next], result) {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        return Err(e);
                    }
                    next += 1;
                }
            }
            Ok(())
        })
    }
}

fn preprocessing_from(metadata: &HashMap<&str, &str>) -> Result<Preprocessing> {
    let get = |key: &str| {
        metadata
            .get(key)
            .copied()
            .ok_or_else(|| anyhow!("missing metadata {key}"))
    };
    let size: Vec<u32> = parse_list(get(keys::IMAGE_SIZE)?, keys::IMAGE_SIZE)?;
    let [height, width] = size[..] else {
        bail!("{} must be height,width", keys::IMAGE_SIZE);
    };
    Ok(Preprocessing {
        height,
        width,
        layout: Layout::parse(get(keys::LAYOUT)?).map_err(|e| anyhow!(e))?,
        mean: channels(get(keys::MEAN)?, keys::MEAN)?,
        std: channels(get(keys::STD)?, keys::STD)?,
        resize: ResizeRule::parse(get(keys::RESIZE)?).map_err(|e| anyhow!(e))?,
    })
}

fn parse_list<T: std::str::FromStr>(text: &str, key: &str) -> Result<Vec<T>> {
    text.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .map_err(|_| anyhow!("bad value {text:?} for {key}"))
        })
        .collect()
}

/// One value for all channels, or one per channel.
pub fn channels(text: &str, key: &str) -> Result<[f32; 3]> {
    let values: Vec<f32> = parse_list(text, key)?;
    match values[..] {
        [v] => Ok([v; 3]),
        [r, g, b] => Ok([r, g, b]),
        _ => bail!("{key} needs one value or three (R,G,B), got {text:?}"),
    }
}

fn resolve_labels(
    metadata: &HashMap<&str, &str>,
    labels_file: Option<&Path>,
    display: &str,
) -> Result<Vec<String>> {
    let embedded: Option<Vec<String>> = match metadata.get(keys::LABELS) {
        Some(json) => Some(
            serde_json::from_str(json)
                .map_err(|_| anyhow!("{display} has unreadable {} metadata", keys::LABELS))?,
        ),
        None => None,
    };
    let from_file = labels_file
        .map(|path| read_labels(path).map(|labels| (labels, path)))
        .transpose()?;
    match (embedded, from_file) {
        (Some(embedded), Some((file, path))) if embedded != file => bail!(
            "labels file {} does not match the labels inside {display} ({} vs {} labels{}): pass the labels file written with this graph, or leave --labels out",
            path.display(),
            file.len(),
            embedded.len(),
            first_difference(&file, &embedded)
        ),
        (Some(embedded), _) => Ok(embedded),
        (None, Some((file, _))) => Ok(file),
        (None, None) => {
            let default = Path::new(DEFAULT_LABELS);
            if default.is_file() {
                read_labels(default)
            } else {
                bail!("{display} carries no labels: pass --labels FILE")
            }
        }
    }
}

fn first_difference(a: &[String], b: &[String]) -> String {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .map(|i| format!("; line {} is {:?}, expected {:?}", i + 1, a[i], b[i]))
        .unwrap_or_default()
}

/// Reads a labels file: one label per line; a trailing empty line is allowed.
pub fn read_labels(path: &Path) -> Result<Vec<String>> {
    let text = fs::read_to_string(path).map_err(|e| {
        anyhow!(
            "cannot read labels file {}: {}",
            path.display(),
            io_reason(&e)
        )
    })?;
    Ok(text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect())
}

/// Expands files and directories (walked recursively, hidden entries skipped, sorted) into
/// the list of files to label. Missing paths are returned as failures.
pub fn collect_inputs(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<(PathBuf, String)>) {
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for input in inputs {
        match fs::metadata(input) {
            Ok(m) if m.is_dir() => walk(input, &mut files, &mut missing),
            Ok(_) => files.push(input.clone()),
            Err(e) => missing.push((input.clone(), io_reason(&e))),
        }
    }
    (files, missing)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, failures: &mut Vec<(PathBuf, String)>) {
    let mut entries: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(entries) => entries.flatten().map(|e| e.path()).collect(),
        Err(e) => {
            failures.push((dir.to_path_buf(), format!("cannot list: {}", io_reason(&e))));
            return;
        }
    };
    entries.sort();
    for path in entries {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."));
        if hidden {
            continue;
        }
        if path.is_dir() {
            walk(&path, files, failures);
        } else {
            files.push(path);
        }
    }
}
