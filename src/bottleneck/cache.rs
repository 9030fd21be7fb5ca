//! The on-disk bottleneck cache.
//!
//! Layout: `<bottleneck-dir>/<backbone identity, 16 hex>/<image sha256[..2]>/<image sha256>.bn`.
//! The key is the image's *content* and the backbone's identity (model bytes, bottleneck
//! tensor, preprocessing), so an edited image or another model never reuses a stale vector.
//!
//! An entry is `FLWRBN01`, the backbone identity (32 bytes), the image sha256 (32), the
//! value count (u32 LE), the values (f32 LE), then the sha256 of everything before it.
//! Anything truncated, zero-filled, copied from another backbone or otherwise damaged fails
//! these checks and is recomputed. Entries are written to a temporary file and renamed, so
//! an interrupted run never leaves a half-written entry, and runs sharing one cache
//! directory (on one machine or over NFS) cannot corrupt each other.
//!
//! An entry that is no regular file (a FIFO, a link to `/dev/zero`, a directory) is a
//! miss like any damaged one: it is opened without blocking, never read past the size an
//! entry of this backbone has, and replaced by the recomputed entry.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::util::atomic::Temporary;
use crate::util::files::read_regular;
use crate::util::hex;

const MAGIC: &[u8; 8] = b"FLWRBN01";
const HEADER_LEN: usize = 8 + 32 + 32 + 4;
const CHECKSUM_LEN: usize = 32;

/// The most values an entry may hold before its width is known: far above any pooled
/// feature vector (the known backbones give 1024 to 2048), and it bounds what one
/// read of an entry of unknown width may cost (16 MiB).
const MAX_VALUES: usize = 1 << 22;

/// The size in bytes of an entry of `values` values.
fn entry_len(values: usize) -> usize {
    HEADER_LEN + values * 4 + CHECKSUM_LEN
}

/// The on-disk cache of one backbone.
pub struct Cache {
    dir: PathBuf,
    identity: [u8; 32],
    /// The bottleneck width, once a valid entry or the backbone has told it: every entry
    /// of this backbone has exactly `entry_len(width)` bytes.
    width: OnceLock<usize>,
}

impl Cache {
    /// Opens (creating) the cache for the backbone `identity` under `base`.
    pub fn open(base: &Path, identity: [u8; 32]) -> Result<Cache> {
        let dir = base.join(&hex(&identity)[..16]);
        fs::create_dir_all(&dir).with_context(|| {
            format!(
                "cannot create bottleneck cache {}: choose another with --bottleneck-dir",
                dir.display()
            )
        })?;
        Ok(Cache {
            dir,
            identity,
            width: OnceLock::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bottleneck width, once an entry or the backbone has told it.
    pub fn width(&self) -> Option<usize> {
        self.width.get().copied()
    }

    fn entry_path(&self, image_sha: &[u8; 32]) -> PathBuf {
        let name = hex(image_sha);
        self.dir.join(&name[..2]).join(format!("{name}.bn"))
    }

    /// Records the bottleneck width the backbone gives, so entries of any other size are
    /// refused before they are read.
    pub fn expect_width(&self, width: usize) {
        let _ = self.width.set(width);
    }

    /// The cached vector for an image, if a valid entry exists. Anything but a regular
    /// file of an entry's size is a miss, read no further than that size.
    pub fn read(&self, image_sha: &[u8; 32]) -> Option<Vec<f32>> {
        let limit = entry_len(self.width.get().copied().unwrap_or(MAX_VALUES));
        let bytes = read_regular(&self.entry_path(image_sha), limit as u64).ok()?;
        let vector = decode_entry(&bytes, &self.identity, image_sha)?;
        let width = *self.width.get_or_init(|| vector.len());
        (vector.len() == width).then_some(vector)
    }

    /// Stores a vector atomically (temporary file, then rename), in place of whatever
    /// was there; an empty directory squatting on the entry's name is removed first.
    pub fn write(&self, image_sha: &[u8; 32], vector: &[f32]) -> std::io::Result<()> {
        let path = self.entry_path(image_sha);
        let parent = path.parent().expect("entry paths have a parent");
        fs::create_dir_all(parent)?;
        let mut temporary = Temporary::new(parent)?;
        temporary
            .as_file_mut()
            .write_all(&encode_entry(&self.identity, image_sha, vector))?;
        if fs::symlink_metadata(&path).is_ok_and(|meta| meta.is_dir()) {
            fs::remove_dir(&path)?;
        }
        temporary.persist(&path)
    }
}

fn encode_entry(identity: &[u8; 32], image_sha: &[u8; 32], vector: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_LEN + vector.len() * 4 + CHECKSUM_LEN);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(identity);
    bytes.extend_from_slice(image_sha);
    bytes.extend_from_slice(&(vector.len() as u32).to_le_bytes());
    for value in vector {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum);
    bytes
}

pub fn decode_entry(bytes: &[u8], identity: &[u8; 32], image_sha: &[u8; 32]) -> Option<Vec<f32>> {
    if bytes.len() < HEADER_LEN + CHECKSUM_LEN || &bytes[..8] != MAGIC {
        return None;
    }
    let (body, checksum) = bytes.split_at(bytes.len() - CHECKSUM_LEN);
    if &body[8..40] != identity || &body[40..72] != image_sha {
        return None;
    }
    let len = u32::from_le_bytes(body[72..76].try_into().ok()?) as usize;
    let payload = &body[HEADER_LEN..];
    if payload.len() != len * 4 || Sha256::digest(body).as_slice() != checksum {
        return None;
    }
    let vector: Vec<f32> = payload
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    vector.iter().all(|v| v.is_finite()).then_some(vector)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn entries_round_trip_and_damage_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), [7; 32]).unwrap();
        let image = [1; 32];
        let vector = vec![0.5, -1.25, 3.0];
        cache.write(&image, &vector).unwrap();
        assert_eq!(cache.read(&image), Some(vector.clone()));

