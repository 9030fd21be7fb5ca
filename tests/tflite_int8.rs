//! int8 and float16 TensorFlow Lite files: flowers' integer kernels against TensorFlow
//! Lite's own outputs (recorded by tests/fixtures/tflite/make_int8_fixtures.py), and the
//! quantized export of a graph retrained on the sample photos against the float graph.

mod common;

use std::path::{Path, PathBuf};

use flowers::backbone::onnx::decode_model;
use flowers::graph::classifier::LabelImageFlags;
use flowers::graph::tflite::quantize::{calibration, float16, int8, interpret::Int8Model, Io};
use flowers::graph::tflite::{convert, file, read, run};
use flowers::graph::{GraphMetadata, RetrainedGraph};
use flowers::image::Layout;
use serde_json::Value;

use common::{retrain, sample_dir};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tflite")
        .join(name)
}

/// The inputs make_int8_fixtures.py feeds: the example's `tiny_input(k)`.
fn tiny_input(k: usize) -> Vec<f32> {
    (0..8 * 8 * 3)
        .map(|i| (((i * 37 + k * 101) % 256) as f32 / 128.0 - 1.0) * 2.5)
        .collect()
}

fn recorded(model: &str, kernels: &str) -> (Vec<usize>, Vec<Vec<f32>>) {
    let text = std::fs::read_to_string(fixture("tiny_tflite_outputs.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let inputs = json["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_u64().unwrap() as usize);
    let rows = json["models"][model][kernels].as_array().unwrap();
    let rows = rows
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    (inputs.collect(), rows)
}

fn decoded(name: &str) -> flowers::graph::tflite::ir::Model {
    let bytes = std::fs::read(fixture(name)).unwrap();
    read::decode(&bytes, name).unwrap().model
}

#[test]
fn int8_kernels_give_tensorflow_lites_scores_exactly() {
    for (file, model) in [
        ("tiny_int8.tflite", "tiny_int8"),
        ("tiny_int8_uint8.tflite", "tiny_int8_uint8"),
    ] {
        let int8 = Int8Model::new(decoded(file)).unwrap();
        let (inputs, builtin) = recorded(model, "builtin");
        let (_, reference) = recorded(model, "reference");
        for ((k, tflite), tflite_reference) in inputs.iter().zip(&builtin).zip(&reference) {
            let mut scores = int8.run(&tiny_input(*k)).unwrap();
            if model.ends_with("uint8") {
                // TFLite hands out the uint8 scores; flowers dequantizes them (scale 1/256).
                scores.iter_mut().for_each(|s| *s = (*s * 256.0).round());
            }
            assert_eq!(
                &scores, tflite,
                "{model}, input {k}: flowers vs TFLite's builtin kernels"
            );
            let largest = scores
                .iter()
                .zip(tflite_reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            let step = if model.ends_with("uint8") {
                1.0
            } else {
                1.0 / 256.0
            };
            assert!(
                largest <= step,
                "{model}, input {k}: {largest} from TFLite's reference kernels"
            );
        }
    }
}

#[test]
fn float16_weights_run_as_the_float_model() {
    let half = float16::dequantize_constants(decoded("tiny_float16.tflite")).unwrap();
    let half = run::Interpreter::new(half).unwrap();
    let float = run::Interpreter::new(decoded("tiny_float.tflite")).unwrap();
    let (inputs, tflite) = recorded("tiny_float16", "builtin");
    for (k, expected) in inputs.iter().zip(&tflite) {
        let scores = half.run(&tiny_input(*k)).unwrap();
        let exact = float.run(&tiny_input(*k)).unwrap();
        for ((a, b), c) in scores.iter().zip(expected).zip(&exact) {
            assert!((a - b).abs() < 1e-5, "input {k}: flowers {a} vs TFLite {b}");
            assert!(
                (a - c).abs() < 1e-2,
                "input {k}: float16 {a} vs float32 {c}"
            );
        }
    }
}

/// The float model and metadata of a graph retrained on the sample photos.
fn retrained_float_model(
    dir: &Path,
) -> (flowers::graph::tflite::ir::Model, GraphMetadata, PathBuf) {
    let images = sample_dir();
    let run = retrain(dir, images.to_str().unwrap(), 100, &[]);
    assert!(run.status.success(), "{}", common::stderr(&run));
    let graph = dir.join("retrained_graph.onnx");
    let proto = decode_model(std::fs::read(&graph).unwrap(), "graph").unwrap();
    let entries = proto
        .metadata_props
        .iter()
        .map(|p| (p.key.as_str(), p.value.as_str()));
    let metadata = GraphMetadata::from_entries(entries).unwrap();
    let p = &metadata.preprocessing;
    let model = convert::from_onnx(&proto, p.height as usize, p.width as usize, "graph").unwrap();
    (model, metadata, graph)
}

#[test]
fn int8_export_of_a_retrained_graph_agrees_with_the_float_graph() {
    let dir = tempfile::tempdir().unwrap();
    let (float, metadata, graph) = retrained_float_model(dir.path());
    let candidates = calibration::candidates_in(&sample_dir());
    let p = &metadata.preprocessing;
    let (ranges, used) =
        calibration::measure(&float, p, &candidates, calibration::DEFAULT_COUNT, "sample").unwrap();
    assert_eq!(
        used, 70,
        "every sample photo calibrates (fewer than the default 100 exist)"
    );
    let float_bytes = file::encode(&float, &metadata).unwrap();
    let int8_bytes = file::encode(
        &int8::quantize(&float, &ranges, Io::Float).unwrap(),
        &metadata,
    )
    .unwrap();
    assert!(
        int8_bytes.len() * 10 <= float_bytes.len() * 3,
        "int8 {} bytes vs float {}",
        int8_bytes.len(),
        float_bytes.len()
    );
    let uint8 = int8::quantize(&float, &ranges, Io::Uint8).unwrap();
    let int8 = Int8Model::new(file::decode(&int8_bytes, "int8").unwrap().model).unwrap();
    let uint8 = Int8Model::new(uint8).unwrap();
    let onnx = RetrainedGraph::load(&graph, None, &LabelImageFlags::default()).unwrap();
    let mut nhwc = p.clone();
    nhwc.layout = Layout::Nhwc;
    let photos: Vec<PathBuf> = candidates.iter().step_by(3).cloned().collect();
    let mut agree = 0;
    for photo in &photos {
        let bytes = std::fs::read(photo).unwrap();
        let expected = onnx.probabilities(&bytes).unwrap();
        let input = nhwc.tensor_from_bytes(&bytes).unwrap();
        let scores = int8
            .run(input.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap())
            .unwrap();
        let via_uint8 = uint8
            .run(input.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap())
            .unwrap();
        assert_eq!(
            scores,
            via_uint8,
            "{}: uint8 input and output compute the same",
            photo.display()
        );
        agree += usize::from(top1(&scores) == top1(&expected));
        let largest = scores
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            largest < 0.25,
            "{}: int8 scores {scores:?} vs float {expected:?}",
            photo.display()
        );
    }
    assert!(
        agree * 100 >= photos.len() * 90,
        "top-1 agrees on {agree} of {}",
        photos.len()
    );
}

fn top1(scores: &[f32]) -> usize {
    (0..scores.len())
        .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
        .unwrap()
}

#[test]
fn calibration_needs_a_decodable_image() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), "not a photo").unwrap();
    let model = read::decode(
        &std::fs::read(fixture("tiny_float.tflite")).unwrap(),
        "tiny",
    )
    .unwrap()
    .model;
    let preprocessing = flowers::image::Preprocessing {
        height: 8,
        width: 8,
        layout: Layout::Nhwc,
        mean: [127.5; 3],
        std: [127.5; 3],
        resize: flowers::image::ResizeRule::Squash,
    };
    let candidates = calibration::candidates_in(dir.path());
    let error = calibration::measure(
        &model,
        &preprocessing,
        &candidates,
        100,
        "--calibration-dir X",
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.starts_with("--calibration-dir X: none of its 1 files"),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
}

