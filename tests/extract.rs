//! extract_tgz on good and hostile archives built in-process.

mod common;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use common::http::{gz_repeated, listing, model_tgz, names, raw_header, tgz_of};
use flate2::write::GzEncoder;
use flate2::Compression;
use flowers::backbone::download::extract_tgz;
use tar::EntryType;

const MAX: u64 = 50 << 20;

/// tmp/{bystander, model/evil.tgz}: extraction goes into tmp/model.
struct Sandbox {
    tmp: tempfile::TempDir,
}

impl Sandbox {
    fn new(tgz: &[u8]) -> Sandbox {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("model")).unwrap();
        fs::write(tmp.path().join("bystander"), b"x").unwrap();
        fs::write(tmp.path().join("model/evil.tgz"), tgz).unwrap();
        Sandbox { tmp }
    }
    fn model(&self) -> PathBuf {
        self.tmp.path().join("model")
    }
    fn archive(&self) -> PathBuf {
        self.model().join("evil.tgz")
    }
}

/// Extraction fails with a message containing `why`, and the whole sandbox (the
/// model dir included, so no temporary directory either) is as it was.
fn assert_refused(tgz: Vec<u8>, why: &str) {
    let sb = Sandbox::new(&tgz);
    let before = listing(sb.tmp.path());
    let err = extract_tgz(&sb.archive(), &sb.model(), MAX).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains(why), "expected {why:?} in {text:?}");
    assert!(!text.contains('\n'), "{text}");
    assert_eq!(listing(sb.tmp.path()), before);
    assert_eq!(fs::read(sb.tmp.path().join("bystander")).unwrap(), b"x");
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

fn link_header(name: &str, kind: EntryType, target: &str) -> tar::Header {
    let mut h = raw_header(name, kind, 0);
    let t = target.as_bytes();
    h.as_old_mut().linkname[..t.len()].copy_from_slice(t);
    h.set_cksum();
    h
}

#[test]
fn good_archive_is_extracted() {
    let sb = Sandbox::new(&model_tgz("model_v1", 10_000));
    let names_made = extract_tgz(&sb.archive(), &sb.model(), MAX).unwrap();
    assert_eq!(names_made, ["model_v1"]);
    assert_eq!(
        fs::read(sb.model().join("model_v1/graph.pb")).unwrap(),
        common::http::noise(10_000, 7)
    );
    assert_eq!(
        names(&sb.model()),
        ["evil.tgz", "model_v1"]
            .map(String::from)
            .into_iter()
            .collect()
    );
}

#[test]
fn dot_prefixed_and_long_names_are_fine() {
    let long = format!("./top/{}/file.bin", "d".repeat(150));
    let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    builder.append_data(&mut h, &long, &b"abc"[..]).unwrap(); // GNU long name
    let mut d = tar::Header::new_gnu();
    d.set_entry_type(EntryType::Directory);
    d.set_size(0);
    builder.append_data(&mut d, "./", io::empty()).unwrap();
    let tgz = builder.into_inner().unwrap().finish().unwrap();

    let sb = Sandbox::new(&tgz);
    assert_eq!(
        extract_tgz(&sb.archive(), &sb.model(), MAX).unwrap(),
        ["top"]
    );
    assert_eq!(fs::read(sb.model().join(&long)).unwrap(), b"abc");
}

#[test]
fn existing_tree_is_replaced() {
    let sb = Sandbox::new(&model_tgz("model_v1", 1000));
    fs::create_dir(sb.model().join("model_v1")).unwrap();
    fs::write(sb.model().join("model_v1/stale.txt"), b"old").unwrap();
    extract_tgz(&sb.archive(), &sb.model(), MAX).unwrap();
    assert!(!sb.model().join("model_v1/stale.txt").exists());
    assert!(sb.model().join("model_v1/labels.txt").is_file());
}

#[test]
fn parent_dir_entry_is_refused() {
    assert_refused(
        tgz_of(vec![
            (
                raw_header("fine.txt", EntryType::Regular, 2),
                b"ok".to_vec(),
            ),
            (
                raw_header("../evil", EntryType::Regular, 5),
                b"evil\n".to_vec(),
            ),
        ]),
        "`../evil` leaves the target directory",
    );
    assert_refused(
        tgz_of(vec![(
            raw_header("a/../../evil", EntryType::Regular, 5),
            b"evil\n".to_vec(),
        )]),
        "leaves the target directory",
    );
}

