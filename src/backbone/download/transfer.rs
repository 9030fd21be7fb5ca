//! The network half of a download: one URL into `<file>.part`, retried, resumed only
//! when that cannot splice two different files, and bounded in size, rate and time so
//! that no server (a captive portal, a broken mirror, a hostile one) can fill the disk
//! or hold a run forever.

use std::error::Error as StdError;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use reqwest::blocking::{Client, Response};
use reqwest::header::{
    HeaderMap, CONTENT_RANGE, CONTENT_TYPE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE,
};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};

use super::{remove_if_exists, sha256_file, Archive, Options, Place, MANUAL_HINT};

/// Longest wait between two tries, whatever `Options::backoff` and the try count.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Largest resume record read back; a real one is a URL and a validator.
const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// What `<file>.part.json` says about `<file>.part`: which URL it came from and the
/// validator that lets the server tell whether it still serves the same bytes.
///
/// A `.part` is only ever resumed with its record: without one (an older flowers, a
/// server that sends no `ETag` nor `Last-Modified`) or from another URL (a mirror
/// changed between runs), resuming would append one file's tail to another's head.
#[derive(Debug, Serialize, Deserialize)]
struct Record {
    url: String,
    /// Sent as `If-Range`: a strong `ETag`, else `Last-Modified`.
    if_range: String,
    /// The `ETag` of the first response, compared with that of a `206`.
    etag: Option<String>,
}

impl Record {
    /// The record of a fresh `200` from `url`, if the server gave a usable validator.
    fn of(url: &str, headers: &HeaderMap) -> Option<Record> {
        let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
        // If-Range takes a strong ETag only (RFC 9110 13.1.5): a weak one never matches.
        let etag = header(ETAG)
            .filter(|e| e.starts_with('"'))
            .map(str::to_string);
        let if_range = etag
            .clone()
            .or_else(|| header(LAST_MODIFIED).map(str::to_string))?;
        Some(Record {
            url: url.to_string(),
            if_range,
            etag,
        })
    }

