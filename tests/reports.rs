//! Reports people look at and gate on: TensorBoard event files read back record by record,
//! `flowers evaluate` against an independent count, the PNGs, the accuracy gate.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use flowers::report::tensorboard::{read_events, ValueKind, What};

use common::{copy_sample, flowers, retrain, sample_dir, stderr, stdout};

/// (tag -> steps) of scalars, and (tag -> (step, count)) of histograms, of one run folder.
type Scalars = BTreeMap<String, Vec<(i64, f32)>>;
type Histograms = BTreeMap<String, Vec<(i64, f64)>>;

fn read_run(dir: &Path) -> (Scalars, Histograms) {
    let files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("events.out.tfevents."), "{name}");
    // read_events checks the length and data CRC of every record.
    let events = read_events(&files[0]).unwrap();
    assert_eq!(
        events[0].what,
        Some(What::FileVersion("brain.Event:2".into()))
    );
    let (mut scalars, mut histograms) = (Scalars::new(), Histograms::new());
    for event in &events[1..] {
        let Some(What::Summary(summary)) = &event.what else {
            panic!("unexpected event {event:?}")
        };
        for value in &summary.value {
            match &value.value {
                Some(ValueKind::SimpleValue(v)) => scalars
                    .entry(value.tag.clone())
                    .or_default()
                    .push((event.step, *v)),
                Some(ValueKind::Histo(h)) => histograms
                    .entry(value.tag.clone())
                    .or_default()
                    .push((event.step, h.num)),
                other => panic!("unexpected value {other:?}"),
            }
        }
    }
    (scalars, histograms)
}

#[test]
fn tensorboard_summaries_and_pictures_are_written() {
    let work = tempfile::tempdir().unwrap();
    let sample = sample_dir();
    let output = retrain(
        work.path(),
        sample.to_str().unwrap(),
        30,
        &[
            "--validation-percentage",
            "20",
            "--summaries-dir",
            "summaries",
        ],
    );
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    let steps = [0, 10, 20, 29];
    let (train, histograms) = read_run(&work.path().join("summaries/train"));
    assert_eq!(
        train.keys().collect::<Vec<_>>(),
        ["accuracy", "cross_entropy"]
    );
    for (tag, points) in &train {
        assert_eq!(
            points.iter().map(|p| p.0).collect::<Vec<_>>(),
            steps,
            "{tag}"
        );
    }
    // The event values are the ones printed on stderr.
    for (tag, printed, scale) in [
        ("accuracy", "Train accuracy", 100.0),
        ("cross_entropy", "Cross entropy", 1.0),
    ] {
        for (step, value) in &train[tag] {
            let shown = printed_value(&err, *step, printed);
            assert!(
                (f64::from(*value) * scale - shown).abs() < 0.051,
                "{tag} at {step}"
            );
        }
    }
    assert_eq!(
        histograms["final_layer/weights"],
        steps.map(|s| (s, 1024.0 * 5.0)).to_vec()
    );
    assert_eq!(
        histograms["final_layer/biases"],
        steps.map(|s| (s, 5.0)).to_vec()
    );

    let (validation, none) = read_run(&work.path().join("summaries/validation"));
    assert!(none.is_empty());
    assert_eq!(
        validation.keys().collect::<Vec<_>>(),
        ["accuracy", "cross_entropy"]
    );
    for (step, accuracy) in &validation["accuracy"] {
        let shown = printed_value(&err, *step, "Validation accuracy");
        assert!(
            (f64::from(*accuracy) * 100.0 - shown).abs() < 0.051,
            "step {step}"
        );
    }

    for (picture, min_width) in [
        ("training_curves.png", 800),
        ("test_confusion_matrix.png", 400),
    ] {
        let image = image::open(work.path().join("summaries").join(picture)).unwrap();
        assert!(image.width() >= min_width, "{picture}");
    }
}

