//! docs/cluster.md's recipes against the real binary. Kubernetes cannot run here, so its
//! manifest is parsed and its command run with the variable an Indexed Job sets; the Slurm
//! script's command runs with the variables a 3-task array sets. (The real Slurm and GNU
//! parallel run the recipes in tests/cluster/slurm.sh.)

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::{cache_entries, copy_sample, stderr, stdout};
use serde_norway::Value;

/// Environment variables through which a scheduler picks the shard: cleared in every run
/// so that a test run inside a Slurm job or a pod sees only the ones it sets.
const SCHEDULER_VARIABLES: [&str; 7] = [
    "JOB_COMPLETION_INDEX",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_MAX",
    "SLURM_ARRAY_TASK_STEP",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_CPUS_PER_TASK",
];

/// The fenced blocks of language `language` in the `## ` section whose title starts with
/// `section`.
fn doc_blocks(section: &str, language: &str) -> Vec<String> {
    let docs =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cluster.md")).unwrap();
    let body = docs
        .split("\n## ")
        .find(|part| part.starts_with(section))
        .unwrap_or_else(|| panic!("docs/cluster.md has no section '## {section}'"));
    let fence = format!("```{language}\n");
    body.split(&fence)
        .skip(1)
        .map(|rest| rest.split("```").next().unwrap().to_string())
        .collect()
}

/// Six sample photos, two classes, in `dir/photos`: enough for 3 and 8 shards, cheap to extract.
fn photos(dir: &Path) -> String {
    copy_sample(&dir.join("photos"), &["daisy", "roses"], 3);
    dir.join("photos").display().to_string()
}

/// A command with none of the scheduler variables but those in `env`.
fn scheduled(mut command: Command, env: &[(&str, String)], cwd: &Path) -> Output {
    for name in SCHEDULER_VARIABLES {
        command.env_remove(name);
    }
    command.envs(env.iter().map(|(k, v)| (k, v)));
    command.current_dir(cwd).output().unwrap()
}

/// Runs shell text from the docs, as a Slurm task does, with `flowers` on PATH.
fn run_shell(text: &str, env: &[(&str, String)], cwd: &Path) -> Output {
    let binary_dir = Path::new(env!("CARGO_BIN_EXE_flowers")).parent().unwrap();
    let path = format!(
        "{}:{}",
        binary_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new("sh");
    command.args(["-c", text]).env("PATH", path);
    scheduled(command, env, cwd)
}

/// The shard an `extract` summary line names: "Shard 2/3: ..." gives "2/3".
fn shard_of(output: &Output) -> String {
    let out = stdout(output);
    assert!(output.status.success(), "{out}{}", stderr(output));
    out.strip_prefix("Shard ")
        .and_then(|rest| rest.split(':').next())
        .unwrap_or_else(|| panic!("no 'Shard K/N:' summary: {out}"))
        .to_string()
}

#[test]
fn the_kubernetes_manifest_is_an_indexed_job_whose_pods_extract_their_own_shard() {
    let blocks = doc_blocks("Kubernetes", "yaml");
    assert_eq!(blocks.len(), 1, "one manifest in the Kubernetes section");
    let job: Value = serde_norway::from_str(&blocks[0]).unwrap();
    assert_eq!(job["apiVersion"].as_str(), Some("batch/v1"));
    assert_eq!(job["kind"].as_str(), Some("Job"));
    let spec = &job["spec"];
    // Only an Indexed Job gives each pod its JOB_COMPLETION_INDEX.
    assert_eq!(spec["completionMode"].as_str(), Some("Indexed"));
    let completions = spec["completions"].as_u64().expect("spec.completions");
    let template = &spec["template"]["spec"];
    let restart = template["restartPolicy"].as_str();
    assert!(
        matches!(restart, Some("OnFailure" | "Never")),
        "a Job's pods restart OnFailure or Never: {restart:?}"
    );
    let container = &template["containers"][0];
    let mount = container["volumeMounts"][0]["mountPath"].as_str().unwrap();
    let command: Vec<&str> = container["command"]
        .as_sequence()
        .expect("containers[0].command")
        .iter()
        .map(|word| word.as_str().unwrap())
        .collect();
    assert_eq!(command[..2], ["flowers", "extract"]);
    let shards = command.iter().position(|w| *w == "--shards").unwrap();
    assert_eq!(
        command[shards + 1],
        completions.to_string(),
        "--shards equals the Job's completions"
    );

    // The pods' command (exec form: no shell), the volume swapped for a folder: index i
    // takes shard i+1 of N, and together they fill the cache.
    let work = tempfile::tempdir().unwrap();
    photos(work.path());
    let volume = work.path().display().to_string();
    let args: Vec<String> = command[1..]
        .iter()
        .map(|word| word.replace(mount, &volume))
        .collect();
    let pod = |env: &[(&str, String)]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_flowers"));
        command.args(&args);
        scheduled(command, env, work.path())
    };
    for index in 0..completions {
        let output = pod(&[("JOB_COMPLETION_INDEX", index.to_string())]);
        assert_eq!(shard_of(&output), format!("{}/{completions}", index + 1));
    }
    let beyond = pod(&[("JOB_COMPLETION_INDEX", completions.to_string())]);
    assert_eq!(beyond.status.code(), Some(2), "{}", stderr(&beyond));
    assert!(
        stderr(&beyond).contains("out of range"),
        "{}",
        stderr(&beyond)
    );

    // Then the final step, as the docs give it after the Job has completed.
    let sh = doc_blocks("Kubernetes", "sh");
    assert_eq!(sh.len(), 1, "one final step in the Kubernetes section");
    let last = run_shell(&sh[0].replace(mount, &volume), &[], work.path());
    assert!(last.status.success(), "{}", stderr(&last));
    assert!(work.path().join("retrained_graph.onnx").is_file());
}

