//! The bottleneck matrix: one row per image, kept in a scratch file rather than on the heap.
//!
//! Why: a dataset of 100,000 images has 400 MB of MobileNet bottlenecks (1024 floats each),
//! a million has 4 GB. Held in RAM they would set the floor of a retrain's memory. Up to
//! the memory limit (`--training-memory`) the file is memory-mapped: the kernel pages rows
//! in as training samples them and may drop them again under pressure. Past the limit the
//! matrix is *streamed*: rows are written and read with positioned file I/O, so the process
//! holds only the batch it works on, and whatever the page cache keeps of the file is the
//! kernel's to reclaim. The file is unnamed (it disappears when the run ends, however it
//! ends) and lives beside the bottleneck cache, on the disk the user chose for bottlenecks,
//! never on a RAM-backed /tmp.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result};
use memmap2::{Mmap, MmapMut};
use ndarray::Array2;

use crate::util::messages::io_reason;

/// The default of `--training-memory`: the most bytes of bottleneck values a run maps.
pub const DEFAULT_MATRIX_MEMORY: u64 = 1 << 30;

/// A read-only matrix of `rows x dim` bottleneck values, as written by a [`MatrixWriter`].
pub struct BottleneckMatrix {
    storage: Storage,
    rows: usize,
    dim: usize,
}

enum Storage {
    /// The whole matrix mapped (from its scratch file, or anonymous memory).
    Mapped(Mmap),
    /// Rows read from the scratch file on demand.
    Streamed(File),
}

impl std::fmt::Debug for BottleneckMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = if self.is_streamed() {
            "streamed"
        } else {
            "mapped"
        };
        write!(f, "BottleneckMatrix({} x {}, {how})", self.rows, self.dim)
    }
}

impl BottleneckMatrix {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Whether rows are read from the file on demand rather than mapped.
    pub fn is_streamed(&self) -> bool {
        matches!(self.storage, Storage::Streamed(_))
    }

    /// One row.
    pub fn row(&self, row: usize) -> Result<Vec<f32>> {
        Ok(self.gather(&[row])?.into_raw_vec_and_offset().0)
    }

    /// The rows `rows`, in that order, as slices: borrowed from the mapping, or read into
    /// `scratch` when the matrix is streamed. Training takes a batch this way every step,
    /// so a mapped batch is never copied.
    pub fn rows_in<'a>(
        &'a self,
        rows: &[usize],
        scratch: &'a mut Vec<f32>,
    ) -> Result<Vec<&'a [f32]>> {
        let mut slices = Vec::with_capacity(rows.len());
        self.rows_into(rows, scratch, &mut slices)?;
        Ok(slices)
    }

    /// [`BottleneckMatrix::rows_in`] into `slices` (cleared first), allocating nothing
    /// once `slices` and `scratch` have the room.
    pub fn rows_into<'a>(
        &'a self,
        rows: &[usize],
        scratch: &'a mut Vec<f32>,
        slices: &mut Vec<&'a [f32]>,
    ) -> Result<()> {
        assert!(
            rows.iter().all(|&r| r < self.rows),
            "rows inside the matrix"
        );
        slices.clear();
        let dim = self.dim;
        let values: &[f32] = match &self.storage {
            Storage::Mapped(map) => bytemuck::cast_slice(&map[..self.rows * dim * 4]),
            Storage::Streamed(file) => {
                scratch.clear();
                scratch.resize(rows.len() * dim, 0.0);
                for (chunk, &row) in scratch.chunks_exact_mut(dim.max(1)).zip(rows) {
                    let offset = (row * dim * 4) as u64;
                    file.read_exact_at(bytemuck::cast_slice_mut(chunk), offset)
                        .map_err(|e| {
                            anyhow::anyhow!(
                                "cannot read bottlenecks back from their scratch file: {}",
                                io_reason(&e)
                            )
                        })?;
                }
                slices.extend((0..rows.len()).map(|i| &scratch[i * dim..(i + 1) * dim]));
                return Ok(());
            }
        };
        slices.extend(rows.iter().map(|&row| &values[row * dim..(row + 1) * dim]));
        Ok(())
    }

    /// The rows `rows`, in that order, copied out (`rows.len() x dim`).
    pub fn gather(&self, rows: &[usize]) -> Result<Array2<f32>> {
        let mut scratch = Vec::new();
        let values = if self.is_streamed() {
            self.rows_in(rows, &mut scratch)?;
            scratch
        } else {
            self.rows_in(rows, &mut scratch)?.concat()
        };
        Ok(Array2::from_shape_vec((rows.len(), self.dim), values).expect("rows x dim values"))
    }
}

/// Fills a [`BottleneckMatrix`] row by row, from many threads at once.
pub struct MatrixWriter {
    sink: Sink,
    rows: usize,
    dim: usize,
    /// The first failed write, reported by [`MatrixWriter::finish`].
    failure: OnceLock<String>,
}

enum Sink {
    Mapped {
        map: Mutex<MmapMut>,
        _file: Option<File>,
    },
    Streamed(File),
}

