//! Fetching and unpacking model archives, the way TensorFlow's `retrain.py` did
//! (`maybe_download_and_extract`), but safe to interrupt, to rerun and to point at
//! hostile input.
//!
//! Layout in `model_dir`, kept compatible with a directory `retrain.py` filled:
//!
//! * `<file>`: the archive under the last path segment of its URL
//!   (`mobilenet_v1_0.25_224_frozen.tgz`), only ever written once verified;
//! * `<file>.part`: a download in progress, resumed with `Range` on the next try;
//! * the archive's members, extracted into `model_dir` itself
//!   (`mobilenet_v1_0.25_224/frozen_graph.pb`), as `tarfile.extractall` did;
//! * `.<file>.extracted`: written last, says the extraction finished (size and
//!   checksum of the archive it came from, and the top-level entries it made).
//!
//! Why each step is done the way it is:
//!
//! * A later run with the archive and the marker present prints retrain.py's
//!   `Not extracting or downloading files, model already present in disk` and makes
//!   no HTTP request, so an offline machine with a filled `model_dir` keeps working.
//! * Downloads go to `<file>.part` and get the final name only after the size and
//!   sha256 check, so a cut connection or a wrong mirror never leaves something
//!   that looks like a good archive. A mismatching `.part` is deleted.
//! * Extraction goes into a temporary directory inside `model_dir` and is moved into
//!   place entry by entry before the marker is written, so an interrupted run never
//!   leaves a half tree that a later run would trust.
//! * Archives are untrusted (a mirror can be anyone): paths with `..`, absolute
//!   paths, links of any kind, devices and fifos are refused, and so is an archive
//!   that unpacks to more than `max_unpacked_bytes` (a gzip bomb), counted both from
//!   the tar headers' declared sizes and from the bytes actually decompressed (the
//!   latter also covers GNU long-name and pax headers, which `tar` reads into
//!   memory).
//! * Network failures end in one line that names the URL and says how to place the
//!   file by hand or use a mirror, since the usual cause is a machine without
//!   internet access.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::error::Error as StdError;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;
use std::thread;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::blocking::Client;
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

/// What a download failure tells the user to do instead, appended to the error.
const MANUAL_HINT: &str = "or set --model-base-url / FLOWERS_MODEL_BASE_URL to a mirror";

/// Longest wait between two tries, whatever `Options::backoff` and the try count.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A model archive to fetch.
#[derive(Debug, Clone, Copy)]
pub struct Archive<'a> {
    /// Where to get it; its last path segment is the file name in `model_dir`.
    pub url: &'a str,
    /// Expected sha256 as hex (either case). `None` skips the check, as retrain.py
    /// always did; every built-in model should have one.
    pub sha256: Option<&'a str>,
    /// Expected size in bytes: gives the progress bar a total when the server sends
    /// none, and a download of another size is refused.
    pub size: Option<u64>,
}