#[test]
fn evaluate_agrees_with_an_independent_count_and_gates() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let sample = sample_dir();
    let trained = retrain(cwd, sample.to_str().unwrap(), 100, &[]);
    assert!(trained.status.success(), "{}", stderr(&trained));

    // A folder where the roses folder also holds four daisies: known mistakes.
    let images = cwd.join("images");
    copy_sample(&images, &["daisy", "roses"], 5);
    let daisies: Vec<PathBuf> = fs::read_dir(images.join("daisy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    for daisy in daisies.iter().take(4) {
        fs::rename(daisy, images.join("roses").join(daisy.file_name().unwrap())).unwrap();
    }

    let output = flowers(
        &[
            "evaluate",
            "--image-dir",
            "images",
            "--json",
            "--report-dir",
            "report",
        ],
        cwd,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let report: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();

    // Count it ourselves from `flowers label`.
    let labelled = flowers(&["label", "--json", "--top-k", "1", "images"], cwd);
    let mut correct = 0;
    let mut total = 0;
    for line in stdout(&labelled).lines() {
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        let image = value["image"].as_str().unwrap();
        let truth = Path::new(image)
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        total += 1;
        correct += usize::from(value["predictions"][0]["label"] == truth.as_str());
    }
    assert_eq!(total, 10);
    assert_eq!(report["n"], 10);
    let accuracy = report["accuracy"].as_f64().unwrap();
    assert!((accuracy - correct as f64 / 10.0).abs() < 1e-12);
    assert!(
        accuracy <= 0.7,
        "four daisies filed as roses cannot be right"
    );
    let confusion: Vec<Vec<u64>> = serde_json::from_value(report["confusion"].clone()).unwrap();
    assert_eq!(confusion.iter().flatten().sum::<u64>(), 10);
    assert_eq!(
        report["misclassified"].as_array().unwrap().len(),
        10 - correct
    );
    assert!(image::open(cwd.join("report/confusion_matrix.png")).is_ok());

    // The plain report, and the gate: exit 3 below the bar, 0 at or above it.
    let plain = flowers(
        &[
            "evaluate",
            "--image-dir",
            "images",
            "--assert-accuracy-at-least",
            "0.9",
        ],
        cwd,
    );
    assert_eq!(plain.status.code(), Some(3), "{}", stderr(&plain));
    let text = stdout(&plain);
    assert!(text.starts_with("Accuracy = "), "{text}");
    assert!(text.contains("Confusion matrix (rows: true label, columns: predicted label)"));
    assert!(text.contains("=== MISCLASSIFIED IMAGES ==="));
    assert!(stderr(&plain).contains("below --assert-accuracy-at-least 0.9"));
    let passing = flowers(
        &[
            "evaluate",
            "--image-dir",
            "images",
            "--assert-accuracy-at-least",
            "0.1",
        ],
        cwd,
    );
    assert_eq!(passing.status.code(), Some(0), "{}", stderr(&passing));
}

#[test]
fn retrain_gate_exits_3_after_writing_everything() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let images = cwd.join("images");
    copy_sample(&images, &["daisy", "roses"], 14);
    let output = retrain(
        cwd,
        "images",
        10,
        &[
            "--testing-percentage",
            "30",
            "--assert-accuracy-at-least",
            "1.0",
            "--learning-rate",
            "0.000001",
        ],
    );
    assert_eq!(output.status.code(), Some(3), "{}", stderr(&output));
    assert!(cwd.join("retrained_graph.onnx").exists());
    assert!(cwd.join("retrained_labels.txt").exists());
    assert!(stdout(&output).starts_with("Final test accuracy = "));
}

/// The number retrain printed as `Step {step}: {what} = {number}...`.
fn printed_value(stderr: &str, step: i64, what: &str) -> f64 {
    let prefix = format!("Step {step}: {what} = ");
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no line {prefix:?} in {stderr}"));
    line.trim_end_matches(|c: char| !c.is_ascii_digit())
        .split(['%', ' '])
        .next()
        .unwrap()
        .parse()
        .unwrap()
}
