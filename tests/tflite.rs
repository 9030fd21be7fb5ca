//! TensorFlow Lite export (issue 23): the `.tflite` file of a graph retrained on the sample
//! photos computes what the ONNX graph computes, in flowers and in TensorFlow Lite's own
//! interpreter (scores recorded by tests/fixtures/tflite/make_fixtures.py), carries its
//! labels and normalisation as TFLite metadata, and bad input is refused with exit 2,
//! one line, nothing written.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use flowers::backbone::{Backbone, ModelSource, Overrides};
use flowers::graph::classifier::LabelImageFlags;
use flowers::graph::digest;
use flowers::graph::tflite::run::Interpreter;
use flowers::graph::tflite::{export, file, model_metadata, read};
use flowers::graph::{retrained_graph, GraphMetadata, RetrainedGraph};
use flowers::image::Layout;
use flowers::train::FinalLayer;
use serde::Deserialize;

use common::{flowers, retrain, sample_dir, stderr, stdout};

const FIXTURES: &str = "tests/fixtures/tflite";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(FIXTURES)
        .join(name)
}

/// Every photo of the sample, sorted.
fn sample_photos() -> Vec<PathBuf> {
    let mut photos = Vec::new();
    for class in fs::read_dir(sample_dir()).unwrap() {
        let class = class.unwrap().path();
        if class.is_dir() {
            photos.extend(fs::read_dir(&class).unwrap().map(|e| e.unwrap().path()));
        }
    }
    photos.sort();
    photos
}

/// Retrains on the sample with `--output-tflite`, in `dir`: (graph, labels, tflite).
fn retrained(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let image_dir = sample_dir().display().to_string();
    let output = retrain(
        dir,
        &image_dir,
        60,
        &[
            "--output-graph",
            "g.onnx",
            "--output-labels",
            "l.txt",
            "--output-tflite",
            "t.tflite",
        ],
    );
    assert!(output.status.success(), "{}", stderr(&output));
    (dir.join("g.onnx"), dir.join("l.txt"), dir.join("t.tflite"))
}

fn load(path: &Path) -> RetrainedGraph {
    RetrainedGraph::load(path, None, &LabelImageFlags::default()).unwrap()
}

#[test]
fn tflite_labels_as_the_onnx_graph_and_export_gives_the_same_file() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, labels, tflite) = retrained(dir.path());
    let output = flowers(
        &[
            "export", "--graph", "g.onnx", "--labels", "l.txt", "--format", "tflite", "--output",
            "e.tflite",
        ],
        dir.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("e.tflite: TensorFlow Lite, float32"),
        "{}",
        stdout(&output)
    );
    let written = fs::read(&tflite).unwrap();
    assert_eq!(
        written,
        fs::read(dir.path().join("e.tflite")).unwrap(),
        "retrain and export differ"
    );

    let (onnx, lite) = (load(&graph), load(&tflite));
    assert_eq!(lite.labels, onnx.labels);
    assert_eq!(lite.preprocessing.layout, Layout::Nhwc);
    assert_eq!(onnx.preprocessing.layout, Layout::Nchw);
    let mut worst = 0.0f32;
    for photo in sample_photos() {
        let bytes = fs::read(&photo).unwrap();
        let (a, b) = (
            onnx.probabilities(&bytes).unwrap(),
            lite.probabilities(&bytes).unwrap(),
        );
        assert_eq!(
            onnx.top_k(&a, 1)[0].class,
            lite.top_k(&b, 1)[0].class,
            "{}",
            photo.display()
        );
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("ONNX graph vs .tflite, largest score difference: {worst:e}");
    assert!(worst < 1e-4, "largest score difference {worst}");

    // `flowers label` on the .tflite with no other flag.
    let photo = sample_photos()[0].display().to_string();
    let by_onnx = flowers(
        &["label", "--graph", "g.onnx", "--top-k", "1", &photo],
        dir.path(),
    );
    let by_lite = flowers(
        &["label", "--graph", "t.tflite", "--top-k", "1", &photo],
        dir.path(),
    );
    assert!(by_lite.status.success(), "{}", stderr(&by_lite));
    let first_word =
        |o: &std::process::Output| stdout(o).split_whitespace().next().map(str::to_string);
    assert_eq!(first_word(&by_onnx), first_word(&by_lite));
    let _ = labels;
}

