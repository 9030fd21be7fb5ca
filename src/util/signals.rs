//! Termination by a signal: `timeout`, Kubernetes and Slurm stop a job with `SIGTERM`, a
//! terminal with `SIGINT` (Ctrl-C) or `SIGHUP`. The default action would end the process
//! where it stands, leaving the temporaries of half-written outputs and cache entries
//! behind; instead a watcher thread removes them (see [`super::atomic`]) and exits with
//! the shell's code for that signal, 128 + its number (143 for `SIGTERM`, 130 for
//! `SIGINT`, 129 for `SIGHUP`).

use std::io::Write;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::atomic::remove_in_flight_for_exit;

/// Starts the watcher thread. Without it (an error here) signals keep their default
/// action, which is how flowers behaved before.
pub fn exit_cleanly_on_termination() -> std::io::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                exit_on(signal);
            }
        })?;
    Ok(())
}

fn exit_on(signal: i32) -> ! {
    let removed = remove_in_flight_for_exit();
    let name = match signal {
        SIGTERM => "SIGTERM",
        SIGINT => "SIGINT",
        _ => "SIGHUP",
    };
    let files = if removed == 1 { "file" } else { "files" };
    // Straight to stderr: the progress bar's lock may be held by the thread we interrupt.
    let _ = writeln!(
        std::io::stderr(),
        "flowers: stopped by {name}; removed {removed} temporary {files}"
    );
    // SAFETY: _exit ends the process at once, without running atexit handlers or
    // destructors that other threads, still running, might be using.
    unsafe { libc::_exit(128 + signal) }
}
