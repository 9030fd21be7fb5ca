//! Finding the images of a class-per-folder dataset, their labels, and the deterministic
//! train/validation/test split.
//!
//! Rules (documented in the README):
//! - every non-hidden sub-folder of the image directory is a class, labelled with its name
//!   exactly as written; classes are ordered by name (byte order);
//! - every image anywhere below a class folder, nested folders included, belongs to it;
//! - hidden files and folders (name starting with `.`) are ignored;
//! - files are recognised as images by their content, not their extension; other files are
//!   skipped with a warning and counted.

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;
use sha1::{Digest, Sha1};

use crate::preprocess::sniff_format;

/// retrain.py's constant: the split hash is taken modulo this plus one.
pub const MAX_NUM_IMAGES_PER_CLASS: u32 = (1 << 27) - 1;
/// Below this many images a class gets a warning: too few to learn or to measure.
pub const FEW_IMAGES_WARNING: usize = 20;

/// One image of the dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageEntry {
    /// The file as it can be opened.
    pub path: PathBuf,
    /// Path relative to the image directory with `/` separators: what the split hashes.
    pub relative: String,
    /// Index into `Dataset::labels`.
    pub class: usize,
}

/// A file that was passed over, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub reason: String,
}

/// `{"path": "...", "reason": "..."}`; a path that is not UTF-8 is written lossily rather
/// than failing the whole JSON report.
impl Serialize for Skipped {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut fields = serializer.serialize_struct("Skipped", 2)?;
        fields.serialize_field("path", &self.path.to_string_lossy())?;
        fields.serialize_field("reason", &self.reason)?;
        fields.end()
    }
}

/// The discovered dataset.
#[derive(Debug)]
pub struct Dataset {
    pub root: PathBuf,
    /// Class labels in output order.
    pub labels: Vec<String>,
    /// Images sorted by class, then relative path.
    pub images: Vec<ImageEntry>,
    /// Files inside class folders that are not images flowers reads.
    pub skipped: Vec<Skipped>,
}

/// Which set an image belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Training,
    Validation,
    Testing,
}

impl Dataset {
    /// Walks `root`, one class per sub-folder. Errors when the directory is missing, holds
    /// fewer than two classes, a class has no image, or two labels would clash.
    pub fn discover(root: &Path) -> Result<Dataset> {
        Dataset::discover_classes(root, 2)
    }

    /// As [`Dataset::discover`], with at least `min_classes` classes (evaluation may look
    /// at a single class).
    pub fn discover_classes(root: &Path, min_classes: usize) -> Result<Dataset> {
        let class_dirs = class_folders(root, min_classes)?;
        let mut labels = Vec::new();
        let mut images = Vec::new();
        let mut skipped = Vec::new();
        for (class, (label, dir)) in class_dirs.into_iter().enumerate() {
            let mut files = Vec::new();
            collect_files(&dir, &mut files, &mut skipped);
            files.sort();
            let before = images.len();
            for path in files {
                match is_image(&path) {
                    Ok(()) => {
                        let relative = relative_name(root, &path);
                        images.push(ImageEntry {
                            path,
                            relative,
                            class,
                        });
                    }
                    Err(reason) => skipped.push(Skipped { path, reason }),
                }
            }
            if images.len() == before {
                bail!(
                    "class folder {} has no images: add images to it or remove it",
                    dir.display()
                );
            }
            labels.push(label);
        }
        Ok(Dataset {
            root: root.to_path_buf(),
            labels,
            images,
            skipped,
        })
    }

    /// Number of images of each class.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.labels.len()];
        for image in &self.images {
            counts[image.class] += 1;
        }
        counts
    }
}

/// The class folders of `root`, sorted by name, with their labels.
fn class_folders(root: &Path, min_classes: usize) -> Result<Vec<(String, PathBuf)>> {
    let metadata = match fs::metadata(root) {
        Ok(m) => m,
        Err(e) => bail!("--image-dir {}: {}", root.display(), io_reason(&e)),
    };
    if !metadata.is_dir() {
        bail!(
            "--image-dir {} is not a directory: give the folder that holds one sub-folder per class",
            root.display()
        );
    }
    let entries = fs::read_dir(root)
        .map_err(|e| anyhow::anyhow!("cannot list {}: {}", root.display(), io_reason(&e)))?;
    let mut classes = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if is_hidden(&path) || !path.is_dir() {
            continue;
        }
        let Some(label) = entry.file_name().to_str().map(str::to_owned) else {
            bail!(
                "class folder {} has a name that is not valid UTF-8: rename it",
                path.display()
            );
        };
        classes.push((label, path));
    }
    classes.sort();
    check_labels(root, &classes, min_classes)?;
    Ok(classes)
}

