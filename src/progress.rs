//! Progress bars and warnings on stderr, never on stdout (stdout is for results).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar that also prints warnings without tearing the bar. Hidden when stderr
/// is not a terminal (CI logs get one summary line instead).
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(total: u64, message: &str) -> Progress {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})")
                .expect("static template is valid")
                .progress_chars("=> "),
        );
        bar.set_message(message.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        Progress { bar }
    }

    pub fn inc(&self) {
        self.bar.inc(1);
    }

    /// Prints one warning line above the bar.
    pub fn warn(&self, message: &str) {
        self.bar.suspend(|| warn(message));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// Prints one warning line on stderr.
pub fn warn(message: &str) {
    eprintln!("warning: {message}");
}

/// Prints one informational line on stderr.
pub fn info(message: &str) {
    eprintln!("{message}");
}

/// A path for a one-line message: control characters (a newline in a file name) are
/// escaped so that every message stays on one line.
pub fn shown(path: &std::path::Path) -> String {
    let text = path.to_string_lossy();
    if text.chars().any(char::is_control) {
        text.escape_debug().to_string()
    } else {
        text.into_owned()
    }
}
