//! Fetching and unpacking model archives, the way TensorFlow's `retrain.py` did
//! (`maybe_download_and_extract`), but safe to interrupt, to rerun and to point at
//! hostile input.
//!
//! Layout in `model_dir`, kept compatible with a directory `retrain.py` filled:
//!
//! * `<file>`: the archive under the last path segment of its URL
//!   (`mobilenet_v1_0.25_224_frozen.tgz`), only ever written once verified;
//! * `<file>.part`: a download in progress, and `<file>.part.json`, the URL it came
//!   from and the server's validator, without which it is never resumed;
//! * the archive's members, extracted into `model_dir` itself
//!   (`mobilenet_v1_0.25_224/frozen_graph.pb`), as `tarfile.extractall` did;
//! * `.<file>.extracted`: written last, says the archive was verified and extracted
//!   (size and checksum of the archive, and the top-level entries it made).
//!
//! Why each step is done the way it is:
//!
//! * A later run with the archive and the marker present prints retrain.py's
//!   `Not extracting or downloading files, model already present in disk` and makes
//!   no HTTP request, so an offline machine with a filled `model_dir` keeps working.
//! * Nothing gets its final name until it is verified, so a captive portal's page, a
//!   wrong mirror or a cut connection never leaves something that a later run trusts
//!   (a poisoned cache): the download stays `<file>.part` until its size and sha256
//!   match, and an archive with no published sha256 until it was extracted and the
//!   caller's check (the backbone loads and computes a bottleneck) passed on the
//!   extracted tree. Extraction goes into a temporary directory inside `model_dir`,
//!   moved into place entry by entry only then. Whatever a failed try wrote is deleted.
//! * A file found under the final name without a valid marker (put there by hand, by
//!   retrain.py, or by an older flowers that kept bad downloads) is verified the same
//!   way; if it fails it is deleted, with a warning, and downloaded again.
//! * The network is bounded (see [`Options`]): a size known in advance or a cap,
//!   checked against `Content-Length` before the body is read and again while it is;
//!   a minimum rate over a window; an overall deadline. A resume uses `If-Range`, so a
//!   server whose file changed answers with the whole new file instead of its tail.
//! * Archives are untrusted (a mirror can be anyone): paths with `..`, absolute
//!   paths, links of any kind, devices and fifos are refused, and so is an archive
//!   that unpacks to more than `max_unpacked_bytes` (a gzip bomb), counted both from
//!   the tar headers' declared sizes and from the bytes actually decompressed (the
//!   latter also covers GNU long-name and pax headers, which `tar` reads into
//!   memory).
//! * Network failures end in one line that names the URL and says how to place the
//!   file by hand or use a mirror, since the usual cause is a machine without
//!   internet access.

mod transfer;

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::util::files::{open_regular, read_regular};

/// What a download failure tells the user to do instead, appended to the error.
const MANUAL_HINT: &str = "or set --model-base-url / FLOWERS_MODEL_BASE_URL to a mirror";

/// The default of [`Options::max_download_bytes`] (`--max-download-size`): several times
/// the largest archive without a published size (retrain.py's MobileNets, some tens of
/// MB), small enough that an endless response cannot fill a disk.
pub const DEFAULT_MAX_DOWNLOAD_BYTES: u64 = 256 << 20;

/// Largest marker file read back; a real one lists a few entries.
const MAX_MARKER_BYTES: u64 = 1 << 20;

/// The check a download without a published sha256 must pass before it is kept: given
/// the extraction root (archives, still in their temporary directory) or the file
/// itself (single model files). The backbone module supplies one that loads the graph
/// and computes a bottleneck, so download.rs needs to know nothing about models.
pub type Verify<'a> = &'a dyn Fn(&Path) -> Result<()>;

