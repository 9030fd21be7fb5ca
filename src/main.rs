//! The `flowers` binary: parse the command line, run, map the outcome to an exit code.

mod cli;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use cli::{Cli, Command, EvaluateArgs, LabelArgs, RetrainArgs};
use flowers::evaluate::evaluate_directory;
use flowers::exit;
use flowers::label::{collect_inputs, RetrainedGraph};
use flowers::progress::shown;
use flowers::report;

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        if !flowers::preprocess::panics_are_caught() {
            eprintln!("error: internal error ({info}); please report this as a bug");
        }
    }));
    keep_freed_memory();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Retrain(args) => retrain(*args),
        Command::Label(args) => label(args),
        Command::Evaluate(args) => evaluate(args),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(error) if is_broken_pipe(&error) => ExitCode::from(exit::SUCCESS),
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(exit::FATAL)
        }
    }
}

/// Makes glibc's malloc reuse freed blocks of up to 32 MiB instead of returning each one to
/// the kernel: tract copies the backbone's weights and allocates every layer's output
/// afresh, and with glibc's defaults each of those is a new mapping whose pages fault in one
/// by one (half of a one-image `label` was kernel time).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; it is called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

fn retrain(args: RetrainArgs) -> anyhow::Result<u8> {
    let json = args.json;
    let print_misclassified = args.print_misclassified_test_images;
    let gate = args.assert_accuracy_at_least;
    let options = args.into_options().map_err(anyhow::Error::msg)?;
    let summary = flowers::retrain::run(&options)?;
    if json {
        report::write_retrain_summary(&mut io::stderr(), &summary, print_misclassified)?;
        report::write_retrain_json(&mut io::stdout().lock(), &summary)?;
    } else {
        report::write_retrain_summary(&mut io::stdout().lock(), &summary, print_misclassified)?;
    }
    Ok(check_gate(gate, summary.test_accuracy, "test"))
}

fn evaluate(args: EvaluateArgs) -> anyhow::Result<u8> {
    let graph = RetrainedGraph::load(&args.graph, args.labels.as_deref())?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.unwrap_or(0) as usize)
        .build()?;
    let evaluation = pool.install(|| evaluate_directory(&graph, &args.image_dir))?;
    let report = &evaluation.report;
    if let Some(dir) = &args.report_dir {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("confusion_matrix.png");
        report.write_confusion_png(&path, "Confusion matrix")?;
        eprintln!("Wrote {}", shown(&path));
    }
    let mut out = io::stdout().lock();
    if args.json {
        let mut value = serde_json::to_value(report)?;
        value["skipped"] = serde_json::to_value(&evaluation.skipped)?;
        serde_json::to_writer(&mut out, &value)?;
        writeln!(out)?;
    } else {
        report::write_evaluation(&mut out, report, evaluation.skipped.len())?;
    }
    Ok(check_gate(
        args.assert_accuracy_at_least,
        Some(report.accuracy),
        "evaluation",
    ))
}

/// Exit code for `--assert-accuracy-at-least`: 3 when the accuracy is missing or too low.
fn check_gate(gate: Option<f64>, accuracy: Option<f64>, what: &str) -> u8 {
    match (gate, accuracy) {
        (None, _) => exit::SUCCESS,
        (Some(min), Some(accuracy)) if accuracy >= min => exit::SUCCESS,
        (Some(min), Some(accuracy)) => {
            eprintln!(
                "error: {what} accuracy {accuracy:.4} is below --assert-accuracy-at-least {min}"
            );
            exit::ACCURACY_BELOW_GATE
        }
        (Some(_), None) => {
            eprintln!("error: no {what} images to check --assert-accuracy-at-least against");
            exit::ACCURACY_BELOW_GATE
        }
    }
}

fn label(args: LabelArgs) -> anyhow::Result<u8> {
    let mut inputs = args.image.clone();
    inputs.extend(args.paths.iter().cloned());
    if inputs.is_empty() {
        anyhow::bail!("no images given: pass image files or folders, or --image FILE");
    }
    let graph = RetrainedGraph::load(&args.graph, args.labels.as_deref())?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.unwrap_or(0) as usize)
        .build()?;
    let (files, missing) = collect_inputs(&inputs);
    let several = files.len() + missing.len() > 1 || args.paths.iter().any(|p| p.is_dir());
    let mut out = io::stdout().lock();
    let mut failures = 0;
    for (path, reason) in &missing {
        report::write_label_failure(&mut out, path, reason, args.json)?;
        failures += 1;
    }
    let k = args.top_k as usize;
    graph.label_in_order(&pool, &files, k, |path, result| -> io::Result<()> {
        match result {
            Ok(predictions) => {
                report::write_predictions(&mut out, path, &predictions, several, args.json)?
            }
            Err(reason) => {
                report::write_label_failure(&mut out, path, &reason, args.json)?;
                failures += 1;
            }
        }
        out.flush()
    })?;
    Ok(if failures > 0 {
        exit::SOME_INPUTS_FAILED
    } else {
        exit::SUCCESS
    })
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}