#[test]
fn tflite_metadata_carries_labels_and_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    let (graph, labels, tflite) = retrained(dir.path());
    let bytes = fs::read(&tflite).unwrap();
    let decoded = read::decode(&bytes, "t.tflite").unwrap();
    let buffer = |name: &str| {
        decoded
            .metadata
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
    };
    let summary =
        model_metadata::read_tflite_metadata(&buffer(model_metadata::TFLITE_METADATA).unwrap())
            .unwrap();
    let onnx = load(&graph);
    assert_eq!(summary.mean, onnx.preprocessing.mean);
    assert_eq!(summary.std, onnx.preprocessing.std);
    assert_eq!(
        summary.labels_file.as_deref(),
        Some(model_metadata::LABELS_FILE)
    );
    let packed = model_metadata::packed_files(&bytes).unwrap();
    assert_eq!(packed.len(), 1);
    assert_eq!(packed[0].0, "labels.txt");
    assert_eq!(
        packed[0].1,
        fs::read(&labels).unwrap(),
        "the packed labels are the labels file"
    );
    let entries = model_metadata::parse_flowers_buffer(&buffer("flowers").unwrap()).unwrap();
    assert_eq!(entries.last().unwrap().0, "flowers.digest");
    let ops: Vec<&str> = decoded
        .model
        .operators
        .iter()
        .map(|o| o.op.name())
        .collect();
    assert_eq!(
        ops.iter().filter(|&&o| o == "CONV_2D").count(),
        14,
        "{ops:?}"
    );
    assert_eq!(
        ops.iter().filter(|&&o| o == "DEPTHWISE_CONV_2D").count(),
        13,
        "{ops:?}"
    );
    assert_eq!(
        &ops[ops.len() - 3..],
        ["RESHAPE", "FULLY_CONNECTED", "SOFTMAX"]
    );
    assert!(
        !ops.contains(&"RELU6") && !ops.contains(&"PAD"),
        "ReLU6 fused, paddings SAME: {ops:?}"
    );
}

/// What make_fixtures.py recorded: the final layer of a graph retrained on the sample,
/// and TensorFlow Lite's scores for the sample photos on its `.tflite` file.
#[derive(Deserialize)]
struct Recorded {
    labels: Vec<String>,
    /// [bottleneck, classes], row-major.
    weights: Vec<f32>,
    biases: Vec<f32>,
    /// Photo path relative to tests/data/flower_sample -> tf.lite.Interpreter's scores.
    scores: BTreeMap<String, Vec<f32>>,
}

#[test]
fn flowers_agrees_with_tensorflow_lite_on_the_recorded_file() {
    let recorded: Recorded =
        serde_json::from_slice(&fs::read(fixture("tf_scores.json")).unwrap()).unwrap();
    let backbone = Backbone::load(&ModelSource::Embedded, &Overrides::default()).unwrap();
    let classes = recorded.labels.len();
    let layer = FinalLayer {
        weights: ndarray::Array2::from_shape_vec(
            (recorded.weights.len() / classes, classes),
            recorded.weights,
        )
        .unwrap(),
        biases: ndarray::Array1::from_vec(recorded.biases),
    };
    let graph = retrained_graph(&backbone, &layer, &recorded.labels, "final_result").unwrap();
    let metadata = GraphMetadata {
        labels: Some(recorded.labels.clone()),
        preprocessing: backbone.preprocessing.clone(),
        backbone: Some(format!("{} sha256:{}", backbone.name, backbone.sha256)),
        input: None,
        output: None,
        inputs: Vec::new(),
    };
    let bytes = export::tflite_file(&graph, &metadata, "fixture").unwrap();
    let lite =
        RetrainedGraph::from_bytes(bytes, "fixture", None, &LabelImageFlags::default()).unwrap();
    assert!(
        recorded.scores.len() >= 20,
        "the fixture records {} photos",
        recorded.scores.len()
    );
    let mut worst = 0.0f32;
    for (photo, expected) in &recorded.scores {
        let scores = lite
            .probabilities(&fs::read(sample_dir().join(photo)).unwrap())
            .unwrap();
        let top = |s: &[f32]| (0..s.len()).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
        assert_eq!(top(&scores), top(expected), "{photo}");
        for (x, y) in scores.iter().zip(expected) {
            worst = worst.max((x - y).abs());
        }
    }
    eprintln!("flowers vs tf.lite.Interpreter, largest score difference: {worst:e}");
    assert!(
        worst < 1e-4,
        "largest difference from TensorFlow Lite {worst}"
    );
}

fn assert_refused(output: &std::process::Output, words: &str) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(words), "{err}");
    assert!(!err.contains("panick"), "{err}");
}

#[test]
fn unexportable_op_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let output = flowers(
        &[
            "export",
            "--graph",
            fixture("max_pool_graph.onnx").to_str().unwrap(),
            "--output",
            "x.tflite",
        ],
        dir.path(),
    );
    assert_refused(&output, "MaxPool");
    assert!(!dir.path().join("x.tflite").exists());
}