/// A model archive to fetch.
#[derive(Debug, Clone, Copy)]
pub struct Archive<'a> {
    /// Where to get it; its last path segment is the file name in `model_dir`.
    pub url: &'a str,
    /// Expected sha256 as hex (either case). `None`: the caller's [`Verify`] decides.
    pub sha256: Option<&'a str>,
    /// Expected size in bytes: a response announcing or sending another size is
    /// refused, and it gives the progress bar a total when the server sends none.
    pub size: Option<u64>,
}

/// How to fetch and unpack.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connect timeout, and the longest wait for the response head or for any single
    /// read of the body.
    pub timeout: Duration,
    /// How many more tries after the first one on connection errors, timeouts, 5xx,
    /// 408/429, cut bodies and slow patches. Other HTTP errors (404, 403, ...) fail at once.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one, at most 30 s.
    pub backoff: Duration,
    /// Draw a progress bar on stderr (it is hidden anyway when stderr is not a
    /// terminal).
    pub show_progress: bool,
    /// Refuse archives that unpack to more than this many bytes.
    pub max_unpacked_bytes: u64,
    /// The most bytes accepted when [`Archive::size`] is unknown: a larger announced
    /// `Content-Length` is refused before the body is read, an endless body is cut off
    /// here and deleted.
    pub max_download_bytes: u64,
    /// Slowest transfer accepted, in bytes per second averaged over `rate_window` (curl's
    /// `--speed-limit` and `--speed-time`): a server that sends a byte now and then never
    /// trips the per-read `timeout`.
    pub min_rate: u64,
    pub rate_window: Duration,
    /// The whole download, every try and wait included, is given up after this long
    /// (a resumable `.part` is kept for the next run).
    pub deadline: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_secs(1),
            show_progress: true,
            max_unpacked_bytes: 2 << 30,
            max_download_bytes: DEFAULT_MAX_DOWNLOAD_BYTES,
            min_rate: 1024,
            rate_window: Duration::from_secs(30),
            deadline: Duration::from_secs(60 * 60),
        }
    }
}

/// The file name an archive gets in `model_dir`: the URL's last path segment
/// (query and fragment dropped), as retrain.py's `data_url.split('/')[-1]`.
pub fn archive_file_name(url: &str) -> Result<&str> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let name = path.rsplit('/').next().unwrap_or(path);
    if name.is_empty() || name == "." || name == ".." || name.contains('\\') {
        bail!("cannot tell the archive's file name from the URL {url}");
    }
    Ok(name)
}

/// Replaces everything before the archive's file name in `url` with `base` (a
/// mirror), so `("https://host/models/m.tgz", Some("http://127.0.0.1:8000/x"))`
/// gives `http://127.0.0.1:8000/x/m.tgz`. `None` or an empty base keeps `url`.
pub fn mirrored(url: &str, base: Option<&str>) -> String {
    match base.map(str::trim).filter(|b| !b.is_empty()) {
        None => url.to_string(),
        Some(base) => {
            let path = url.split(['?', '#']).next().unwrap_or(url);
            let name = path.rsplit('/').next().unwrap_or(path);
            format!("{}/{}", base.trim_end_matches('/'), name)
        }
    }
}

/// Downloads `archive` into `model_dir` (kept there under its file name, as
/// retrain.py did), verifies it, and extracts it into `model_dir`.
///
/// Returns the extraction root, the directory the archive's member paths are
/// relative to: `model_dir` itself, so the graph of MobileNet is at
/// `<returned>/mobilenet_v1_0.25_224/frozen_graph.pb`, as retrain.py expected.
///
/// With the archive and its completion marker present this prints retrain.py's
/// "model already present" line and touches no network. An archive with no sha256
/// must also pass `verify` on its extracted tree before anything is kept.
pub fn ensure_archive(
    archive: &Archive,
    model_dir: &Path,
    opts: &Options,
    verify: Verify,
) -> Result<PathBuf> {
    let name = archive_file_name(archive.url)?;
    let reserved = reserved_names(name);
    let check = (archive.sha256.is_none()).then_some(verify);
    let install = |candidate: &Path| {
        crate::info!(">> Extracting {name} into {}", model_dir.display());
        extract_staged(
            candidate,
            model_dir,
            &reserved,
            opts.max_unpacked_bytes,
            check,
        )
    };
    ensure(archive, model_dir, opts, "archive", &install)?;
    Ok(model_dir.to_path_buf())
}

