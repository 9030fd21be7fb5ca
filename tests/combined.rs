//! Combined backbones end to end (`--architecture A+B`, `--model` more than once): one
//! retrained graph with one input per backbone that `flowers label` feeds, a cache per
//! backbone so adding one computes only its part, byte-identical graphs for equal seeds,
//! and clear refusals.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_sample, flowers, retrain, stderr, stdout};
use flowers::backbone::onnx::decode_model;
use flowers::graph::GraphMetadata;

/// A small ONNX backbone (random weights, 37x41 input, global pooling): the second
/// backbone beside the embedded MobileNet v1.
fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/onnx/small_backbone.onnx")
}

/// The embedded backbone, then the fixture with its own preprocessing.
fn combination() -> Vec<String> {
    vec![
        "--architecture".into(),
        "mobilenet_v1_1.0_224".into(),
        "--model".into(),
        format!("{}:mean=127.5,std=127.5,resize=squash", fixture().display()),
    ]
}

fn summary(output: &std::process::Output) -> serde_json::Value {
    assert!(output.status.success(), "{}", stderr(output));
    serde_json::from_str(stdout(output).trim()).unwrap()
}

/// (cached, computed) bottleneck vectors of a `--json` retrain.
fn counts(summary: &serde_json::Value) -> (u64, u64) {
    let count = |key: &str| summary[key].as_u64().unwrap();
    (count("bottlenecks_cached"), count("bottlenecks_computed"))
}

fn retrain_with(
    cwd: &Path,
    graph: &str,
    backbones: &[String],
    extra: &[&str],
) -> serde_json::Value {
    let mut args: Vec<&str> = backbones.iter().map(String::as_str).collect();
    args.extend(["--json", "--output-graph", graph]);
    args.extend_from_slice(extra);
    summary(&retrain(cwd, "images", 40, &args))
}

#[test]
fn two_backbones_make_one_graph_that_label_feeds() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    copy_sample(&cwd.join("images"), &["daisy", "roses", "tulips"], 5);

    // The embedded backbone alone first: its 15 vectors are computed...
    let alone = retrain_with(cwd, "alone.onnx", &[], &[]);
    assert_eq!(counts(&alone), (0, 15));
    // ...and adding a backbone computes only that backbone's part.
    let combined = retrain_with(cwd, "combined.onnx", &combination(), &[]);
    assert_eq!(counts(&combined), (15, 15));
    let backbone = combined["backbone"].as_str().unwrap();
    assert!(
        backbone.starts_with("mobilenet_v1_1.0_224 sha256:")
            && backbone.contains(" + small_backbone sha256:"),
        "{backbone}"
    );

    // Equal seeds, equal bytes; everything from the caches now.
    let again = retrain_with(cwd, "again.onnx", &combination(), &[]);
    assert_eq!(counts(&again), (30, 0));
    let graph = std::fs::read(cwd.join("combined.onnx")).unwrap();
    assert_eq!(graph, std::fs::read(cwd.join("again.onnx")).unwrap());

    // One input per backbone, each described in the metadata as it must be fed.
    let proto = decode_model(graph.clone(), "combined.onnx").unwrap();
    let metadata = GraphMetadata::of_onnx(&proto, "combined.onnx").unwrap();
    let names: Vec<&str> = metadata.inputs.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["b1/input", "b2/input"]);
    let graph_inputs: Vec<&str> = proto
        .graph
        .as_ref()
        .unwrap()
        .input
        .iter()
        .map(|i| i.name.as_str())
        .collect();
    assert_eq!(graph_inputs, names);
    let sizes: Vec<(u32, u32)> = metadata
        .inputs
        .iter()
        .map(|i| (i.preprocessing.height, i.preprocessing.width))
        .collect();
    assert_eq!(sizes, [(224, 224), (37, 41)]);
    assert_eq!(metadata.inputs[1].preprocessing.mean, [127.5; 3]);

    // `flowers label` feeds both inputs, and the graph classifies the photos it was trained
    // on as well as the final layer did in training.
    let evaluated = flowers(
        &[
            "evaluate",
            "--graph",
            "combined.onnx",
            "--image-dir",
            "images",
            "--json",
        ],
        cwd,
    );
    let evaluated = summary(&evaluated);
    let accuracy = evaluated["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.8, "{evaluated}");
    let photo = cwd
        .join("images/roses")
        .read_dir()
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let labelled = flowers(
        &["label", "--graph", "combined.onnx", photo.to_str().unwrap()],
        cwd,
    );
    assert!(labelled.status.success(), "{}", stderr(&labelled));
    assert!(stdout(&labelled).contains("roses"), "{}", stdout(&labelled));

    // `flowers extract` of the combination finds every vector cached.
    let mut extract = vec![
        "extract",
        "--image-dir",
        "images",
        "--bottleneck-dir",
        "cache",
    ];
    let backbones = combination();
    extract.extend(backbones.iter().map(String::as_str));
    let extracted = flowers(&extract, cwd);
    assert!(extracted.status.success(), "{}", stderr(&extracted));
    assert!(
        stdout(&extracted).contains("0 computed, 30 cached"),
        "{}",
        stdout(&extracted)
    );

    // No TensorFlow Lite file of a graph with two inputs: a clear refusal, nothing written.
    let export = flowers(
        &["export", "--graph", "combined.onnx", "--output", "c.tflite"],
        cwd,
    );
    assert_eq!(export.status.code(), Some(2), "{}", stderr(&export));
    assert!(
        stderr(&export).contains("combined backbones"),
        "{}",
        stderr(&export)
    );
    assert!(!cwd.join("c.tflite").exists());
}