#[test]
fn bad_labels_unwritable_output_and_damaged_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, tflite) = retrained(dir.path());
    fs::write(dir.path().join("wrong.txt"), "daisy\nroses\n").unwrap();
    let output = flowers(
        &[
            "export",
            "--graph",
            "g.onnx",
            "--labels",
            "wrong.txt",
            "--output",
            "x.tflite",
        ],
        dir.path(),
    );
    assert_refused(&output, "does not match the labels inside");
    assert!(!dir.path().join("x.tflite").exists());

    let output = flowers(
        &[
            "export",
            "--graph",
            "g.onnx",
            "--output",
            "no/such/dir/x.tflite",
        ],
        dir.path(),
    );
    assert_refused(&output, "--output");

    let bytes = fs::read(&tflite).unwrap();
    let photo = sample_photos()[0].display().to_string();
    let mut flipped = bytes.clone();
    flipped[200] ^= 0x40;
    let garbage = b"....TFL3 is not enough to make a model".repeat(40);
    for (name, damaged, words) in [
        (
            "truncated.tflite",
            bytes[..bytes.len() / 3].to_vec(),
            "damaged: digest mismatch",
        ),
        ("flipped.tflite", flipped, "damaged: digest mismatch"),
        (
            "garbage.tflite",
            garbage,
            "not a valid TensorFlow Lite file",
        ),
    ] {
        fs::write(dir.path().join(name), &damaged).unwrap();
        let output = flowers(&["label", "--graph", name, &photo], dir.path());
        assert_refused(&output, name);
        assert_refused(&output, words);
        // With its digest recomputed, the damage reaches the decoder, which refuses it too.
        let mut resealed = damaged;
        digest::seal(&mut resealed);
        fs::write(dir.path().join(name), &resealed).unwrap();
        let output = flowers(&["label", "--graph", name, &photo], dir.path());
        assert_refused(&output, name);
    }
}

#[test]
fn malformed_flatbuffers_are_refused_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let (_, _, tflite) = retrained(dir.path());
    let bytes = fs::read(&tflite).unwrap();
    // Every byte of the flatbuffer's first kilobyte flipped in turn, the digest left
    // unsealed so the decoder itself has to refuse or accept: never a panic.
    let decoded_model = file::decode(&bytes, "t.tflite").unwrap().model;
    for at in (0..1024).step_by(7) {
        let mut damaged = bytes.clone();
        damaged[at] ^= 0x5a;
        if let Ok(decoded) = file::decode(&damaged, "damaged") {
            // What still decodes either fails the interpreter's checks cleanly or runs.
            if let Ok(interpreter) = Interpreter::new(decoded.model) {
                let input = vec![0.5f32; 224 * 224 * 3];
                let _ = interpreter.run(&input);
            }
        }
    }
    assert!(!decoded_model.operators.is_empty());
}

/// retrain.py's TensorFlow MobileNet (the genuine archive, and its quantized member):
/// the `.pb` graph and its `.tflite` file label the sample alike.
#[test]
fn tensorflow_graphs_export_too() {
    for architecture in ["mobilenet_0.25_224", "mobilenet_0.25_224_quantized"] {
        let dir = tempfile::tempdir().unwrap();
        let models = dir.path().join("models");
        fs::create_dir(&models).unwrap();
        let archive = "mobilenet_v1_0.25_224_frozen.tgz";
        let source = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tf")
            .join(archive);
        fs::copy(source, models.join(archive)).unwrap();
        let image_dir = sample_dir().display().to_string();
        let output = retrain(
            dir.path(),
            &image_dir,
            60,
            &[
                "--architecture",
                architecture,
                "--model-dir",
                "models",
                "--output-graph",
                "g.pb",
                "--output-labels",
                "l.txt",
                "--output-tflite",
                "t.tflite",
            ],
        );
        assert!(output.status.success(), "{}", stderr(&output));
        let (pb, lite) = (
            load(&dir.path().join("g.pb")),
            load(&dir.path().join("t.tflite")),
        );
        assert_eq!(lite.preprocessing, pb.preprocessing);
        let mut worst = 0.0f32;
        for photo in sample_photos() {
            let bytes = fs::read(&photo).unwrap();
            let (a, b) = (
                pb.probabilities(&bytes).unwrap(),
                lite.probabilities(&bytes).unwrap(),
            );
            assert_eq!(
                pb.top_k(&a, 1)[0].class,
                lite.top_k(&b, 1)[0].class,
                "{}",
                photo.display()
            );
            for (x, y) in a.iter().zip(&b) {
                worst = worst.max((x - y).abs());
            }
        }
        eprintln!("{architecture}: .pb vs .tflite, largest score difference: {worst:e}");
        assert!(
            worst < 1e-4,
            "{architecture}: largest score difference {worst}"
        );
        let ops = read::decode(&fs::read(dir.path().join("t.tflite")).unwrap(), "t")
            .unwrap()
            .model
            .operators;
        let names: Vec<&str> = ops.iter().map(|o| o.op.name()).collect();
        assert!(
            !names.contains(&"MUL") && !names.contains(&"ADD"),
            "batch norms folded: {names:?}"
        );
    }
}

#[test]
fn graphs_without_flowers_metadata_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let graph = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tf/retrained_graph.pb");
    let output = flowers(
        &[
            "export",
            "--graph",
            graph.to_str().unwrap(),
            "--output",
            "x.tflite",
        ],
        dir.path(),
    );
    assert_refused(&output, "has no flowers metadata");
    assert!(!dir.path().join("x.tflite").exists());
}