/// Downloads a single model file (an `.onnx`, no archive) into `model_dir` and verifies
/// it (sha256, else `verify` on the file); returns its path. Like [`ensure_archive`], a
/// second run with the verified file present makes no request.
pub fn ensure_file(
    file: &Archive,
    model_dir: &Path,
    opts: &Options,
    verify: Verify,
) -> Result<PathBuf> {
    let name = archive_file_name(file.url)?.to_string();
    let unhashed = file.sha256.is_none();
    let install = |candidate: &Path| {
        if unhashed {
            verify(candidate)?;
        }
        Ok(vec![name.clone()])
    };
    ensure(file, model_dir, opts, "model", &install)
}

/// Where one download lives in `model_dir`.
struct Place {
    name: String,
    /// The final name, only ever written once verified.
    file: PathBuf,
    part: PathBuf,
    /// The `.part`'s resume record (URL and validator).
    record: PathBuf,
    marker: PathBuf,
}

impl Place {
    fn new(model_dir: &Path, name: &str) -> Place {
        Place {
            name: name.to_string(),
            file: model_dir.join(name),
            part: model_dir.join(format!("{name}.part")),
            record: model_dir.join(format!("{name}.part.json")),
            marker: model_dir.join(marker_name(name)),
        }
    }

    /// Deletes the partial download and its record.
    fn discard_part(&self) -> Result<()> {
        remove_if_exists(&self.part)?;
        remove_if_exists(&self.record)
    }
}

/// The shared flow of [`ensure_archive`] and [`ensure_file`]. `install` checks a
/// candidate (the fresh `.part`, or a file found under the final name) and puts what
/// it holds in place, returning the top-level entries it made; it must leave nothing
/// behind when it fails.
fn ensure(
    file: &Archive,
    model_dir: &Path,
    opts: &Options,
    what: &str,
    install: &dyn Fn(&Path) -> Result<Vec<String>>,
) -> Result<PathBuf> {
    let expected = file.sha256.map(normalize_sha256).transpose()?;
    let expected = expected.as_deref();
    fs::create_dir_all(model_dir)
        .with_context(|| format!("cannot create the model directory {}", model_dir.display()))?;
    let place = Place::new(model_dir, archive_file_name(file.url)?);
    if fs::metadata(&place.file).is_ok_and(|m| m.is_file()) {
        if marker_is_valid(&place.marker, &place.file, expected) {
            crate::info!("Not extracting or downloading files, model already present in disk");
            return Ok(place.file);
        }
        match install_found(&place, expected, what, install) {
            Ok(()) => return Ok(place.file),
            Err(e) => {
                crate::warn!(
                    "{} is not a usable {what} ({e:#}): deleting it and downloading it again",
                    place.file.display()
                );
                remove_if_exists(&place.file)?;
            }
        }
    }
    remove_if_exists(&place.marker)?;
    transfer::download(file, &place, expected, opts)?;
    let entries = match install(&place.part) {
        Ok(entries) => entries,
        Err(e) => {
            place.discard_part()?;
            bail!(
                "what {} sent is not a usable {what}: {e:#}; it was deleted, nothing was kept; \
                 check the URL, {MANUAL_HINT}",
                file.url
            );
        }
    };
    fs::rename(&place.part, &place.file).with_context(|| {
        format!(
            "cannot rename {} to {}",
            place.part.display(),
            place.file.display()
        )
    })?;
    remove_if_exists(&place.record)?;
    write_marker(&place.marker, &place.file, &entries)?;
    Ok(place.file)
}

