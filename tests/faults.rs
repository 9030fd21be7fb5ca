//! Faults: killed runs, damaged caches, concurrent runs and changing datasets never give
//! a wrong or half-written result.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{cache_entries, copy_sample, flowers, sample_dir, stderr, stdout};

fn retrain_args<'a>(images: &'a str, cache: &'a str, graph: &'a str) -> Vec<&'a str> {
    vec![
        "retrain",
        "--image-dir",
        images,
        "--bottleneck-dir",
        cache,
        "--output-graph",
        graph,
        "--output-labels",
        "labels.txt",
        "--how-many-training-steps",
        "200",
        "--threads",
        "1",
    ]
}

fn computed_count(stderr: &str) -> usize {
    let line = stderr
        .lines()
        .find(|l| l.starts_with("Bottlenecks:"))
        .unwrap_or_else(|| panic!("no bottleneck line: {stderr}"));
    let computed = line.split(", ").nth(1).unwrap();
    computed.split(' ').next().unwrap().parse().unwrap()
}

#[test]
fn killed_extraction_resumes_and_gives_the_same_graph() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let sample = sample_dir();
    let images = sample.to_str().unwrap();
    let reference = flowers(&retrain_args(images, "cache_ref", "reference.onnx"), cwd);
    assert!(reference.status.success(), "{}", stderr(&reference));

    let mut child = Command::new(env!("CARGO_BIN_EXE_flowers"))
        .args(retrain_args(images, "cache", "graph.onnx"))
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some entries are written: the point is a run killed halfway.
    let started = Instant::now();
    while cache_entries(&cwd.join("cache")).len() < 5 && started.elapsed().as_secs() < 120 {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let done_before = cache_entries(&cwd.join("cache")).len();
    assert!(
        done_before > 0,
        "the run was killed before it wrote any entry"
    );
    assert!(done_before < 70, "the run finished before it was killed");
    assert!(!cwd.join("graph.onnx").exists());

    let rerun = flowers(&retrain_args(images, "cache", "graph.onnx"), cwd);
    assert!(rerun.status.success(), "{}", stderr(&rerun));
    assert_eq!(computed_count(&stderr(&rerun)), 70 - done_before);
    assert_eq!(
        fs::read(cwd.join("graph.onnx")).unwrap(),
        fs::read(cwd.join("reference.onnx")).unwrap()
    );
}

#[test]
fn damaged_cache_entries_are_recomputed() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let images = cwd.join("images");
    copy_sample(&images, &["daisy", "roses"], 3);
    let args = retrain_args("images", "cache", "graph.onnx");
    let first = flowers(&args, cwd);
    assert!(first.status.success(), "{}", stderr(&first));
    let reference = fs::read(cwd.join("graph.onnx")).unwrap();
    let mut entries = cache_entries(&cwd.join("cache"));
    entries.sort();
    assert_eq!(entries.len(), 6);
    // Truncate one, zero-fill one, and drop another backbone's entry in under a third's name.
    let bytes = fs::read(&entries[0]).unwrap();
    fs::write(&entries[0], &bytes[..bytes.len() / 2]).unwrap();
    fs::write(&entries[1], vec![0u8; bytes.len()]).unwrap();
    let mut foreign = fs::read(&entries[3]).unwrap();
    foreign[8] ^= 0xFF; // another backbone identity in the header
    fs::write(&entries[2], &foreign).unwrap();

    let second = flowers(&args, cwd);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(computed_count(&stderr(&second)), 3);
    assert_eq!(fs::read(cwd.join("graph.onnx")).unwrap(), reference);
}

#[test]
fn two_runs_can_share_a_cache_at_once() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let sample = sample_dir();
    let images = sample.to_str().unwrap();
    let spawn = |graph: &str| {
        let labels = format!("{graph}.labels.txt");
        let mut args = retrain_args(images, "shared", graph);
        args[8] = &labels;
        Command::new(env!("CARGO_BIN_EXE_flowers"))
            .args(args)
            .current_dir(cwd)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let a = spawn("a.onnx");
    let b = spawn("b.onnx");
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(b.status.success(), "{}", stderr(&b));
    assert_eq!(stdout(&a), stdout(&b));
    assert_eq!(
        fs::read(cwd.join("a.onnx")).unwrap(),
        fs::read(cwd.join("b.onnx")).unwrap()
    );
    assert_eq!(cache_entries(&cwd.join("shared")).len(), 70);
}