fn check_labels(root: &Path, classes: &[(String, PathBuf)], min_classes: usize) -> Result<()> {
    if classes.len() < min_classes {
        let needed = if min_classes == 2 { "two" } else { "one" };
        bail!(
            "--image-dir {} has {} class folder(s); flowers needs at least {needed}, one sub-folder per class",
            root.display(),
            classes.len()
        );
    }
    let mut seen: HashMap<String, &str> = HashMap::new();
    for (label, _) in classes {
        if label.chars().any(char::is_control) {
            bail!("class folder name {label:?} contains a control character: rename it");
        }
        if let Some(other) = seen.insert(label.to_lowercase(), label) {
            bail!("class folders {other:?} and {label:?} differ only in case: merge or rename one");
        }
    }
    Ok(())
}

/// Every non-hidden regular file below `dir`; unreadable folders are recorded as skipped.
fn collect_files(dir: &Path, files: &mut Vec<PathBuf>, skipped: &mut Vec<Skipped>) {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            skipped.push(Skipped {
                path: dir.to_path_buf(),
                reason: format!("cannot list folder: {}", io_reason(&e)),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if is_hidden(&path) {
            continue;
        }
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if file_type.is_dir() {
            collect_files(&path, files, skipped);
        } else if file_type.is_file() || (file_type.is_symlink() && path.is_file()) {
            files.push(path);
        }
    }
}

/// Reads the first bytes of a file and checks it is an image format flowers reads.
fn is_image(path: &Path) -> Result<(), String> {
    let mut head = [0u8; 64];
    let mut file = fs::File::open(path).map_err(|e| io_reason(&e))?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(io_reason(&e)),
        }
    }
    if filled == 0 {
        return Err("empty file (0 bytes)".into());
    }
    sniff_format(&head[..filled])
        .map(|_| ())
        .ok_or_else(|| "not a supported image (JPEG, PNG, GIF, BMP or WebP by content)".to_string())
}

fn is_hidden(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.as_encoded_bytes().starts_with(b"."))
}

fn relative_name(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// A short, user-facing reason for an I/O error.
pub fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => error.to_string(),
    }
}

/// retrain.py's split rule on the path relative to the image directory: the sha1 of the
/// name (with anything from `_nohash_` on removed from the file name, so variants of one
/// photo stay together) picks a stable percentage in [0, 100].
pub fn split_of(relative: &str, validation_percentage: f64, testing_percentage: f64) -> Split {
    let percentage = split_percentage(relative);
    if percentage < validation_percentage {
        Split::Validation
    } else if percentage < validation_percentage + testing_percentage {
        Split::Testing
    } else {
        Split::Training
    }
}

/// The percentage in [0, 100] that decides an image's split.
pub fn split_percentage(relative: &str) -> f64 {
    let file_start = relative.rfind('/').map_or(0, |i| i + 1);
    let hash_name = match relative[file_start..].find("_nohash_") {
        Some(i) => &relative[..file_start + i],
        None => relative,
    };
    let digest = Sha1::digest(hash_name.as_bytes());
    let low = u32::from_be_bytes([digest[16], digest[17], digest[18], digest[19]]);
    let bucket = low & MAX_NUM_IMAGES_PER_CLASS;
    f64::from(bucket) * (100.0 / f64::from(MAX_NUM_IMAGES_PER_CLASS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_matches_retrain_py() {
        // Python: (int(hashlib.sha1(name).hexdigest(), 16) % (MAX + 1)) * (100.0 / MAX)
        // with MAX = 2**27 - 1 and `_nohash_.*$` removed first, as retrain.py does.
        for (name, expected) in [
            ("daisy/5547758_eea9edfd54_n.jpg", 68.68499941144138),
            ("roses/12240303_80d87f77a3_n.jpg", 56.4537879560425),
            ("tulips/x_nohash_3.jpg", 29.628200304718316),
        ] {
            assert!((split_percentage(name) - expected).abs() < 1e-9, "{name}");
        }
    }

    #[test]
    fn nohash_variants_share_a_split() {
        let a = split_percentage("cats/felix_nohash_1.jpg");
        let b = split_percentage("cats/felix_nohash_2.jpg");
        let c = split_percentage("cats/felix");
        assert_eq!(a, b);
        assert_eq!(a, c);
        // `_nohash_` in a folder name is not special.
        assert_ne!(
            split_percentage("a_nohash_x/one.jpg"),
            split_percentage("a_nohash_y/one.jpg")
        );
    }

    #[test]
    fn split_is_deterministic_and_roughly_proportional() {
        let names: Vec<String> = (0..10_000).map(|i| format!("c/img{i}.jpg")).collect();
        let mut counts: HashMap<Split, usize> = HashMap::new();
        for name in &names {
            let split = split_of(name, 10.0, 10.0);
            assert_eq!(split, split_of(name, 10.0, 10.0));
            *counts.entry(split).or_default() += 1;
        }
        assert!((800..1200).contains(&counts[&Split::Validation]));
        assert!((800..1200).contains(&counts[&Split::Testing]));
        assert!((7600..8400).contains(&counts[&Split::Training]));
    }
}
