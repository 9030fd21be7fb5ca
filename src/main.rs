//! The `flowers` binary: parse the command line, run, map the outcome to an exit code.

#![warn(clippy::undocumented_unsafe_blocks)]

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use flowers::cli::{Cli, Request};
use flowers::exit;
use flowers::util::messages;

fn main() -> ExitCode {
    flowers::util::panic_guard::install_panic_hook();
    flowers::util::allocator::keep_freed_memory();
    if let Err(e) = flowers::util::signals::exit_cleanly_on_termination() {
        messages::warning(format_args!(
            "cannot watch for SIGTERM ({e}): a stopped run may leave .flowers-tmp-* files"
        ));
    }
    let cli = Cli::parse();
    messages::set_quiet(cli.quiet);
    let outcome = match cli.into_request() {
        Ok(Request::Run(command)) => flowers::run(command, &mut io::stdout().lock()),
        Ok(Request::Print(text)) => print(&text),
        Err(usage) => Err(anyhow::anyhow!(usage)),
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(error) if is_broken_pipe(&error) => ExitCode::from(exit::SUCCESS),
        Err(error) => {
            messages::error(&error);
            ExitCode::from(exit::FATAL)
        }
    }
}

fn print(text: &[u8]) -> anyhow::Result<u8> {
    let mut out = io::stdout().lock();
    out.write_all(text)?;
    out.flush()?;
    Ok(exit::SUCCESS)
}

/// A reader that closed its end (`flowers label ... | head`) ends the run quietly, as
/// ripgrep does: whichever layer's error it surfaces as, its chain holds the `io::Error`.
fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<io::Error>()
            .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
    })
}
