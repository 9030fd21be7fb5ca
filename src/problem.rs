//! What can be wrong with one input file, as a type.
//!
//! A bad file is skipped with a warning and counted, never the end of a run; scripts read
//! why from the JSON outputs, where each problem has a stable `kind` string (documented in
//! the README's bad-input table) beside its human-readable `reason`. Tests match on the
//! kind, so rewording a message breaks nothing.
//!
//! This is the bottom of the module stack: it imports nothing from the rest of flowers.

use std::fmt;
use std::path::PathBuf;

use serde::ser::{SerializeStruct, Serializer};
use serde::Serialize;

/// Why one file or folder could not be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// The path does not exist.
    Missing,
    /// The file exists but cannot be read; the reason from the operating system.
    Unreadable(String),
    /// A folder cannot be listed; the reason from the operating system.
    UnlistableFolder(String),
    /// A symbolic link leads back to a folder above it: walked once, not forever.
    SymlinkLoop,
    /// A file of zero bytes.
    Empty,
    /// The content is no image format flowers reads (decided by content, not name).
    NotAnImage,
    /// Over the size limits, refused before any pixel is allocated; what was over.
    TooLarge(String),
    /// A JPEG with no end-of-image marker after its last scan.
    Truncated,
    /// The decoder refused the file; its words.
    Corrupt(String),
    /// The decoder panicked on this file (a decoder bug), caught.
    DecoderCrashed,
    /// The graph could not be run on this image; tract's words.
    InferenceFailed(String),
}

impl Problem {
    /// The stable machine-readable name of this kind of problem.
    pub fn kind(&self) -> &'static str {
        match self {
            Problem::Missing => "missing",
            Problem::Unreadable(_) => "unreadable",
            Problem::UnlistableFolder(_) => "unlistable_folder",
            Problem::SymlinkLoop => "symlink_loop",
            Problem::Empty => "empty",
            Problem::NotAnImage => "not_an_image",
            Problem::TooLarge(_) => "too_large",
            Problem::Truncated => "truncated",
            Problem::Corrupt(_) => "corrupt",
            Problem::DecoderCrashed => "decoder_crashed",
            Problem::InferenceFailed(_) => "inference_failed",
        }
    }

    /// Every kind, in the order of the README's table.
    pub const KINDS: [&'static str; 11] = [
        "missing",
        "unreadable",
        "unlistable_folder",
        "symlink_loop",
        "empty",
        "not_an_image",
        "too_large",
        "truncated",
        "corrupt",
        "decoder_crashed",
        "inference_failed",
    ];

    /// The problem of an I/O error met while reading a file.
    pub fn from_io(error: &std::io::Error) -> Problem {
        match error.kind() {
            std::io::ErrorKind::NotFound => Problem::Missing,
            _ => Problem::Unreadable(io_reason(error)),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Missing => write!(f, "no such file or directory"),
            Problem::Unreadable(reason) => write!(f, "cannot read: {reason}"),
            Problem::UnlistableFolder(reason) => write!(f, "cannot list folder: {reason}"),
            Problem::SymlinkLoop => write!(
                f,
                "symbolic link loop (a link to a folder above it): listed once, not followed again"
            ),
            Problem::Empty => write!(f, "empty file (0 bytes)"),
            Problem::NotAnImage => write!(
                f,
                "not a supported image (flowers reads JPEG, PNG, GIF, BMP and WebP, recognised by content)"
            ),
            Problem::TooLarge(what) => write!(f, "{what}"),
            Problem::Truncated => write!(
                f,
                "truncated JPEG (no end-of-image marker after the last scan)"
            ),
            Problem::Corrupt(reason) => write!(f, "cannot decode image: {reason}"),
            Problem::DecoderCrashed => write!(f, "the image decoder crashed on this file"),
            Problem::InferenceFailed(reason) => write!(f, "inference failed: {reason}"),
        }
    }
}

/// A short, user-facing reason for an I/O error.
pub fn io_reason(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".into(),
        std::io::ErrorKind::PermissionDenied => "permission denied".into(),
        _ => error.to_string(),
    }
}

/// A file that was passed over, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    pub path: PathBuf,
    pub problem: Problem,
}

/// `{"path": "...", "kind": "...", "reason": "..."}`; a path that is not UTF-8 is written
/// lossily rather than failing the whole JSON report.
impl Serialize for Skipped {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut fields = serializer.serialize_struct("Skipped", 3)?;
        fields.serialize_field("path", &self.path.to_string_lossy())?;
        fields.serialize_field("kind", self.problem.kind())?;
        fields.serialize_field("reason", &self.problem.to_string())?;
        fields.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_listed_once_and_messages_are_one_line() {
        let all = [
            Problem::Missing,
            Problem::Unreadable("permission denied".into()),
            Problem::UnlistableFolder("permission denied".into()),
            Problem::SymlinkLoop,
            Problem::Empty,
            Problem::NotAnImage,
            Problem::TooLarge("image header claims 60000x60000 pixels".into()),
            Problem::Truncated,
            Problem::Corrupt("bad Huffman table".into()),
            Problem::DecoderCrashed,
            Problem::InferenceFailed("shape mismatch".into()),
        ];
        let kinds: Vec<&str> = all.iter().map(Problem::kind).collect();
        assert_eq!(kinds, Problem::KINDS);
        for problem in &all {
            assert!(!problem.to_string().contains('\n'), "{problem:?}");
        }
    }

    #[test]
    fn skipped_files_serialise_with_their_kind() {
        let skipped = Skipped {
            path: PathBuf::from("daisy/x.jpg"),
            problem: Problem::Truncated,
        };
        let json = serde_json::to_value(&skipped).unwrap();
        assert_eq!(json["path"], "daisy/x.jpg");
        assert_eq!(json["kind"], "truncated");
        assert!(json["reason"]
            .as_str()
            .unwrap()
            .starts_with("truncated JPEG"));
    }
}