        let path = cache.entry_path(&image);
        let good = fs::read(&path).unwrap();
        // Truncated.
        fs::write(&path, &good[..good.len() - 5]).unwrap();
        assert_eq!(cache.read(&image), None);
        // Zero-filled.
        fs::write(&path, vec![0; good.len()]).unwrap();
        assert_eq!(cache.read(&image), None);
        // One flipped payload bit.
        let mut flipped = good.clone();
        flipped[HEADER_LEN] ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert_eq!(cache.read(&image), None);
        // Written by another backbone.
        let other = Cache::open(dir.path(), [8; 32]).unwrap();
        other.write(&image, &vector).unwrap();
        fs::copy(other.entry_path(&image), &path).unwrap();
        assert_eq!(cache.read(&image), None);
    }

    #[test]
    fn entries_that_are_no_regular_file_are_misses_and_get_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), [7; 32]).unwrap();
        let vector = vec![0.5, -1.25, 3.0];
        let squatted = |byte: u8, make: &dyn Fn(&Path)| {
            let image = [byte; 32];
            let path = cache.entry_path(&image);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            make(&path);
            // A miss at once (no hang on the FIFO, no endless read of /dev/zero)...
            assert_eq!(cache.read(&image), None, "{}", path.display());
            // ...then replaced by a real entry.
            cache.write(&image, &vector).unwrap();
            assert!(fs::symlink_metadata(&path).unwrap().is_file());
            assert_eq!(cache.read(&image), Some(vector.clone()));
        };
        squatted(1, &|path| {
            let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
            // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call.
            assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
        });
        squatted(2, &|path| {
            std::os::unix::fs::symlink("/dev/zero", path).unwrap()
        });
        squatted(3, &|path| fs::create_dir(path).unwrap());
        assert!(fs::metadata("/dev/zero")
            .unwrap()
            .file_type()
            .is_char_device());
    }

    #[test]
    fn an_entry_of_another_width_is_a_miss_once_the_width_is_known() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), [7; 32]).unwrap();
        cache.write(&[1; 32], &[1.0, 2.0]).unwrap();
        cache.expect_width(3);
        assert_eq!(cache.read(&[1; 32]), None);
        cache.write(&[2; 32], &[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(cache.read(&[2; 32]), Some(vec![1.0, 2.0, 3.0]));
    }

    #[test]
    fn entry_format_is_stable() {
        // Changing this layout orphans every user's cache: bump MAGIC when you must.
        let bytes = encode_entry(&[0xAA; 32], &[0xBB; 32], &[1.0, -2.5]);
        assert_eq!(&bytes[..8], b"FLWRBN01");
        assert_eq!(&bytes[8..40], &[0xAA; 32]);
        assert_eq!(&bytes[40..72], &[0xBB; 32]);
        assert_eq!(&bytes[72..76], &2u32.to_le_bytes());
        assert_eq!(&bytes[76..80], &1.0f32.to_le_bytes());
        assert_eq!(&bytes[80..84], &(-2.5f32).to_le_bytes());
        assert_eq!(&bytes[84..], Sha256::digest(&bytes[..84]).as_slice());
        assert_eq!(
            decode_entry(&bytes, &[0xAA; 32], &[0xBB; 32]),
            Some(vec![1.0, -2.5])
        );
        // Another image's entry, or a non-finite value, is no hit.
        assert_eq!(decode_entry(&bytes, &[0xAA; 32], &[0xBC; 32]), None);
        let nan = encode_entry(&[0xAA; 32], &[0xBB; 32], &[f32::NAN]);
        assert_eq!(decode_entry(&nan, &[0xAA; 32], &[0xBB; 32]), None);
    }

    #[test]
    fn entries_live_under_the_backbone_and_the_image_hash() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path(), [0x12; 32]).unwrap();
        let path = cache.entry_path(&[0xAB; 32]);
        let relative = path.strip_prefix(dir.path()).unwrap();
        let expected = format!("1212121212121212/ab/{}.bn", "ab".repeat(32));
        assert_eq!(relative.to_str().unwrap(), expected);
    }
}
