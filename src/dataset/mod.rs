//! Finding the images of a class-per-folder dataset and their labels.
//!
//! Rules (documented in the README):
//! - every non-hidden sub-folder of the image directory is a class, labelled with its name
//!   exactly as written; classes are ordered by name (byte order);
//! - every image anywhere below a class folder belongs to it, found by the one walker
//!   ([`crate::util::walk`]: links followed, loops reported once, hidden entries ignored);
//! - files are recognised as images by their content, not their extension; other files are
//!   skipped with a warning and counted.

mod split;

use std::collections::HashMap;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

pub use split::{split_of, split_percentage, Split, MAX_NUM_IMAGES_PER_CLASS};

use crate::image::sniff_format;
use crate::problem::{Problem, Skipped};
use crate::util::messages::io_reason;
use crate::util::walk::{files_below, is_hidden_name};

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

/// The discovered dataset.
#[derive(Debug)]
pub struct Dataset {
    pub root: PathBuf,
    /// Class labels in output order.
    pub labels: Vec<String>,
    /// Images sorted by class, then path.
    pub images: Vec<ImageEntry>,
    /// Files inside class folders that are not images flowers reads.
    pub skipped: Vec<Skipped>,
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
            let (files, unlisted) = files_below(&dir);
            skipped.extend(unlisted);
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
                    Err(problem) => skipped.push(Skipped { path, problem }),
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
        if is_hidden_name(&entry.file_name()) || !path.is_dir() {
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

/// Reads the first bytes of a file and checks it is an image format flowers reads.
fn is_image(path: &Path) -> Result<(), Problem> {
    let mut head = [0u8; 64];
    let mut file = fs::File::open(path).map_err(|e| Problem::from_io(&e))?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) => return Err(Problem::from_io(&e)),
        }
    }
    if filled == 0 {
        return Err(Problem::Empty);
    }
    sniff_format(&head[..filled])
        .map(|_| ())
        .ok_or(Problem::NotAnImage)
}

/// `path` relative to `root`, with `/` separators whatever the platform: the name the
/// split hashes, as retrain.py does.
fn relative_name(root: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_sorted_folders_and_non_images_are_skipped_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let png = {
            let image = image::RgbImage::from_pixel(2, 2, image::Rgb([1, 2, 3]));
            let mut bytes = std::io::Cursor::new(Vec::new());
            image.write_to(&mut bytes, image::ImageFormat::Png).unwrap();
            bytes.into_inner()
        };
        for class in ["roses", "daisy"] {
            fs::create_dir_all(root.join(class).join("nested")).unwrap();
            fs::write(root.join(class).join("b.jpg"), &png).unwrap();
            fs::write(root.join(class).join("nested/a.png"), &png).unwrap();
        }
        fs::write(root.join("daisy/notes.txt"), b"not an image").unwrap();
        fs::write(root.join("daisy/empty.jpg"), b"").unwrap();
        fs::write(root.join("beside.txt"), b"ignored").unwrap();
        let dataset = Dataset::discover(root).unwrap();
        assert_eq!(dataset.labels, ["daisy", "roses"]);
        let relative: Vec<&str> = dataset.images.iter().map(|i| i.relative.as_str()).collect();
        assert_eq!(
            relative,
            [
                "daisy/b.jpg",
                "daisy/nested/a.png",
                "roses/b.jpg",
                "roses/nested/a.png"
            ]
        );
        let kinds: Vec<&str> = dataset.skipped.iter().map(|s| s.problem.kind()).collect();
        assert_eq!(kinds, ["empty", "not_an_image"]);
    }
}