#[test]
fn the_slurm_scripts_command_takes_its_shard_from_a_3_task_array_and_the_final_step_trains() {
    let blocks = doc_blocks("Slurm", "sh");
    let script = &blocks[0];
    let option = |name: &str| {
        script
            .lines()
            .find_map(|line| line.strip_prefix(&format!("#SBATCH --{name}=")))
            .unwrap_or_else(|| panic!("no #SBATCH --{name}= in the Slurm script"))
            .to_string()
    };
    assert_eq!(option("array"), "1-8", "the docs' array is one range");
    let cpus = option("cpus-per-task");
    // srun runs its command once per task: what follows `srun ` is what each task runs.
    let srun = script
        .split("\nsrun ")
        .nth(1)
        .expect("an srun line in the Slurm script");
    assert!(srun.starts_with("flowers extract "), "{srun}");

    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    photos(dir);
    let shared = dir.display().to_string();
    let task = srun.replace("/shared", &shared);
    for id in 1..=3 {
        let mut env = vec![
            ("SLURM_ARRAY_TASK_ID", id.to_string()),
            ("SLURM_ARRAY_TASK_MIN", "1".into()),
            ("SLURM_ARRAY_TASK_MAX", "3".into()),
            ("SLURM_ARRAY_TASK_STEP", "1".into()),
            ("SLURM_ARRAY_TASK_COUNT", "3".into()),
        ];
        // Without --cpus-per-task Slurm sets no SLURM_CPUS_PER_TASK: the line must still work.
        if id != 2 {
            env.push(("SLURM_CPUS_PER_TASK", cpus.clone()));
        }
        let output = run_shell(&task, &env, dir);
        assert_eq!(shard_of(&output), format!("{id}/3"));
    }
    assert_eq!(cache_entries(&dir.join("bottlenecks")).len(), 6);

    // The final step's command, as submitted with --wrap, trains from the cache alone.
    let submit = blocks[1].replace("\\\n", "");
    let wrapped = submit
        .split("--wrap")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .expect("the final step is submitted with --wrap \"...\"");
    let last = run_shell(&wrapped.replace("/shared", &shared), &[], dir);
    assert!(last.status.success(), "{}", stderr(&last));
    assert!(dir.join("retrained_graph.onnx").is_file());
    assert!(dir.join("retrained_labels.txt").is_file());
}
