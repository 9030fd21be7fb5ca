//! The bottleneck matrix: one row per image, kept in a memory-mapped scratch file rather
//! than on the heap.
//!
//! Why: a dataset of 100,000 images has 400 MB of MobileNet bottlenecks (1024 floats each).
//! Held in RAM they would set the floor of a retrain's memory; in a file-backed mapping the
//! kernel pages them in as training samples rows and may drop them again under memory
//! pressure, since they can always be read back from the file. The file is unnamed (it
//! disappears when the run ends, however it ends) and lives beside the bottleneck cache, on
//! the disk the user chose for bottlenecks, never on a RAM-backed /tmp.

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result};
use memmap2::{Mmap, MmapMut};
use ndarray::ArrayView2;

use crate::util::messages::io_reason;

/// A read-only matrix of `rows x dim` bottleneck values, as written by a [`MatrixWriter`].
pub struct BottleneckMatrix {
    map: Mmap,
    rows: usize,
    dim: usize,
}

impl std::fmt::Debug for BottleneckMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BottleneckMatrix({} x {})", self.rows, self.dim)
    }
}

impl BottleneckMatrix {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The whole matrix as an ndarray view (no copy).
    pub fn view(&self) -> ArrayView2<'_, f32> {
        let values: &[f32] = bytemuck::cast_slice(&self.map[..self.rows * self.dim * 4]);
        ArrayView2::from_shape((self.rows, self.dim), values)
            .expect("the mapping holds rows x dim values")
    }

    /// One row.
    pub fn row(&self, row: usize) -> &[f32] {
        let start = row * self.dim * 4;
        bytemuck::cast_slice(&self.map[start..start + self.dim * 4])
    }
}

/// Fills a [`BottleneckMatrix`] row by row, from many threads at once.
pub struct MatrixWriter {
    map: Mutex<MmapMut>,
    _file: Option<File>,
    rows: usize,
    dim: usize,
}

impl MatrixWriter {
    /// Creates a zeroed `rows x dim` matrix in an unnamed file in `dir`, or failing that in
    /// the system's temporary directory, or failing that (a read-only cache and a full disk)
    /// in memory, with a warning: the run then needs RAM for every bottleneck. Fails only
    /// when that memory cannot be had either.
    pub fn create(dir: &Path, rows: usize, dim: usize) -> Result<MatrixWriter> {
        let len = rows
            .checked_mul(dim)
            .and_then(|n| n.checked_mul(4))
            .context("the bottleneck matrix is too large to address")?
            .max(4);
        let mapped = scratch_file(dir, len)
            .or_else(|first| scratch_file(&std::env::temp_dir(), len).map_err(|_| first));
        let (map, file) = match mapped {
            Ok((map, file)) => (map, Some(file)),
            Err(e) => {
                crate::warn!(
                    "keeping {} MB of bottlenecks in memory: {e:#}",
                    len / 1_000_000
                );
                let map = MmapMut::map_anon(len).map_err(|e| {
                    anyhow::anyhow!(
                        "cannot hold {} MB of bottlenecks in memory either: {}; free disk space where --bottleneck-dir points",
                        len / 1_000_000,
                        io_reason(&e)
                    )
                })?;
                (map, None)
            }
        };
        Ok(MatrixWriter {
            map: Mutex::new(map),
            _file: file,
            rows,
            dim,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Stores `values` as row `row`.
    pub fn write_row(&self, row: usize, values: &[f32]) {
        assert!(
            row < self.rows && values.len() == self.dim,
            "row out of shape"
        );
        let start = row * self.dim * 4;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map[start..start + self.dim * 4].copy_from_slice(bytemuck::cast_slice(values));
    }

    /// The finished, read-only matrix.
    pub fn finish(self) -> Result<BottleneckMatrix> {
        let map = self.map.into_inner().unwrap_or_else(|e| e.into_inner());
        let map = map
            .make_read_only()
            .context("cannot remap the bottleneck matrix read-only")?;
        Ok(BottleneckMatrix {
            map,
            rows: self.rows,
            dim: self.dim,
        })
    }
}

/// An unnamed file of `len` zero bytes in `dir`, mapped. The zeros are written, not just
/// promised by `set_len`: a sparse file on a full disk would fail later, inside the
/// mapping, as a crash (SIGBUS) instead of this error.
fn scratch_file(dir: &Path, len: usize) -> Result<(MmapMut, File)> {
    let context = || {
        format!(
            "cannot create a {} MB scratch file for bottlenecks in {}",
            len / 1_000_000,
            dir.display()
        )
    };
    let mut file = tempfile::tempfile_in(dir).with_context(context)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(zeros.len());
        file.write_all(&zeros[..n]).with_context(context)?;
        left -= n;
    }
    // SAFETY: the file is unnamed and private to this process, so nothing else can
    // truncate or write it while it is mapped.
    let map = unsafe { MmapMut::map_mut(&file) }.with_context(context)?;
    Ok((map, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_written_from_threads_read_back_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let writer = MatrixWriter::create(dir.path(), 64, 5).unwrap();
        std::thread::scope(|scope| {
            for part in 0..4 {
                let writer = &writer;
                scope.spawn(move || {
                    for row in (part..64).step_by(4) {
                        let values: Vec<f32> = (0..5).map(|d| (row * 10 + d) as f32).collect();
                        writer.write_row(row, &values);
                    }
                });
            }
        });
        let matrix = writer.finish().unwrap();
        assert_eq!((matrix.rows(), matrix.dim()), (64, 5));
        assert_eq!(matrix.row(37), &[370.0, 371.0, 372.0, 373.0, 374.0]);
        assert_eq!(matrix.view()[[63, 4]], 634.0);
        // The scratch file is unnamed: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn without_a_usable_directory_the_matrix_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no such directory");
        let writer = MatrixWriter::create(&missing, 3, 2).unwrap();
        writer.write_row(2, &[1.5, -2.5]);
        let matrix = writer.finish().unwrap();
        assert_eq!(matrix.row(2), &[1.5, -2.5]);
        assert_eq!(matrix.row(0), &[0.0, 0.0]);
    }

    #[test]
    fn an_empty_matrix_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let matrix = MatrixWriter::create(dir.path(), 0, 1024)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(matrix.view().dim(), (0, 1024));
    }
}