/// Verifies and installs a file found under its final name without a valid marker.
fn install_found(
    place: &Place,
    expected: Option<&str>,
    what: &str,
    install: &dyn Fn(&Path) -> Result<Vec<String>>,
) -> Result<()> {
    // No marker while the tree is being replaced: a crash from here on is redone.
    remove_if_exists(&place.marker)?;
    if let Some(expected) = expected {
        let (got, len) = sha256_file(&place.file)?;
        if got != expected {
            bail!("not the expected {what}: sha256 expected {expected}, got {got} ({len} bytes)");
        }
    }
    let entries = install(&place.file)?;
    write_marker(&place.marker, &place.file, &entries)
}

/// The names an archive must not extract over: itself and its bookkeeping files.
fn reserved_names(archive: &str) -> Vec<String> {
    vec![
        archive.to_string(),
        format!("{archive}.part"),
        format!("{archive}.part.json"),
        marker_name(archive),
        format!("{}.tmp", marker_name(archive)),
    ]
}

/// Extracts the gzip-compressed tar `path` into `into` and returns the top-level
/// names it created there (sorted).
///
/// Everything is unpacked into a temporary directory inside `into` first and moved
/// into place only when the whole archive was read and found acceptable; on any
/// error the temporary directory is removed and `into` is left as it was. An
/// existing entry of the same name in `into` is replaced. Refused: member paths
/// that are absolute or contain `..`, symbolic and hard links, devices, fifos,
/// sparse files, non-UTF-8 names, a top-level name that would replace the archive
/// itself or its bookkeeping files, and more than `max_unpacked_bytes` of tar
/// stream or of declared member sizes. Permissions and times are not restored:
/// files get the process's defaults, which is all model files need.
pub fn extract_tgz(path: &Path, into: &Path, max_unpacked_bytes: u64) -> Result<Vec<String>> {
    let reserved = match path.file_name().and_then(|n| n.to_str()) {
        Some(archive) if path.parent().map(same_dir(into)).unwrap_or(false) => {
            reserved_names(archive)
        }
        _ => Vec::new(),
    };
    extract_staged(path, into, &reserved, max_unpacked_bytes, None)
}

