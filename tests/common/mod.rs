//! Helpers shared by the integration tests: the committed sample dataset and a binary runner.

#![allow(dead_code)]

pub mod hostile;
pub mod http;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// 70 real flower photos, 14 per class (CC-BY, see its LICENSE.txt).
pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/flower_sample")
}

/// The first photo of a class in the sample.
pub fn sample_image(class: &str) -> PathBuf {
    let mut files: Vec<PathBuf> = std::fs::read_dir(sample_dir().join(class))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.remove(0)
}

/// Copies `count` photos of each of `classes` into `dir/<class>/`.
pub fn copy_sample(dir: &Path, classes: &[&str], count: usize) {
    for class in classes {
        let mut files: Vec<PathBuf> = std::fs::read_dir(sample_dir().join(class))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for file in files.iter().take(count) {
            std::fs::copy(file, dir.join(class).join(file.file_name().unwrap())).unwrap();
        }
    }
}

/// Runs the `flowers` binary.
pub fn flowers(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowers"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("flowers runs")
}

/// `flowers retrain` on `image_dir` with a cache in `cwd/cache`, `steps` SGD steps and
/// any `extra` arguments.
pub fn retrain(cwd: &Path, image_dir: &str, steps: u32, extra: &[&str]) -> Output {
    let steps = steps.to_string();
    let mut args = vec![
        "retrain",
        "--image-dir",
        image_dir,
        "--bottleneck-dir",
        "cache",
        "--how-many-training-steps",
        &steps,
    ];
    args.extend_from_slice(extra);
    flowers(&args, cwd)
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Every bottleneck cache entry (`.bn` file) below `dir`.
pub fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    let mut entries = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "bn") {
                entries.push(path);
            }
        }
    }
    entries
}