    fn read(place: &Place) -> Option<Record> {
        let bytes = crate::util::files::read_regular(&place.record, MAX_RECORD_BYTES).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// How one try ended, when it did not end well.
enum Failure {
    /// Worth another try: connection problems, timeouts, 5xx, cut bodies, a slow patch.
    Retry(String),
    /// Another try would get the same answer (404, wrong size, over the cap): what was
    /// received is deleted.
    Fatal(String),
    /// Not the network's fault (the disk's): reported as is.
    Local(anyhow::Error),
}

/// Fetches `file.url` into `place.part`, resuming and retrying, then checks its size and
/// sha256 (when known). Only the `.part` and its record are written: the caller decides
/// whether it gets the final name.
pub(super) fn download(
    file: &Archive,
    place: &Place,
    expected: Option<&str>,
    opts: &Options,
) -> Result<()> {
    let url = file.url;
    let fail = |reason: &str| {
        anyhow!(
            "cannot download {url}: {reason}; download it by other means and put it at {}, \
             {MANUAL_HINT}",
            place.file.display()
        )
    };
    let client = Client::builder()
        .connect_timeout(opts.timeout)
        .timeout(opts.timeout)
        .user_agent(concat!("flowers/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| fail(&describe(&e)))?;

    crate::info!(">> Downloading {} from {url} ...", place.name);
    let bar = Bar::new(opts.show_progress, file.size);
    let transfer = Transfer {
        client: &client,
        url,
        place,
        size: file.size,
        limit: file.size.unwrap_or(opts.max_download_bytes),
        bar: &bar,
        opts,
        deadline: Instant::now() + opts.deadline,
    };
    let outcome = transfer.with_retries();
    drop(bar);
    match outcome {
        Ok(()) => {}
        Err(Failure::Local(e)) => return Err(e),
        Err(Failure::Fatal(reason)) => {
            place.discard_part()?;
            return Err(fail(&format!("{reason}; nothing was kept")));
        }
        Err(Failure::Retry(reason)) => {
            let kept = match Record::read(place).filter(|r| r.url == url) {
                Some(_) => "the partial download is kept for the next run to resume",
                None => {
                    place.discard_part()?;
                    "nothing was kept"
                }
            };
            return Err(fail(&format!("{reason}; {kept}")));
        }
    }
    check_complete(file, place, expected).map_err(|reason| fail(&reason))
}

/// The size and sha256 check of a finished `.part`; a mismatch deletes it.
fn check_complete(file: &Archive, place: &Place, expected: Option<&str>) -> Result<(), String> {
    let (got, len) = sha256_file(&place.part).map_err(|e| format!("{e:#}"))?;
    let wrong = match (file.size, expected) {
        (Some(size), _) if len != size => Some(format!("got {len} bytes, expected {size}")),
        (_, Some(expected)) if got != expected => Some(format!(
            "checksum mismatch: sha256 expected {expected}, got {got} ({len} bytes)"
        )),
        _ => None,
    };
    if let Some(wrong) = wrong {
        place.discard_part().map_err(|e| format!("{e:#}"))?;
        return Err(format!("{wrong}; the download was deleted"));
    }
    crate::info!("Successfully downloaded {} {len} bytes.", place.name);
    Ok(())
}

/// One download in progress and its bounds.
struct Transfer<'a> {
    client: &'a Client,
    url: &'a str,
    place: &'a Place,
    /// The size the registry knows, if it does.
    size: Option<u64>,
    /// Most bytes accepted: the known size, else `Options::max_download_bytes`.
    limit: u64,
    bar: &'a Bar,
    opts: &'a Options,
    /// When the whole download, all tries included, is given up.
    deadline: Instant,
}

impl Transfer<'_> {
    /// Tries until one succeeds, a failure is final, the tries are used up or the
    /// deadline has passed.
    fn with_retries(&self) -> Result<(), Failure> {
        let mut tries: u32 = 0;
        loop {
            tries += 1;
            let reason = match self.once() {
                Err(Failure::Retry(reason)) => reason,
                done => return done,
            };
            let reason = if tries > 1 {
                format!("{reason} (after {tries} tries)")
            } else {
                reason
            };
            let wait = self
                .opts
                .backoff
                .saturating_mul(1u32 << (tries - 1).min(16))
                .min(MAX_BACKOFF);
            if tries > self.opts.retries {
                return Err(Failure::Retry(reason));
            }
            if Instant::now() + wait >= self.deadline {
                return Err(Failure::Retry(format!(
                    "{reason}; gave up at the overall limit of {:?} for one download",
                    self.opts.deadline
                )));
            }
            self.bar.println(format!("{reason}; retrying in {wait:?}"));
            thread::sleep(wait);
        }
    }

    /// One HTTP request: resumes the `.part` with `Range` and `If-Range` when its record
    /// allows, else starts over.
    fn once(&self) -> Result<(), Failure> {
        let resume = self.resume_point()?;
        if let (Some((offset, _)), Some(size)) = (&resume, self.size) {
            if *offset == size {
                return Ok(()); // complete already; the checksum decides
            }
        }
        let mut request = self.client.get(self.url);
        if let Some((offset, record)) = &resume {
            request = request
                .header(RANGE, format!("bytes={offset}-"))
                .header(IF_RANGE, record.if_range.as_str());
        }
        let response = request.send().map_err(|e| Failure::Retry(describe(&e)))?;
        match (response.status(), resume) {
            (StatusCode::PARTIAL_CONTENT, Some((offset, record))) => {
                self.append(response, offset, &record)
            }
            (StatusCode::OK, _) => self.restart(response),
            (StatusCode::RANGE_NOT_SATISFIABLE, Some((offset, _))) => {
                self.complete_or_restart(&response, offset)
            }
            (s, _)
                if s.is_server_error()
                    || s == StatusCode::REQUEST_TIMEOUT
                    || s == StatusCode::TOO_MANY_REQUESTS =>
            {
                Err(Failure::Retry(format!("HTTP {s}")))
            }
            (s, _) => Err(Failure::Fatal(format!("HTTP {s}"))),
        }
    }

    /// The `.part`'s length and record when they allow a resume: same URL, a validator,
    /// not over the limit. Anything else is deleted, so the next request starts over.
    fn resume_point(&self) -> Result<Option<(u64, Record)>, Failure> {
        let len = match fs::symlink_metadata(&self.place.part) {
            Ok(meta) if meta.is_file() => meta.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Ok(_) => u64::MAX, // not a regular file: discarded below
            Err(e) => return Err(self.local("read", e)),
        };
        match Record::read(self.place) {
            Some(record) if record.url == self.url && len > 0 && len <= self.limit => {
                Ok(Some((len, record)))
            }
            _ => {
                self.place.discard_part().map_err(Failure::Local)?;
                Ok(None)
            }
        }
    }

    /// A `206` to our resume: appended only if it starts where the `.part` ends, is of
    /// the same file (its `ETag`, when both have one) and stays within the limit.
    fn append(&self, response: Response, offset: u64, record: &Record) -> Result<(), Failure> {
        let range = header(&response, CONTENT_RANGE);
        let (first, total) = range
            .as_deref()
            .and_then(parse_content_range)
            .unwrap_or((None, None));
        let etag = header(&response, ETAG);
        let changed = record.etag.is_some() && etag.is_some() && record.etag != etag;
        if first != Some(offset) || changed {
            self.place.discard_part().map_err(Failure::Local)?;
            return Err(Failure::Retry(format!(
                "the server answered the resume with another range or file ({}); starting over",
                range.as_deref().unwrap_or("no Content-Range")
            )));
        }
        let announced = total.or(response.content_length().map(|n| offset + n));
        self.check_announced(announced)?;
        let out = OpenOptions::new()
            .append(true)
            .open(&self.place.part)
            .map_err(|e| self.local("open", e))?;
        let end = response.content_length().map(|n| offset + n);
        self.receive(response, out, offset, end)
    }

    /// A `200`: the whole file from the start (also the answer to a resume whose
    /// validator no longer matches, or of a server that ignores `Range`).
    fn restart(&self, response: Response) -> Result<(), Failure> {
        self.check_announced(response.content_length())?;
        if let Some(kind) = header(&response, CONTENT_TYPE).filter(|t| t.starts_with("text/html")) {
            return Err(Failure::Fatal(format!(
                "the server sent a web page ({kind}), not the file: a captive portal, a login \
                 page or a wrong URL?"
            )));
        }
        let out = File::create(&self.place.part).map_err(|e| self.local("create", e))?;
        match Record::of(self.url, response.headers()) {
            Some(record) => {
                let text = serde_json::to_vec(&record).map_err(|e| Failure::Local(e.into()))?;
                fs::write(&self.place.record, text).map_err(|e| self.local_record(e))?;
            }
            None => remove_if_exists(&self.place.record).map_err(Failure::Local)?,
        }
        let end = response.content_length();
        self.receive(response, out, 0, end)
    }

    /// A `416` to our resume: fine if the `.part` is the whole file already.
    fn complete_or_restart(&self, response: &Response, offset: u64) -> Result<(), Failure> {
        let range = header(response, CONTENT_RANGE);
        if let Some((None, Some(total))) = range.as_deref().and_then(parse_content_range) {
            if total == offset {
                return Ok(());
            }
        }
        self.place.discard_part().map_err(Failure::Local)?;
        Err(Failure::Retry(
            "the server refused to resume the partial download; starting over".into(),
        ))
    }

    /// Refuses a length the server announces before a byte of the body is read: another
    /// than the known size, or over the limit.
    fn check_announced(&self, total: Option<u64>) -> Result<(), Failure> {
        let Some(total) = total else { return Ok(()) };
        match self.size {
            Some(size) if total != size => Err(Failure::Fatal(format!(
                "the server announces {total} bytes, expected {size}"
            ))),
            None if total > self.limit => Err(Failure::Fatal(format!(
                "the server announces {total} bytes, over the limit of {} bytes \
                 (--max-download-size)",
                self.limit
            ))),
            _ => Ok(()),
        }
    }

    /// Streams the body into `out` from `start`, within the limit, the minimum rate and
    /// the deadline. `end` is where the server said the body ends.
    fn receive(
        &self,
        mut response: Response,
        mut out: File,
        start: u64,
        end: Option<u64>,
    ) -> Result<(), Failure> {
        self.bar.start(end.or(self.size), start);
        let mut pace = Pace::new(self.opts, self.deadline, start);
        let mut got = start;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match response.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ = out.flush();
                    let cause = describe(&e);
                    return Err(Failure::Retry(format!(
                        "connection lost after {got} bytes: {cause}"
                    )));
                }
            };
            if got + n as u64 > self.limit {
                return Err(Failure::Fatal(match self.size {
                    Some(size) => format!("the server sent more than the expected {size} bytes"),
                    None => format!(
                        "the server sent more than the limit of {} bytes (--max-download-size)",
                        self.limit
                    ),
                }));
            }
            out.write_all(&buf[..n])
                .map_err(|e| self.local("write", e))?;
            got += n as u64;
            self.bar.set(got);
            pace.check(got).map_err(Failure::Retry)?;
        }
        out.sync_all().map_err(|e| self.local("write", e))?;
        match end.filter(|&end| got < end) {
            Some(end) => Err(Failure::Retry(format!(
                "connection closed after {got} of {end} bytes"
            ))),
            None => Ok(()),
        }
    }

    fn local(&self, what: &str, e: io::Error) -> Failure {
        Failure::Local(anyhow!("cannot {what} {}: {e}", self.place.part.display()))
    }

    fn local_record(&self, e: io::Error) -> Failure {
        Failure::Local(anyhow!("cannot write {}: {e}", self.place.record.display()))
    }
}