/// [`extract_tgz`] with the reserved names given, and `verify` run on the staged tree
/// before anything is moved into place.
fn extract_staged(
    path: &Path,
    into: &Path,
    reserved: &[String],
    max_unpacked_bytes: u64,
    verify: Option<Verify>,
) -> Result<Vec<String>> {
    let (file, _) = open_regular(path)
        .with_context(|| format!("cannot open the archive {}", path.display()))?;
    fs::create_dir_all(into)
        .with_context(|| format!("cannot create the directory {}", into.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".extracting-")
        .tempdir_in(into)
        .with_context(|| format!("cannot create a temporary directory in {}", into.display()))?;

    let names = unpack_checked(file, path, staging.path(), max_unpacked_bytes)?;
    if let Some(clash) = names.iter().find(|n| reserved.contains(n)) {
        bail!(
            "refusing to extract {}: its entry `{clash}` would replace the archive or its \
             bookkeeping files",
            path.display()
        );
    }
    if let Some(verify) = verify {
        verify(staging.path())?;
    }
    move_into_place(staging.path(), &names, into)?;
    staging.close().with_context(|| {
        format!(
            "cannot remove the temporary directory in {}",
            into.display()
        )
    })?;
    Ok(names)
}

/// Moves the staged top-level entries into `into`, replacing older ones; if one move
/// fails, the ones already moved are removed again, so no half tree is left.
fn move_into_place(staging: &Path, names: &[String], into: &Path) -> Result<()> {
    for (done, name) in names.iter().enumerate() {
        let (from, to) = (staging.join(name), into.join(name));
        let moved = remove_if_exists(&to).and_then(|()| {
            fs::rename(&from, &to)
                .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
        });
        if let Err(e) = moved {
            for name in &names[..done] {
                let _ = remove_if_exists(&into.join(name));
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Reads the whole archive into `dest` (a fresh empty directory), checking every
/// entry before writing it. Returns the top-level names written.
fn unpack_checked(file: File, path: &Path, dest: &Path, max: u64) -> Result<Vec<String>> {
    let shown = path.display();
    let used = Rc::new(Cell::new(0u64));
    let stream = LimitedReader {
        // Multi-member gzip, as Python's tarfile reads it.
        inner: flate2::read::MultiGzDecoder::new(BufReader::new(file)),
        used: Rc::clone(&used),
        max,
    };
    let too_large = || {
        anyhow!(
            "refusing to extract {shown}: it unpacks to more than {max} bytes \
             (the max_unpacked_bytes limit); a gzip bomb or not the expected archive"
        )
    };
    let mut archive = tar::Archive::new(stream);
    let mut declared: u64 = 0;
    let mut top_level = BTreeSet::new();

    let read_error = |e: io::Error, used: &Cell<u64>| {
        if used.get() > max {
            too_large()
        } else {
            anyhow!("cannot read {shown} as a .tgz archive: {e}")
        }
    };
    let entries = archive.entries().map_err(|e| read_error(e, &used))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| read_error(e, &used))?;
        let raw = entry.path().map_err(|e| read_error(e, &used))?.into_owned();
        let Some(raw_str) = raw.to_str() else {
            bail!("refusing to extract {shown}: entry {raw:?} has a non-UTF-8 name");
        };
        let raw_str = raw_str.to_string();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            continue;
        }
        let rel = safe_relative(&raw).ok_or_else(|| {
            anyhow!("refusing to extract {shown}: entry `{raw_str}` leaves the target directory")
        })?;
        if raw_str.contains('\n') {
            bail!("refusing to extract {shown}: entry {raw_str:?} has a newline in its name");
        }
        declared = declared.saturating_add(entry.size());
        if declared > max {
            return Err(too_large());
        }
        let target = dest.join(&rel);
        if kind.is_file() || kind.is_contiguous() {
            if rel.as_os_str().is_empty() {
                bail!("refusing to extract {shown}: file entry `{raw_str}` has no file name");
            }
            let Some(parent) = target.parent() else {
                bail!("refusing to extract {shown}: entry `{raw_str}` has no file name");
            };
            fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
            if target.is_dir() {
                bail!("cannot extract {shown}: entry `{raw_str}` is both a file and a directory");
            }
            let mut out = File::create(&target)
                .with_context(|| format!("cannot create {}", target.display()))?;
            copy_entry(&mut entry, &mut out, &target).map_err(|e| {
                if used.get() > max {
                    too_large()
                } else {
                    e
                }
            })?;
        } else if kind.is_dir() {
            fs::create_dir_all(&target)
                .with_context(|| format!("cannot create {}", target.display()))?;
        } else if kind.is_symlink() || kind.is_hard_link() {
            let link = entry
                .link_name()
                .ok()
                .flatten()
                .map(|l| l.display().to_string())
                .unwrap_or_default();
            bail!(
                "refusing to extract {shown}: entry `{raw_str}` is a link (to `{link}`); \
                 model archives need none"
            );
        } else {
            bail!(
                "refusing to extract {shown}: entry `{raw_str}` is of an unsupported type \
                 ({kind:?}; only files and directories are extracted)"
            );
        }
        if let Some(Component::Normal(first)) = rel.components().next() {
            top_level.insert(first.to_string_lossy().into_owned());
        }
    }
    Ok(top_level.into_iter().collect())
}

/// Copies one member's data; read errors are the archive's, write errors the disk's.
fn copy_entry(entry: &mut impl Read, out: &mut File, target: &Path) -> Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow!("cannot read the archive: {e}")),
        };
        out.write_all(&buf[..n])
            .with_context(|| format!("cannot write {}", target.display()))?;
    }
    out.flush()
        .with_context(|| format!("cannot write {}", target.display()))
}

