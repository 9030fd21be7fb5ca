//! The photos' content hashes (the cache keys), remembered by what `stat` says about each
//! file, so that a warm run reads no photo: git's index for the bottleneck cache.
//!
//! An entry is a file's device, inode, size, modification time and change time (both to
//! the nanosecond), and the sha256 of its content. It is used only when all of these
//! still match: an edit changes the change time, which no program can set back (`touch`
//! and `tar` set the modification time only), and a file replaced by another gets a new
//! change time too, whatever inode it lands on.
//!
//! Racily clean files: a file changed twice within one tick of the file system's clock,
//! with a run hashing it in between, would keep its time stamps and so match an entry of
//! its old content. An entry is therefore recorded only for a file whose time stamps are
//! [`SETTLED`] older than the run's start: any later change has a newer time stamp. (As
//! with git, a file server whose clock lags the client's by more than that narrows this
//! guarantee to the server's time stamp resolution.)
//!
//! The memo is one file, `photo-sha256.memo`, beside the cache entries: `FLWRHM01`, the
//! entry count (u64 LE), the entries of [`ENTRY_LEN`] bytes, then the sha256 of everything
//! before it. It is replaced atomically, only when a run hashed a file it did not know; a
//! damaged or unreadable memo is an empty one (every photo is hashed, as without it).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::util::atomic::Temporary;
use crate::util::files::read_regular;

/// The memo's file name inside the cache directory.
pub const MEMO_FILE: &str = "photo-sha256.memo";

const MAGIC: &[u8; 8] = b"FLWRHM01";

/// Device, inode, size, four time stamp fields (u64 LE each), then the sha256.
const ENTRY_LEN: usize = 7 * 8 + 32;

/// How much older than the run's start a file's time stamps must be for its hash to be
/// remembered: above the coarsest time stamp Linux file systems keep (FAT's two seconds)
/// and the lag of the kernel's coarse clock behind the system time.
pub const SETTLED: Duration = Duration::from_secs(3);

/// The most entries kept: entries of files this run did not see are dropped first.
const MAX_ENTRIES: usize = 1 << 21;

/// Which file: its device and inode.
type FileId = (u64, u64);

/// What must not have changed since the file was hashed: size, modification and change
/// times (seconds and nanoseconds, as the kernel reports them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

/// The file and its stamp, where the platform tells inodes and change times (Unix);
/// elsewhere nothing, and every photo is hashed.
#[cfg(unix)]
fn identify(meta: &std::fs::Metadata) -> Option<(FileId, Stamp)> {
    use std::os::unix::fs::MetadataExt;
    let stamp = Stamp {
        size: meta.size(),
        mtime: (meta.mtime(), meta.mtime_nsec()),
        ctime: (meta.ctime(), meta.ctime_nsec()),
    };
    Some(((meta.dev(), meta.ino()), stamp))
}

#[cfg(not(unix))]
fn identify(_: &std::fs::Metadata) -> Option<(FileId, Stamp)> {
    None
}

impl Stamp {
    /// Whether both time stamps lie before `cutoff` (seconds and nanoseconds since the
    /// epoch): the file cannot change again without a newer one.
    fn settled_before(&self, cutoff: (i64, i64)) -> bool {
        self.mtime < cutoff && self.ctime < cutoff
    }
}

/// The memo of one run: the entries read at the start, and those of files hashed since.
pub struct HashMemo {
    path: PathBuf,
    known: HashMap<FileId, (Stamp, [u8; 32])>,
    /// Seconds and nanoseconds since the epoch before which a file's time stamps must lie
    /// for its hash to be recorded.
    cutoff: (i64, i64),
    /// This run's files.
    seen: Mutex<HashMap<FileId, Seen>>,
}

/// A file a run saw: its stamp, its hash, and whether the run hashed it (else the memo
/// knew it).
#[derive(Clone, Copy)]
struct Seen {
    stamp: Stamp,
    sha: [u8; 32],
    fresh: bool,
}

