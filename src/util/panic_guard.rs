//! Turning a panic inside third-party decoding code into an ordinary per-file error.
//!
//! One hostile image must never end a run, even if it trips a bug in a decoder. Code run
//! under [`catching_panics`] has its panic caught and reported as a [`Problem`] for that
//! file; the binary's panic hook asks [`panics_are_caught`] so it stays quiet then, and
//! still reports every other panic as the internal error it is.

use std::cell::Cell;

use crate::problem::Problem;

thread_local! {
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// True while this thread runs code whose panics are caught and reported as errors.
pub fn panics_are_caught() -> bool {
    CATCHING.with(|c| c.get())
}

/// Runs `f`; a panic inside it becomes [`Problem::DecoderCrashed`].
pub fn catching_panics<T>(f: impl FnOnce() -> Result<T, Problem>) -> Result<T, Problem> {
    let was = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result.unwrap_or(Err(Problem::DecoderCrashed))
}

/// Installs the binary's panic hook: a panic that is not caught as above is a bug, and
/// says so in one line instead of a backtrace.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if !panics_are_caught() {
            eprintln!("error: internal error ({info}); please report this as a bug");
        }
    }));
}