/// curl's `--speed-limit`/`--speed-time` and the overall deadline: a server that sends a
/// byte now and then never trips a per-read timeout, so the rate is judged over a window.
struct Pace {
    min_rate: u64,
    window: Duration,
    deadline: Instant,
    /// Start of the current window and the byte count then.
    since: Instant,
    at: u64,
}

impl Pace {
    fn new(opts: &Options, deadline: Instant, got: u64) -> Pace {
        Pace {
            min_rate: opts.min_rate,
            window: opts.rate_window,
            deadline,
            since: Instant::now(),
            at: got,
        }
    }

    fn check(&mut self, got: u64) -> Result<(), String> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(format!(
                "not complete after {got} bytes at the overall limit for one download"
            ));
        }
        let elapsed = now.duration_since(self.since);
        if elapsed < self.window {
            return Ok(());
        }
        let rate = (got - self.at) as f64 / elapsed.as_secs_f64();
        if rate < self.min_rate as f64 {
            return Err(format!(
                "too slow: {rate:.0} bytes/s over {:.0?}, under the minimum of {} bytes/s",
                elapsed, self.min_rate
            ));
        }
        self.since = now;
        self.at = got;
        Ok(())
    }
}

fn header(response: &Response, name: reqwest::header::HeaderName) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
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

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn pace(window_secs: u64, started_secs_ago: u64) -> Pace {
        Pace {
            min_rate: 1024,
            window: Duration::from_secs(window_secs),
            deadline: Instant::now() + Duration::from_secs(3600),
            since: Instant::now() - Duration::from_secs(started_secs_ago),
            at: 0,
        }
    }

    #[test]
    fn the_rate_is_judged_over_the_window_only() {
        // Within the window nothing is judged, however slow.
        assert!(pace(30, 10).check(1).is_ok());
        // Past it: the average since the window began.
        let error = pace(30, 31).check(30 * 100).unwrap_err();
        assert!(
            error.contains("under the minimum of 1024 bytes/s"),
            "{error}"
        );
        let mut fast = pace(30, 31);
        assert!(fast.check(31 * 2048).is_ok());
        // A new window starts there: the next bytes are judged on their own.
        assert_eq!(fast.at, 31 * 2048);
    }

    #[test]
    fn the_deadline_ends_even_a_fast_transfer() {
        let mut late = pace(30, 0);
        late.deadline = Instant::now() - Duration::from_millis(1);
        assert!(late.check(1 << 30).unwrap_err().contains("overall limit"));
    }

    #[test]
    fn only_strong_etags_and_dates_are_validators() {
        let mut headers = HeaderMap::new();
        assert!(Record::of("u", &headers).is_none());
        headers.insert(ETAG, HeaderValue::from_static("W/\"weak\""));
        assert!(Record::of("u", &headers).is_none());
        let date = "Wed, 21 Oct 2015 07:28:00 GMT";
        headers.insert(LAST_MODIFIED, HeaderValue::from_static(date));
        assert_eq!(Record::of("u", &headers).unwrap().if_range, date);
        headers.insert(ETAG, HeaderValue::from_static("\"strong\""));
        let record = Record::of("u", &headers).unwrap();
        assert_eq!(record.if_range, "\"strong\"");
        assert_eq!(record.etag.as_deref(), Some("\"strong\""));
    }

    #[test]
    fn content_ranges_parse() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((Some(100), Some(200)))
        );
        assert_eq!(parse_content_range("bytes 0-9/*"), Some((Some(0), None)));
        assert_eq!(parse_content_range("bytes */200"), Some((None, Some(200))));
        assert_eq!(parse_content_range("items 0-9/10"), None);
    }
}
