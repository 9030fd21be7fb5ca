//! Messages on stderr: warnings, informational lines and the progress bar they must not
//! tear. stdout is for results only.
//!
//! Every warning goes through [`warn!`] and every informational line through [`info!`], as
//! ripgrep's `messages.rs` does, so there is one place that knows whether `--quiet` is on
//! and whether a progress bar is on screen (a line printed under a live bar would be torn
//! by its next redraw; it is printed with the bar suspended instead).

use std::fmt;
use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use indicatif::ProgressBar;

pub use crate::problem::io_reason;

static QUIET: AtomicBool = AtomicBool::new(false);

/// The progress bar on screen, if any: messages are printed with it suspended.
static ACTIVE_BAR: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Prints a warning line on stderr: `warning: ...`. Shown even with `--quiet`.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        $crate::util::messages::warning(format_args!($($arg)*))
    };
}

/// Prints an informational line on stderr (progress of the run). Hidden by `--quiet`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => {
        $crate::util::messages::information(format_args!($($arg)*))
    };
}

/// `--quiet`: no informational lines and no progress bars; warnings and errors remain.
pub fn set_quiet(quiet: bool) {
    QUIET.store(quiet, Ordering::Relaxed);
}

pub fn is_quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Implementation of [`warn!`].
pub fn warning(args: fmt::Arguments<'_>) {
    print_line(format_args!("warning: {args}"));
}

/// Implementation of [`info!`].
pub fn information(args: fmt::Arguments<'_>) {
    if !is_quiet() {
        print_line(args);
    }
}

/// Prints `error: ...` for a fatal error, one line per the error's chain of causes
/// joined with `: `, as `anyhow`'s alternate form does.
pub fn error(error: &anyhow::Error) {
    print_line(format_args!("error: {error:#}"));
}

/// One line on stderr, with the active progress bar (if any) suspended around it. A
/// failing stderr is ignored: there is nowhere left to report it.
fn print_line(args: fmt::Arguments<'_>) {
    let bar = ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let print = || {
        let _ = writeln!(io::stderr().lock(), "{args}");
    };
    match bar {
        Some(bar) => bar.suspend(print),
        None => print(),
    }
}

/// Makes `bar` the one messages suspend while they print; `None` when it is done.
pub(crate) fn set_active_bar(bar: Option<ProgressBar>) {
    *ACTIVE_BAR.lock().unwrap_or_else(|e| e.into_inner()) = bar;
}

/// A path for a one-line message: control characters (a newline in a file name) are
/// escaped so that every message stays on one line.
pub fn shown(path: &Path) -> String {
    let text = path.to_string_lossy();
    if text.chars().any(char::is_control) {
        text.escape_debug().to_string()
    } else {
        text.into_owned()
    }
}

/// Most characters of a name or a line from a file quoted in an error: enough to
/// recognise it, never a megabyte on the terminal.
pub const MAX_QUOTED_CHARS: usize = 80;

/// `text` in quotes, cut to [`MAX_QUOTED_CHARS`] characters (an ellipsis says it was).
pub fn quote(text: &str) -> String {
    if text.chars().count() <= MAX_QUOTED_CHARS {
        return format!("{text:?}");
    }
    let cut: String = text.chars().take(MAX_QUOTED_CHARS).collect();
    format!("{:?}...", cut)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_control_characters_stay_on_one_line() {
        assert_eq!(shown(Path::new("a/b.jpg")), "a/b.jpg");
        assert_eq!(shown(Path::new("new\nline.png")), "new\\nline.png");
    }

    #[test]
    fn common_io_errors_read_as_plain_words() {
        let missing = io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(io_reason(&missing), "no such file or directory");
        let denied = io::Error::from(io::ErrorKind::PermissionDenied);
        assert_eq!(io_reason(&denied), "permission denied");
    }
}
