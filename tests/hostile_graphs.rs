//! Hostile and damaged graph files given to `flowers label` (and as `--model` to
//! `extract`): each is refused with exit 2 and one `error:` line naming the file, no panic
//! or abort, a bounded peak memory, nothing written, and a good graph labels an image
//! right after. The corpus is in tests/fixtures/hostile/graphs/, made by its corpus.rs.

mod common;
#[path = "fixtures/hostile/graphs/corpus.rs"]
mod corpus;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::hostile::{assert_no_panic, assert_refused, run_bounded, snapshot, Run};
use common::sample_image;

/// Peak memory allowed for a refused graph: the binary, tract and a small graph.
const REFUSED_MIB: u64 = 150;
const DEADLINE: Duration = Duration::from_secs(60);

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile/graphs")
}

/// A scratch folder holding the case's graph, a labels file and an image.
struct Stage {
    dir: tempfile::TempDir,
    graph: String,
}

fn stage(file: &str) -> Stage {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(corpus_dir().join(file), dir.path().join(file)).unwrap();
    std::fs::write(dir.path().join("labels.txt"), "daisy\nroses\n").unwrap();
    std::fs::copy(sample_image("daisy"), dir.path().join("daisy.jpg")).unwrap();
    Stage {
        dir,
        graph: file.to_string(),
    }
}

fn label(dir: &Path, graph: &str, extra: &[&str]) -> Run {
    let mut args = vec!["label", "--graph", graph, "--image", "daisy.jpg"];
    args.extend_from_slice(extra);
    run_bounded(&args, dir, &[], DEADLINE)
}

/// The case is refused as promised, wrote nothing, and a good graph works after it.
fn assert_graph_refused(file: &str, extra: &[&str], mentions: &[&str]) {
    let stage = stage(file);
    let before = snapshot(stage.dir.path());
    let run = label(stage.dir.path(), &stage.graph, extra);
    let mut mentions = mentions.to_vec();
    mentions.push(&stage.graph);
    assert_refused(&run, 2, &mentions, REFUSED_MIB);
    assert_eq!(
        snapshot(stage.dir.path()),
        before,
        "{file}: nothing written"
    );
    assert_good_run_works(stage.dir.path());
}

/// Right after a refused graph, the good ONNX graph and its TensorFlow twin label an
/// image.
fn assert_good_run_works(dir: &Path) {
    std::fs::write(dir.join("good-labels.txt"), "daisy\nroses\n").unwrap();
    for (graph, extra) in [
        ("good.onnx", &[][..]),
        ("good.pb", &["--labels", "good-labels.txt"][..]),
    ] {
        std::fs::copy(corpus_dir().join(graph), dir.join(graph)).unwrap();
        let run = label(dir, graph, extra);
        assert_no_panic(&run);
        assert_eq!(run.code, Some(0), "{graph} labels: {run:#?}");
        assert!(
            run.stdout.contains("daisy") && run.stdout.contains("roses"),
            "{run:#?}"
        );
    }
}

#[test]
fn the_committed_corpus_is_what_corpus_rs_makes() {
    let regenerate = std::env::var_os("FLOWERS_REGENERATE_CORPUS").is_some();
    for case in corpus::cases() {
        let path = corpus_dir().join(case.file);
        if regenerate {
            std::fs::write(&path, &case.bytes).unwrap();
        }
        let committed = std::fs::read(&path).unwrap();
        assert!(
            committed == case.bytes,
            "{} differs from what corpus.rs makes",
            case.file
        );
        assert!(committed.len() < 10_000, "{} is small", case.file);
    }
}

#[test]
fn an_output_nothing_produces_is_refused() {
    assert_graph_refused(
        "output_nothing_produces.onnx",
        &[],
        &["\"nothing_makes_this\"", "nothing produces"],
    );
}

#[test]
fn a_string_initializer_is_refused() {
    assert_graph_refused("string_initializer.onnx", &[], &["STRING", "\"biases\""]);
}

#[test]
fn constant_of_shape_is_refused_before_it_is_built() {
    for file in ["constant_of_shape_1e10.onnx", "constant_of_shape_5e8.onnx"] {
        assert_graph_refused(file, &[], &["ConstantOfShape", "over the limit"]);
    }
}

#[test]
fn an_initializer_declaring_more_than_it_holds_is_refused() {
    assert_graph_refused(
        "initializer_declares_1e12.onnx",
        &[],
        &["\"biases\"", "over the limit"],
    );
}

#[test]
fn onnx_versions_from_the_future_are_refused() {
    assert_graph_refused("opset_1000.onnx", &[], &["operator set 1000", "1 to 23"]);
    assert_graph_refused(
        "ir_version_1000.onnx",
        &[],
        &["IR version is 1000", "up to 11"],
    );
}

