//! Training options end to end: retrain.py's distortions through pools of cached distorted
//! copies, and bottlenecks streamed past `--training-memory`.

mod common;

use common::{cache_entries, copy_sample, retrain, stderr, stdout};

/// The count pair of the "Distorted bottlenecks ..." line: (cached, computed).
fn distorted_counts(output: &std::process::Output) -> (usize, usize) {
    let text = stderr(output);
    let line = text
        .lines()
        .find(|l| l.starts_with("Distorted bottlenecks"))
        .unwrap_or_else(|| panic!("no distortion line in {text}"));
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    (numbers[1], numbers[2])
}

fn training_images(output: &std::process::Output) -> usize {
    let summary: serde_json::Value = serde_json::from_str(stdout(output).trim()).unwrap();
    summary["training_images"].as_u64().unwrap() as usize
}

#[test]
fn distorted_copies_are_computed_once_cached_and_extended() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    copy_sample(&cwd.join("images"), &["daisy", "roses", "tulips"], 4);
    let distort = [
        "--flip_left_right",
        "--random_crop",
        "10",
        "--random_scale",
        "20",
        "--random_brightness",
        "15",
        "--json",
    ];
    let with_copies = |k: &str, graph: &str| {
        let mut args = distort.to_vec();
        args.extend(["--distorted-copies", k, "--output-graph", graph]);
        let output = retrain(cwd, "images", 30, &args);
        assert!(output.status.success(), "{}", stderr(&output));
        output
    };
    let first = with_copies("2", "first.onnx");
    let training = training_images(&first);
    assert!(training >= 6, "{training} training images");
    assert_eq!(distorted_counts(&first), (0, 2 * training));
    // Every copy is a cache entry of its own, beside the 12 plain bottlenecks.
    assert_eq!(cache_entries(&cwd.join("cache")).len(), 12 + 2 * training);

    let again = with_copies("2", "again.onnx");
    assert_eq!(distorted_counts(&again), (2 * training, 0));
    let first_graph = std::fs::read(cwd.join("first.onnx")).unwrap();
    assert_eq!(first_graph, std::fs::read(cwd.join("again.onnx")).unwrap());

    // The final step of a cluster run computes nothing, distorted copies included.
    let mut strict = distort.to_vec();
    strict.extend(["--distorted-copies", "4", "--require-cached"]);
    let refused = retrain(cwd, "images", 30, &strict);
    assert_eq!(refused.status.code(), Some(2), "{}", stderr(&refused));
    assert!(
        stderr(&refused).contains(&format!(
            "{} of {} distorted copies",
            2 * training,
            4 * training
        )),
        "{}",
        stderr(&refused)
    );

    // A third copy per image: only those are computed.
    let more = with_copies("3", "more.onnx");
    assert_eq!(distorted_counts(&more), (2 * training, training));

    // Training on distorted copies gives another layer than training on the originals.
    let plain = retrain(cwd, "images", 30, &["--output-graph", "plain.onnx"]);
    assert!(plain.status.success(), "{}", stderr(&plain));
    assert!(!stderr(&plain).contains("Distorted"));
    assert_ne!(first_graph, std::fs::read(cwd.join("plain.onnx")).unwrap());
}

#[test]
fn streamed_bottlenecks_train_the_same_layer_as_mapped_ones() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    copy_sample(
        &cwd.join("images"),
        &["daisy", "dandelion", "sunflowers"],
        4,
    );
    let mapped = retrain(cwd, "images", 40, &["--output-graph", "mapped.onnx"]);
    assert!(mapped.status.success(), "{}", stderr(&mapped));
    assert!(!stderr(&mapped).contains("streaming"));
    let streamed = retrain(
        cwd,
        "images",
        40,
        &[
            "--output-graph",
            "streamed.onnx",
            "--training-memory",
            "1KiB",
        ],
    );
    assert!(streamed.status.success(), "{}", stderr(&streamed));
    assert!(
        stderr(&streamed).contains("more than --training-memory: streaming them from disk"),
        "{}",
        stderr(&streamed)
    );
    assert_eq!(
        stdout(&mapped),
        stdout(&streamed).replace("streamed.onnx", "mapped.onnx")
    );
    assert_eq!(
        std::fs::read(cwd.join("mapped.onnx")).unwrap(),
        std::fs::read(cwd.join("streamed.onnx")).unwrap()
    );
}

#[test]
fn out_of_range_values_are_usage_errors_naming_the_flag() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    copy_sample(&cwd.join("images"), &["daisy", "roses"], 2);
    for bad in [
        &["--random_brightness", "150"][..],
        &["--random_crop", "-5"],
        &["--random-scale", "x"],
        &["--distorted-copies", "0"],
        &["--training-memory", "lots"],
    ] {
        let output = retrain(cwd, "images", 5, bad);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{bad:?}: {}",
            stderr(&output)
        );
        // The first line says what is wrong with which flag (clap may add a hint line).
        let text = stderr(&output);
        let first = text.lines().next().unwrap_or_default();
        let flag = bad[0].trim_start_matches('-').replace('_', "-");
        assert!(
            first.starts_with("error: ") && first.contains(&flag) && first.contains(bad[1]),
            "{bad:?}: {text}"
        );
    }
}