/// How to fetch and unpack.
#[derive(Debug, Clone)]
pub struct Options {
    /// Connect timeout, and the longest wait for the response head or for any single
    /// read of the body (not a deadline for the whole download, which may be large).
    pub timeout: Duration,
    /// How many more tries after the first one on connection errors, timeouts, 5xx,
    /// 408/429 and cut bodies. Other HTTP errors (404, 403, ...) fail at once.
    pub retries: u32,
    /// Wait before the first retry; doubled for each further one, at most 30 s.
    pub backoff: Duration,
    /// Draw a progress bar on stderr (it is hidden anyway when stderr is not a
    /// terminal).
    pub show_progress: bool,
    /// Refuse archives that unpack to more than this many bytes.
    pub max_unpacked_bytes: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(30),
            retries: 3,
            backoff: Duration::from_secs(1),
            show_progress: true,
            max_unpacked_bytes: 2 << 30,
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
/// "model already present" line and touches no network. With the archive present
/// but no marker (an interrupted extraction, or a file put there by hand) it checks
/// the archive's sha256 and extracts again.
pub fn ensure_archive(archive: &Archive, model_dir: &Path, opts: &Options) -> Result<PathBuf> {
    let name = archive_file_name(archive.url)?;
    let fetched = fetch(archive, name, model_dir, opts, "archive")?;
    if fetched.ready {
        return Ok(model_dir.to_path_buf());
    }
    let (final_path, marker) = (fetched.path, fetched.marker);

    // No marker while the tree is being replaced: a crash from here on is redone.
    remove_if_exists(&marker)?;
    crate::info!(">> Extracting {name} into {}", model_dir.display());
    let entries = extract_tgz(&final_path, model_dir, opts.max_unpacked_bytes)?;
    write_marker(&marker, &final_path, &entries)?;
    Ok(model_dir.to_path_buf())
}

/// Downloads a single model file (an `.onnx`, no archive) into `model_dir` and verifies
/// it; returns its path. Like [`ensure_archive`], a second run with the verified file
/// present makes no request.
pub fn ensure_file(file: &Archive, model_dir: &Path, opts: &Options) -> Result<PathBuf> {
    let name = archive_file_name(file.url)?;
    let fetched = fetch(file, name, model_dir, opts, "model")?;
    if !fetched.ready {
        write_marker(&fetched.marker, &fetched.path, &[name.to_string()])?;
    }
    Ok(fetched.path)
}

/// A file fetched into `model_dir`, or found there.
struct Fetched {
    path: PathBuf,
    marker: PathBuf,
    /// Found with a valid marker: nothing more to do (no request was made).
    ready: bool,
}

/// The shared first half of [`ensure_archive`] and [`ensure_file`]: use the file in
/// `model_dir` when its marker says it was verified (retrain.py's "already present"
/// message, no request), check one put there by hand against the sha256, or download it.
fn fetch(
    file: &Archive,
    name: &str,
    model_dir: &Path,
    opts: &Options,
    what: &str,
) -> Result<Fetched> {
    let expected = file.sha256.map(normalize_sha256).transpose()?;
    fs::create_dir_all(model_dir)
        .with_context(|| format!("cannot create the model directory {}", model_dir.display()))?;
    let path = model_dir.join(name);
    let marker = marker_path(model_dir, name);
    if !path.is_file() {
        download(file, name, model_dir, expected.as_deref(), opts)?;
    } else if marker_is_valid(&marker, &path, expected.as_deref()) {
        crate::info!("Not extracting or downloading files, model already present in disk");
        return Ok(Fetched {
            path,
            marker,
            ready: true,
        });
    } else if let Some(expected) = &expected {
        let (got, len) = sha256_file(&path)?;
        if &got != expected {
            bail!(
                "{} is not the expected {what}: sha256 expected {expected}, got {got} \
                 ({len} bytes); delete it or replace it with the right file",
                path.display()
            );
        }
    }
    Ok(Fetched {
        path,
        marker,
        ready: false,
    })
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
    let file =
        File::open(path).with_context(|| format!("cannot open the archive {}", path.display()))?;
    fs::create_dir_all(into)
        .with_context(|| format!("cannot create the directory {}", into.display()))?;
    let staging = tempfile::Builder::new()
        .prefix(".extracting-")
        .tempdir_in(into)
        .with_context(|| format!("cannot create a temporary directory in {}", into.display()))?;

    let names = unpack_checked(file, path, staging.path(), max_unpacked_bytes)?;

    let reserved: Vec<String> = match path.file_name().and_then(|n| n.to_str()) {
        Some(archive) if path.parent().map(same_dir(into)).unwrap_or(false) => vec![
            archive.to_string(),
            format!("{archive}.part"),
            marker_name(archive),
        ],
        _ => Vec::new(),
    };
    if let Some(clash) = names.iter().find(|n| reserved.contains(n)) {
        bail!(
            "refusing to extract {}: its entry `{clash}` would replace the archive or its \
             bookkeeping files",
            path.display()
        );
    }

    for name in &names {
        let from = staging.path().join(name);
        let to = into.join(name);
        remove_if_exists(&to)?;
        fs::rename(&from, &to)
            .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))?;
    }
    staging.close().with_context(|| {
        format!(
            "cannot remove the temporary directory in {}",
            into.display()
        )
    })?;
    Ok(names)
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
// Download

/// How one try ended, when it did not end well.
enum Failure {
    /// Worth another try: connection problems, timeouts, 5xx, cut bodies.
    Retry(String),
    /// Another try would get the same answer (404, 403, wrong size).
    Fatal(String),
    /// Not the network's fault (the disk's): reported as is.
    Local(anyhow::Error),
}

