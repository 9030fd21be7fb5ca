//! Writing files so that an interrupted run never leaves half of one, nor litter.
//!
//! A regular file (or a new one) is written to a temporary file in its own directory, then
//! renamed over it (atomic on POSIX file systems): readers see the old file or the new one.
//! A symlink is followed first, so the file it points to is replaced and the link stays a
//! link. A target that exists and is no regular file (`/dev/null`, a FIFO a reader waits
//! on, a terminal) is written through, as the shell's `>` would: renaming over it would
//! replace the device node itself, which as root turns the machine's `/dev/null` into a
//! file.
//!
//! Every temporary is named `.flowers-tmp-*` and recorded while it exists, so that
//! [`super::signals`] can remove them when the run is terminated, and a later run can
//! remove the ones a `SIGKILL` left behind ([`Temporary::new`] sweeps its directory).

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};

use super::messages::{io_reason, shown};

/// The prefix of every temporary file flowers writes beside an output or a cache entry.
pub const TEMPORARY_PREFIX: &str = ".flowers-tmp-";

/// How old a `.flowers-tmp-*` file must be before a run removes it as stale: another run
/// sharing the directory (a shared cache, two retrains into one folder) may be writing it
/// right now, and every write flowers makes touches its temporary well within this time.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// Held shared while a temporary is created, renamed or removed, and exclusively by the
/// signal handler while it removes them: so it never removes a file a thread is renaming
/// into place, and no thread creates one it would miss.
static GATE: RwLock<()> = RwLock::new(());

/// The temporaries that exist right now.
static IN_FLIGHT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// Directories already swept for stale temporaries by this process.
static SWEPT: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

/// A `.flowers-tmp-*` file being written: renamed into place by [`Temporary::persist`],
/// removed if dropped, and removed by the signal handler if the run is terminated.
pub struct Temporary {
    file: Option<tempfile::NamedTempFile>,
    path: PathBuf,
}

impl Temporary {
    /// A new temporary in `dir`, readable like any file the user writes (0644 before the
    /// umask). Sweeps `dir` of stale temporaries the first time.
    pub fn new(dir: &Path) -> io::Result<Temporary> {
        sweep_stale_once(dir);
        let mut builder = tempfile::Builder::new();
        builder.prefix(TEMPORARY_PREFIX);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            builder.permissions(fs::Permissions::from_mode(0o644));
        }
        let _gate = GATE.read().unwrap_or_else(|e| e.into_inner());
        let file = builder.tempfile_in(dir)?;
        let path = file.path().to_path_buf();
        with_in_flight(|set| set.insert(path.clone()));
        Ok(Temporary {
            file: Some(file),
            path,
        })
    }

    pub fn as_file_mut(&mut self) -> &mut fs::File {
        self.file
            .as_mut()
            .expect("a temporary has its file until persisted")
            .as_file_mut()
    }

    /// Renames the temporary to `target`, replacing what is there.
    pub fn persist(mut self, target: &Path) -> io::Result<()> {
        let file = self.file.take().expect("persisted once");
        let _gate = GATE.read().unwrap_or_else(|e| e.into_inner());
        let persisted = file.persist(target);
        with_in_flight(|set| set.remove(&self.path));
        match persisted {
            Ok(_) => Ok(()),
            // Dropping the returned file removes the temporary.
            Err(e) => Err(e.error),
        }
    }
}

impl Drop for Temporary {
    fn drop(&mut self) {
        if let Some(file) = self.file.take() {
            let _gate = GATE.read().unwrap_or_else(|e| e.into_inner());
            drop(file);
            with_in_flight(|set| set.remove(&self.path));
        }
    }
}

fn with_in_flight<T>(f: impl FnOnce(&mut HashSet<PathBuf>) -> T) -> T {
    let mut guard = IN_FLIGHT.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.get_or_insert_with(HashSet::new))
}