#[test]
fn quantized_files_from_the_command_line_and_bad_calibration_input() {
    let dir = tempfile::tempdir().unwrap();
    let images = sample_dir();
    let run = retrain(
        dir.path(),
        images.to_str().unwrap(),
        100,
        &["--output-tflite", "int8.tflite", "--quantize", "int8"],
    );
    assert!(run.status.success(), "{}", common::stderr(&run));
    assert!(
        common::stderr(&run).contains("int8: activation ranges from"),
        "{}",
        common::stderr(&run)
    );
    let photo = common::sample_image("roses");
    let photo = photo.to_str().unwrap();
    let label = |graph: &str| {
        let out = common::flowers(
            &["label", "--graph", graph, "--top-k", "1", photo],
            dir.path(),
        );
        assert!(out.status.success(), "{graph}: {}", common::stderr(&out));
        common::stdout(&out)
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(label("int8.tflite"), label("retrained_graph.onnx"));

    let export = |extra: &[&str]| {
        let mut args = vec![
            "export",
            "--graph",
            "retrained_graph.onnx",
            "--output",
            "out.tflite",
        ];
        args.extend_from_slice(extra);
        common::flowers(&args, dir.path())
    };
    let half = export(&["--quantize", "float16"]);
    assert!(half.status.success(), "{}", common::stderr(&half));
    assert!(
        common::stdout(&half).contains("float16"),
        "{}",
        common::stdout(&half)
    );
    assert_eq!(label("out.tflite"), label("retrained_graph.onnx"));
    std::fs::remove_file(dir.path().join("out.tflite")).unwrap();

    let empty = dir.path().join("no photos");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(empty.join("notes.txt"), "not a photo").unwrap();
    let empty = empty.to_str().unwrap();
    for (extra, says) in [
        (
            vec!["--quantize", "int8", "--calibration-dir", empty],
            "none of its 1 files is an image",
        ),
        (vec!["--quantize", "int8"], "needs --calibration-dir"),
        (
            vec!["--quantize", "int8", "--calibration-dir", "missing"],
            "not a folder",
        ),
        (
            vec!["--io", "uint8"],
            "--io applies to --quantize int8 only",
        ),
        (vec!["--quantize", "int4"], "int4"),
    ] {
        let out = export(&extra);
        let stderr = common::stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(says), "{extra:?}: {stderr}");
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("error")).count(),
            1,
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(
            !dir.path().join("out.tflite").exists(),
            "{extra:?} wrote a file"
        );
    }
}
