//! Hostile and unlucky outputs (issue 22, items 1, 7, 8 and 9): targets that are links,
//! FIFOs or devices; flags that collide or make no sense; runs stopped by a signal; cache
//! entries that are no regular files. Each case states its exit code, that no panic text
//! appears, a bound on peak memory, that nothing outside its folders changed, and that a
//! good run afterwards works.

mod common;

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::hostile::{assert_no_panic, assert_refused, run_bounded, snapshot, Run};
use common::{cache_entries, copy_sample};

const DEADLINE: Duration = Duration::from_secs(300);
/// A small retrain with the embedded backbone, one extraction thread.
const RUN_MIB: u64 = 1024;
/// A run refused before the backbone is loaded.
const EARLY_MIB: u64 = 64;
/// A run refused once the backbone is loaded, before extraction.
const LOADED_MIB: u64 = 400;

/// A work folder with six sample photos in `images/`.
fn workdir() -> tempfile::TempDir {
    let work = tempfile::tempdir().unwrap();
    copy_sample(&work.path().join("images"), &["daisy", "roses"], 3);
    work
}

fn retrain_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "retrain",
        "--image-dir",
        "images",
        "--bottleneck-dir",
        "cache",
        "--how-many-training-steps",
        "20",
        "--threads",
        "1",
    ];
    args.extend_from_slice(extra);
    args
}

fn retrain(cwd: &Path, extra: &[&str]) -> Run {
    run_bounded(&retrain_args(extra), cwd, &[], DEADLINE)
}

fn assert_ran(run: &Run) {
    assert!(!run.timed_out, "ran past its deadline: {run:#?}");
    assert_eq!(run.code, Some(0), "{run:#?}");
    assert_no_panic(run);
    common::hostile::assert_memory_under(run, RUN_MIB);
}

/// The good run every case ends with: the same folder, ordinary outputs.
fn good_run_works(cwd: &Path) {
    let run = retrain(
        cwd,
        &["--output-graph", "good.onnx", "--output-labels", "good.txt"],
    );
    assert_ran(&run);
    assert!(fs::metadata(cwd.join("good.onnx")).unwrap().len() > 1_000_000);
    assert_eq!(
        fs::read_to_string(cwd.join("good.txt")).unwrap(),
        "daisy\nroses\n"
    );
}

fn temporaries_below(dir: &Path) -> Vec<PathBuf> {
    snapshot(dir)
        .into_keys()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".flowers-tmp-"))
        })
        .collect()
}

fn mkfifo(path: &Path) {
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
}

fn is_fifo(path: &Path) -> bool {
    fs::symlink_metadata(path).unwrap().file_type().is_fifo()
}

#[test]
fn a_symlinked_output_stays_a_link_and_its_target_gets_the_graph() {
    let work = workdir();
    let cwd = work.path();
    let elsewhere = tempfile::tempdir().unwrap();
    let real_graph = elsewhere.path().join("real.onnx");
    let real_labels = elsewhere.path().join("real.txt");
    fs::write(&real_graph, b"old graph").unwrap();
    std::os::unix::fs::symlink(&real_graph, cwd.join("graph.onnx")).unwrap();
    std::os::unix::fs::symlink(&real_labels, cwd.join("labels.txt")).unwrap();
    let run = retrain(
        cwd,
        &[
            "--output-graph",
            "graph.onnx",
            "--output-labels",
            "labels.txt",
        ],
    );
    assert_ran(&run);
    for link in ["graph.onnx", "labels.txt"] {
        let kind = fs::symlink_metadata(cwd.join(link)).unwrap().file_type();
        assert!(kind.is_symlink(), "{link} is no longer a link");
    }
    assert!(fs::metadata(&real_graph).unwrap().len() > 1_000_000);
    assert_eq!(fs::read_to_string(&real_labels).unwrap(), "daisy\nroses\n");
    assert!(temporaries_below(cwd).is_empty() && temporaries_below(elsewhere.path()).is_empty());
    good_run_works(cwd);
}

#[test]
fn a_fifo_output_is_written_through_and_stays_a_fifo() {
    let work = workdir();
    let cwd = work.path();
    assert_ran(&retrain(cwd, &["--output-graph", "reference.onnx"]));
    let fifo = cwd.join("graph.fifo");
    mkfifo(&fifo);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || fs::read(fifo).unwrap())
    };
    let run = retrain(cwd, &["--output-graph", "graph.fifo"]);
    if !reader.is_finished() {
        // A failed run never opened the FIFO: let the reader see its end.
        let _ = fs::OpenOptions::new().write(true).open(&fifo);
    }
    let received = reader.join().unwrap();
    assert_ran(&run);
    assert!(is_fifo(&fifo));
    assert_eq!(received, fs::read(cwd.join("reference.onnx")).unwrap());
    good_run_works(cwd);
}