impl HashMemo {
    /// The memo kept in `dir`; empty if there is none or it is damaged.
    pub fn open(dir: &Path) -> HashMemo {
        let start = SystemTime::now();
        let path = dir.join(MEMO_FILE);
        let limit = (16 + MAX_ENTRIES * ENTRY_LEN + 32) as u64;
        let known = read_regular(&path, limit)
            .ok()
            .and_then(|bytes| decode(&bytes))
            .unwrap_or_default();
        HashMemo {
            path,
            known,
            cutoff: epoch_time(start.checked_sub(SETTLED).unwrap_or(UNIX_EPOCH)),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// The sha256 of the file's content: from the memo if its `stat` still matches, else
    /// read and hashed. The file is stat-ed through the descriptor it is read from, before
    /// reading, so a change during the read leaves a stamp that no longer matches.
    pub fn sha256_of(&self, path: &Path) -> io::Result<[u8; 32]> {
        let mut file = File::open(path)?;
        let meta = file.metadata()?;
        let identity = identify(&meta);
        let remembered = identity.and_then(|(id, stamp)| {
            let &(known, sha) = self.known.get(&id)?;
            (known == stamp).then_some((id, stamp, sha))
        });
        if let Some((id, stamp, sha)) = remembered {
            self.remember(id, stamp, sha, false);
            return Ok(sha);
        }
        let mut bytes = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut bytes)?;
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        match identity {
            Some((id, stamp)) if meta.is_file() && stamp.settled_before(self.cutoff) => {
                self.remember(id, stamp, sha, true)
            }
            _ => {}
        }
        Ok(sha)
    }

    fn remember(&self, id: FileId, stamp: Stamp, sha: [u8; 32], fresh: bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.insert(id, Seen { stamp, sha, fresh });
    }

    /// Writes the memo back (atomically) if this run hashed a file worth remembering:
    /// this run's entries, then the earlier ones of files it did not see, up to
    /// [`MAX_ENTRIES`].
    pub fn save(self) -> io::Result<()> {
        let seen = self.seen.into_inner().unwrap_or_else(|p| p.into_inner());
        if !seen.values().any(|entry| entry.fresh) {
            return Ok(());
        }
        let mut entries: Vec<(FileId, Stamp, [u8; 32])> = seen
            .iter()
            .map(|(&id, entry)| (id, entry.stamp, entry.sha))
            .collect();
        entries.extend(
            self.known
                .iter()
                .filter(|&(id, _)| !seen.contains_key(id))
                .map(|(&id, &(stamp, sha))| (id, stamp, sha)),
        );
        entries.truncate(MAX_ENTRIES);
        let dir = self.path.parent().expect("the memo lives in a directory");
        let mut temporary = Temporary::new(dir)?;
        io::Write::write_all(temporary.as_file_mut(), &encode(&entries))?;
        temporary.persist(&self.path)
    }
}

fn epoch_time(time: SystemTime) -> (i64, i64) {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    (since.as_secs() as i64, i64::from(since.subsec_nanos()))
}

fn encode(entries: &[(FileId, Stamp, [u8; 32])]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(16 + entries.len() * ENTRY_LEN + 32);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for ((dev, ino), stamp, sha) in entries {
        let fields = [
            *dev,
            *ino,
            stamp.size,
            stamp.mtime.0 as u64,
            stamp.mtime.1 as u64,
            stamp.ctime.0 as u64,
            stamp.ctime.1 as u64,
        ];
        for field in fields {
            bytes.extend_from_slice(&field.to_le_bytes());
        }
        bytes.extend_from_slice(sha);
    }
    let checksum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum);
    bytes
}

