//! The one directory walker: `retrain`, `label` and `evaluate` all find files this way.
//!
//! The rule (documented in the README):
//! - symbolic links are followed, to files and to folders, so a dataset assembled from
//!   links works as if the files were there;
//! - a link that leads back to a folder above it (a loop) is reported once as
//!   [`Problem::SymlinkLoop`] and not followed again, so a loop can neither hang a run nor
//!   list the same photos many times;
//! - hidden files and folders (name starting with `.`) below the starting folder are
//!   ignored (`.DS_Store`, `.thumbnails/`, editor files);
//! - a folder that cannot be listed and a link that leads nowhere are reported, never fatal;
//! - files come out sorted by path, so every run sees the same order.

use std::path::{Path, PathBuf};

use walkdir::{DirEntry, WalkDir};

use crate::problem::{Problem, Skipped};

/// Every non-hidden file below `root` (following links), sorted, and what was passed over.
pub fn files_below(root: &Path) -> (Vec<PathBuf>, Vec<Skipped>) {
    let mut files = Vec::new();
    let mut skipped = Vec::new();
    let walker = WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| entry.depth() == 0 || !is_hidden(entry));
    for entry in walker {
        match entry {
            Ok(entry) if entry.file_type().is_file() => files.push(entry.into_path()),
            Ok(_) => {}
            Err(error) => skipped.push(problem_of(root, &error)),
        }
    }
    files.sort();
    (files, skipped)
}

/// Whether a file or folder name marks it hidden.
pub fn is_hidden_name(name: &std::ffi::OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".")
}

fn is_hidden(entry: &DirEntry) -> bool {
    is_hidden_name(entry.file_name())
}

fn problem_of(root: &Path, error: &walkdir::Error) -> Skipped {
    let path = error.path().unwrap_or(root).to_path_buf();
    let problem = if error.loop_ancestor().is_some() {
        Problem::SymlinkLoop
    } else {
        match error.io_error() {
            Some(io) if io.kind() == std::io::ErrorKind::NotFound => Problem::Missing,
            Some(io) => Problem::UnlistableFolder(crate::util::messages::io_reason(io)),
            None => Problem::UnlistableFolder(error.to_string()),
        }
    };
    Skipped { path, problem }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn names(root: &Path, files: &[PathBuf]) -> Vec<String> {
        files
            .iter()
            .map(|f| f.strip_prefix(root).unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn hidden_entries_are_ignored_and_files_come_sorted() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("b/nested")).unwrap();
        fs::create_dir_all(root.join(".thumbnails")).unwrap();
        for name in [
            "b/z.jpg",
            "b/nested/y.jpg",
            "a.jpg",
            ".DS_Store",
            ".thumbnails/x.jpg",
        ] {
            fs::write(root.join(name), b"x").unwrap();
        }
        let (files, skipped) = files_below(root);
        assert_eq!(names(root, &files), ["a.jpg", "b/nested/y.jpg", "b/z.jpg"]);
        assert!(skipped.is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn links_are_followed_and_a_loop_is_reported_once() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        let elsewhere = dir.path().join("elsewhere");
        fs::create_dir_all(root.join("roses")).unwrap();
        fs::create_dir_all(&elsewhere).unwrap();
        fs::write(root.join("roses/a.jpg"), b"x").unwrap();
        fs::write(elsewhere.join("b.jpg"), b"x").unwrap();
        symlink(&elsewhere, root.join("roses/linked")).unwrap();
        symlink(&root, root.join("roses/loop")).unwrap();
        symlink(root.join("nothing here"), root.join("roses/dangling.jpg")).unwrap();
        let (files, skipped) = files_below(&root);
        assert_eq!(names(&root, &files), ["roses/a.jpg", "roses/linked/b.jpg"]);
        let kinds: Vec<&str> = skipped.iter().map(|s| s.problem.kind()).collect();
        assert_eq!(kinds, ["missing", "symlink_loop"], "{skipped:?}");
    }
}
