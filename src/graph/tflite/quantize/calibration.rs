//! Calibration: the range of every activation of the float model over a set of images,
//! for [`super::int8`] to choose its scales from.
//!
//! The images go through flowers' own preprocessing (the graph's, in NHWC) and the float
//! model the exporter wrote, so the ranges are those of the very tensors being
//! quantized. The choice of images is deterministic: the candidates are ordered by
//! retrain.py's split hash of their path relative to the folder (ties by path), which
//! mixes the classes, and the first `count` that decode are used.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use rayon::prelude::*;

use crate::dataset::split_percentage;
use crate::graph::tflite::ir::{Model, TensorId};
use crate::graph::tflite::run::Interpreter;
use crate::image::{Layout, Preprocessing, MAX_DECODE_BYTES};
use crate::util::files::read_regular;
use crate::util::messages::shown;
use crate::util::walk::files_below;

/// How many images calibrate by default: TensorFlow's guidance is 100 to 500
/// representative samples.
pub const DEFAULT_COUNT: usize = 100;

/// Per tensor, the smallest and largest value seen (None: not a float activation, or
/// not computed).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ranges {
    min_max: Vec<Option<(f32, f32)>>,
}

impl Ranges {
    fn new(tensors: usize) -> Ranges {
        Ranges {
            min_max: vec![None; tensors],
        }
    }

    /// The range of tensor `id`.
    pub fn get(&self, id: TensorId) -> Option<(f32, f32)> {
        self.min_max.get(id).copied().flatten()
    }

    /// Sets a range directly (for tests and for ranges known in advance).
    pub fn set(&mut self, id: TensorId, min: f32, max: f32) {
        if self.min_max.len() <= id {
            self.min_max.resize(id + 1, None);
        }
        self.min_max[id] = Some((min, max));
    }

    fn observe(&mut self, id: TensorId, values: &[f32]) {
        let finite = values.iter().copied().filter(|v| v.is_finite());
        if let Some((lo, hi)) = finite.fold(None, |acc: Option<(f32, f32)>, v| match acc {
            None => Some((v, v)),
            Some((lo, hi)) => Some((lo.min(v), hi.max(v))),
        }) {
            self.widen(id, lo, hi);
        }
    }

    /// Widens tensor `id`'s range to include `[lo, hi]`.
    fn widen(&mut self, id: TensorId, lo: f32, hi: f32) {
        let (lo, hi) = match self.get(id) {
            Some((a, b)) => (a.min(lo), b.max(hi)),
            None => (lo, hi),
        };
        self.set(id, lo, hi);
    }

    fn merge(mut self, other: Ranges) -> Ranges {
        for (id, range) in other.min_max.into_iter().enumerate() {
            if let Some((lo, hi)) = range {
                self.widen(id, lo, hi);
            }
        }
        self
    }
}

/// The candidate images of `dir`, in the deterministic calibration order.
pub fn candidates_in(dir: &Path) -> Vec<PathBuf> {
    let (files, _) = files_below(dir);
    in_calibration_order(dir, files)
}

/// `paths` ordered by the split hash of their path relative to `root`, then by path.
pub fn in_calibration_order(root: &Path, mut paths: Vec<PathBuf>) -> Vec<PathBuf> {
    let key = |p: &PathBuf| {
        let relative = p.strip_prefix(root).unwrap_or(p);
        split_percentage(&relative.to_string_lossy())
    };
    paths.sort_by(|a, b| key(a).total_cmp(&key(b)).then_with(|| a.cmp(b)));
    paths
}

/// The ranges of `model`'s activations over the first `count` of `candidates` that
/// decode (in their order), preprocessed as `preprocessing` says. `source` names where
/// the images came from, for the error when none decodes.
pub fn measure(
    model: &Model,
    preprocessing: &Preprocessing,
    candidates: &[PathBuf],
    count: usize,
    source: &str,
) -> Result<(Ranges, usize)> {
    let mut nhwc = preprocessing.clone();
    nhwc.layout = Layout::Nhwc;
    let interpreter = Interpreter::new(model.clone())?;
    let mut ranges = Ranges::new(model.tensors.len());
    let mut used = 0;
    let mut skipped: Vec<String> = Vec::new();
    // In chunks of what is still missing, so undecodable files are replaced by the next
    // candidates and the work stays parallel.
    let mut rest = candidates;
    while used < count && !rest.is_empty() {
        let take = (count - used).min(rest.len());
        let (chunk, tail) = rest.split_at(take);
        rest = tail;
        let inputs: Vec<Result<Vec<f32>, String>> =
            chunk.par_iter().map(|path| input_of(path, &nhwc)).collect();
        let (inputs, failed): (Vec<_>, Vec<_>) = inputs.into_iter().partition(Result::is_ok);
        skipped.extend(failed.into_iter().filter_map(Result::err));
        let measured: Vec<Ranges> = inputs
            .into_par_iter()
            .map(|input| activations(&interpreter, &input.expect("partitioned")))
            .collect::<Result<_>>()?;
        used += measured.len();
        ranges = measured.into_iter().fold(ranges, Ranges::merge);
    }
    if used == 0 {
        bail!(
            "{source}: none of its {} files is an image flowers can decode: give a folder of photos like those the model will see",
            candidates.len()
        );
    }
    if let Some(first) = skipped.first() {
        let files = if skipped.len() == 1 { "file" } else { "files" };
        crate::warn!(
            "calibration skipped {} {files} of {source} it cannot decode ({first})",
            skipped.len()
        );
    }
    Ok((ranges, used))
}

/// The ranges of `model`'s activations over inputs given directly (NHWC floats).
pub fn measure_inputs(model: &Model, inputs: &[Vec<f32>]) -> Result<Ranges> {
    let interpreter = Interpreter::new(model.clone())?;
    let measured: Vec<Ranges> = inputs
        .par_iter()
        .map(|input| activations(&interpreter, input))
        .collect::<Result<_>>()?;
    Ok(measured
        .into_iter()
        .fold(Ranges::new(model.tensors.len()), Ranges::merge))
}

/// The input tensor of one image, or why it cannot be had (naming the file).
fn input_of(path: &Path, preprocessing: &Preprocessing) -> Result<Vec<f32>, String> {
    let why = |e: &dyn std::fmt::Display| format!("{}: {e}", shown(path));
    let bytes = read_regular(path, MAX_DECODE_BYTES).map_err(|e| why(&e))?;
    let tensor = preprocessing
        .tensor_from_bytes(&bytes)
        .map_err(|p| why(&p))?;
    let values = tensor
        .try_as_plain_ram()
        .and_then(|t| t.as_slice::<f32>().map(<[f32]>::to_vec));
    values.map_err(|e| why(&e))
}

/// Runs the float model on one input, recording every float activation's range.
fn activations(interpreter: &Interpreter, input: &[f32]) -> Result<Ranges> {
    let mut ranges = Ranges::new(interpreter.model().tensors.len());
    interpreter.run_observed(input, &mut |id, values| ranges.observe(id, values))?;
    Ok(ranges)
}
