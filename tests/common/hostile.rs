//! The harness of the hostile-input tests: run the binary with a deadline, read its exit
//! status and its peak memory from the kernel (`wait4`'s rusage of that one child, so
//! tests running in parallel do not see each other), and check the promise every hostile
//! case shares: one `error:` line, no panic text, the expected exit code.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// What one bounded run of `flowers` did.
#[derive(Debug)]
pub struct Run {
    /// The exit code, `None` if a signal ended it (or the deadline did).
    pub code: Option<i32>,
    /// The signal that ended it, if one did.
    pub signal: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Peak resident memory of the child, in MiB (`ru_maxrss`).
    pub peak_mib: u64,
    pub elapsed: Duration,
    /// The deadline passed and the child was killed.
    pub timed_out: bool,
}

/// Runs `flowers args` in `cwd` with extra environment `env`, killed after `deadline`.
pub fn run_bounded(args: &[&str], cwd: &Path, env: &[(&str, &str)], deadline: Duration) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_flowers"));
    command
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("RUST_BACKTRACE");
    for (key, value) in env {
        command.env(key, value);
    }
    // The child is reaped below by `wait4` (which also gives its rusage), not by `Child::wait`.
    #[allow(clippy::zombie_processes)]
    let mut child = command.spawn().expect("flowers starts");
    let pid = child.id() as libc::pid_t;
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    let start = Instant::now();
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: `pid` is our own child, not yet reaped (std's `Child` never waited for
        // it); `status` and `usage` are valid for writes for the duration of the call.
        let reaped = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if reaped == pid {
            break;
        }
        assert!(
            reaped == 0,
            "wait4 failed: {}",
            std::io::Error::last_os_error()
        );
        if start.elapsed() > deadline && !timed_out {
            timed_out = true;
            // SAFETY: sends a signal to our own unreaped child; no memory is involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(5));
    }
    let elapsed = start.elapsed();
    let exited = libc::WIFEXITED(status);
    Run {
        code: exited.then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        peak_mib: (usage.ru_maxrss as u64) / 1024,
        elapsed,
        timed_out,
    }
}

fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// Panic and abort text that must never reach a user.
const PANIC_TEXT: [&str; 5] = [
    "panicked at",
    "stack backtrace",
    "RUST_BACKTRACE",
    "internal error",
    "memory allocation of",
];

/// Asserts the shared promise of a refused hostile input: exit `code`, exactly one
/// `error:` line on stderr that mentions every one of `mentions`, no panic text, and a
/// peak resident memory under `max_peak_mib`.
pub fn assert_refused(run: &Run, code: i32, mentions: &[&str], max_peak_mib: u64) {
    let context = || format!("{run:#?}");
    assert!(!run.timed_out, "ran past its deadline: {}", context());
    assert_eq!(run.code, Some(code), "exit code: {}", context());
    assert_no_panic(run);
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line: {}", context());
    assert!(
        errors[0].len() <= 400,
        "the error line is short: {}",
        context()
    );
    for mention in mentions {
        assert!(
            errors[0].contains(mention),
            "error line mentions {mention:?}: {}",
            context()
        );
    }
    assert_memory_under(run, max_peak_mib);
}

/// Asserts no panic or abort text on either stream and no death by a signal.
pub fn assert_no_panic(run: &Run) {
    assert!(run.signal.is_none(), "killed by a signal: {run:#?}");
    for text in PANIC_TEXT {
        assert!(
            !run.stderr.contains(text) && !run.stdout.contains(text),
            "{text:?} in the output: {run:#?}"
        );
    }
}

pub fn assert_memory_under(run: &Run, max_peak_mib: u64) {
    assert!(
        run.peak_mib <= max_peak_mib,
        "peak memory {} MiB over the bound {max_peak_mib} MiB: {run:#?}",
        run.peak_mib
    );
}

/// Every file and folder below `dir` (links not followed) with its length and
/// modification time: two snapshots are equal when nothing there changed. Left out: a
/// bottleneck cache's photo-hash memo (`photo-sha256.memo`), which any run that hashed the
/// photos may bring up to date, refused or not; and with it the folders' modification
/// times, which its rewrite moves (their entries are listed, so a file added or left
/// behind still shows).
pub fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (u64, SystemTime)> {
    let mut seen = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if path
                .file_name()
                .is_some_and(|name| name == "photo-sha256.memo")
            {
                continue;
            }
            if meta.is_dir() {
                stack.push(path.clone());
                seen.insert(path, (0, SystemTime::UNIX_EPOCH));
                continue;
            }
            seen.insert(path, (meta.len(), meta.modified().unwrap()));
        }
    }
    seen
}
