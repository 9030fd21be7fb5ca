//! The digest a retrained graph carries of itself, so that `label` and `evaluate` refuse a
//! damaged file instead of giving other answers with exit 0.
//!
//! The digest is the sha256 of the graph file's bytes with the digest's own 64 hex digits
//! read as `0`s. The raw bytes cover everything that decides an answer (weights, graph
//! structure, the metadata that steers preprocessing and labels) in one pass, with no
//! decoding and re-encoding, and equal graphs still get equal bytes. It lives in the
//! metadata entry [`keys::DIGEST`] (`sha256:<hex>`), written last: at the end of an ONNX
//! file, the last string of a TensorFlow graph's metadata constant.
//!
//! It detects damage, not tampering: anyone can recompute it (it is not a signature).
//!
//! Graphs without the entry (retrain.py's, older flowers') load unchecked. So that damage to
//! the key cannot pass for "no digest", a value still shaped as one where flowers writes it
//! (the end of an ONNX file; `=sha256:` in a TensorFlow metadata string) counts as a
//! damaged entry.

use std::fs::File;
use std::ops::Range;

use anyhow::{anyhow, bail, Result};
use memchr::memmem;
use sha2::{Digest, Sha256};

use super::metadata::keys;
use crate::util::files::read_exact_at;

/// The value written before the digest is known; [`seal`] fills in the digits.
pub const UNSEALED: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// Hex digits of a sha256.
const DIGITS: usize = 64;

/// Bytes at a file's end searched for its digest before anything else is read: flowers
/// writes the entry last.
const TAIL: u64 = 4096;

/// Bytes hashed per read when a file is hashed from disk.
const CHUNK: usize = 256 << 10;

/// What comes between the key and the digits in an ONNX `StringStringEntryProto`: the value
/// field's tag (2) and length (71).
const ONNX_LEAD: &[u8] = b"\x12\x47sha256:";
/// The same in a TensorFlow metadata string, `key=value`.
const TENSORFLOW_LEAD: &[u8] = b"=sha256:";
const LEADS: [&[u8]; 2] = [ONNX_LEAD, TENSORFLOW_LEAD];

/// Where a graph's digest is, if it has one.
#[derive(Debug, PartialEq)]
enum Found {
    /// No digest entry: a graph written without one.
    Absent,
    /// The digits of the digest entry.
    At(Range<usize>),
    /// A digest entry that is not one any more.
    Damaged,
}

fn locate(bytes: &[u8]) -> Found {
    let key = keys::DIGEST.as_bytes();
    match memmem::find_iter(bytes, key).last() {
        Some(at) => digits_after(bytes, at + key.len()).map_or(Found::Damaged, Found::At),
        None if value_without_key(bytes) => Found::Damaged,
        None => Found::Absent,
    }
}

/// Whether a digest value sits where flowers writes one, its key gone.
fn value_without_key(bytes: &[u8]) -> bool {
    let before_digits = &bytes[..bytes.len().saturating_sub(DIGITS)];
    before_digits.ends_with(ONNX_LEAD) || memmem::find(bytes, TENSORFLOW_LEAD).is_some()
}

/// The 64 lowercase hex digits at `start` behind one of the [`LEADS`].
fn digits_after(bytes: &[u8], start: usize) -> Option<Range<usize>> {
    let rest = &bytes[start..];
    let lead = LEADS.iter().find(|lead| rest.starts_with(lead))?;
    let digits = start + lead.len()..start + lead.len() + DIGITS;
    let hex = bytes.get(digits.clone())?;
    hex.iter()
        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        .then_some(digits)
}

/// The digest of `bytes` with `digits` read as zeros, in hex.
fn compute(bytes: &[u8], digits: Range<usize>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(&bytes[..digits.start]);
    hasher.update([b'0'; DIGITS]);
    hasher.update(&bytes[digits.end..]);
    format!("{:x}", hasher.finalize())
}

/// Fills in the digest of an encoded graph whose metadata holds [`UNSEALED`].
pub fn seal(bytes: &mut [u8]) {
    if let Found::At(digits) = locate(bytes) {
        let digest = compute(bytes, digits.clone());
        bytes[digits].copy_from_slice(digest.as_bytes());
    }
}

/// Checks a graph file's digest: a graph without one passes; one that does not match its
/// bytes is refused, naming the file.
pub fn verify(bytes: &[u8], display: &str) -> Result<()> {
    let intact = match locate(bytes) {
        Found::Absent => true,
        Found::At(digits) => bytes[digits.clone()] == *compute(bytes, digits).as_bytes(),
        Found::Damaged => false,
    };
    intact_or_refused(intact, display)
}

fn intact_or_refused(intact: bool, display: &str) -> Result<()> {
    if !intact {
        bail!("{display} is damaged: digest mismatch; retrain or restore it");
    }
    Ok(())
}

