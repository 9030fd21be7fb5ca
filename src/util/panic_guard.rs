//! Turning a panic inside third-party code into an ordinary error.
//!
//! One hostile image must never end a run, even if it trips a bug in a decoder, and one
//! damaged graph must end it with a one-line error naming the file, not a backtrace. Code
//! run under [`catching_panics`] has its panic caught and reported as a [`Problem`] for
//! that file; code run under [`catching_panics_in`] (graph loading: protobuf decoding,
//! tract's analysis and optimisation) has it reported as an error naming the file. The
//! binary's panic hook asks [`panics_are_caught`] so it stays quiet then, and still
//! reports every other panic as the internal error it is.

use std::any::Any;
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
    guarded(f).unwrap_or(Err(Problem::DecoderCrashed))
}

/// Runs `f`, which reads the file shown as `display`; a panic inside it becomes an error
/// naming that file, with the first line of the panic's message.
pub fn catching_panics_in<T>(
    display: &str,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    guarded(f).unwrap_or_else(|payload| {
        Err(anyhow::anyhow!(
            "{display} is damaged or not a graph flowers can run (loading it crashed: {})",
            panic_message(payload.as_ref())
        ))
    })
}

/// Runs `f` with this thread's panics marked as caught; `Err` holds a panic's payload.
fn guarded<R>(f: impl FnOnce() -> R) -> Result<R, Box<dyn Any + Send>> {
    let was = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result
}

/// The first line of a panic's message, at most 120 characters of it.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message");
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(120).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_while_loading_becomes_an_error_naming_the_file() {
        let error = catching_panics_in("model.onnx", || -> anyhow::Result<()> {
            let dims: Vec<usize> = vec![];
            let _ = dims[3];
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("model.onnx is damaged"), "{error}");
        assert!(error.contains("index out of bounds"), "{error}");
        assert!(!panics_are_caught(), "the mark is cleared after the panic");
    }

    #[test]
    fn errors_and_values_pass_through() {
        assert_eq!(catching_panics_in("g", || Ok(7)).unwrap(), 7);
        let error = catching_panics_in("g", || -> anyhow::Result<()> { anyhow::bail!("no") });
        assert_eq!(error.unwrap_err().to_string(), "no");
    }
}