#[test]
fn distortions_are_shared_and_cached_per_backbone() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    copy_sample(&cwd.join("images"), &["daisy", "roses"], 4);
    let distort = [
        "--flip_left_right",
        "--random_scale",
        "20",
        "--distorted-copies",
        "2",
    ];
    let combined = retrain_with(cwd, "combined.onnx", &combination(), &distort);
    let training = combined["training_images"].as_u64().unwrap();
    assert!(training >= 4, "{combined}");
    // The embedded backbone's copies are the ones it computes alone: all cached now.
    let alone = retrain(
        cwd,
        "images",
        40,
        &[&distort[..], &["--output-graph", "alone.onnx"]].concat(),
    );
    assert!(alone.status.success(), "{}", stderr(&alone));
    let line = stderr(&alone)
        .lines()
        .find(|l| l.starts_with("Distorted bottlenecks"))
        .map(str::to_string)
        .unwrap();
    assert!(
        line.contains(&format!("{} cached, 0 computed", 2 * training)),
        "{line}"
    );
    // The combination's own rerun needs no backbone at all.
    let mut strict = combination();
    strict.push("--require-cached".into());
    let again = retrain_with(cwd, "again.onnx", &strict, &distort);
    assert_eq!(counts(&again), (16, 0));
    assert_eq!(
        std::fs::read(cwd.join("combined.onnx")).unwrap(),
        std::fs::read(cwd.join("again.onnx")).unwrap()
    );
}

#[test]
fn unknown_names_and_impossible_combinations_are_refused_in_one_line() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    copy_sample(&cwd.join("images"), &["daisy", "roses"], 2);
    let refused = |args: &[&str], mentions: &[&str]| {
        let output = retrain(cwd, "images", 10, args);
        assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
        let text = stderr(&output);
        let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(errors.len(), 1, "{text}");
        for mention in mentions {
            assert!(errors[0].contains(mention), "{mention}: {text}");
        }
        assert!(!cwd.join("retrained_graph.onnx").exists());
    };
    refused(
        &["--architecture", "mobilenet_v1_1.0_224+nosuchnet"],
        &["\"nosuchnet\"", "flowers architectures"],
    );
    refused(
        &["--architecture", "mobilenet_v1_1.0_224+"],
        &["empty name"],
    );
    let tensorflow =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tf/retrained_graph.pb");
    let fixture = fixture();
    refused(
        &[
            "--model",
            fixture.to_str().unwrap(),
            "--model",
            tensorflow.to_str().unwrap(),
            "--bottleneck-tensor",
            "x",
        ],
        &["--bottleneck-tensor", "each --model"],
    );
    refused(
        &[
            "--model",
            fixture.to_str().unwrap(),
            "--model",
            &format!("{}:bottleneck=final_result", tensorflow.display()),
        ],
        &["TensorFlow graph", "ONNX"],
    );
    refused(
        &[
            "--model",
            fixture.to_str().unwrap(),
            "--model",
            fixture.to_str().unwrap(),
        ],
        &["given twice"],
    );
    refused(
        &[
            "--model",
            &format!("{}:mean=1,2,3,colour=red", fixture.display()),
        ],
        &["unknown option \"colour\""],
    );
    refused(
        &[
            "--model",
            fixture.to_str().unwrap(),
            "--architecture",
            "mobilenet_v1_1.0_224",
            "--output-tflite",
            "x.tflite",
        ],
        &["--output-tflite", "one backbone"],
    );
}