/// [`verify`] for a graph on disk, `size` bytes of `file`, without holding it in memory
/// when the digest is in its last bytes (where flowers writes it in an ONNX file): the
/// digest found there is the file's last, so the answer is [`verify`]'s. Otherwise the
/// file is read whole and given to [`verify`].
pub fn verify_file(file: &File, size: u64, display: &str) -> Result<()> {
    let read = |buf: &mut [u8], at: u64| {
        read_exact_at(file, buf, at).map_err(|e| anyhow!("cannot read graph {display}: {e}"))
    };
    let tail_start = size.saturating_sub(TAIL);
    let mut tail = vec![0; (size - tail_start) as usize];
    read(&mut tail, tail_start)?;
    let Found::At(in_tail) = locate(&tail) else {
        let mut whole = vec![0; size as usize];
        read(&mut whole, 0)?;
        return verify(&whole, display);
    };
    let digits = tail_start + in_tail.start as u64..tail_start + in_tail.end as u64;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0; CHUNK];
    for (start, end) in [(0, digits.start), (digits.end, size)] {
        let mut at = start;
        while at < end {
            let n = CHUNK.min((end - at) as usize);
            read(&mut chunk[..n], at)?;
            hasher.update(&chunk[..n]);
            at += n as u64;
        }
        if start == 0 {
            hasher.update([b'0'; DIGITS]);
        }
    }
    let digest = format!("{:x}", hasher.finalize());
    intact_or_refused(tail[in_tail] == *digest.as_bytes(), display)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    /// Bytes shaped as an ONNX file ending in its digest entry, unsealed.
    fn onnx_like(body: &[u8]) -> Vec<u8> {
        let mut bytes = body.to_vec();
        bytes.extend([0x72, 0x59, 0x0a, 0x0e]);
        bytes.extend(keys::DIGEST.as_bytes());
        bytes.extend([0x12, 0x47]);
        bytes.extend(UNSEALED.as_bytes());
        bytes
    }

    fn tensorflow_like(body: &[u8]) -> Vec<u8> {
        let mut bytes = body.to_vec();
        bytes.extend(format!("{}={UNSEALED}", keys::DIGEST).as_bytes());
        bytes.extend(b"\x22\x02\x08\x1a");
        bytes
    }

    #[test]
    fn a_sealed_graph_verifies_and_any_changed_byte_is_caught() {
        let mut rng = ChaCha8Rng::seed_from_u64(22);
        for make in [onnx_like, tensorflow_like] {
            let mut bytes = make(b"weights and structure 0123456789");
            seal(&mut bytes);
            assert!(matches!(locate(&bytes), Found::At(_)));
            verify(&bytes, "g").unwrap();
            for at in 0..bytes.len() {
                let mut damaged = bytes.clone();
                damaged[at] ^= rng.random_range(1..=255u8);
                let error = verify(&damaged, "g.onnx").unwrap_err().to_string();
                assert_eq!(
                    error,
                    "g.onnx is damaged: digest mismatch; retrain or restore it"
                );
            }
        }
    }

    #[test]
    fn sealing_is_deterministic_and_covers_the_body() {
        let mut a = onnx_like(b"same");
        let mut b = onnx_like(b"same");
        let mut c = onnx_like(b"sane");
        seal(&mut a);
        seal(&mut b);
        seal(&mut c);
        assert_eq!(a, b);
        assert_ne!(a[a.len() - DIGITS..], c[c.len() - DIGITS..]);
    }

    #[test]
    fn graphs_without_a_digest_pass_and_a_lost_key_does_not_hide_one() {
        verify(b"\x0a\x05input retrain.py's graph", "g").unwrap();
        let backbone = b"\x12\x58mobilenet sha256:1eb2c8b0f5b0d6b1";
        verify(backbone, "g").unwrap();
        // A backbone's own metadata shaped as a digest, followed by flowers' entries.
        let mut inherited = b"\x72\x4f\x0a\x04hash".to_vec();
        inherited.extend(ONNX_LEAD);
        inherited.extend(&UNSEALED.as_bytes()["sha256:".len()..]);
        inherited.extend(b"\x72\x10\x0a\x0eflowers.layout");
        assert_eq!(locate(&inherited), Found::Absent);
        let mut bytes = onnx_like(b"body");
        seal(&mut bytes);
        let key = memmem::find(&bytes, keys::DIGEST.as_bytes()).unwrap();
        bytes[key] = b'F';
        assert_eq!(locate(&bytes), Found::Damaged);
        let mut bytes = tensorflow_like(b"body");
        seal(&mut bytes);
        let key = memmem::find(&bytes, keys::DIGEST.as_bytes()).unwrap();
        bytes[key + 3] = b'X';
        assert_eq!(locate(&bytes), Found::Damaged);
        assert!(verify(&bytes, "g").is_err());
    }

    #[test]
    fn a_file_verifies_from_disk_as_its_bytes_do_in_memory() {
        let mut rng = ChaCha8Rng::seed_from_u64(24);
        // Longer than a chunk, so the hash runs over several reads and the digest's span.
        let body: Vec<u8> = (0..CHUNK * 2 + 77).map(|_| rng.random()).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.onnx");
        let mut cases = vec![body.clone(), b"short".to_vec()];
        for make in [onnx_like, tensorflow_like] {
            let mut sealed = make(&body);
            seal(&mut sealed);
            for at in [0, CHUNK - 1, CHUNK, sealed.len() - 70, sealed.len() - 1] {
                let mut damaged = sealed.clone();
                damaged[at] ^= 0x20;
                cases.push(damaged);
            }
            cases.push(sealed);
        }
        for bytes in cases {
            std::fs::write(&path, &bytes).unwrap();
            let file = File::open(&path).unwrap();
            let on_disk = verify_file(&file, bytes.len() as u64, "g").map_err(|e| e.to_string());
            let in_memory = verify(&bytes, "g").map_err(|e| e.to_string());
            assert_eq!(on_disk, in_memory);
        }
    }

    #[test]
    fn a_file_shorter_than_it_was_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("g.onnx");
        let mut bytes = onnx_like(b"weights");
        seal(&mut bytes);
        std::fs::write(&path, &bytes).unwrap();
        let file = File::open(&path).unwrap();
        let error = verify_file(&file, bytes.len() as u64 + 10, "g.onnx").unwrap_err();
        assert!(
            error.to_string().starts_with("cannot read graph g.onnx: "),
            "{error}"
        );
    }
}
