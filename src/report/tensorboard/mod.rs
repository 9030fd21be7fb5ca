//! TensorBoard event files, as retrain.py wrote them with `tf.summary`.
//!
//! An event file is a TFRecord stream of `Event` protobufs. Each record is framed as
//! `u64 length (LE) | u32 masked_crc32c(length) | data | u32 masked_crc32c(data)`, and
//! the first event of every file carries only `file_version = "brain.Event:2"`.
//! The protobuf structs below mirror `tensorflow/core/util/event.proto` and
//! `tensorflow/core/framework/summary.proto` field for field (only the fields we write
//! or may want to inspect); TensorBoard reads them like files written by TensorFlow.

mod proto;
mod record;

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use prost::Message;

pub use proto::*;
use record::{frame_record, unframe_record};

/// Writes one event file; records are flushed as they are written, so a run that is
/// interrupted leaves a file of complete records that TensorBoard can read.
pub struct EventWriter {
    path: PathBuf,
    out: BufWriter<File>,
}

impl EventWriter {
    /// Creates `run_dir` (and parents) and a new event file in it, named as TensorFlow
    /// names them so TensorBoard finds it; never overwrites an existing file.
    pub fn create(run_dir: &Path) -> anyhow::Result<EventWriter> {
        fs::create_dir_all(run_dir)
            .with_context(|| format!("cannot create summaries directory {}", run_dir.display()))?;
        let path = run_dir.join(event_file_name());
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("cannot create event file {}", path.display()))?;
        let mut writer = EventWriter {
            path,
            out: BufWriter::new(file),
        };
        let version = What::FileVersion(FILE_VERSION.to_string());
        writer.write_event(Event {
            wall_time: now(),
            step: 0,
            what: Some(version),
        })?;
        Ok(writer)
    }

    /// The event file being written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Logs a scalar (`simple_value`), as TF 1's `tf.summary.scalar` did.
    pub fn scalar(&mut self, tag: &str, step: i64, value: f32) -> anyhow::Result<()> {
        self.write_value(tag, step, ValueKind::SimpleValue(value))
    }

    /// Logs a histogram of `values` with TensorFlow's default buckets, as TF 1's
    /// `tf.summary.histogram` did. Like TensorFlow, refuses NaN and infinities.
    pub fn histogram(&mut self, tag: &str, step: i64, values: &[f32]) -> anyhow::Result<()> {
        ensure!(
            values.iter().all(|v| v.is_finite()),
            "NaN or infinity in summary histogram for {tag}"
        );
        self.write_value(tag, step, ValueKind::Histo(histogram_proto(values)))
    }

    /// Wraps one tagged value in a summary event.
    fn write_value(&mut self, tag: &str, step: i64, value: ValueKind) -> anyhow::Result<()> {
        let value = Value {
            tag: tag.to_string(),
            value: Some(value),
            ..Value::default()
        };
        let summary = Summary { value: vec![value] };
        self.write_event(Event {
            wall_time: now(),
            step,
            what: Some(What::Summary(summary)),
        })
    }

    /// Frames and writes one event, then flushes it to the OS.
    fn write_event(&mut self, event: Event) -> anyhow::Result<()> {
        let record = frame_record(&event.encode_to_vec());
        self.out
            .write_all(&record)
            .and_then(|()| self.out.flush())
            .with_context(|| format!("cannot write event file {}", self.path.display()))
    }
}

/// Reads every event of an event file, checking both CRCs of every record: a damaged
/// or truncated file is an error naming the file and the byte offset of the bad record.
pub fn read_events(path: &Path) -> anyhow::Result<Vec<Event>> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut events = Vec::new();
    let mut offset = 0;
    while offset < bytes.len() {
        let (data, next) = unframe_record(&bytes, offset)
            .with_context(|| format!("{}: bad record at byte offset {offset}", path.display()))?;
        let event = Event::decode(data).with_context(|| {
            format!(
                "{}: undecodable event at byte offset {offset}",
                path.display()
            )
        })?;
        events.push(event);
        offset = next;
    }
    Ok(events)
}

