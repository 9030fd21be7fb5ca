//! Test helpers: a tiny HTTP/1.1 server on 127.0.0.1 whose every answer the test
//! scripts (well-behaved or not), archive builders, and directory listings.

use std::collections::{BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use sha2::{Digest, Sha256};

/// What the server does with one request.
#[derive(Clone, Debug)]
pub enum Step {
    /// 200 with the whole body, or 206 / 416 when asked for a range (and `If-Range`,
    /// if sent, matches the server's validator; else 200 with the whole body).
    Serve,
    /// Like `Serve` (same headers, full Content-Length) but closes after N body bytes.
    Cut(usize),
    /// Like `Serve` but ignores `Range`: always 200 with the whole body.
    IgnoreRange,
    /// Like `Serve` but answers a range with 206 even when `If-Range` does not match (a
    /// broken server: only the client's own checks stop a splice).
    IgnoreIfRange,
    /// This status with a short text body.
    Status(u16),
    /// Reads the request, then says nothing for this long and closes.
    Stall(Duration),
    /// 200 with a captive portal's page, `Content-Type: text/html`.
    Html,
    /// 200 with these bytes instead of the body, as `application/octet-stream`.
    Other(Vec<u8>),
    /// 200, chunked, noise without end (until the client hangs up).
    Endless,
    /// 200 announcing this Content-Length, then noise without end.
    Overlong(u64),
    /// 200 announcing the body's length (or `declared`), then one byte of it every `every`.
    Drip {
        declared: Option<u64>,
        every: Duration,
    },
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub if_range: Option<String>,
    pub status: u16,
}

/// How a server describes its file: the validators a client may resume against.
#[derive(Clone, Debug, Default)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Validators {
    /// A strong ETag made from the body, as most servers have.
    pub fn etag_of(body: &[u8]) -> Validators {
        Validators {
            etag: Some(format!("\"{}\"", &sha256_hex(body)[..16])),
            last_modified: None,
        }
    }

    pub fn none() -> Validators {
        Validators::default()
    }

    fn headers(&self) -> String {
        let mut out = String::new();
        if let Some(etag) = &self.etag {
            out.push_str(&format!("ETag: {etag}\r\n"));
        }
        if let Some(date) = &self.last_modified {
            out.push_str(&format!("Last-Modified: {date}\r\n"));
        }
        out
    }

    fn matches(&self, if_range: &str) -> bool {
        Some(if_range) == self.etag.as_deref() || Some(if_range) == self.last_modified.as_deref()
    }
}

struct State {
    body: Vec<u8>,
    script: Mutex<VecDeque<Step>>,
    then: Step,
    validators: Validators,
    seen: Mutex<Vec<Seen>>,
    stop: AtomicBool,
}

pub struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `body` at every path with a strong ETag: request i follows `script[i]`,
    /// later ones `then`.
    pub fn start(body: Vec<u8>, script: Vec<Step>, then: Step) -> Server {
        let validators = Validators::etag_of(&body);
        Server::start_on(0, body, script, then, validators)
    }

    /// The same on `port` (0: any free one; a port a dropped server used, to stand for
    /// the same URL serving another file), with these validators.
    pub fn start_on(
        port: u16,
        body: Vec<u8>,
        script: Vec<Step>,
        then: Step,
        validators: Validators,
    ) -> Server {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            body,
            script: Mutex::new(script.into()),
            then,
            validators,
            seen: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let st = Arc::clone(&state);
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = Arc::clone(&st);
                thread::spawn(move || handle(conn, &st));
            }
        });
        Server {
            addr,
            state,
            accept: Some(accept),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// The request line's path and its `Range` and `If-Range` headers.
fn read_request(conn: &mut TcpStream) -> Option<(String, Option<String>, Option<String>)> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return None, // closed before a full request (e.g. the Drop wake-up)
        }
        if head.len() > 16 * 1024 {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    Some((path, get("range"), get("if-range")))
}

fn handle(mut conn: TcpStream, state: &State) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let Some((path, range, if_range)) = read_request(&mut conn) else {
        return;
    };
    let step = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| state.then.clone());
    let seen = |status| record(state, &path, &range, &if_range, status);
    match step {
        Step::Stall(d) => {
            seen(0);
            thread::sleep(d);
        }
        Step::Html => {
            seen(200);
            let page = b"<html><body>Please log in to use this network.</body></html>";
            respond(
                &mut conn,
                200,
                "Content-Type: text/html; charset=utf-8\r\n",
                page,
                None,
            );
        }
        Step::Other(bytes) => {
            seen(200);
            respond(&mut conn, 200, "", &bytes, None);
        }
        Step::Endless => {
            seen(200);
            let head = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
            let chunk = [b"10000\r\n".as_slice(), &noise(0x10000, 3), b"\r\n"].concat();
            stream_forever(&mut conn, state, head, &chunk, Duration::ZERO);
        }
        Step::Overlong(declared) => {
            seen(200);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
            );
            stream_forever(&mut conn, state, &head, &noise(0x10000, 5), Duration::ZERO);
        }
        Step::Drip { declared, every } => {
            seen(200);
            let len = declared.unwrap_or(state.body.len() as u64);
            let head =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n");
            stream_forever(&mut conn, state, &head, b"x", every);
        }
        Step::Status(code) => {
            seen(code);
            respond(&mut conn, code, "", b"nope\n", None);
        }
        Step::Serve | Step::Cut(_) | Step::IgnoreRange | Step::IgnoreIfRange => serve(
            &mut conn,
            state,
            &step,
            range.as_deref(),
            if_range.as_deref(),
            seen,
        ),
    }
    let _ = conn.shutdown(Shutdown::Both);
}