/// `raw` as a relative path of plain names only (`.` dropped), or `None` when it is
/// absolute or has a `..`.
fn safe_relative(raw: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Counts the decompressed bytes and fails the read that goes past `max`.
struct LimitedReader<R> {
    inner: R,
    used: Rc<Cell<u64>>,
    max: u64,
}

impl<R: Read> Read for LimitedReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.used.get() > self.max {
            return Err(io::Error::other("unpacked size limit exceeded"));
        }
        let n = self.inner.read(buf)?;
        let total = self.used.get().saturating_add(n as u64);
        self.used.set(total);
        if total > self.max {
            return Err(io::Error::other("unpacked size limit exceeded"));
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// Bookkeeping

fn marker_name(archive: &str) -> String {
    format!(".{archive}.extracted")
}

/// The marker's first line. v1 markers (flowers before downloads were verified) are
/// trusted only where a sha256 vouches for the archive: without one, v1 may mark a page
/// or a wrong archive kept by mistake, so it is verified again (no download needed).
const MARKER_V2: &str = "flowers-extracted v2";
const MARKER_V1: &str = "flowers-extracted v1";

/// The marker matches the archive on disk (size, and sha256 when one is expected)
/// and every top-level entry it lists still exists. Anything unreadable is "no".
fn marker_is_valid(marker: &Path, archive: &Path, expected: Option<&str>) -> bool {
    let (Ok(bytes), Ok(meta)) = (
        read_regular(marker, MAX_MARKER_BYTES),
        fs::metadata(archive),
    ) else {
        return false;
    };
    let Ok(text) = String::from_utf8(bytes) else {
        return false;
    };
    let mut lines = text.lines();
    match lines.next() {
        Some(MARKER_V2) => {}
        Some(MARKER_V1) if expected.is_some() => {}
        _ => return false,
    }
    let mut size_ok = false;
    let mut sha_ok = expected.is_none();
    let mut entries = 0;
    let dir = archive.parent().unwrap_or(Path::new("."));
    for line in lines {
        match line.split_once(' ') {
            Some(("size", s)) => size_ok = s.parse::<u64>().ok() == Some(meta.len()),
            Some(("sha256", s)) => sha_ok = sha_ok || Some(s) == expected,
            Some(("entry", name)) => {
                if fs::symlink_metadata(dir.join(name)).is_err() {
                    return false;
                }
                entries += 1;
            }
            _ => {}
        }
    }
    size_ok && sha_ok && entries > 0
}

/// Writes the marker through a temporary name and a rename, so it is either whole
/// or absent.
fn write_marker(marker: &Path, archive: &Path, entries: &[String]) -> Result<()> {
    let (sha, len) = sha256_file(archive)?;
    let mut text = format!("{MARKER_V2}\nsize {len}\nsha256 {sha}\n");
    for e in entries {
        text.push_str(&format!("entry {e}\n"));
    }
    let mut tmp = marker.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, marker).with_context(|| format!("cannot write {}", marker.display()))
}

fn normalize_sha256(hex: &str) -> Result<String> {
    let hex = hex.trim().to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("not a sha256 in hex (64 digits): {hex:?}");
    }
    Ok(hex)
}

/// (lowercase hex sha256, length) of a file.
fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let (mut file, _) =
        open_regular(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut hasher = Sha256::new();
    let len = io::copy(&mut file, &mut hasher)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let hex = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((hex, len))
}

/// Removes a file, a directory tree or a symlink (not its target); absent is fine.
fn remove_if_exists(path: &Path) -> Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => Err(e),
    };
    result.with_context(|| format!("cannot remove {}", path.display()))
}

/// Whether `dir` and `other` name the same directory (by canonical path).
fn same_dir(other: &Path) -> impl Fn(&Path) -> bool + '_ {
    move |dir: &Path| {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        match (fs::canonicalize(dir), fs::canonicalize(other)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}