/// `events.out.tfevents.{seconds}.{hostname}.{pid}.{counter}`: TensorBoard only loads
/// files whose names contain "tfevents"; the counter keeps names unique within a process.
fn event_file_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let seconds = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    format!(
        "events.out.tfevents.{seconds}.{}.{pid}.{counter}",
        hostname()
    )
}

/// The machine's name from /etc/hostname, without pulling in a crate for it.
fn hostname() -> String {
    let name = fs::read_to_string("/etc/hostname").unwrap_or_default();
    let name = name.trim();
    let usable = !name.is_empty() && !name.contains(['/', '\\']);
    if usable {
        name.to_string()
    } else {
        "localhost".to_string()
    }
}

/// Seconds since the Unix epoch, the unit of `Event.wall_time`.
fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// TensorFlow's default bucket limits (`InitDefaultBucketsInner` in histogram.cc):
/// limits growing by 10% from 1e-12 to 1e20, mirrored for negatives, 0 between, and
/// ±DBL_MAX at the ends. Same limits as TensorFlow, so histograms compare across tools.
fn default_bucket_limits() -> &'static [f64] {
    static LIMITS: OnceLock<Vec<f64>> = OnceLock::new();
    LIMITS.get_or_init(|| {
        let mut positive = Vec::new();
        let mut v = 1.0e-12;
        while v < 1.0e20 {
            positive.push(v);
            v *= 1.1;
        }
        positive.push(f64::MAX);
        let negative = positive.iter().rev().map(|v| -v);
        negative
            .chain([0.0])
            .chain(positive.iter().copied())
            .collect()
    })
}

/// Buckets `values` as TensorFlow's `Histogram::Add` does (a value goes to the first
/// bucket whose limit exceeds it) and encodes them as `EncodeToProto` does.
fn histogram_proto(values: &[f32]) -> HistogramProto {
    let limits = default_bucket_limits();
    let mut counts = vec![0.0; limits.len()];
    let mut proto = HistogramProto {
        min: f64::MAX,
        max: -f64::MAX,
        ..Default::default()
    };
    for &value in values {
        let value = f64::from(value);
        let bucket = limits.partition_point(|&limit| limit <= value);
        counts[bucket.min(limits.len() - 1)] += 1.0;
        proto.min = proto.min.min(value);
        proto.max = proto.max.max(value);
        proto.num += 1.0;
        proto.sum += value;
        proto.sum_squares += value * value;
    }
    (proto.bucket_limit, proto.bucket) = compact_buckets(limits, &counts);
    proto
}

/// `EncodeToProto(preserve_zero_buckets = false)`: every run of empty buckets becomes
/// one empty bucket ending at the run's last limit, which keeps files small (a few
/// dozen buckets instead of ~1550) while TensorBoard still sees every bucket edge.
fn compact_buckets(limits: &[f64], counts: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let (mut out_limits, mut out_counts) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < counts.len() {
        let (mut end, count) = (limits[i], counts[i]);
        i += 1;
        if count <= 0.0 {
            while i < counts.len() && counts[i] <= 0.0 {
                end = limits[i];
                i += 1;
            }
        }
        out_limits.push(end);
        out_counts.push(count);
    }
    (out_limits, out_counts)
}

#[cfg(test)]
mod tests {
    use super::record::{crc32c, masked_crc32c};
    use super::*;

    /// The summaries of an event file as (tag, step, value) triples, in file order.
    fn values(events: &[Event]) -> Vec<(String, i64, ValueKind)> {
        let mut out = Vec::new();
        for event in events {
            if let Some(What::Summary(summary)) = &event.what {
                for value in &summary.value {
                    out.push((value.tag.clone(), event.step, value.value.clone().unwrap()));
                }
            }
        }
        out
    }

    /// An event file with three scalars and a histogram, in a fresh directory.
    fn sample_file(dir: &Path) -> PathBuf {
        let mut writer = EventWriter::create(&dir.join("train")).unwrap();
        for (step, value) in [(0, 0.25), (10, 0.5), (20, 0.75)] {
            writer.scalar("accuracy", step, value).unwrap();
        }
        writer
            .histogram("weights", 20, &[-1.5, 0.0, 0.0, 2.0, 3.0])
            .unwrap();
        writer.path().to_path_buf()
    }

