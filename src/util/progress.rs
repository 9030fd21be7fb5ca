//! The progress bar on stderr, never on stdout (stdout is for results).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::messages;

/// A progress bar over a known number of items. Hidden when stderr is not a terminal (CI
/// logs stay clean) and with `--quiet`. While it is shown, [`crate::warn!`] and
/// [`crate::info!`] print above it instead of tearing it.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    pub fn new(total: u64, message: &str) -> Progress {
        let target = if messages::is_quiet() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, ETA {eta})")
                .expect("static template is valid")
                .progress_chars("=> "),
        );
        bar.set_message(message.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        messages::set_active_bar(Some(bar.clone()));
        Progress { bar }
    }

    pub fn inc(&self) {
        self.bar.inc(1);
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
        messages::set_active_bar(None);
    }
}

impl Drop for Progress {
    /// A bar dropped on an error path must not stay registered (or keep ticking).
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.finish();
        }
    }
}