fn decode(bytes: &[u8]) -> Option<HashMap<FileId, (Stamp, [u8; 32])>> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, checksum) = bytes.split_at(body_len);
    if body.len() < 16 || &body[..8] != MAGIC || Sha256::digest(body).as_slice() != checksum {
        return None;
    }
    let count = u64::from_le_bytes(body[8..16].try_into().ok()?);
    let entries = &body[16..];
    if u64::try_from(entries.len() / ENTRY_LEN).ok()? != count || entries.len() % ENTRY_LEN != 0 {
        return None;
    }
    let field = |entry: &[u8], i: usize| {
        u64::from_le_bytes(entry[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
    };
    let memo = entries
        .chunks_exact(ENTRY_LEN)
        .map(|entry| {
            let stamp = Stamp {
                size: field(entry, 2),
                mtime: (field(entry, 3) as i64, field(entry, 4) as i64),
                ctime: (field(entry, 5) as i64, field(entry, 6) as i64),
            };
            let sha: [u8; 32] = entry[56..].try_into().expect("32 bytes");
            ((field(entry, 0), field(entry, 1)), (stamp, sha))
        })
        .collect();
    Some(memo)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;
    use std::time::Duration;

    /// Sets a file's modification time (its change time becomes now, as for any edit).
    fn set_mtime(path: &Path, time: SystemTime) {
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(time)
            .unwrap();
    }

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    /// A memo whose run started `SETTLED` after now, so files written now count as settled.
    fn memo_of_a_later_run(dir: &Path) -> HashMemo {
        let mut memo = HashMemo::open(dir);
        let later = SystemTime::now() + Duration::from_secs(1);
        memo.cutoff = epoch_time(later);
        memo
    }

    #[test]
    fn settled_files_are_remembered_and_the_memo_rewritten_only_when_it_learns() {
        let dir = tempfile::tempdir().unwrap();
        let photo = dir.path().join("photo.jpg");
        fs::write(&photo, b"first content").unwrap();
        let memo = memo_of_a_later_run(dir.path());
        assert_eq!(memo.sha256_of(&photo).unwrap(), sha(b"first content"));
        memo.save().unwrap();
        assert!(dir.path().join(MEMO_FILE).is_file());

        let memo = HashMemo::open(dir.path());
        assert_eq!(memo.known.len(), 1);
        let (_, remembered) = memo.known.values().next().unwrap();
        assert_eq!(*remembered, sha(b"first content"));
        assert_eq!(memo.sha256_of(&photo).unwrap(), sha(b"first content"));
        // Nothing new: the memo is not rewritten.
        let before = fs::metadata(dir.path().join(MEMO_FILE)).unwrap();
        memo.save().unwrap();
        let after = fs::metadata(dir.path().join(MEMO_FILE)).unwrap();
        assert_eq!(before.ino(), after.ino());
    }

    #[test]
    fn an_entry_is_served_only_while_the_stamp_matches() {
        let dir = tempfile::tempdir().unwrap();
        let photo = dir.path().join("photo.jpg");
        fs::write(&photo, b"first content").unwrap();
        let memo = memo_of_a_later_run(dir.path());
        memo.sha256_of(&photo).unwrap();
        let stamped = fs::metadata(&photo).unwrap();
        // A poisoned entry with the file's true stamp is served as is: the stamp is all
        // the memo looks at, which is what makes a hit free.
        let (id, stamp) = identify(&stamped).unwrap();
        memo.remember(id, stamp, [9; 32], true);
        memo.save().unwrap();
        let memo = HashMemo::open(dir.path());
        assert_eq!(memo.sha256_of(&photo).unwrap(), [9; 32]);

        // The same size, the same modification time (set back, as `touch -d` or `tar`
        // would): the change time still moves, so the content is hashed again. (After a
        // pause longer than a tick of the kernel's clock: an edit within the same tick is
        // the racy case `SETTLED` is for, which this memo's cutoff skips.)
        std::thread::sleep(Duration::from_millis(50));
        fs::write(&photo, b"other content").unwrap();
        set_mtime(&photo, stamped.modified().unwrap());
        let edited = fs::metadata(&photo).unwrap();
        assert_eq!(edited.size(), stamped.size());
        assert_eq!(edited.modified().unwrap(), stamped.modified().unwrap());
        assert_eq!(memo.sha256_of(&photo).unwrap(), sha(b"other content"));
    }

    #[test]
    fn files_changed_too_recently_are_hashed_but_not_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let photo = dir.path().join("photo.jpg");
        fs::write(&photo, b"just written").unwrap();
        // A real run's start: the file was written less than SETTLED ago.
        let memo = HashMemo::open(dir.path());
        assert_eq!(memo.sha256_of(&photo).unwrap(), sha(b"just written"));
        memo.save().unwrap();
        assert!(!dir.path().join(MEMO_FILE).exists());

        // Its modification time set far back does not settle it: its change time is now.
        set_mtime(&photo, SystemTime::now() - Duration::from_secs(3600));
        let memo = HashMemo::open(dir.path());
        memo.sha256_of(&photo).unwrap();
        assert!(memo.seen.lock().unwrap().is_empty());
    }

    #[test]
    fn a_damaged_memo_is_an_empty_one() {
        let dir = tempfile::tempdir().unwrap();
        let photo = dir.path().join("photo.jpg");
        fs::write(&photo, b"content").unwrap();
        let memo = memo_of_a_later_run(dir.path());
        memo.sha256_of(&photo).unwrap();
        memo.save().unwrap();
        let path = dir.path().join(MEMO_FILE);
        let good = fs::read(&path).unwrap();
        assert_eq!(good.len(), 16 + ENTRY_LEN + 32);
        let mut flipped = good.clone();
        flipped[60] ^= 1;
        for damaged in [
            &good[..good.len() - 1],
            &flipped[..],
            &[0; 200][..],
            &b""[..],
        ] {
            fs::write(&path, damaged).unwrap();
            let memo = HashMemo::open(dir.path());
            assert!(memo.known.is_empty());
            assert_eq!(memo.sha256_of(&photo).unwrap(), sha(b"content"));
        }
        // A directory in its place: empty too, and hashing still works.
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        let memo = HashMemo::open(dir.path());
        assert!(memo.known.is_empty());
        assert_eq!(memo.sha256_of(&photo).unwrap(), sha(b"content"));
    }

    #[test]
    fn entries_of_files_not_seen_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.jpg"), dir.path().join("b.jpg"));
        fs::write(&a, b"a").unwrap();
        fs::write(&b, b"b").unwrap();
        let memo = memo_of_a_later_run(dir.path());
        memo.sha256_of(&a).unwrap();
        memo.save().unwrap();
        let memo = memo_of_a_later_run(dir.path());
        memo.sha256_of(&b).unwrap();
        memo.save().unwrap();
        let memo = HashMemo::open(dir.path());
        let mut remembered: Vec<[u8; 32]> = memo.known.values().map(|(_, sha)| *sha).collect();
        remembered.sort();
        let mut expected = vec![sha(b"a"), sha(b"b")];
        expected.sort();
        assert_eq!(remembered, expected);
    }

    #[test]
    fn unreadable_photos_are_errors_not_hits() {
        let dir = tempfile::tempdir().unwrap();
        assert!(HashMemo::open(dir.path())
            .sha256_of(&dir.path().join("missing.jpg"))
            .is_err());
    }
}