/// For the signal handler: removes every temporary being written and returns how many,
/// then keeps every other thread from creating or renaming one until the process exits.
/// Call it only on the way out.
pub fn remove_in_flight_for_exit() -> usize {
    let gate = GATE.write().unwrap_or_else(|e| e.into_inner());
    // Never released: the process exits with the gate closed.
    std::mem::forget(gate);
    with_in_flight(|set| {
        set.iter()
            .filter(|path| fs::remove_file(path).is_ok())
            .count()
    })
}

/// Removes the `.flowers-tmp-*` regular files in `dir` that this user owns and that were
/// last written more than [`STALE_AFTER`] ago: what a killed run left behind.
pub fn sweep_stale(dir: &Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let now = SystemTime::now();
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(TEMPORARY_PREFIX)
        })
        .filter(|e| e.metadata().is_ok_and(|meta| is_stale_and_ours(&meta, now)))
        .filter(|e| fs::remove_file(e.path()).is_ok())
        .count()
}

fn is_stale_and_ours(meta: &fs::Metadata, now: SystemTime) -> bool {
    let old = meta
        .modified()
        .ok()
        .and_then(|m| now.duration_since(m).ok())
        .is_some_and(|age| age > STALE_AFTER);
    meta.is_file() && old && owned_by_us(meta)
}

fn sweep_stale_once(dir: &Path) {
    let first = {
        let mut guard = SWEPT.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .get_or_insert_with(HashSet::new)
            .insert(dir.to_path_buf())
    };
    if first {
        sweep_stale(dir);
    }
}

#[cfg(unix)]
fn owned_by_us(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    meta.uid() == unsafe { libc::geteuid() }
}

#[cfg(not(unix))]
fn owned_by_us(_meta: &fs::Metadata) -> bool {
    true
}

/// Where a write to a path lands.
#[derive(Debug, PartialEq, Eq)]
enum Destination {
    /// A regular file, or none yet: replaced atomically at this path (links resolved).
    Replace(PathBuf),
    /// An existing device, FIFO or other non-regular file: written through, in place.
    Through,
}

/// Where writing `path` lands; a directory (or a name ending in `/`) is an error.
fn destination(path: &Path) -> io::Result<Destination> {
    let text = path.as_os_str().as_encoded_bytes();
    if text.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the path is empty",
        ));
    }
    if text.ends_with(b"/") {
        return Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory",
        ));
    }
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => Err(io::Error::new(
            io::ErrorKind::IsADirectory,
            "it is a directory",
        )),
        Ok(meta) if meta.is_file() => Ok(Destination::Replace(fs::canonicalize(path)?)),
        Ok(_) => Ok(Destination::Through),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            Ok(Destination::Replace(resolve_dangling(path)?))
        }
        Err(e) => Err(e),
    }
}

/// The file a path names once its chain of symlinks is followed, for a path that does
/// not exist yet (a dangling link is written by creating what it points to).
fn resolve_dangling(path: &Path) -> io::Result<PathBuf> {
    // As the kernel's own limit on links followed in one lookup (ELOOP).
    const MAX_LINKS: usize = 40;
    let mut current = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match fs::symlink_metadata(&current) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&current)?;
                current = parent_dir(&current).join(target);
            }
            _ => return Ok(current),
        }
    }
    Err(io::Error::other("too many levels of symbolic links"))
}

/// Writes `bytes` to `path`: atomically for a regular file or a new one (through any
/// symlink), straight through for a device or a FIFO.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let cannot = |e: io::Error| cannot_write(path, &e);
    match destination(path).map_err(cannot)? {
        Destination::Replace(target) => replace(&target, bytes).map_err(cannot),
        Destination::Through => write_through(path, bytes).map_err(cannot),
    }
}

fn replace(target: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut temporary = Temporary::new(parent_dir(target))?;
    let file = temporary.as_file_mut();
    file.write_all(bytes)?;
    file.sync_all()?;
    temporary.persist(target)
}

/// Writes into an existing non-regular file. A FIFO waits for its reader, as the shell's
/// redirection does; nothing is created, truncated or renamed.
fn write_through(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).open(path)?;
    file.write_all(bytes)?;
    file.flush()
}