/// Fetches `archive.url` into `<name>.part`, resuming and retrying, then verifies it
/// and renames it to `<name>`.
fn download(
    archive: &Archive,
    name: &str,
    model_dir: &Path,
    expected: Option<&str>,
    opts: &Options,
) -> Result<()> {
    let url = archive.url;
    let final_path = model_dir.join(name);
    let part = model_dir.join(format!("{name}.part"));
    let fail = |reason: &str| {
        anyhow!(
            "cannot download {url}: {reason}; download it by other means and put it at {}, \
             {MANUAL_HINT}",
            final_path.display()
        )
    };

    let client = Client::builder()
        .connect_timeout(opts.timeout)
        .timeout(opts.timeout)
        .user_agent(concat!("flowers/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| fail(&describe(&e)))?;

    crate::info!(">> Downloading {name} from {url} ...");
    let bar = Bar::new(opts.show_progress, archive.size);
    let mut tries: u32 = 0;
    loop {
        tries += 1;
        match fetch_once(&client, url, &part, archive.size, &bar) {
            Ok(()) => break,
            Err(Failure::Local(e)) => return Err(e),
            Err(Failure::Fatal(reason)) => return Err(fail(&reason)),
            Err(Failure::Retry(reason)) => {
                if tries > opts.retries {
                    let reason = if tries > 1 {
                        format!("{reason} (after {tries} tries)")
                    } else {
                        reason
                    };
                    return Err(fail(&reason));
                }
                let wait = opts
                    .backoff
                    .saturating_mul(1u32 << (tries - 1).min(16))
                    .min(MAX_BACKOFF);
                bar.println(format!("{reason}; retrying in {wait:?}"));
                thread::sleep(wait);
            }
        }
    }
    drop(bar);

    let (got, len) = sha256_file(&part)?;
    if let Some(size) = archive.size.filter(|&size| len != size) {
        remove_if_exists(&part)?;
        return Err(fail(&format!(
            "got {len} bytes, expected {size}; the partial download was deleted"
        )));
    }
    if let Some(expected) = expected.filter(|expected| got != *expected) {
        remove_if_exists(&part)?;
        return Err(fail(&format!(
            "checksum mismatch: sha256 expected {expected}, got {got} ({len} bytes); \
             the download was deleted"
        )));
    }
    fs::rename(&part, &final_path).with_context(|| {
        format!(
            "cannot rename {} to {}",
            part.display(),
            final_path.display()
        )
    })?;
    crate::info!("Successfully downloaded {name} {len} bytes.");
    Ok(())
}

/// One HTTP request: resumes from the `.part` length with `Range`, or starts over
/// when the server does not honour it. Leaves what it got in `.part` on failure.
fn fetch_once(
    client: &Client,
    url: &str,
    part: &Path,
    size: Option<u64>,
    bar: &Bar,
) -> Result<(), Failure> {
    let local =
        |what: &str, e: io::Error| Failure::Local(anyhow!("cannot {what} {}: {e}", part.display()));
    let mut offset = match fs::metadata(part) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
        Err(e) => return Err(local("read", e)),
    };
    if let Some(size) = size {
        if offset > size {
            fs::remove_file(part).map_err(|e| local("remove", e))?;
            offset = 0;
        } else if offset == size && size > 0 {
            return Ok(()); // complete already; the checksum decides
        }
    }

    let mut request = client.get(url);
    if offset > 0 {
        request = request.header(RANGE, format!("bytes={offset}-"));
    }
    let mut response = request.send().map_err(|e| Failure::Retry(describe(&e)))?;
    let status = response.status();
    let content_range = response
        .headers()
        .get(CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);

    let (mut out, start, total) = match status {
        StatusCode::PARTIAL_CONTENT if offset > 0 => {
            match content_range.as_deref().and_then(parse_content_range) {
                Some((Some(first), total)) if first == offset => {
                    let out = OpenOptions::new()
                        .append(true)
                        .open(part)
                        .map_err(|e| local("open", e))?;
                    (out, offset, total)
                }
                _ => {
                    fs::remove_file(part).map_err(|e| local("remove", e))?;
                    return Err(Failure::Retry(format!(
                        "server answered the resume with an unexpected range ({})",
                        content_range.as_deref().unwrap_or("none")
                    )));
                }
            }
        }
        StatusCode::OK => {
            // Also the answer of servers that ignore `Range`: start over.
            let out = File::create(part).map_err(|e| local("create", e))?;
            (out, 0, response.content_length())
        }
        StatusCode::RANGE_NOT_SATISFIABLE if offset > 0 => {
            match content_range.as_deref().and_then(parse_content_range) {
                // We already have all of it.
                Some((None, Some(total))) if total == offset => return Ok(()),
                _ => {
                    fs::remove_file(part).map_err(|e| local("remove", e))?;
                    return Err(Failure::Retry(
                        "server refused to resume the partial download; starting over".into(),
                    ));
                }
            }
        }
        s if s.is_server_error()
            || s == StatusCode::REQUEST_TIMEOUT
            || s == StatusCode::TOO_MANY_REQUESTS =>
        {
            return Err(Failure::Retry(format!("HTTP {s}")));
        }
        s => return Err(Failure::Fatal(format!("HTTP {s}"))),
    };

    let total = total.or(size);
    let expected_end = response.content_length().map(|n| start + n);
    bar.start(total, start);
    let mut got = start;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match response.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let _ = out.flush();
                return Err(Failure::Retry(format!(
                    "connection lost after {got} bytes: {}",
                    describe(&e)
                )));
            }
        };
        out.write_all(&buf[..n]).map_err(|e| local("write", e))?;
        got += n as u64;
        bar.set(got);
        if let Some(size) = size.filter(|&size| got > size) {
            drop(out);
            fs::remove_file(part).map_err(|e| local("remove", e))?;
            return Err(Failure::Fatal(format!(
                "the server sent more than the expected {size} bytes"
            )));
        }
    }
    out.flush().map_err(|e| local("write", e))?;
    out.sync_all().map_err(|e| local("write", e))?;
    if let Some(end) = expected_end.filter(|&end| got < end) {
        return Err(Failure::Retry(format!(
            "connection closed after {got} of {end} bytes"
        )));
    }
    Ok(())
}

