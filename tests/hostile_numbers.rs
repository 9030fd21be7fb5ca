//! Hostile numbers (issue 22, items 4, 5, 6 and 10): scores and weights that are not finite
//! numbers, a batch past the memory limit, damaged graphs and out-of-range metadata. Each
//! case states its exit code, that no panic text appears, a peak memory bound, that
//! nothing outside its folders changed, and that a following good run works.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use flowers::backbone::{Backbone, ModelSource, Overrides};
use flowers::graph::metadata::keys;
use flowers::graph::{retrained_graph, RetrainedGraphFile};
use flowers::train::FinalLayer;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::Value;
use tract_onnx::pb::{self, ModelProto};

use common::copy_sample;
use common::hostile::{
    assert_memory_under, assert_no_panic, assert_refused, run_bounded, snapshot, Run,
};

const DEADLINE: Duration = Duration::from_secs(120);

/// Peak memory of a `label` or `evaluate` run on the 17 MB retrained graph.
const LABEL_MIB: u64 = 400;
/// Peak memory of a retrain on the shared cache (nothing to extract).
const RETRAIN_MIB: u64 = 500;

const CLASSES: [&str; 3] = ["daisy", "roses", "tulips"];

/// One retrain, shared by the whole file: `images/` (4 photos of each of [`CLASSES`]),
/// its bottleneck cache `cache/` and the retrained graph `good.onnx`. Under cargo's
/// scratch folder for tests, remade once per run; the cases only read it.
fn trained() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("hostile_numbers");
        let _ = fs::remove_dir_all(&dir);
        copy_sample(&dir.join("images"), &CLASSES, 4);
        let run = flowers(
            &[
                "retrain",
                "--image-dir",
                "images",
                "--bottleneck-dir",
                "cache",
                "--how-many-training-steps",
                "40",
                "--output-graph",
                "good.onnx",
                "--output-labels",
                "good.txt",
            ],
            &dir,
        );
        assert_eq!(run.code, Some(0), "{run:#?}");
        dir
    })
}

fn flowers(args: &[&str], cwd: &Path) -> Run {
    run_bounded(args, cwd, &[], DEADLINE)
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `flowers label --json` of every shared image with `graph`.
fn label(graph: &Path, cwd: &Path) -> Run {
    let images = trained().join("images");
    flowers(
        &["label", "--json", "--graph", arg(graph), arg(&images)],
        cwd,
    )
}

/// A good run afterwards: the shared graph labels every image.
fn assert_good_run_works(cwd: &Path) {
    let run = label(&trained().join("good.onnx"), cwd);
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.stdout.lines().count(), 12);
}

fn good_model() -> ModelProto {
    let bytes = fs::read(trained().join("good.onnx")).unwrap();
    ModelProto::decode(bytes.as_slice()).unwrap()
}

/// The shared graph's final layer weights (bottleneck x classes) and biases.
fn layer_of<'a>(model: &'a mut ModelProto, name: &str) -> &'a mut pb::TensorProto {
    let graph = model.graph.as_mut().unwrap();
    let tensor = graph.initializer.iter_mut().find(|t| t.name == name);
    tensor.unwrap()
}

fn set_floats(tensor: &mut pb::TensorProto, values: &[f32]) {
    tensor.raw_data = values.iter().flat_map(|v| v.to_le_bytes()).collect();
}