#[test]
fn absolute_entry_is_refused() {
    let target = format!("/tmp/{}", unique("flowers-evil"));
    assert_refused(
        tgz_of(vec![(
            raw_header(&target, EntryType::Regular, 5),
            b"evil\n".to_vec(),
        )]),
        "leaves the target directory",
    );
    assert!(!Path::new(&target).exists());
}

#[test]
fn symlinks_are_refused() {
    let passwd = fs::read("/etc/passwd").ok();
    // The classic: a link out, then a file written through it.
    assert_refused(
        tgz_of(vec![
            (link_header("pw", EntryType::Symlink, "/etc/passwd"), vec![]),
            (raw_header("pw", EntryType::Regular, 5), b"evil\n".to_vec()),
        ]),
        "is a link (to `/etc/passwd`)",
    );
    assert_eq!(fs::read("/etc/passwd").ok(), passwd);
    assert_refused(
        tgz_of(vec![
            (link_header("up", EntryType::Symlink, "../../x"), vec![]),
            (
                raw_header("up/y", EntryType::Regular, 5),
                b"evil\n".to_vec(),
            ),
        ]),
        "is a link (to `../../x`)",
    );
}

#[test]
fn hard_links_are_refused() {
    assert_refused(
        tgz_of(vec![(
            link_header("pw", EntryType::Link, "/etc/passwd"),
            vec![],
        )]),
        "is a link",
    );
}

#[test]
fn devices_and_fifos_are_refused() {
    for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
        assert_refused(
            tgz_of(vec![(raw_header("dev", kind, 0), vec![])]),
            "unsupported type",
        );
    }
}

const MB: usize = 1 << 20;

#[test]
fn gzip_bomb_is_refused() {
    // One 200 MB file of zeros: about 200 KB compressed.
    let h = raw_header("bomb/zeros.bin", EntryType::Regular, 200 * MB as u64);
    let zeros = vec![0u8; MB];
    let tgz = gz_repeated(&[(h.as_bytes(), 1), (&zeros, 200), (&zeros[..1024], 1)]);
    assert!(tgz.len() < 300 * 1024, "bomb is {} bytes", tgz.len());
    assert_refused(tgz, "unpacks to more than 52428800 bytes");
}

#[test]
fn bomb_hidden_in_a_long_name_header_is_refused() {
    // A GNU long-name header that `tar` would read into memory, 60 MB of it: only
    // counting the decompressed stream catches this one.
    let h = raw_header("././@LongLink", EntryType::GNULongName, 60 * MB as u64);
    let x = raw_header("x", EntryType::Regular, 0);
    let a = vec![b'a'; MB];
    let tgz = gz_repeated(&[
        (h.as_bytes(), 1),
        (&a, 60),
        (x.as_bytes(), 1),
        (&[0; 1024], 1),
    ]);
    assert_refused(tgz, "unpacks to more than");
}

#[test]
fn many_declared_sizes_add_up() {
    // Three 20 MB files: each under the limit, together over it.
    let zeros = vec![0u8; MB];
    let mut blocks = Vec::new();
    let headers: Vec<tar::Header> = (0..3)
        .map(|i| raw_header(&format!("f{i}"), EntryType::Regular, 20 * MB as u64))
        .collect();
    for h in &headers {
        blocks.push((h.as_bytes().as_slice(), 1));
        blocks.push((&zeros[..], 20));
    }
    blocks.push((&zeros[..1024], 1));
    assert_refused(gz_repeated(&blocks), "unpacks to more than");
}

#[test]
fn entry_named_like_the_archive_is_refused() {
    assert_refused(
        tgz_of(vec![(
            raw_header("evil.tgz", EntryType::Regular, 5),
            b"evil\n".to_vec(),
        )]),
        "would replace the archive",
    );
}

#[test]
fn not_a_gzip_is_an_error() {
    assert_refused(b"<html>404</html>".to_vec(), "cannot read");
}
