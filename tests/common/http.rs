//! Test helpers: a tiny HTTP/1.1 server on 127.0.0.1 whose every answer the test
//! scripts, archive builders, and directory listings.

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
    /// 200 with the whole body, or 206 / 416 when asked for a range.
    Serve,
    /// Like `Serve` (same headers, full Content-Length) but closes after N body bytes.
    Cut(usize),
    /// Like `Serve` but ignores `Range`: always 200 with the whole body.
    IgnoreRange,
    /// This status with a short text body.
    Status(u16),
    /// Reads the request, then says nothing for this long and closes.
    Stall(Duration),
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub range: Option<String>,
    pub status: u16,
}

struct State {
    body: Vec<u8>,
    script: Mutex<VecDeque<Step>>,
    then: Step,
    seen: Mutex<Vec<Seen>>,
}

pub struct Server {
    addr: SocketAddr,
    state: Arc<State>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `body` at every path: request i follows `script[i]`, later ones `then`.
    pub fn start(body: Vec<u8>, script: Vec<Step>, then: Step) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local_addr");
        let state = Arc::new(State {
            body,
            script: Mutex::new(script.into()),
            then,
            seen: Mutex::new(Vec::new()),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let accept = thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
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
            stop,
            accept: Some(accept),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}/{}", self.addr, path.trim_start_matches('/'))
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn handle(mut conn: TcpStream, state: &State) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return, // closed before a full request (e.g. the Drop wake-up)
        }
        if head.len() > 16 * 1024 {
            return;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let range = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("range"))
        .map(|(_, v)| v.trim().to_string());

    let step = state
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| state.then.clone());
    let body = &state.body;
    let len = body.len();
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse::<usize>().ok());

    let (status, headers, data, cut): (u16, String, &[u8], Option<usize>) = match step {
        Step::Status(code) => (code, String::new(), b"nope\n".as_slice(), None),
        Step::Stall(d) => {
            record(state, path, range, 0);
            thread::sleep(d);
            return;
        }
        Step::IgnoreRange => (200, String::new(), body.as_slice(), None),
        Step::Serve | Step::Cut(_) => {
            let cut = match step {
                Step::Cut(n) => Some(n),
                _ => None,
            };
            match start {
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
            }
        }
    };
    record(state, path, range, status);
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        404 => "Not Found",
        416 => "Range Not Satisfiable",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\
         Accept-Ranges: bytes\r\n{headers}Connection: close\r\n\r\n",
        data.len()
    );
    let send = cut.map_or(data.len(), |c| c.min(data.len()));
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(&data[..send]);
    let _ = conn.flush();
    let _ = conn.shutdown(Shutdown::Both);
}

fn record(state: &State, path: String, range: Option<String>, status: u16) {
    state.seen.lock().unwrap().push(Seen {
        path,
        range,
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