/// The well-behaved answers (and their near misses): the body, or a range of it.
fn serve(
    conn: &mut TcpStream,
    state: &State,
    step: &Step,
    range: Option<&str>,
    if_range: Option<&str>,
    seen: impl Fn(u16),
) {
    let body = &state.body;
    let len = body.len();
    let honoured = match step {
        Step::IgnoreRange => false,
        Step::IgnoreIfRange => true,
        _ => if_range.is_none_or(|v| state.validators.matches(v)),
    };
    let start = range
        .filter(|_| honoured)
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());
    let cut = match step {
        Step::Cut(n) => Some(*n),
        _ => None,
    };
    let validators = state.validators.headers();
    let (status, headers, data, cut) = match start {
        Some(s) if s >= len => (
            416,
            format!("Content-Range: bytes */{len}\r\n"),
            &[][..],
            None,
        ),
        Some(s) => (
            206,
            format!("Content-Range: bytes {s}-{}/{len}\r\n", len - 1),
            &body[s..],
            cut,
        ),
        None => (200, String::new(), body.as_slice(), cut),
    };
    seen(status);
    let headers = format!("Accept-Ranges: bytes\r\n{validators}{headers}");
    respond(conn, status, &headers, data, cut);
}

fn respond(conn: &mut TcpStream, status: u16, headers: &str, data: &[u8], cut: Option<usize>) {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let content_type = if headers.contains("Content-Type") {
        ""
    } else {
        "Content-Type: application/octet-stream\r\n"
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\n{content_type}{headers}\
         Connection: close\r\n\r\n",
        data.len()
    );
    let send = cut.map_or(data.len(), |c| c.min(data.len()));
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&data[..send]);
    let _ = conn.flush();
}

/// Sends `head`, then `piece` again and again, `every` apart, until the client hangs up
/// or the server is dropped.
fn stream_forever(conn: &mut TcpStream, state: &State, head: &str, piece: &[u8], every: Duration) {
    if conn.write_all(head.as_bytes()).is_err() {
        return;
    }
    while !state.stop.load(Ordering::SeqCst) {
        if conn.write_all(piece).and_then(|()| conn.flush()).is_err() {
            return;
        }
        thread::sleep(every);
    }
}

fn record(
    state: &State,
    path: &str,
    range: &Option<String>,
    if_range: &Option<String>,
    status: u16,
) {
    state.seen.lock().unwrap().push(Seen {
        path: path.to_string(),
        range: range.clone(),
        if_range: if_range.clone(),
        status,
    });
}

pub fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bytes that do not compress away, so cuts and resumes happen mid-file.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A well-formed .tgz like the model archives: `<top>/graph.pb` (noise) and
/// `<top>/labels.txt`.
pub fn model_tgz(top: &str, graph_len: usize) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    builder
        .append_data(&mut dir, format!("{top}/"), std::io::empty())
        .unwrap();
    for (name, data) in [
        ("graph.pb", noise(graph_len, 7)),
        ("labels.txt", b"0:background\n1:daisy\n".to_vec()),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        builder
            .append_data(&mut h, format!("{top}/{name}"), data.as_slice())
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A tar header with `name` written raw (the `tar` crate refuses `..` and `/`
/// through `set_path`, which is the point of these archives).
pub fn raw_header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_old();
    let bytes = name.as_bytes();
    h.as_old_mut().name[..bytes.len()].copy_from_slice(bytes);
    h.set_entry_type(kind);
    h.set_mode(0o644);
    h.set_size(size);
    h.set_cksum();
    h
}

/// Gzips a tar made of (header, data) pairs.
pub fn tgz_of(entries: Vec<(tar::Header, Vec<u8>)>) -> Vec<u8> {
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    for (h, data) in entries {
        builder.append(&h, data.as_slice()).unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap()
}

/// A multi-member gzip (as `cat a.gz b.gz` makes, and as gzip and Python's tarfile
/// read) of each block repeated: each block is compressed once, so a 200 MB bomb
/// is built in milliseconds even in a debug build.
pub fn gz_repeated(blocks: &[(&[u8], usize)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (block, times) in blocks {
        let mut enc = GzEncoder::new(Vec::new(), Compression::best());
        enc.write_all(block).unwrap();
        let member = enc.finish().unwrap();
        for _ in 0..*times {
            out.extend_from_slice(&member);
        }
    }
    out
}

/// Every path under `dir` (relative, symlinks not followed).
pub fn listing(dir: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            out.insert(p.strip_prefix(root).unwrap().to_path_buf());
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(dir, dir, &mut out);
    out
}

/// Names directly in `dir`.
pub fn names(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