impl MatrixWriter {
    /// Creates a zeroed `rows x dim` matrix in an unnamed file in `dir`, or failing that in
    /// the system's temporary directory. A matrix of at most `memory` bytes is mapped, and
    /// failing both files kept in memory with a warning; a larger one is streamed, and
    /// without a file to stream to it is an error.
    pub fn create(dir: &Path, rows: usize, dim: usize, memory: u64) -> Result<MatrixWriter> {
        let len = rows
            .checked_mul(dim)
            .and_then(|n| n.checked_mul(4))
            .context("the bottleneck matrix is too large to address")?;
        let sink = if len as u64 <= memory {
            mapped_sink(dir, len.max(4))?
        } else {
            let file = sparse_file(dir, len)
                .or_else(|first| sparse_file(&std::env::temp_dir(), len).map_err(|_| first))
                .context("the bottlenecks exceed --training-memory and must be streamed")?;
            Sink::Streamed(file)
        };
        Ok(MatrixWriter {
            sink,
            rows,
            dim,
            failure: OnceLock::new(),
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Stores `values` as row `row`. A failed write (a full disk) is kept and returned by
    /// [`MatrixWriter::finish`], so the many writer threads need not each handle it.
    pub fn write_row(&self, row: usize, values: &[f32]) {
        assert!(
            row < self.rows && values.len() == self.dim,
            "row out of shape"
        );
        let start = row * self.dim * 4;
        match &self.sink {
            Sink::Mapped { map, .. } => {
                let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
                map[start..start + self.dim * 4].copy_from_slice(bytemuck::cast_slice(values));
            }
            Sink::Streamed(file) => {
                if let Err(e) = file.write_all_at(bytemuck::cast_slice(values), start as u64) {
                    self.failure.get_or_init(|| io_reason(&e));
                }
            }
        }
    }

    /// The finished, read-only matrix.
    pub fn finish(self) -> Result<BottleneckMatrix> {
        if let Some(reason) = self.failure.into_inner() {
            anyhow::bail!(
                "cannot write bottlenecks to their scratch file: {reason}; free disk space where --bottleneck-dir points"
            );
        }
        let storage = match self.sink {
            Sink::Mapped { map, .. } => {
                let map = map.into_inner().unwrap_or_else(|e| e.into_inner());
                Storage::Mapped(
                    map.make_read_only()
                        .context("cannot remap the bottleneck matrix read-only")?,
                )
            }
            Sink::Streamed(file) => Storage::Streamed(file),
        };
        Ok(BottleneckMatrix {
            storage,
            rows: self.rows,
            dim: self.dim,
        })
    }
}

/// A mapped matrix of `len` bytes: in a scratch file in `dir` or the temporary directory,
/// or failing both (a read-only cache and a full disk) in memory, with a warning.
fn mapped_sink(dir: &Path, len: usize) -> Result<Sink> {
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
    Ok(Sink::Mapped {
        map: Mutex::new(map),
        _file: file,
    })
}

/// An unnamed file of `len` bytes in `dir` for positioned reads and writes. It may be
/// sparse: unlike a mapping, a write that finds the disk full fails as an error.
fn sparse_file(dir: &Path, len: usize) -> Result<File> {
    let file = tempfile::tempfile_in(dir)
        .and_then(|file| file.set_len(len as u64).map(|()| file))
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot create a {} MB scratch file for bottlenecks in {}: {}",
                len / 1_000_000,
                dir.display(),
                io_reason(&e)
            )
        })?;
    Ok(file)
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
        let writer = MatrixWriter::create(dir.path(), 64, 5, DEFAULT_MATRIX_MEMORY).unwrap();
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
        assert!(!matrix.is_streamed());
        assert_eq!(matrix.row(37).unwrap(), [370.0, 371.0, 372.0, 373.0, 374.0]);
        assert_eq!(matrix.gather(&[63, 1]).unwrap()[[0, 4]], 634.0);
        // The scratch file is unnamed: nothing is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn without_a_usable_directory_the_matrix_still_works() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no such directory");
        let writer = MatrixWriter::create(&missing, 3, 2, DEFAULT_MATRIX_MEMORY).unwrap();
        writer.write_row(2, &[1.5, -2.5]);
        let matrix = writer.finish().unwrap();
        assert_eq!(matrix.row(2).unwrap(), [1.5, -2.5]);
        assert_eq!(matrix.row(0).unwrap(), [0.0, 0.0]);
    }

    #[test]
    fn an_empty_matrix_is_fine() {
        let dir = tempfile::tempdir().unwrap();
        let matrix = MatrixWriter::create(dir.path(), 0, 1024, DEFAULT_MATRIX_MEMORY)
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(matrix.gather(&[]).unwrap().dim(), (0, 1024));
    }

    #[test]
    fn past_the_memory_limit_rows_are_streamed_and_read_back_alike() {
        let dir = tempfile::tempdir().unwrap();
        let values = |row: usize| -> Vec<f32> { (0..7).map(|d| (row * 7 + d) as f32).collect() };
        let mut matrices = Vec::new();
        // 50 rows of 7 floats are 1400 bytes: mapped under a 1400 byte limit, streamed under 1399.
        for memory in [1400, 1399] {
            let writer = MatrixWriter::create(dir.path(), 50, 7, memory).unwrap();
            for row in (0..50).filter(|r| r % 5 != 0) {
                writer.write_row(row, &values(row));
            }
            matrices.push(writer.finish().unwrap());
        }
        assert!(!matrices[0].is_streamed() && matrices[1].is_streamed());
        let picks = [49, 3, 3, 10, 0];
        let mapped = matrices[0].gather(&picks).unwrap();
        assert_eq!(mapped, matrices[1].gather(&picks).unwrap());
        assert_eq!(mapped.row(0).to_vec(), values(49));
        assert_eq!(
            mapped.row(3).to_vec(),
            vec![0.0; 7],
            "unwritten rows are zero"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
