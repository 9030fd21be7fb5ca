//! Plumbing every layer may use: atomic file writes, messages on stderr, the progress bar,
//! the one directory walker, the guard that turns a decoder's panic into an error, and
//! the clean exit on SIGTERM.

pub mod allocator;
pub mod atomic;
pub mod files;
pub mod messages;
pub mod panic_guard;
pub mod progress;
pub mod signals;
pub mod walk;

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
