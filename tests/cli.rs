//! End to end: the real binary retrains on the committed sample photos with the embedded
//! backbone, then labels photos with the graph it wrote.

mod common;

use common::{flowers, sample_dir, sample_image, stderr, stdout};

#[test]
fn retrain_then_label_end_to_end() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let sample = sample_dir();
    let args = [
        "retrain",
        "--image-dir",
        sample.to_str().unwrap(),
        "--bottleneck-dir",
        "cache",
        "--how-many-training-steps",
        "300",
        "--validation-percentage",
        "20",
        "--testing-percentage",
        "20",
        "--print-misclassified-test-images",
    ];
    let output = flowers(&args, cwd);
    assert!(output.status.success(), "{}", stderr(&output));
    let out = stdout(&output);
    let err = stderr(&output);
    assert!(out.starts_with("Final test accuracy = "), "{out}");
    assert!(out.contains("% (N="), "{out}");
    assert!(out.contains("=== MISCLASSIFIED TEST IMAGES ==="), "{out}");
    assert!(err.contains("Step 0: Train accuracy = "), "{err}");
    assert!(err.contains("Step 299: Cross entropy = "), "{err}");
    assert!(err.contains("Step 299: Validation accuracy = "), "{err}");
    assert!(err.contains("70 computed"), "{err}");
    let labels = std::fs::read_to_string(cwd.join("retrained_labels.txt")).unwrap();
    assert_eq!(labels, "daisy\ndandelion\nroses\nsunflowers\ntulips\n");
    assert!(cwd.join("retrained_graph.onnx").metadata().unwrap().len() > 1_000_000);

    // A second identical run reuses every bottleneck and writes the same graph.
    let first_graph = std::fs::read(cwd.join("retrained_graph.onnx")).unwrap();
    let again = flowers(&args, cwd);
    assert!(again.status.success());
    assert!(
        stderr(&again).contains("70 cached, 0 computed"),
        "{}",
        stderr(&again)
    );
    assert_eq!(
        std::fs::read(cwd.join("retrained_graph.onnx")).unwrap(),
        first_graph
    );

    // label_image.py's output: one `label score` line per class, best first.
    let rose = sample_image("roses");
    let output = flowers(&["label", "--image", rose.to_str().unwrap()], cwd);
    assert!(output.status.success(), "{}", stderr(&output));
    let lines: Vec<(String, f32)> = stdout(&output)
        .lines()
        .map(|l| {
            let (label, score) = l.rsplit_once(' ').unwrap();
            (label.to_string(), score.parse().unwrap())
        })
        .collect();
    assert_eq!(lines.len(), 5);
    assert_eq!(lines[0].0, "roses", "{lines:?}");
    assert!(lines.windows(2).all(|w| w[0].1 >= w[1].1));
    let total: f32 = lines.iter().map(|l| l.1).sum();
    assert!((total - 1.0).abs() < 1e-4);

    // JSON lines for scripts, a folder walked recursively, --top-k honoured.
    let daisies = sample.join("daisy");
    let output = flowers(
        &[
            "label",
            "--json",
            "--top-k",
            "2",
            "--labels",
            "retrained_labels.txt",
            daisies.to_str().unwrap(),
        ],
        cwd,
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let objects: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 14);
    let correct = objects
        .iter()
        .filter(|o| o["predictions"][0]["label"] == "daisy")
        .count();
    assert!(correct >= 12, "only {correct} of 14 daisies labelled daisy");
    assert!(objects
        .iter()
        .all(|o| o["predictions"].as_array().unwrap().len() == 2));
}

#[test]
fn json_summary_is_one_object_on_stdout() {
    let work = tempfile::tempdir().unwrap();
    let sample = sample_dir();
    let output = flowers(
        &[
            "retrain",
            "--image_dir",
            sample.to_str().unwrap(),
            "--bottleneck_dir",
            "cache",
            "--how_many_training_steps",
            "20",
            "--json",
        ],
        work.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let summary: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    assert_eq!(summary["images"], 70);
    assert_eq!(summary["labels"].as_array().unwrap().len(), 5);
    assert!(stderr(&output).contains("Final test accuracy = "));
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let work = tempfile::tempdir().unwrap();
    let missing = flowers(&["retrain", "--image-dir", "no/such/dir"], work.path());
    assert_eq!(missing.status.code(), Some(2));
    assert_eq!(
        stderr(&missing).trim(),
        "error: --image-dir no/such/dir: no such file or directory"
    );
    let no_graph = flowers(&["label", "x.jpg"], work.path());
    assert_eq!(no_graph.status.code(), Some(2));
    assert!(stderr(&no_graph).contains("retrained_graph.onnx"));
    assert_eq!(stderr(&no_graph).lines().count(), 1);
}

#[test]
fn quiet_keeps_results_and_warnings_but_drops_progress_lines() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    common::copy_sample(&cwd.join("images"), &["daisy", "roses"], 3);
    std::fs::write(cwd.join("images/daisy/notes.txt"), "not an image").unwrap();
    let output = common::retrain(cwd, "images", 20, &["--quiet"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).starts_with("Final test accuracy"));
    let err = stderr(&output);
    assert!(err.contains("warning: skipping"), "{err}");
    assert!(
        !err.contains("Step 0:") && !err.contains("Bottlenecks:"),
        "{err}"
    );
}

#[test]
fn completions_and_man_page_come_from_the_binary() {
    let work = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let output = flowers(&["completions", shell], work.path());
        assert!(output.status.success(), "{shell}: {}", stderr(&output));
        let script = stdout(&output);
        assert!(
            script.contains("retrain") && script.contains("image-dir"),
            "{shell}"
        );
    }
    let man = flowers(&["man"], work.path());
    assert!(man.status.success(), "{}", stderr(&man));
    assert!(stdout(&man).starts_with(".ie"), "{}", stdout(&man));
    assert!(stdout(&man).contains(".TH flowers 1"), "{}", stdout(&man));
    let unknown = flowers(&["completions", "tcsh"], work.path());
    assert_eq!(unknown.status.code(), Some(2));
}

#[test]
fn a_graph_name_that_says_another_format_gets_one_warning() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    common::copy_sample(&cwd.join("images"), &["daisy", "roses"], 3);
    let output = common::retrain(cwd, "images", 10, &["--output-graph", "graph.pb"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let err = stderr(&output);
    let warnings: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("graph.pb is named"))
        .collect();
    assert_eq!(warnings.len(), 1, "{err}");
    assert!(warnings[0].contains("ONNX"), "{err}");
    // The content decides: label reads it as the ONNX graph it is.
    let labelled = flowers(
        &[
            "label",
            "--graph",
            "graph.pb",
            "--labels",
            "retrained_labels.txt",
            sample_image("daisy").to_str().unwrap(),
        ],
        cwd,
    );
    assert!(labelled.status.success(), "{}", stderr(&labelled));
}

#[test]
fn intermediate_graphs_are_written_as_retrain_py_wrote_them() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    common::copy_sample(&cwd.join("images"), &["daisy", "roses"], 3);
    let output = common::retrain(
        cwd,
        "images",
        25,
        &[
            "--intermediate_store_frequency=10",
            "--intermediate_output_graphs_dir=intermediate/",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let mut written: Vec<String> = std::fs::read_dir(cwd.join("intermediate"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(written, ["intermediate_10.onnx", "intermediate_20.onnx"]);
    let labelled = flowers(
        &[
            "label",
            "--graph",
            "intermediate/intermediate_20.onnx",
            sample_image("roses").to_str().unwrap(),
        ],
        cwd,
    );
    assert!(labelled.status.success(), "{}", stderr(&labelled));
}