/// Parses `bytes a-b/total`, `bytes a-b/*` and `bytes */total` into (a, total).
fn parse_content_range(value: &str) -> Option<(Option<u64>, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    let first = match range.trim() {
        "*" => None,
        r => Some(r.split_once('-')?.0.trim().parse().ok()?),
    };
    Some((first, total))
}

/// A short cause for a network error, without the URL (the caller names it) and
/// without the layers of "error sending request" wrapping.
fn describe(err: &(dyn StdError + 'static)) -> String {
    let mut chain: Vec<&(dyn StdError + 'static)> = vec![err];
    let mut current = err;
    while let Some(next) = current.source() {
        chain.push(next);
        current = next;
    }
    for e in &chain {
        if e.downcast_ref::<reqwest::Error>()
            .is_some_and(|re| re.is_timeout())
        {
            return "timed out".into();
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::ConnectionRefused => return "connection refused".into(),
                io::ErrorKind::TimedOut => return "timed out".into(),
                _ => {}
            }
        }
    }
    let messages: Vec<String> = chain.iter().map(|e| e.to_string()).collect();
    if messages.iter().any(|m| m.contains("dns error")) {
        let last = messages.last().cloned().unwrap_or_default();
        return format!("cannot resolve the host name ({last})");
    }
    // The innermost cause is the most specific; the outer ones repeat the URL.
    messages
        .iter()
        .rev()
        .find(|m| !m.is_empty())
        .cloned()
        .unwrap_or_else(|| "unknown error".into())
}

/// The progress bar: bytes, total, rate, ETA; a spinner when the total is unknown.
struct Bar(ProgressBar);

impl Bar {
    fn new(show: bool, size: Option<u64>) -> Bar {
        let target = if show {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = Bar(ProgressBar::with_draw_target(size, target));
        bar.start(size, 0);
        bar
    }

    fn start(&self, total: Option<u64>, position: u64) {
        let template = if total.is_some() {
            "{bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
        } else {
            "{spinner} {bytes} {bytes_per_sec}"
        };
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        self.0.set_style(style);
        match total {
            Some(t) => self.0.set_length(t),
            None => self.0.unset_length(),
        }
        self.0.set_position(position);
        self.0.reset_eta();
    }

    fn set(&self, position: u64) {
        self.0.set_position(position);
    }

    /// Prints a line above the bar (plain stderr when the bar is hidden).
    fn println(&self, line: String) {
        if self.0.is_hidden() {
            crate::info!("{line}");
        } else {
            self.0.println(line);
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        // Cleared so the next line (success or error) starts on a clean line.
        self.0.finish_and_clear();
    }
}

// ---------------------------------------------------------------------------
// Bookkeeping

fn marker_name(archive: &str) -> String {
    format!(".{archive}.extracted")
}

fn marker_path(model_dir: &Path, archive: &str) -> PathBuf {
    model_dir.join(marker_name(archive))
}

/// The marker matches the archive on disk (size, and sha256 when one is expected)
/// and every top-level entry it lists still exists. Anything unreadable is "no".
fn marker_is_valid(marker: &Path, archive: &Path, expected: Option<&str>) -> bool {
    let (Ok(text), Ok(meta)) = (fs::read_to_string(marker), fs::metadata(archive)) else {
        return false;
    };
    let mut lines = text.lines();
    if lines.next() != Some("flowers-extracted v1") {
        return false;
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
    let mut text = format!("flowers-extracted v1\nsize {len}\nsha256 {sha}\n");
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
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
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