fn floats(tensor: &pb::TensorProto) -> Vec<f32> {
    let chunks = tensor.raw_data.chunks_exact(4);
    chunks
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

/// Writes `model` as flowers writes graphs: with its digest sealed.
fn write_sealed(model: ModelProto, path: &Path) {
    fs::write(path, RetrainedGraphFile::Onnx(Box::new(model)).encode()).unwrap();
}

/// Writes `model` as older flowers wrote graphs: without a digest.
fn write_unsealed(mut model: ModelProto, path: &Path) {
    model.metadata_props.retain(|p| p.key != keys::DIGEST);
    fs::write(path, model.encode_to_vec()).unwrap();
}

fn json_lines(run: &Run) -> Vec<Value> {
    let lines = run.stdout.lines();
    lines.map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_graph_with_nan_biases_fails_every_image_instead_of_answering_nan() {
    let work = tempfile::tempdir().unwrap();
    let shared = snapshot(trained());
    let mut model = good_model();
    set_floats(layer_of(&mut model, "final_layer/biases"), &[f32::NAN; 3]);
    let unsealed = work.path().join("nan.onnx");
    write_unsealed(model.clone(), &unsealed);
    let sealed = work.path().join("nan_sealed.onnx");
    write_sealed(model, &sealed);
    for graph in [&unsealed, &sealed] {
        // Before: exit 0, every score NaN (`"score": null` in JSON).
        let run = label(graph, work.path());
        assert_eq!(run.code, Some(1), "{run:#?}");
        assert_no_panic(&run);
        assert_memory_under(&run, LABEL_MIB);
        let lines = json_lines(&run);
        assert_eq!(lines.len(), 12);
        for line in &lines {
            assert_eq!(line["kind"], "inference_failed", "{line}");
            assert!(line["error"]
                .as_str()
                .unwrap()
                .contains("NaN or infinite scores"));
        }
        assert!(!run.stdout.contains("null"), "{}", run.stdout);
        assert_eq!(run.stderr.matches("inference failed").count(), 12);

        // Before: exit 0 and `--assert-accuracy-at-least` passed.
        let images = trained().join("images");
        let evaluate = [
            "evaluate",
            "--graph",
            arg(graph),
            "--image-dir",
            arg(&images),
        ];
        let run = flowers(&evaluate, work.path());
        assert_refused(
            &run,
            2,
            &["the graph failed on every image", "NaN"],
            LABEL_MIB,
        );
        let gated = [&evaluate[..], &["--assert-accuracy-at-least", "0"]].concat();
        assert_refused(&flowers(&gated, work.path()), 2, &["NaN"], LABEL_MIB);
    }
    assert_eq!(snapshot(trained()), shared);
    assert_good_run_works(work.path());
}

/// The sum of each shared image's bottleneck, in file order (sorted, as the walker lists).
fn bottleneck_sums() -> Vec<(PathBuf, f32)> {
    let backbone = Backbone::load(&ModelSource::Embedded, &Overrides::default()).unwrap();
    let plan = backbone.extractor().unwrap();
    let mut sums = Vec::new();
    for class in CLASSES {
        let mut files: Vec<PathBuf> = fs::read_dir(trained().join("images").join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let bytes = fs::read(&file).unwrap();
            let input = backbone.preprocessing.tensor_from_bytes(&bytes).unwrap();
            sums.push((file, plan.run(input).unwrap().iter().sum()));
        }
    }
    sums
}

#[test]
fn images_a_graph_fails_on_count_as_wrong_and_never_pass_the_gate() {
    let work = tempfile::tempdir().unwrap();
    // Every weight of class 0 so large that its logit overflows to infinity (and the
    // softmax to NaN) for the images whose bottleneck sums to more than a threshold set
    // between two of them: those fail, the others are all classed 0.
    let sums = bottleneck_sums();
    let mut sorted: Vec<f32> = sums.iter().map(|s| s.1).collect();
    sorted.sort_by(f32::total_cmp);
    let (below, above) = (sorted[5], sorted[6]);
    assert!(above > below * 1.01, "{sorted:?}");
    let threshold = (below + above) / 2.0;
    let mut model = good_model();
    let weights = layer_of(&mut model, "final_layer/weights");
    let mut values = floats(weights);
    for row in values.chunks_exact_mut(3) {
        row[0] = f32::MAX / threshold;
    }
    set_floats(weights, &values);
    let graph = work.path().join("overflowing.onnx");
    write_sealed(model, &graph);

    let run = label(&graph, work.path());
    assert_eq!(run.code, Some(1), "{run:#?}");
    assert_no_panic(&run);
    let lines = json_lines(&run);
    let failed: Vec<bool> = lines
        .iter()
        .map(|l| l["kind"] == "inference_failed")
        .collect();
    let expected: Vec<bool> = sums.iter().map(|s| s.1 > threshold).collect();
    assert_eq!(failed, expected, "{}", run.stdout);
    for line in lines.iter().filter(|l| l.get("predictions").is_some()) {
        assert_eq!(line["predictions"][0]["label"], "daisy", "{line}");
    }

    let images = trained().join("images");
    let evaluate = [
        "evaluate",
        "--json",
        "--graph",
        arg(&graph),
        "--image-dir",
        arg(&images),
    ];
    let run = flowers(&evaluate, work.path());
    assert_eq!(run.code, Some(0), "{run:#?}");
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["failed"], 6);
    assert_eq!(report["n"], 12);
    // Daisies below the threshold are right; the failed images count as wrong.
    let right = sums
        .iter()
        .filter(|(path, sum)| *sum <= threshold && path.parent().unwrap().ends_with("daisy"))
        .count();
    assert_eq!(report["accuracy"].as_f64().unwrap(), right as f64 / 12.0);
    // Before: `--assert-accuracy-at-least 0` passed with exit 0.
    let gated = [&evaluate[..], &["--assert-accuracy-at-least", "0"]].concat();
    let run = flowers(&gated, work.path());
    assert_eq!(run.code, Some(3), "{run:#?}");
    assert_no_panic(&run);
    assert_memory_under(&run, LABEL_MIB);
    assert!(
        run.stderr.contains("the graph failed on 6 of 12 images"),
        "{}",
        run.stderr
    );
    assert_good_run_works(work.path());
}

/// `flowers retrain` on the shared images and cache, writing into `cwd`.
fn retrain(cwd: &Path, extra: &[&str]) -> Run {
    let shared = trained();
    let mut args = vec![
        "retrain",
        "--image-dir",
        arg(&shared.join("images")),
        "--bottleneck-dir",
        arg(&shared.join("cache")),
        "--how-many-training-steps",
        "20",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    flowers(&args, cwd)
}

#[test]
fn retrain_refuses_to_write_a_diverged_layer() {
    let work = tempfile::tempdir().unwrap();
    let shared = snapshot(trained());
    // Before: exit 0 and a graph of NaN weights.
    let run = retrain(work.path(), &["--learning-rate", "1e38"]);
    assert_refused(
        &run,
        2,
        &["training diverged at step ", "lower --learning-rate"],
        RETRAIN_MIB,
    );
    assert_eq!(
        fs::read_dir(work.path()).unwrap().count(),
        0,
        "nothing written"
    );
    assert_eq!(snapshot(trained()), shared);
    let good = retrain(work.path(), &["--learning-rate", "0.01"]);
    assert_eq!(good.code, Some(0), "{good:#?}");
    assert!(work.path().join("retrained_graph.onnx").is_file());
}

#[test]
fn a_batch_past_the_memory_limit_is_refused_before_training() {
    let work = tempfile::tempdir().unwrap();
    let shared = snapshot(trained());
    // Before: the allocator aborted (SIGABRT) on the batch.
    for (flag, mention) in [
        (
            "--train-batch-size",
            "--train-batch-size 3000000 needs 11718 MiB",
        ),
        ("--validation-batch-size", "--validation-batch-size 3000000"),
        ("--test-batch-size", "--test-batch-size 3000000"),
    ] {
        let run = retrain(work.path(), &[flag, "3000000"]);
        assert_refused(
            &run,
            2,
            &[mention, "lower it to at most 262144"],
            RETRAIN_MIB,
        );
        assert_eq!(fs::read_dir(work.path()).unwrap().count(), 0);
    }
    assert_eq!(snapshot(trained()), shared);
    let good = retrain(work.path(), &["--train-batch-size", "100"]);
    assert_eq!(good.code, Some(0), "{good:#?}");
}

#[test]
fn out_of_range_preprocessing_metadata_is_refused_when_the_graph_loads() {
    let work = tempfile::tempdir().unwrap();
    let shared = snapshot(trained());
    // Before: center-crop:1e-30 was "the image decoder crashed" on every image (exit 1).
    for (key, value) in [
        (keys::RESIZE, "center-crop:1e-30"),
        (keys::STD, "0,1,1"),
        (keys::STD, "-58.4"),
        (keys::MEAN, "NaN"),
        (keys::IMAGE_SIZE, "100000,100000"),
    ] {
        let mut model = good_model();
        let entry = model.metadata_props.iter_mut().find(|p| p.key == key);
        entry.unwrap().value = value.into();
        for (name, sealed) in [("sealed.onnx", true), ("unsealed.onnx", false)] {
            let graph = work.path().join(name);
            if sealed {
                write_sealed(model.clone(), &graph);
            } else {
                write_unsealed(model.clone(), &graph);
            }
            let run = label(&graph, work.path());
            assert_refused(&run, 2, &[name, key], LABEL_MIB);
        }
    }
    assert_eq!(snapshot(trained()), shared);
    assert_good_run_works(work.path());
}

/// `bytes` with `flips` bytes at random places changed to other values.
fn damaged(bytes: &[u8], flips: usize, rng: &mut ChaCha8Rng) -> Vec<u8> {
    let mut damaged = bytes.to_vec();
    for _ in 0..flips {
        let at = rng.random_range(0..damaged.len());
        damaged[at] ^= rng.random_range(1..=255u8);
    }
    damaged
}

/// Runs `trials` damaged copies of `graph`: each is refused with one line (a digest
/// mismatch or a decoding error) or answers exactly as the undamaged graph. Returns how
/// many were refused.
fn damage_trials(
    graph: &Path,
    flips: impl Fn(&mut ChaCha8Rng) -> usize,
    trials: usize,
    seed: u64,
) -> usize {
    let work = tempfile::tempdir().unwrap();
    let undamaged = label(graph, work.path());
    assert_eq!(undamaged.code, Some(0), "{undamaged:#?}");
    let bytes = fs::read(graph).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut refused = 0;
    let copy = work.path().join(graph.file_name().unwrap());
    for trial in 0..trials {
        let count = flips(&mut rng);
        fs::write(&copy, damaged(&bytes, count, &mut rng)).unwrap();
        let run = label(&copy, work.path());
        let context = || format!("trial {trial} ({count} flips): {run:#?}");
        assert_no_panic(&run);
        assert_memory_under(&run, LABEL_MIB);
        if run.code == Some(0) {
            assert_eq!(run.stdout, undamaged.stdout, "{}", context());
            continue;
        }
        assert_eq!(run.code, Some(2), "{}", context());
        let errors: Vec<&str> = run
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(errors.len(), 1, "{}", context());
        refused += 1;
    }
    refused
}

#[test]
fn a_damaged_onnx_graph_is_refused_not_believed() {
    // Before: 50-500 flips changed top-1 classes with exit 0.
    let graph = trained().join("good.onnx");
    let refused = damage_trials(&graph, |rng| rng.random_range(50..=500), 40, 22);
    assert_eq!(refused, 40, "every damaged copy differs from its digest");
}

/// A small flowers TensorFlow graph: the Inception-like fixture with a trained-looking
/// final layer, sealed as `flowers retrain` writes it.
fn tensorflow_graph(dir: &Path) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tf/inception_like.pb");
    let overrides = Overrides {
        bottleneck_tensor: Some("pool_3/_reshape".into()),
        ..Default::default()
    };
    let backbone = Backbone::load(&ModelSource::File(fixture), &overrides).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut layer = FinalLayer::new(32, 3, &mut rng);
    layer.weights.mapv_inplace(|w| w * 3000.0);
    let labels: Vec<String> = CLASSES.map(String::from).to_vec();
    let graph = retrained_graph(&backbone, &layer, &labels, "final_result").unwrap();
    let path = dir.join("tf.pb");
    fs::write(&path, graph.encode()).unwrap();
    path
}

#[test]
fn a_damaged_tensorflow_graph_is_refused_not_believed() {
    let work = tempfile::tempdir().unwrap();
    let graph = tensorflow_graph(work.path());
    // Before: 10 flips changed top-1 classes with exit 0.
    let refused = damage_trials(&graph, |_| 10, 60, 10);
    assert_eq!(refused, 60);
}

#[test]
fn graphs_without_a_digest_still_load_and_answer_the_same() {
    let work = tempfile::tempdir().unwrap();
    let sealed = label(&trained().join("good.onnx"), work.path());
    let unsealed = work.path().join("older.onnx");
    write_unsealed(good_model(), &unsealed);
    let run = label(&unsealed, work.path());
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_eq!(run.stdout, sealed.stdout);
    // Sealing what is already sealed gives the same bytes: the digest never covers itself.
    let again = work.path().join("again.onnx");
    write_sealed(good_model(), &again);
    assert_eq!(
        fs::read(&again).unwrap(),
        fs::read(trained().join("good.onnx")).unwrap()
    );
}