#[test]
fn killed_while_writing_outputs_never_leaves_a_half_written_graph() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let images = cwd.join("images");
    copy_sample(&images, &["daisy", "roses"], 3);
    let mut args = retrain_args("images", "cache", "graph.onnx");
    args.extend(["--seed", "1"]);
    assert!(flowers(&args, cwd).status.success());
    let old = fs::read(cwd.join("graph.onnx")).unwrap();
    let last = args.len() - 1;
    args[last] = "2";
    assert!(flowers(&args, cwd).status.success());
    let new = fs::read(cwd.join("graph.onnx")).unwrap();
    assert_ne!(old, new);
    // Kill seed-2 runs over a seed-1 graph the moment their temporary output file shows
    // up, that is while the graph is being written: the graph is always whole.
    let mut landed_while_writing = 0;
    for _ in 0..20 {
        fs::write(cwd.join("graph.onnx"), &old).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_flowers"))
            .args(&args)
            .current_dir(cwd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        while child.try_wait().unwrap().is_none() {
            if temporary_outputs(cwd) > 0 {
                child.kill().ok();
                landed_while_writing += 1;
                break;
            }
        }
        child.wait().unwrap();
        let now = fs::read(cwd.join("graph.onnx")).unwrap();
        assert!(now == old || now == new, "half-written graph");
        remove_temporary_outputs(cwd);
        if landed_while_writing >= 3 {
            break;
        }
    }
    assert!(
        landed_while_writing >= 3,
        "only {landed_while_writing} of 20 kills landed while outputs were being written"
    );
}

/// The temporary files of outputs being written (see `util::atomic`), with bytes in them:
/// the early writability check leaves an empty one for an instant.
fn temporary_outputs(dir: &Path) -> usize {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".flowers-tmp-"))
        .filter(|e| e.metadata().is_ok_and(|m| m.len() > 0))
        .count()
}

fn remove_temporary_outputs(dir: &Path) {
    for entry in fs::read_dir(dir).unwrap().flatten() {
        if entry
            .file_name()
            .to_string_lossy()
            .starts_with(".flowers-tmp-")
        {
            fs::remove_file(entry.path()).ok();
        }
    }
}

#[test]
fn dataset_changes_between_runs_are_seen() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    let images = cwd.join("images");
    copy_sample(&images, &["daisy", "roses", "tulips"], 4);
    let json_run = || {
        let mut args = retrain_args("images", "cache", "graph.onnx");
        args.push("--json");
        let output = flowers(&args, cwd);
        assert!(output.status.success(), "{}", stderr(&output));
        serde_json::from_str::<serde_json::Value>(stdout(&output).trim()).unwrap()
    };
    let first = json_run();
    assert_eq!(first["images"], 12);
    // Add one image, remove one, edit one, rename a class.
    copy_sample(&cwd.join("more"), &["dandelion"], 1);
    let added = fs::read_dir(cwd.join("more/dandelion"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::copy(&added, images.join("daisy/added.jpg")).unwrap();
    let mut roses: Vec<PathBuf> = fs::read_dir(images.join("roses"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    roses.sort();
    fs::remove_file(&roses[0]).unwrap();
    fs::copy(&added, &roses[1]).unwrap();
    fs::rename(images.join("tulips"), images.join("Tulipa")).unwrap();
    let second = json_run();
    assert_eq!(second["images"], 12);
    assert_eq!(
        second["labels"],
        serde_json::json!(["Tulipa", "daisy", "roses"])
    );
    // The added file and the edited one are new content; the other ten are cached.
    assert_eq!(second["bottlenecks_computed"], 2);
    assert_eq!(second["bottlenecks_cached"], 10);
    assert_eq!(
        fs::read_to_string(cwd.join("labels.txt")).unwrap(),
        "Tulipa\ndaisy\nroses\n"
    );
}
