//! A retrained graph, loaded to classify images. Preprocessing comes from the graph's own
//! metadata, never from flags, so it cannot drift from what retrain did.

use std::borrow::Cow;
use std::fs;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::Serialize;

use super::metadata::GraphMetadata;
use crate::backbone::onnx::decode_model;
use crate::backbone::Plan;
use crate::image::Preprocessing;
use crate::problem::Problem;
use crate::util::messages::io_reason;

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
        let entries = proto.metadata_props.iter();
        let metadata =
            GraphMetadata::from_entries(entries.map(|p| (p.key.as_str(), p.value.as_str())))
                .with_context(|| {
                    format!(
                        "{display} lacks flowers metadata: was it written by `flowers retrain`?"
                    )
                })?;
        let preprocessing = metadata.preprocessing.clone();
        let output = proto
            .graph
            .as_ref()
            .and_then(|g| g.output.first())
            .map(|o| o.name.clone())
            .ok_or_else(|| anyhow!("{display} has no output"))?;
        let labels = resolve_labels(metadata.labels, labels_file, &display)?;
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
    pub fn probabilities(&self, bytes: &[u8]) -> Result<Vec<f32>, Problem> {
        let input = self.preprocessing.tensor_from_bytes(bytes)?;
        self.plan
            .run(input)
            .map_err(|e| Problem::InferenceFailed(format!("{e:#}")))
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
    pub fn label_file(&self, path: &Path, k: usize) -> Result<Vec<Prediction>, Problem> {
        let bytes = fs::read(path).map_err(|e| Problem::from_io(&e))?;
        let probabilities = self.probabilities(&bytes)?;
        Ok(self.top_k(&probabilities, k))
    }
}

/// The graph's labels: its own, checked against `labels_file` when one is given; else the
/// labels file; else `retrained_labels.txt` in the current folder, as label_image.py did.
fn resolve_labels(
    embedded: Option<Vec<String>>,
    labels_file: Option<&Path>,
    display: &str,
) -> Result<Vec<String>> {
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
