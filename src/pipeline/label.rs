//! The `label` pipeline: classify image files and folders with a retrained graph, on all
//! cores, printing each result as soon as it and all before it are done.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;

use anyhow::{bail, Result};
use rayon::prelude::*;

use super::thread_pool;
use crate::exit;
use crate::graph::{Prediction, RetrainedGraph};
use crate::options::LabelOptions;
use crate::problem::{Problem, Skipped};
use crate::report::format;
use crate::util::messages::shown;
use crate::util::walk::files_below;

/// `flowers label`: labels every input, prints each result on `out`, and returns 1 when
/// some inputs could not be labelled (all the others were), else 0.
pub fn run_command(options: &LabelOptions, out: &mut dyn Write) -> Result<u8> {
    if options.inputs.is_empty() {
        bail!("no images given: pass image files or folders, or --image FILE");
    }
    let graph = RetrainedGraph::load(&options.graph, options.labels.as_deref(), &options.flags)?;
    let pool = thread_pool(options.threads)?;
    let (files, unusable) = collect_inputs(&options.inputs);
    let several = files.len() + unusable.len() > 1 || options.inputs.iter().any(|p| p.is_dir());
    let format = format(options.json);
    let mut failures = 0;
    let mut fail = |out: &mut dyn Write, path: &Path, problem: &Problem| -> io::Result<()> {
        failures += 1;
        crate::util::messages::error(&anyhow::anyhow!("{}: {problem}", shown(path)));
        format.label_failure(out, path, problem)
    };
    for skipped in &unusable {
        fail(out, &skipped.path, &skipped.problem)?;
    }
    label_in_order(&graph, &pool, &files, options.top_k, |path, result| {
        match result {
            Ok(predictions) => format.predictions(out, path, &predictions, several)?,
            Err(problem) => fail(out, path, &problem)?,
        }
        out.flush()
    })?;
    Ok(if failures > 0 {
        exit::SOME_INPUTS_FAILED
    } else {
        exit::SUCCESS
    })
}

/// Expands files and folders (walked by the one walker: links followed, loops reported,
/// hidden entries skipped, sorted) into the files to label, in the order given. Inputs that
/// do not exist, and what a folder's walk passed over, come back as problems.
pub fn collect_inputs(inputs: &[PathBuf]) -> (Vec<PathBuf>, Vec<Skipped>) {
    let mut files = Vec::new();
    let mut unusable = Vec::new();
    for input in inputs {
        match std::fs::metadata(input) {
            Ok(m) if m.is_dir() => {
                let (found, skipped) = files_below(input);
                files.extend(found);
                unusable.extend(skipped);
            }
            Ok(_) => files.push(input.clone()),
            Err(e) => unusable.push(Skipped {
                path: input.clone(),
                problem: Problem::from_io(&e),
            }),
        }
    }
    (files, unusable)
}

/// Labels `paths` on `pool`'s threads and hands each result to `emit` in input order as
/// soon as it and all before it are done: output streams, all cores stay busy, and there
/// is no batch barrier. Stops early if `emit` fails (a closed pipe).
pub fn label_in_order<E>(
    graph: &RetrainedGraph,
    pool: &rayon::ThreadPool,
    paths: &[PathBuf],
    k: usize,
    mut emit: impl FnMut(&Path, Result<Vec<Prediction>, Problem>) -> Result<(), E>,
) -> Result<(), E> {
    let (sender, receiver) = mpsc::channel();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let stop = &stop;
        scope.spawn(move || {
            pool.install(|| {
                paths
                    .par_iter()
                    .enumerate()
                    .for_each_with(sender, |sender, (i, path)| {
                        if !stop.load(Ordering::Relaxed) {
                            let _ = sender.send((i, graph.label_file(path, k)));
                        }
                    })
            })
        });
        let mut pending = BTreeMap::new();
        let mut next = 0;
        for (index, result) in receiver {
            pending.insert(index, result);
            while let Some(result) = pending.remove(&next) {
                if let Err(e) = emit(&paths[next], result) {
                    stop.store(true, Ordering::Relaxed);
                    return Err(e);
                }
                next += 1;
            }
        }
        Ok(())
    })
}