#[test]
fn a_tensorflow_fill_of_ten_billion_values_is_refused() {
    let labels = ["--labels", "labels.txt"];
    assert_graph_refused(
        "fill_1e10.pb",
        &labels,
        &["\"huge\"", "Fill", "over the limit"],
    );
}

#[test]
fn a_constant_declaring_a_quarter_billion_values_from_one_is_refused() {
    let labels = ["--labels", "labels.txt"];
    assert_graph_refused(
        "const_256x1e6_from_one_value.pb",
        &labels,
        &["\"big\"", "256000000 values"],
    );
}

#[test]
fn a_hundred_thousand_deep_chain_is_refused_at_once() {
    let stage = stage("good.pb");
    let chain = corpus::identity_chain(100_000);
    std::fs::write(stage.dir.path().join("chain.pb"), chain).unwrap();
    let before = snapshot(stage.dir.path());
    let run = label(stage.dir.path(), "chain.pb", &["--labels", "labels.txt"]);
    assert_refused(&run, 2, &["chain.pb", "100001 nodes"], REFUSED_MIB);
    assert_eq!(snapshot(stage.dir.path()), before);
    assert_good_run_works(stage.dir.path());
    assert!(run.elapsed < Duration::from_secs(5), "{run:#?}");
}

#[test]
fn a_chain_just_within_the_depth_limit_loads_in_bounded_time_and_memory() {
    let stage = stage("good.pb");
    let depth = flowers::backbone::limits::MAX_DEPTH - 2;
    let chain = corpus::identity_chain(depth);
    std::fs::write(stage.dir.path().join("chain.pb"), chain).unwrap();
    let run = label(stage.dir.path(), "chain.pb", &["--labels", "labels.txt"]);
    assert_no_panic(&run);
    // The chain passes the image through unchanged, which tract builds and optimises
    // before flowers sees it is no classifier.
    assert_refused(&run, 2, &["chain.pb", "not a pooled feature vector"], 400);
    assert!(run.elapsed < Duration::from_secs(20), "{run:#?}");
}

#[test]
fn a_constant_as_the_output_layer_of_a_legacy_graph_is_refused() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tf");
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(sample_image("daisy"), dir.path().join("daisy.jpg")).unwrap();
    let graph = fixtures.join("retrained_graph.pb");
    let labels = fixtures.join("retrained_labels.txt");
    let run = label(
        dir.path(),
        graph.to_str().unwrap(),
        &[
            "--labels",
            labels.to_str().unwrap(),
            "--output_layer",
            "final_training_ops/weights/final_weights",
            "--input_height",
            "128",
            "--input_width",
            "128",
        ],
    );
    assert_refused(
        &run,
        2,
        &["retrained_graph.pb", "does not depend on the image"],
        REFUSED_MIB,
    );
    assert_good_run_works(dir.path());
}

#[test]
fn devices_and_fifos_are_not_read_as_graphs() {
    let stage = stage("good.onnx");
    let fifo = stage.dir.path().join("graph.fifo");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    std::fs::create_dir_all(stage.dir.path().join("photos/daisy")).unwrap();
    std::fs::copy(
        sample_image("daisy"),
        stage.dir.path().join("photos/daisy/1.jpg"),
    )
    .unwrap();
    for (graph, what) in [
        ("/dev/zero", "character device"),
        ("graph.fifo", "FIFO"),
        (".", "directory"),
    ] {
        let run = label(stage.dir.path(), graph, &[]);
        assert_refused(&run, 2, &[graph, what], REFUSED_MIB);
        let run = run_bounded(
            &[
                "extract",
                "--model",
                graph,
                "--image-dir",
                "photos",
                "--bottleneck-dir",
                "cache",
            ],
            stage.dir.path(),
            &[],
            DEADLINE,
        );
        assert_refused(&run, 2, &[graph, what], REFUSED_MIB);
    }
    assert_good_run_works(stage.dir.path());
}

#[test]
fn a_labels_mismatch_quotes_at_most_80_characters_of_a_line() {
    let stage = stage("good.onnx");
    let long = "x".repeat(10 << 20);
    std::fs::write(
        stage.dir.path().join("long.txt"),
        format!("{long}\nroses\n"),
    )
    .unwrap();
    let run = label(stage.dir.path(), "good.onnx", &["--labels", "long.txt"]);
    assert_refused(
        &run,
        2,
        &["long.txt", "does not match", "xxx\"..."],
        REFUSED_MIB,
    );
    assert!(run.stderr.len() < 1000, "{}", run.stderr.len());
    assert_good_run_works(stage.dir.path());
}
