//! Writing files so that an interrupted run never leaves half of one: a temporary file in
//! the same directory, then a rename (atomic on POSIX file systems).

use std::io::Write;
use std::path::Path;

use anyhow::{anyhow, Result};

use super::messages::io_reason;

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename:
/// readers see the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_dir(path);
    let fail = |e: std::io::Error| cannot_write(path, dir, &e);
    let mut builder = tempfile::Builder::new();
    builder.prefix(".flowers-tmp-");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // Outputs are ordinary files, readable like any other the user writes.
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut file = builder.tempfile_in(dir).map_err(fail)?;
    file.write_all(bytes).map_err(fail)?;
    file.as_file().sync_all().map_err(fail)?;
    file.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// Checks early that `path` can be written, so a typo in an output path fails before a
/// long extraction rather than after it.
pub fn check_writable(path: &Path) -> Result<()> {
    let dir = parent_dir(path);
    tempfile::Builder::new()
        .prefix(".flowers-check-")
        .tempfile_in(dir)
        .map(drop)
        .map_err(|e| cannot_write(path, dir, &e))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn cannot_write(path: &Path, dir: &Path, error: &std::io::Error) -> anyhow::Error {
    anyhow!(
        "cannot write {}: {} (check that {} exists and is writable)",
        path.display(),
        io_reason(error),
        dir.display()
    )
}