#[test]
fn dev_null_as_both_outputs_stays_a_character_device() {
    let work = workdir();
    let cwd = work.path();
    let run = retrain(
        cwd,
        &[
            "--output-graph",
            "/dev/null",
            "--output-labels",
            "/dev/null",
        ],
    );
    assert_ran(&run);
    assert!(fs::metadata("/dev/null")
        .unwrap()
        .file_type()
        .is_char_device());
    assert!(fs::read("/dev/null").unwrap().is_empty());
    good_run_works(cwd);
}

/// A case refused before any work: exit 2, one line naming `flag`, nothing in the work
/// folder changed (no cache, no output), then a good run works.
fn refused_before_work(args: &[&str], flag: &str, max_mib: u64) {
    let work = workdir();
    let cwd = work.path();
    fs::write(cwd.join("out.onnx"), b"keep").unwrap();
    fs::create_dir(cwd.join("a_folder")).unwrap();
    let before = snapshot(cwd);
    let run = run_bounded(args, cwd, &[], DEADLINE);
    assert_refused(&run, 2, &[flag], max_mib);
    assert_eq!(snapshot(cwd), before, "{args:?} changed the work folder");
    good_run_works(cwd);
}

#[test]
fn graph_and_labels_naming_one_file_are_refused_before_extraction() {
    let spellings: [&[&str]; 3] = [
        &["--output-graph", "out.onnx", "--output-labels", "out.onnx"],
        &[
            "--output-graph",
            "out.onnx",
            "--output-labels",
            "./a_folder/../out.onnx",
        ],
        &["--output-graph", "new.onnx", "--output-labels", "new.onnx"],
    ];
    for extra in spellings {
        refused_before_work(&retrain_args(extra), "--output-labels", LOADED_MIB);
    }
}

#[test]
fn graph_and_labels_through_a_link_are_refused_before_extraction() {
    let work = workdir();
    let cwd = work.path();
    std::os::unix::fs::symlink("graph.onnx", cwd.join("labels-link")).unwrap();
    let before = snapshot(cwd);
    let run = retrain(
        cwd,
        &[
            "--output-graph",
            "graph.onnx",
            "--output-labels",
            "labels-link",
        ],
    );
    assert_refused(&run, 2, &["--output-labels", "--output-graph"], LOADED_MIB);
    assert_eq!(snapshot(cwd), before);
    good_run_works(cwd);
}

#[test]
fn an_output_that_is_a_folder_is_refused_before_extraction() {
    refused_before_work(
        &retrain_args(&["--output-graph", "a_folder"]),
        "--output-graph: cannot write a_folder: it is a directory",
        EARLY_MIB,
    );
    refused_before_work(
        &retrain_args(&["--output-labels", "a_folder/"]),
        "--output-labels: cannot write a_folder/: it is a directory",
        EARLY_MIB,
    );
}

#[test]
fn a_final_tensor_name_the_backbone_has_or_no_name_is_refused() {
    refused_before_work(
        &retrain_args(&["--final-tensor-name", "input"]),
        "--final-tensor-name \"input\" is already a tensor",
        LOADED_MIB,
    );
    for bad in ["", "two words", "x:0"] {
        refused_before_work(
            &retrain_args(&["--final-tensor-name", bad]),
            "--final-tensor-name",
            EARLY_MIB,
        );
    }
}

#[test]
fn percentages_that_are_no_share_of_the_images_are_refused() {
    for (testing, validation) in [
        ("NaN", "10"),
        ("10", "nan"),
        ("-5", "10"),
        ("101", "0"),
        ("60", "50"),
    ] {
        let testing = format!("--testing-percentage={testing}");
        let validation = format!("--validation-percentage={validation}");
        refused_before_work(
            &retrain_args(&[&testing, &validation]),
            "--testing-percentage",
            EARLY_MIB,
        );
    }
}

#[test]
fn pixel_divisors_of_zero_or_nan_are_refused_by_label_and_retrain() {
    for std in ["0", "nan", "inf"] {
        refused_before_work(
            &["label", "--input-std", std, "x.jpg"],
            "--input-std",
            EARLY_MIB,
        );
        refused_before_work(
            &retrain_args(&["--input-std", std]),
            "--input-std",
            EARLY_MIB,
        );
    }
    refused_before_work(
        &["label", "--input-mean", "nan", "x.jpg"],
        "--input-mean",
        EARLY_MIB,
    );
}