    #[test]
    fn crc32c_matches_known_vectors() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
        // Expected values computed by tensorboard's own masked_crc32c.
        assert_eq!(masked_crc32c(b"123456789"), 0xC78A_B0E5);
        assert_eq!(masked_crc32c(b""), 0xA282_EAD8);
        assert_eq!(masked_crc32c(&24u64.to_le_bytes()), 0x224B_7FA3);
    }

    #[test]
    fn records_match_tensorboard_bytes() {
        // Written by tensorboard's RecordWriter from the same two events.
        let expected = "1800000000000000a37f4b2209000000000000f83f1a0d627261696e2e4576656e74\
            3a322a28646c1e00000000000000d9dc1232090000000000000240100a2a110a0f0a0861636375\
            72616379150000403ff3ed7d27";
        let version = What::FileVersion(FILE_VERSION.to_string());
        let first = Event {
            wall_time: 1.5,
            step: 0,
            what: Some(version),
        };
        let value = Value {
            tag: "accuracy".to_string(),
            value: Some(ValueKind::SimpleValue(0.75)),
            ..Value::default()
        };
        let summary = What::Summary(Summary { value: vec![value] });
        let second = Event {
            wall_time: 2.25,
            step: 10,
            what: Some(summary),
        };
        let mut bytes = frame_record(&first.encode_to_vec());
        bytes.extend(frame_record(&second.encode_to_vec()));
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected);
    }

    #[test]
    fn default_buckets_are_tensorflows() {
        let limits = default_bucket_limits();
        assert_eq!(limits.len() % 2, 1);
        let middle = limits.len() / 2;
        assert_eq!(limits[middle], 0.0);
        assert_eq!(limits[middle + 1], 1.0e-12);
        assert_eq!(limits[middle - 1], -1.0e-12);
        assert_eq!((limits[0], limits[limits.len() - 1]), (-f64::MAX, f64::MAX));
        assert!(limits.windows(2).all(|w| w[0] < w[1]));
        assert!(limits[limits.len() - 2] >= 1.0e20 / 1.1);
    }

    #[test]
    fn written_events_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample_file(dir.path());
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(name.starts_with("events.out.tfevents."), "{name}");
        let events = read_events(&path).unwrap();
        assert_eq!(
            events[0].what,
            Some(What::FileVersion(FILE_VERSION.to_string()))
        );
        assert!(events[0].wall_time > 1.0e9);
        let values = values(&events);
        let scalars: Vec<_> = values[..3]
            .iter()
            .map(|(t, s, v)| (t.as_str(), *s, v.clone()))
            .collect();
        assert_eq!(
            scalars,
            [0.25, 0.5, 0.75]
                .iter()
                .zip([0, 10, 20])
                .map(|(&v, s)| ("accuracy", s, ValueKind::SimpleValue(v)))
                .collect::<Vec<_>>()
        );
        let (tag, step, ValueKind::Histo(histo)) = &values[3] else {
            panic!("{values:?}")
        };
        assert_eq!((tag.as_str(), *step), ("weights", 20));
        assert_eq!(
            (histo.num, histo.sum, histo.min, histo.max),
            (5.0, 3.5, -1.5, 3.0)
        );
        assert_eq!(histo.sum_squares, 2.25 + 4.0 + 9.0);
        assert_eq!(histo.bucket.iter().sum::<f64>(), 5.0);
        assert_eq!(histo.bucket.len(), histo.bucket_limit.len());
        assert_eq!(values.len(), 4);
    }

    #[test]
    fn histogram_buckets_follow_tensorflow() {
        let histo = histogram_proto(&[0.0, 0.0, 1.0]);
        // Zero lands in the bucket ending at 1e-12, one in the bucket ending just above 1.
        let nonempty: Vec<_> = histo
            .bucket_limit
            .iter()
            .zip(&histo.bucket)
            .filter(|(_, &count)| count > 0.0)
            .collect();
        assert_eq!(nonempty.len(), 2);
        assert_eq!((*nonempty[0].0, *nonempty[0].1), (1.0e-12, 2.0));
        assert!(*nonempty[1].0 > 1.0 && *nonempty[1].0 < 1.1 && *nonempty[1].1 == 1.0);
        // Empty runs collapse: leading run, gap, trailing run up to DBL_MAX.
        assert_eq!(histo.bucket, [0.0, 2.0, 0.0, 1.0, 0.0]);
        assert_eq!(*histo.bucket_limit.last().unwrap(), f64::MAX);
        let empty = histogram_proto(&[]);
        assert_eq!(
            (empty.bucket_limit, empty.bucket),
            (vec![f64::MAX], vec![0.0])
        );
    }

    #[test]
    fn non_finite_histograms_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = EventWriter::create(dir.path()).unwrap();
        assert!(writer.histogram("w", 0, &[1.0, f32::NAN]).is_err());
        assert_eq!(read_events(writer.path()).unwrap().len(), 1);
    }

    #[test]
    fn writers_in_one_directory_get_distinct_files() {
        let dir = tempfile::tempdir().unwrap();
        let first = EventWriter::create(dir.path()).unwrap();
        let second = EventWriter::create(dir.path()).unwrap();
        assert_ne!(first.path(), second.path());
    }

    #[test]
    fn a_corrupted_byte_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample_file(dir.path());
        let clean = fs::read(&path).unwrap();
        // One byte inside each part of the second record: length, length CRC, data, data CRC.
        let second = 16 + u64::from_le_bytes(clean[..8].try_into().unwrap()) as usize;
        for position in [
            second,
            second + 9,
            second + 14,
            second + 12 + clean[second] as usize + 1,
        ] {
            let mut bytes = clean.clone();
            bytes[position] ^= 0x01;
            fs::write(&path, &bytes).unwrap();
            let message = format!("{:#}", read_events(&path).unwrap_err());
            assert!(
                message.contains(&format!("byte offset {second}")),
                "{message}"
            );
            assert!(message.contains(&path.display().to_string()), "{message}");
        }
    }

    #[test]
    fn a_truncated_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample_file(dir.path());
        let clean = fs::read(&path).unwrap();
        let first = 16 + u64::from_le_bytes(clean[..8].try_into().unwrap()) as usize;
        for keep in [
            clean.len() - 1,
            clean.len() - 4,
            clean.len() - 20,
            first + 5,
            first + 14,
        ] {
            fs::write(&path, &clean[..keep]).unwrap();
            let message = format!("{:#}", read_events(&path).unwrap_err());
            assert!(message.contains("truncated"), "{message}");
        }
    }

    /// Writes train/ and validation/ runs under $FLOWERS_SUMMARY_DIR for checking with
    /// the real TensorBoard reader: `python3 bench/check_tensorboard.py $FLOWERS_SUMMARY_DIR`.
    #[test]
    #[ignore = "writes to $FLOWERS_SUMMARY_DIR for bench/check_tensorboard.py"]
    fn write_runs_for_tensorboard() {
        let dir = PathBuf::from(std::env::var("FLOWERS_SUMMARY_DIR").unwrap());
        let mut train = EventWriter::create(&dir.join("train")).unwrap();
        let mut validation = EventWriter::create(&dir.join("validation")).unwrap();
        for step in (0..=20).step_by(10) {
            let x = step as f32 / 20.0;
            train.scalar("accuracy", step, 0.5 + 0.4 * x).unwrap();
            train.scalar("cross_entropy", step, 1.5 - x).unwrap();
            let weights: Vec<f32> = (0..1000)
                .map(|i| (i as f32 - 500.0) / 250.0 * (1.0 + x))
                .collect();
            train
                .histogram("final_training_ops/weights", step, &weights)
                .unwrap();
            validation.scalar("accuracy", step, 0.4 + 0.4 * x).unwrap();
        }
        println!(
            "{}\n{}",
            train.path().display(),
            validation.path().display()
        );
    }
}
