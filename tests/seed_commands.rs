//! The tutorial's own command lines, with `flowers` in place of `python retrain.py` and
//! `python label_image.py`, run as written against a mirror on 127.0.0.1 that serves the
//! genuine archive retrain.py downloads.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::http::{Server, Step};
use common::{copy_sample, stderr, stdout};

const ARCHIVE: &str = "mobilenet_v1_0.25_224_frozen.tgz";

fn archive() -> Vec<u8> {
    fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tf")
            .join(ARCHIVE),
    )
    .unwrap()
}

/// `flowers` with a mirror in `FLOWERS_MODEL_BASE_URL`, as a user behind a proxy runs it.
fn flowers_with_mirror(args: &[&str], cwd: &Path, mirror: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowers"))
        .args(args)
        .current_dir(cwd)
        .env("FLOWERS_MODEL_BASE_URL", mirror)
        .output()
        .unwrap()
}

const RETRAIN: [&str; 9] = [
    "retrain",
    "--bottleneck_dir=bottlenecks",
    "--how_many_training_steps=500",
    "--model_dir=models/",
    "--summaries_dir=training_summaries/mobilenet_0.25_224",
    "--output_graph=retrained_graph.pb",
    "--output_labels=retrained_labels.txt",
    "--architecture=mobilenet_0.25_224",
    "--image_dir=flower_photos",
];

fn first_daisy(cwd: &Path) -> PathBuf {
    let mut daisies: Vec<PathBuf> = fs::read_dir(cwd.join("flower_photos/daisy"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    daisies.sort();
    daisies.remove(0)
}

#[test]
fn retrain_and_label_image_command_lines_run_as_written() {
    let server = Server::start(archive(), vec![], Step::Serve);
    let mirror = server.url("mirror/");
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    copy_sample(
        &cwd.join("flower_photos"),
        &["daisy", "dandelion", "roses", "sunflowers", "tulips"],
        8,
    );

    let first = flowers_with_mirror(&RETRAIN, cwd, &mirror);
    let err = stderr(&first);
    assert!(first.status.success(), "{err}");
    assert!(
        err.contains(">> Downloading mobilenet_v1_0.25_224_frozen.tgz"),
        "{err}"
    );
    assert!(err.contains("Successfully downloaded"), "{err}");
    assert_eq!(server.requests().len(), 1);
    assert!(server.requests()[0]
        .path
        .ends_with(&format!("mirror/{ARCHIVE}")));
    assert!(cwd
        .join("models/mobilenet_v1_0.25_224/frozen_graph.pb")
        .is_file());
    assert!(stdout(&first).starts_with("Final test accuracy = "));
    let graph = fs::read(cwd.join("retrained_graph.pb")).unwrap();
    assert_eq!(graph[0], 0x0a, "a TensorFlow GraphDef, not ONNX");

    let daisy = first_daisy(cwd);
    let image = format!("--image={}", daisy.display());
    let label = [
        "label",
        "--graph=retrained_graph.pb",
        "--labels=retrained_labels.txt",
        "--input_layer=input",
        "--output_layer=final_result",
        "--input_height=224",
        "--input_width=224",
        "--input_mean=128",
        "--input_std=128",
        &image,
    ];
    let labelled = flowers_with_mirror(&label, cwd, &mirror);
    assert!(labelled.status.success(), "{}", stderr(&labelled));
    let lines: Vec<String> = stdout(&labelled).lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    let (best, score) = lines[0].rsplit_once(' ').unwrap();
    assert!(
        ["daisy", "dandelion", "roses", "sunflowers", "tulips"].contains(&best),
        "{lines:?}"
    );
    assert!(score.parse::<f32>().unwrap() > 0.0);
    // The graph's own metadata says mean and std 127.5: the seed's 128 gets one warning.
    let warnings = stderr(&labelled);
    assert_eq!(
        warnings
            .lines()
            .filter(|l| l.starts_with("warning:"))
            .count(),
        1,
        "{warnings}"
    );
    assert!(warnings.contains("--input_mean"), "{warnings}");

    // Again: no request, retrain.py's message, the same graph.
    let second = flowers_with_mirror(&RETRAIN, cwd, &mirror);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(
        stderr(&second)
            .contains("Not extracting or downloading files, model already present in disk"),
        "{}",
        stderr(&second)
    );
    assert_eq!(server.requests().len(), 1);
    assert_eq!(fs::read(cwd.join("retrained_graph.pb")).unwrap(), graph);
}

#[test]
fn unknown_architectures_and_unreachable_mirrors_are_one_line_errors() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    copy_sample(&cwd.join("flower_photos"), &["daisy", "roses"], 2);
    let unknown = flowers_with_mirror(
        &[
            "retrain",
            "--image_dir=flower_photos",
            "--architecture=mobilnet_0.25_224",
        ],
        cwd,
        "http://127.0.0.1:9/",
    );
    assert_eq!(unknown.status.code(), Some(2));
    let err = stderr(&unknown);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("closest: mobilenet_0.25_224"), "{err}");

    // A port nothing listens on: refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let offline = flowers_with_mirror(
        &[
            "retrain",
            "--image_dir=flower_photos",
            "--model_dir=models",
            "--architecture=mobilenet_0.25_224",
        ],
        cwd,
        &format!("http://127.0.0.1:{port}/"),
    );
    assert_eq!(offline.status.code(), Some(2));
    let err = stderr(&offline);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    assert!(
        errors[0].contains(&format!("http://127.0.0.1:{port}/{ARCHIVE}")),
        "{err}"
    );
    assert!(errors[0].contains("put it at"), "{err}");
    assert!(!cwd.join(format!("models/{ARCHIVE}")).exists());
}

#[test]
fn architectures_lists_every_entry_and_what_is_on_disk() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    fs::create_dir_all(cwd.join("models/mobilenet_v1_0.25_224")).unwrap();
    fs::write(
        cwd.join("models/mobilenet_v1_0.25_224/frozen_graph.pb"),
        b"x",
    )
    .unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_flowers"))
        .args(["architectures", "--json", "--model_dir=models"])
        .current_dir(cwd)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let rows: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 43);
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap().clone();
    assert_eq!(row("mobilenet_v1_1.0_224")["on_disk"], true);
    assert_eq!(row("mobilenet_0.25_224")["on_disk"], true);
    assert_eq!(row("mobilenet_0.25_224_quantized")["on_disk"], false);
    assert_eq!(row("inception_v3")["format"], "TensorFlow");
    assert_eq!(row("resnet50-v2-7")["bytes"], 102_442_452);
}