/// Checks early that `path` can be written, so a typo in an output path fails before a
/// long extraction rather than after it. `flag` names the path in the error.
pub fn check_writable(path: &Path, flag: &str) -> Result<()> {
    let checked = match destination(path) {
        Ok(Destination::Replace(target)) => Temporary::new(parent_dir(&target)).map(drop),
        Ok(Destination::Through) => writable_in_place(path),
        Err(e) => Err(e),
    };
    checked.map_err(|e| {
        anyhow!(
            "{flag}: cannot write {}: {}",
            shown(path),
            explain(path, &e)
        )
    })
}

/// Write permission on an existing non-regular file, without opening it: opening a FIFO
/// for writing and closing it again would hand its reader an end of file.
fn writable_in_place(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
        if unsafe { libc::access(c_path.as_ptr(), libc::W_OK) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether two outputs would replace one file, the second write undoing the first: the
/// same inode if both exist, else the same place once links and `..` are resolved. Two
/// outputs sent through one device or FIFO (`/dev/null`) do not undo each other.
pub fn same_destination(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (fs::metadata(a), fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino() && x.is_file();
        }
    }
    let place = |path: &Path| -> Option<PathBuf> {
        let resolved = resolve_dangling(path).ok()?;
        let dir = fs::canonicalize(parent_dir(&resolved)).ok()?;
        Some(dir.join(resolved.file_name()?))
    };
    match (place(a), place(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Creates an output folder and refuses one another user could have planted: below a
/// folder every user may write to that keeps their files apart (sticky and
/// world-writable, as `/tmp`), each part of the path must be a real folder of this user
/// or of root, not a link, or the outputs could land where another user chose.
pub fn create_private_dir(dir: &Path, flag: &str) -> Result<()> {
    let refuse = |why: String| anyhow!("{flag} {}: {why}", shown(dir));
    fs::create_dir_all(dir).map_err(|e| refuse(format!("cannot create it: {}", io_reason(&e))))?;
    let absolute = std::path::absolute(dir).map_err(|e| refuse(io_reason(&e)))?;
    let parts: Vec<&Path> = absolute.ancestors().collect();
    for pair in parts.windows(2).rev() {
        let (part, parent) = (pair[0], pair[1]);
        if !shared_with_everyone(parent) {
            continue;
        }
        let meta = fs::symlink_metadata(part).map_err(|e| refuse(io_reason(&e)))?;
        if meta.file_type().is_symlink() {
            return Err(refuse(format!(
                "{} is a link in {}, a folder every user can write to: give a folder of your own",
                shown(part),
                shown(parent)
            )));
        }
        if !owned_by_us(&meta) && !owned_by_root(&meta) {
            return Err(refuse(format!(
                "{} belongs to another user, in {}, a folder every user can write to: give a folder of your own",
                shown(part),
                shown(parent)
            )));
        }
    }
    Ok(())
}

/// Sticky and writable by everyone: `/tmp`, `/var/tmp`, `/dev/shm`.
#[cfg(unix)]
fn shared_with_everyone(dir: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(dir).is_ok_and(|meta| {
        let mode = meta.permissions().mode();
        mode & 0o1000 != 0 && mode & 0o002 != 0
    })
}

#[cfg(not(unix))]
fn shared_with_everyone(_dir: &Path) -> bool {
    false
}

#[cfg(unix)]
fn owned_by_root(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.uid() == 0
}

#[cfg(not(unix))]
fn owned_by_root(_meta: &fs::Metadata) -> bool {
    true
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn explain(path: &Path, error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::IsADirectory {
        return "it is a directory: give a file name".into();
    }
    format!(
        "{} (check that {} exists and is writable)",
        io_reason(error),
        shown(parent_dir(path))
    )
}

fn cannot_write(path: &Path, error: &io::Error) -> anyhow::Error {
    anyhow!("cannot write {}: {}", shown(path), explain(path, error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temporaries(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with(TEMPORARY_PREFIX)
            })
            .count()
    }

    #[test]
    fn a_regular_file_is_replaced_and_no_temporary_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        fs::write(&path, b"old").unwrap();
        write_atomically(&path, b"new").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(temporaries(dir.path()), 0);
    }

    #[test]
    fn a_symlink_stays_a_link_and_its_target_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("real");
        let link = dir.path().join("link");
        fs::write(&target, b"old").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&target).unwrap(), b"new");
        // A dangling link creates what it points to.
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(elsewhere.path().join("new"), &dangling).unwrap();
        write_atomically(&dangling, b"x").unwrap();
        assert_eq!(fs::read(elsewhere.path().join("new")).unwrap(), b"x");
        assert!(fs::symlink_metadata(&dangling)
            .unwrap()
            .file_type()
            .is_symlink());
    }

    #[test]
    fn a_character_device_is_written_through_not_replaced() {
        use std::os::unix::fs::FileTypeExt;
        write_atomically(Path::new("/dev/null"), b"bytes").unwrap();
        let kind = fs::metadata("/dev/null").unwrap().file_type();
        assert!(kind.is_char_device());
        check_writable(Path::new("/dev/null"), "--output-graph").unwrap();
    }

    #[test]
    fn a_directory_is_refused_early_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let error = check_writable(dir.path(), "--output-labels").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("--output-labels: cannot write "), "{text}");
        assert!(text.contains("it is a directory"), "{text}");
        assert!(write_atomically(dir.path(), b"x").is_err());
    }

    #[test]
    fn same_destination_sees_through_spellings_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.txt");
        let spelled = dir.path().join(".").join("sub/../a.txt");
        fs::create_dir(dir.path().join("sub")).unwrap();
        assert!(same_destination(&a, &spelled));
        assert!(!same_destination(&a, &dir.path().join("b.txt")));
        std::os::unix::fs::symlink(&a, dir.path().join("link")).unwrap();
        assert!(same_destination(&a, &dir.path().join("link")));
        fs::write(&a, b"x").unwrap();
        assert!(same_destination(&a, &dir.path().join("link")));
        fs::hard_link(&a, dir.path().join("hard")).unwrap();
        assert!(same_destination(&dir.path().join("hard"), &spelled));
        let null = Path::new("/dev/null");
        assert!(!same_destination(null, null));
    }

    #[test]
    fn a_link_planted_in_a_shared_folder_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let shared = tempfile::tempdir().unwrap();
        fs::set_permissions(shared.path(), fs::Permissions::from_mode(0o1777)).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let planted = shared.path().join("intermediate_graph");
        std::os::unix::fs::symlink(elsewhere.path(), &planted).unwrap();
        let error = create_private_dir(&planted, "--intermediate-output-graphs-dir")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("--intermediate-output-graphs-dir "),
            "{error}"
        );
        assert!(error.contains("is a link"), "{error}");
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = shared.path().join("theirs");
            fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let error = create_private_dir(&theirs, "--intermediate-output-graphs-dir")
                .unwrap_err()
                .to_string();
            assert!(error.contains("belongs to another user"), "{error}");
        }
        // A folder of our own there is fine, and so is one below it.
        let own = shared.path().join("mine/graphs");
        create_private_dir(&own, "--intermediate-output-graphs-dir").unwrap();
        assert!(own.is_dir());
    }

    #[test]
    fn stale_temporaries_of_ours_are_swept_fresh_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(".flowers-tmp-stale");
        let fresh = dir.path().join(".flowers-tmp-fresh");
        let other = dir.path().join("keep-me");
        for path in [&stale, &fresh, &other] {
            fs::write(path, b"x").unwrap();
        }
        let old = SystemTime::now() - Duration::from_secs(120);
        fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        fs::File::options()
            .write(true)
            .open(&other)
            .unwrap()
            .set_modified(old)
            .unwrap();
        assert_eq!(sweep_stale(dir.path()), 1);
        assert!(!stale.exists() && fresh.exists() && other.exists());
    }
}