#[test]
fn thread_counts_past_four_per_core_are_refused() {
    refused_before_work(
        &retrain_args(&["--threads", "100000"]),
        "--threads",
        EARLY_MIB,
    );
    refused_before_work(
        &["label", "--threads", "100000", "x.jpg"],
        "--threads",
        EARLY_MIB,
    );
    refused_before_work(
        &["extract", "--image-dir", "images", "--threads", "100000"],
        "--threads",
        EARLY_MIB,
    );
}

fn spawn(args: &[&str], cwd: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_flowers"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn send(child: &Child, signal: libc::c_int) {
    // SAFETY: signals our own child, not yet waited for; no memory is involved.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
}

/// Polls until `ready` holds or `limit` passes; true if it held.
fn wait_for(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ready() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

/// Whether a graph is being written in `dir`: a temporary with bytes in it (the early
/// writability check leaves an empty one for an instant).
fn graph_being_written(dir: &Path) -> bool {
    fs::read_dir(dir).into_iter().flatten().flatten().any(|e| {
        e.file_name().to_string_lossy().starts_with(".flowers-tmp-")
            && e.metadata().is_ok_and(|m| m.len() > 0)
    })
}

#[test]
fn sigterm_during_the_graph_write_removes_the_temporary_and_exits_143() {
    let work = workdir();
    let cwd = work.path();
    assert_ran(&retrain(
        cwd,
        &["--output-graph", "new.onnx", "--seed", "2"],
    ));
    let new = fs::read(cwd.join("new.onnx")).unwrap();
    assert_ran(&retrain(
        cwd,
        &["--output-graph", "graph.onnx", "--seed", "1"],
    ));
    let old = fs::read(cwd.join("graph.onnx")).unwrap();
    let args = retrain_args(&["--output-graph", "graph.onnx", "--seed", "2"]);
    let mut landed = 0;
    for _ in 0..30 {
        let mut child = spawn(&args, cwd);
        let writing = wait_for(DEADLINE, || {
            graph_being_written(cwd) || child.try_wait().unwrap().is_some()
        });
        assert!(writing);
        if child.try_wait().unwrap().is_some() {
            continue; // finished before we saw the write
        }
        send(&child, libc::SIGTERM);
        let output = child.wait_with_output().unwrap();
        if output.status.code() == Some(0) {
            continue; // the write was done before the signal arrived
        }
        landed += 1;
        assert_eq!(output.status.code(), Some(143), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("stopped by SIGTERM"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(temporaries_below(cwd), Vec::<PathBuf>::new());
        let now = fs::read(cwd.join("graph.onnx")).unwrap();
        assert!(now == old || now == new, "half-written graph");
        if landed >= 2 {
            break;
        }
    }
    assert!(
        landed >= 2,
        "only {landed} SIGTERMs landed during the graph write"
    );
    good_run_works(cwd);
}

#[test]
fn sigterm_and_sigint_during_extraction_leave_no_temporary_and_the_rerun_resumes() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    copy_sample(&cwd.join("images"), &["daisy", "roses", "tulips"], 8);
    for (signal, code) in [
        (libc::SIGTERM, 143),
        (libc::SIGINT, 130),
        (libc::SIGHUP, 129),
    ] {
        let cache = cwd.join("cache");
        let _ = fs::remove_dir_all(&cache);
        let outside = snapshot(&cwd.join("images"));
        let mut child = spawn(&retrain_args(&[]), cwd);
        assert!(wait_for(DEADLINE, || cache_entries(&cache).len() >= 3));
        send(&child, signal);
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "signal {signal}");
        let done = cache_entries(&cache).len();
        assert!(done < 24, "the run finished before the signal");
        assert_eq!(temporaries_below(&cache), Vec::<PathBuf>::new());
        assert_eq!(temporaries_below(cwd), Vec::<PathBuf>::new());
        assert_eq!(snapshot(&cwd.join("images")), outside);
        assert!(!cwd.join("retrained_graph.onnx").exists());
        // Every entry written is whole: the rerun computes only the rest.
        let rerun = retrain(cwd, &["--json"]);
        assert_ran(&rerun);
        let summary: serde_json::Value = serde_json::from_str(rerun.stdout.trim()).unwrap();
        assert_eq!(summary["bottlenecks_cached"], done, "signal {signal}");
        assert_eq!(summary["bottlenecks_computed"], 24 - done);
        fs::remove_file(cwd.join("retrained_graph.onnx")).unwrap();
    }
}

fn set_age(path: &Path, age: Duration) {
    fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_modified(SystemTime::now() - age)
        .unwrap();
}

#[test]
fn sigkill_leaves_a_temporary_that_the_next_run_removes_once_stale() {
    let work = workdir();
    let cwd = work.path();
    assert_ran(&retrain(cwd, &["--output-graph", "graph.onnx"]));
    let args = retrain_args(&["--output-graph", "graph.onnx", "--seed", "3"]);
    let mut left = Vec::new();
    for _ in 0..30 {
        let mut child = spawn(&args, cwd);
        wait_for(DEADLINE, || {
            graph_being_written(cwd) || child.try_wait().unwrap().is_some()
        });
        child.kill().unwrap(); // SIGKILL: nothing can clean up
        child.wait().unwrap();
        left = temporaries_below(cwd);
        if !left.is_empty() {
            break;
        }
    }
    assert!(!left.is_empty(), "no SIGKILL landed during the graph write");
    // A fresh temporary may be another run's write in progress: it stays.
    let fresh = cwd.join(".flowers-tmp-another-run");
    fs::write(&fresh, b"in progress").unwrap();
    // Likewise in the cache: a stale temporary in a folder the next run writes to.
    let entries = cache_entries(&cwd.join("cache"));
    fs::remove_file(&entries[0]).unwrap();
    let cache_litter = entries[0].with_file_name(".flowers-tmp-killed");
    fs::write(&cache_litter, b"half an entry").unwrap();
    set_age(&cache_litter, Duration::from_secs(120));
    // Younger than a minute: kept.
    let run = retrain(cwd, &["--output-graph", "graph.onnx"]);
    assert_ran(&run);
    assert!(left.iter().all(|p| p.exists()));
    for path in &left {
        set_age(path, Duration::from_secs(120));
    }
    let run = retrain(cwd, &["--output-graph", "graph.onnx"]);
    assert_ran(&run);
    assert!(left.iter().all(|p| !p.exists()), "stale temporaries stayed");
    assert!(!cache_litter.exists(), "the stale cache temporary stayed");
    assert!(fresh.exists(), "a fresh temporary was removed");
}

#[test]
fn cache_entries_that_are_a_fifo_a_dev_zero_link_or_a_folder_are_recomputed() {
    let work = workdir();
    let cwd = work.path();
    assert_ran(&retrain(cwd, &["--output-graph", "reference.onnx"]));
    let reference = fs::read(cwd.join("reference.onnx")).unwrap();
    let mut entries = cache_entries(&cwd.join("cache"));
    entries.sort();
    assert_eq!(entries.len(), 6);
    for entry in &entries[..3] {
        fs::remove_file(entry).unwrap();
    }
    mkfifo(&entries[0]);
    std::os::unix::fs::symlink("/dev/zero", &entries[1]).unwrap();
    fs::create_dir(&entries[2]).unwrap();
    let images = snapshot(&cwd.join("images"));
    let run = retrain(cwd, &["--output-graph", "graph.onnx", "--json"]);
    assert_ran(&run);
    let summary: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(summary["bottlenecks_computed"], 3);
    assert_eq!(summary["bottlenecks_cached"], 3);
    // The right bottlenecks: the very graph of the clean run.
    assert_eq!(fs::read(cwd.join("graph.onnx")).unwrap(), reference);
    for entry in &entries[..3] {
        assert!(fs::symlink_metadata(entry).unwrap().is_file(), "{entry:?}");
    }
    assert!(fs::metadata("/dev/zero")
        .unwrap()
        .file_type()
        .is_char_device());
    assert_eq!(snapshot(&cwd.join("images")), images);
    assert!(temporaries_below(&cwd.join("cache")).is_empty());
    good_run_works(cwd);
}

#[test]
fn intermediate_graphs_default_to_the_users_cache_and_refuse_a_planted_link() {
    let work = workdir();
    let cwd = work.path();
    let xdg = cwd.join("xdg");
    let run = run_bounded(
        &retrain_args(&["--intermediate_store_frequency=10"]),
        cwd,
        &[("XDG_CACHE_HOME", xdg.to_str().unwrap())],
        DEADLINE,
    );
    assert_ran(&run);
    assert!(xdg
        .join("flowers/intermediate_graph/intermediate_10.onnx")
        .is_file());
    // A folder every user can write to, where someone planted the name as a link.
    use std::os::unix::fs::PermissionsExt;
    let shared = cwd.join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o1777)).unwrap();
    let theirs = cwd.join("theirs");
    fs::create_dir(&theirs).unwrap();
    std::os::unix::fs::symlink(&theirs, shared.join("intermediate_graph")).unwrap();
    let before = snapshot(cwd);
    let run = retrain(
        cwd,
        &[
            "--intermediate_store_frequency=10",
            "--intermediate-output-graphs-dir",
            "shared/intermediate_graph",
        ],
    );
    assert_refused(
        &run,
        2,
        &["--intermediate-output-graphs-dir", "is a link"],
        EARLY_MIB,
    );
    assert_eq!(snapshot(cwd), before);
    assert_eq!(fs::read_dir(&theirs).unwrap().count(), 0);
    good_run_works(cwd);
}
