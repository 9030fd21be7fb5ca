//! Sharded extraction as a cluster runs it: N processes at once on one cache, then a
//! final retrain from the cache alone.

mod common;

use std::fs;
use std::process::{Command, Stdio};

use common::{cache_entries, copy_sample, flowers, sample_dir, stderr, stdout};

fn retrain_args<'a>(cache: &'a str, graph: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "retrain",
        "--image-dir",
        "images",
        "--bottleneck-dir",
        cache,
        "--output-graph",
        graph,
        "--output-labels",
        "labels.txt",
        "--how-many-training-steps",
        "100",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn shards_on_one_cache_compute_each_image_once_and_train_the_same_graph() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    fs::create_dir_all(cwd.join("images")).unwrap();
    for entry in fs::read_dir(sample_dir()).unwrap().flatten() {
        if entry.path().is_dir() {
            let class = entry.file_name().to_string_lossy().into_owned();
            copy_sample(&cwd.join("images"), &[&class], 14);
        }
    }
    // The whole run on one machine, for reference.
    let single = flowers(&retrain_args("single_cache", "single.onnx", &[]), cwd);
    assert!(single.status.success(), "{}", stderr(&single));

    // Three shards at once on one cache, one thread each.
    let shards: Vec<_> = (1..=3)
        .map(|k| {
            Command::new(env!("CARGO_BIN_EXE_flowers"))
                .args([
                    "extract",
                    "--image-dir",
                    "images",
                    "--bottleneck-dir",
                    "shared",
                ])
                .args(["--shard", &format!("{k}/3"), "--threads", "1", "--json"])
                .current_dir(cwd)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut computed = 0;
    for shard in shards {
        let output = shard.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        let summary: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
        assert_eq!(summary["images"], 70);
        let mine = summary["computed"].as_u64().unwrap();
        assert_eq!(mine + summary["other_shards"].as_u64().unwrap(), 70);
        assert!(
            mine > 5,
            "a shard of a third has more than 5 images: {summary}"
        );
        computed += mine;
    }
    assert_eq!(
        computed, 70,
        "every image computed exactly once across shards"
    );
    assert_eq!(cache_entries(&cwd.join("shared")).len(), 70);

    // A shard rerun computes nothing.
    let again = flowers(
        &[
            "extract",
            "--image-dir",
            "images",
            "--bottleneck-dir",
            "shared",
            "--shard",
            "2/3",
        ],
        cwd,
    );
    assert!(again.status.success(), "{}", stderr(&again));
    assert!(stdout(&again).contains(" 0 computed"), "{}", stdout(&again));

    // The final step trains from the cache alone and writes the single-machine graph.
    let last = flowers(
        &retrain_args("shared", "sharded.onnx", &["--require-cached"]),
        cwd,
    );
    assert!(last.status.success(), "{}", stderr(&last));
    assert!(
        stderr(&last).contains("70 cached, 0 computed"),
        "{}",
        stderr(&last)
    );
    assert_eq!(
        fs::read(cwd.join("sharded.onnx")).unwrap(),
        fs::read(cwd.join("single.onnx")).unwrap()
    );
}

#[test]
fn require_cached_refuses_to_compute_and_says_how_many_are_missing() {
    let work = tempfile::tempdir().unwrap();
    let cwd = work.path();
    copy_sample(&cwd.join("images"), &["daisy", "roses"], 3);
    let output = flowers(&retrain_args("cache", "g.onnx", &["--require-cached"]), cwd);
    assert_eq!(output.status.code(), Some(2));
    let err = stderr(&output);
    assert!(
        err.contains("error: 6 of 6 images have no bottleneck"),
        "{err}"
    );
    assert!(!cwd.join("g.onnx").exists());
}
