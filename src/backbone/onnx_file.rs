//! An ONNX file read from disk with its weights read straight into the tensors tract
//! keeps.
//!
//! Decoding a file read whole passes over the weights three times before tract has them:
//! the read into one buffer, prost's copy of every `raw_data` field out of it, and tract's
//! copy of each into a tensor, each into memory the process touches for the first time
//! (which costs the kernel more than the copy). On `label` with one photo those passes
//! were half of the run (BENCHMARKS.md, issue 24). Here a walk over the file collects
//! everything but the weights (the graph's structure, names, attributes and metadata:
//! kilobytes) and notes where each initializer's `raw_data` lies. The model is decoded and
//! checked from that as [`super::onnx::decode_model`] checks one; then the large float
//! initializers are read from the file into tensors, by two threads on two cores, and
//! handed to tract as constants in place of inputs it parsed them as.
//!
//! The walk descends only through `ModelProto.graph` (7), `GraphProto.initializer` (5) and
//! `TensorProto.raw_data` (9); every other field is copied as it is, so prost sees the same
//! messages (the initializers' order, repeated fields and unknown fields included), and a
//! field repeated where protobuf merges (two `graph` fields) merges the same way.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Seek};
use std::ops::Range;

use anyhow::{anyhow, ensure, Context, Result};
use prost::encoding::{encode_key, encode_varint, WireType};
use prost::Message;
use tract_onnx::pb::tensor_proto::DataType;
use tract_onnx::pb::tensor_shape_proto::{dimension, Dimension};
use tract_onnx::pb::{
    type_proto, GraphProto, ModelProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_hir::ops::source::Source;

use super::limits::MAX_NODES;
use super::onnx::{check_decoded, check_shallow, GENERATORS};
use crate::util::files::read_exact_at;

/// Field numbers the walk descends through.
const MODEL_GRAPH: u32 = 7;
const GRAPH_INITIALIZER: u32 = 5;
const TENSOR_RAW_DATA: u32 = 9;

/// Most initializers one graph may have: each is at least two bytes in a file, and a
/// record here, so the count is bounded like the nodes'.
const MAX_INITIALIZERS: usize = MAX_NODES;

/// Float initializers at least this large stay on disk until [`OnnxFile::into_tract`]
/// reads them into tract's tensors; smaller ones are read with the structure.
const DEFERRED_FROM: u64 = 4096;

/// Weights smaller than this are read by one thread: a second costs more to start than it
/// saves.
const SPLIT_ABOVE: u64 = 1 << 20;

/// A checked ONNX model whose large weights are still in its file.
pub struct OnnxFile<'f> {
    /// The model; the deferred initializers have no data.
    pub proto: ModelProto,
    /// The initializers still on disk: their index in the graph's and where their data is.
    deferred: Vec<(usize, Range<u64>)>,
    file: &'f File,
    /// The file as errors name it.
    display: String,
}

/// Reads and checks the ONNX model in `file` (`size` bytes, shown as `display` in errors)
/// as [`super::onnx::decode_model`] does, all but its large weights.
pub fn read<'f>(file: &'f File, size: u64, display: &str) -> Result<OnnxFile<'f>> {
    read_deferring(file, size, display, DEFERRED_FROM)
}

/// [`read`], leaving on disk the float initializers of at least `deferred_from` bytes.
fn read_deferring<'f>(
    file: &'f File,
    size: u64,
    display: &str,
    deferred_from: u64,
) -> Result<OnnxFile<'f>> {
    let not_onnx = || anyhow!("{display} is not an ONNX model (protobuf decoding failed)");
    let parts = Walk::new(file, size).model().map_err(|e| match e {
        WalkError::Io(e) => anyhow!("cannot read graph {display}: {e}"),
        WalkError::Malformed => not_onnx(),
        WalkError::TooManyInitializers => {
            anyhow!("{display} is refused: it has more than {MAX_INITIALIZERS} initializers")
        }
    })?;
    let head = parts.head();
    check_shallow(&head, display)?;
    let mut proto = ModelProto::decode(&head[..]).map_err(|_| not_onnx())?;
    let mut tensors = parts
        .initializers
        .iter()
        .map(|i| TensorProto::decode(&i.rest[..]).map_err(|_| not_onnx()))
        .collect::<Result<Vec<_>>>()?;
    let fed_to_generators = generator_inputs(proto.graph.as_ref());
    let mut deferred = Vec::new();
    for (index, (initializer, tensor)) in parts.initializers.iter().zip(&mut tensors).enumerate() {
        let Some(range) = initializer.raw.clone() else {
            continue;
        };
        let large = initializer.raw_len() >= deferred_from;
        if large
            && tensor.data_type == DataType::Float as i32
            && !fed_to_generators.contains(&tensor.name)
        {
            deferred.push((index, range));
        } else {
            tensor.raw_data = vec![0; initializer.raw_len() as usize];
            read_exact_at(file, &mut tensor.raw_data, range.start)
                .map_err(|e| anyhow!("cannot read graph {display}: {e}"))?;
        }
    }
    if let Some(graph) = proto.graph.as_mut() {
        graph.initializer = tensors;
    }
    let unread = |i: usize| {
        deferred
            .binary_search_by_key(&i, |(index, _)| *index)
            .ok()
            .map(|at| deferred[at].1.end - deferred[at].1.start)
    };
    let proto = check_decoded(proto, display, &unread)?;
    Ok(OnnxFile {
        proto,
        deferred,
        file,
        display: display.to_string(),
    })
}

/// Names of the tensors the ops that [`super::onnx::check_model`] bounds by their constant
/// arguments read: those are read with the structure, so the checks see their values.
fn generator_inputs(graph: Option<&GraphProto>) -> HashSet<String> {
    let nodes = graph.map_or(&[][..], |g| &g.node[..]);
    nodes
        .iter()
        .filter(|n| GENERATORS.contains(&n.op_type.as_str()))
        .flat_map(|n| n.input.iter().cloned())
        .collect()
}

impl OnnxFile<'_> {
    /// tract's model of the graph, the deferred weights read from the file straight into
    /// the tensors its constants keep.
    pub fn into_tract(self) -> Result<InferenceModel> {
        let OnnxFile {
            mut proto,
            deferred,
            file,
            display,
        } = self;
        let graph = proto.graph.as_mut().context("the model has no graph")?;
        let mut on_disk = Vec::with_capacity(deferred.len());
        // Back to front, so the indices of the ones still to take stay right.
        for (index, range) in deferred.into_iter().rev() {
            let tensor = graph.initializer.remove(index);
            if !graph.input.iter().any(|i| i.name == tensor.name) {
                graph.input.push(input_for(&tensor));
            }
            on_disk.push((tensor, range));
        }
        on_disk.reverse();
        let weights = read_weights(file, &on_disk).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => anyhow!(
                "{display} became shorter while it was read: let whatever writes it finish, then run again"
            ),
            _ => anyhow!("cannot read graph {display}: {e}"),
        })?;
        let mut model = tract_onnx::onnx().model_for_proto_model(&proto)?;
        drop(proto);
        for ((proto, _), weight) in on_disk.iter().zip(weights) {
            make_constant(&mut model, &proto.name, weight)?;
        }
        Ok(model)
    }
}

/// The graph input tract parses a deferred initializer as: its name, type and shape.
fn input_for(tensor: &TensorProto) -> ValueInfoProto {
    let dim = tensor
        .dims
        .iter()
        .map(|&d| Dimension {
            value: Some(dimension::Value::DimValue(d)),
            ..Dimension::default()
        })
        .collect();
    let tensor_type = type_proto::Tensor {
        elem_type: tensor.data_type,
        shape: Some(TensorShapeProto { dim }),
    };
    ValueInfoProto {
        name: tensor.name.clone(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(tensor_type)),
            ..TypeProto::default()
        }),
        ..ValueInfoProto::default()
    }
}

/// Turns the graph input `name` that a deferred initializer was parsed as into the
/// constant `weight`.
fn make_constant(model: &mut InferenceModel, name: &str, weight: Tensor) -> Result<()> {
    let mut inputs = model.input_outlets()?.to_vec();
    let at = inputs
        .iter()
        .position(|o| model.node(o.node).name == name)
        .with_context(|| format!("initializer {name} is not a graph input"))?;
    let id = inputs.remove(at).node;
    model.set_input_outlets(&inputs)?;
    let node = model.node_mut(id);
    ensure!(
        node.op_is::<Source>(),
        "initializer {name} is not a graph input"
    );
    let weight = weight.into_arc_tensor();
    node.outputs[0].fact = TypedFact::try_from(weight.clone())?.into();
    node.op = Box::new(Const::new(weight)?);
    Ok(())
}

/// Reads each deferred initializer into a tensor of its shape, the later half of the bytes
/// on a second thread when there are enough of them and a second core to read them.
fn read_weights(
    file: &File,
    on_disk: &[(TensorProto, Range<u64>)],
) -> std::io::Result<Vec<Tensor>> {
    let total: u64 = on_disk.iter().map(|(_, r)| r.end - r.start).sum();
    let two_cores = std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
    if total <= SPLIT_ABOVE || !two_cores {
        return read_tensors(file, on_disk);
    }
    let mut before = 0;
    let half = on_disk
        .iter()
        .position(|(_, r)| {
            before += r.end - r.start;
            before >= total / 2
        })
        .map_or(on_disk.len(), |at| at + 1);
    let (first, second) = on_disk.split_at(half);
    std::thread::scope(|scope| {
        let helper = scope.spawn(|| read_tensors(file, second));
        let mut mine = read_tensors(file, first)?;
        let theirs = helper
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        mine.extend(theirs);
        Ok(mine)
    })
}

/// Reads deferred float initializers into tensors of their shapes.
fn read_tensors(
    file: &File,
    on_disk: &[(TensorProto, Range<u64>)],
) -> std::io::Result<Vec<Tensor>> {
    on_disk
        .iter()
        .map(|(proto, range)| {
            let shape = proto.dims.iter().map(|&d| d as usize).collect::<Vec<_>>();
            let mut tensor = Tensor::zero::<f32>(&shape).map_err(std::io::Error::other)?;
            // `check_model` matched the data's length to the shape; this keeps a mismatch
            // an error rather than a short or overlong read.
            let bytes = tensor.as_bytes_mut();
            if bytes.len() as u64 != range.end - range.start {
                return Err(std::io::Error::other(
                    "an initializer's data does not fit its shape",
                ));
            }
            read_exact_at(file, bytes, range.start)?;
            Ok(tensor)
        })
        .collect()
}

/// What the walk collected.
#[derive(Default)]
struct Parts {
    /// The model's fields but the graph, encoded as they were.
    model: Vec<u8>,
    /// The graph's fields but the initializers, if the model has a graph.
    graph: Option<Vec<u8>>,
    initializers: Vec<Initializer>,
}

impl Parts {
    /// The model without its initializers' data, as one encoded `ModelProto`.
    fn head(&self) -> Vec<u8> {
        let mut head = self.model.clone();
        if let Some(graph) = &self.graph {
            encode_key(MODEL_GRAPH, WireType::LengthDelimited, &mut head);
            encode_varint(graph.len() as u64, &mut head);
            head.extend_from_slice(graph);
        }
        head
    }
}

/// One initializer: its fields but `raw_data`, and where in the file `raw_data` is.
struct Initializer {
    rest: Vec<u8>,
    raw: Option<Range<u64>>,
}

impl Initializer {
    fn raw_len(&self) -> u64 {
        self.raw.as_ref().map_or(0, |r| r.end - r.start)
    }
}

enum WalkError {
    Io(std::io::Error),
    /// Not protobuf: a length past its message's end, a bad key or wire type.
    Malformed,
    TooManyInitializers,
}

impl From<std::io::Error> for WalkError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            // The file is shorter than what its own lengths say.
            std::io::ErrorKind::UnexpectedEof => WalkError::Malformed,
            _ => WalkError::Io(e),
        }
    }
}

type Walked<T> = std::result::Result<T, WalkError>;

/// A cursor over the file's protobuf fields.
struct Walk<'f> {
    reader: BufReader<&'f File>,
    /// Offset of the next byte `reader` yields.
    at: u64,
    size: u64,
}

impl<'f> Walk<'f> {
    fn new(file: &'f File, size: u64) -> Walk<'f> {
        Walk {
            reader: BufReader::with_capacity(64 << 10, file),
            at: 0,
            size,
        }
    }

    fn model(mut self) -> Walked<Parts> {
        self.reader.rewind()?;
        let mut parts = Parts::default();
        let end = self.size;
        while let Some((field, wire)) = self.key(end)? {
            if field == MODEL_GRAPH && wire == WireType::LengthDelimited {
                let graph_end = self.length(end)?;
                self.graph(graph_end, &mut parts)?;
            } else {
                self.copy(field, wire, end, &mut parts.model)?;
            }
        }
        Ok(parts)
    }

    fn graph(&mut self, end: u64, parts: &mut Parts) -> Walked<()> {
        let rest = parts.graph.get_or_insert_with(Vec::new);
        while let Some((field, wire)) = self.key(end)? {
            if field == GRAPH_INITIALIZER && wire == WireType::LengthDelimited {
                if parts.initializers.len() == MAX_INITIALIZERS {
                    return Err(WalkError::TooManyInitializers);
                }
                let tensor_end = self.length(end)?;
                parts.initializers.push(self.tensor(tensor_end)?);
            } else {
                self.copy(field, wire, end, rest)?;
            }
        }
        Ok(())
    }

    fn tensor(&mut self, end: u64) -> Walked<Initializer> {
        let mut initializer = Initializer {
            rest: Vec::new(),
            raw: None,
        };
        while let Some((field, wire)) = self.key(end)? {
            if field == TENSOR_RAW_DATA && wire == WireType::LengthDelimited {
                let raw_end = self.length(end)?;
                // A repeated `raw_data` replaces the earlier one, as in protobuf.
                initializer.raw = Some(self.at..raw_end);
                self.skip(raw_end - self.at)?;
            } else {
                self.copy(field, wire, end, &mut initializer.rest)?;
            }
        }
        Ok(initializer)
    }

    /// The next field's number and wire type, or `None` at `end`.
    fn key(&mut self, end: u64) -> Walked<Option<(u32, WireType)>> {
        if self.at == end {
            return Ok(None);
        }
        let key = self.varint(end)?;
        let field = u32::try_from(key >> 3).map_err(|_| WalkError::Malformed)?;
        let wire = WireType::try_from(key & 7).map_err(|_| WalkError::Malformed)?;
        if field == 0 {
            return Err(WalkError::Malformed);
        }
        Ok(Some((field, wire)))
    }

    /// Reads a length and returns where the value it measures ends, within `end`.
    fn length(&mut self, end: u64) -> Walked<u64> {
        let length = self.varint(end)?;
        match self.at.checked_add(length) {
            Some(value_end) if value_end <= end => Ok(value_end),
            _ => Err(WalkError::Malformed),
        }
    }

    /// Copies one field's key and value into `out`.
    fn copy(&mut self, field: u32, wire: WireType, end: u64, out: &mut Vec<u8>) -> Walked<()> {
        encode_key(field, wire, out);
        let value_end = match wire {
            WireType::Varint => {
                let value = self.varint(end)?;
                encode_varint(value, out);
                return Ok(());
            }
            WireType::SixtyFourBit => self.at + 8,
            WireType::ThirtyTwoBit => self.at + 4,
            WireType::LengthDelimited => {
                let value_end = self.length(end)?;
                encode_varint(value_end - self.at, out);
                value_end
            }
            // Groups: no ONNX message has one.
            WireType::StartGroup | WireType::EndGroup => return Err(WalkError::Malformed),
        };
        if value_end > end {
            return Err(WalkError::Malformed);
        }
        self.bytes(value_end - self.at, out)
    }

    fn varint(&mut self, end: u64) -> Walked<u64> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            if self.at == end {
                return Err(WalkError::Malformed);
            }
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WalkError::Malformed)
    }

    fn byte(&mut self) -> Walked<u8> {
        let byte = *self
            .reader
            .fill_buf()?
            .first()
            .ok_or(WalkError::Malformed)?;
        self.reader.consume(1);
        self.at += 1;
        Ok(byte)
    }

    fn bytes(&mut self, count: u64, out: &mut Vec<u8>) -> Walked<()> {
        let start = out.len();
        out.resize(start + count as usize, 0);
        std::io::Read::read_exact(&mut self.reader, &mut out[start..])?;
        self.at += count;
        Ok(())
    }

    fn skip(&mut self, count: u64) -> Walked<()> {
        let count = i64::try_from(count).map_err(|_| WalkError::Malformed)?;
        self.reader.seek_relative(count)?;
        self.at += count as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::backbone::onnx::decode_model;
    use crate::backbone::registry::DEFAULT_MODEL;
    use crate::backbone::{Backbone, ModelSource, Overrides, Plan};

    const SMALL: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/onnx/small_backbone.onnx"
    );

    /// `bytes` in a file of their own.
    fn on_disk(bytes: &[u8]) -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, bytes).unwrap();
        let file = File::open(&path).unwrap();
        (dir, file)
    }

    /// The model [`read_deferring`] gives, its deferred weights filled in from the bytes.
    fn read_whole(bytes: &[u8], deferred_from: u64) -> Result<ModelProto> {
        let (_dir, file) = on_disk(bytes);
        let read = read_deferring(&file, bytes.len() as u64, "m", deferred_from)?;
        let mut proto = read.proto;
        let graph = proto.graph.as_mut().unwrap();
        for (index, range) in read.deferred {
            graph.initializer[index].raw_data =
                bytes[range.start as usize..range.end as usize].to_vec();
        }
        Ok(proto)
    }

    #[test]
    fn the_walk_reads_the_model_prost_decodes() {
        let small = std::fs::read(SMALL).unwrap();
        for bytes in [&small[..], DEFAULT_MODEL] {
            let decoded = decode_model(bytes.to_vec(), "m").unwrap();
            for deferred_from in [1, DEFERRED_FROM, u64::MAX] {
                assert_eq!(read_whole(bytes, deferred_from).unwrap(), decoded);
            }
        }
        let (_dir, file) = on_disk(DEFAULT_MODEL);
        let read = read(&file, DEFAULT_MODEL.len() as u64, "m").unwrap();
        let deferred: u64 = read.deferred.iter().map(|(_, r)| r.end - r.start).sum();
        assert!(deferred > DEFAULT_MODEL.len() as u64 * 9 / 10, "{deferred}");
    }

    #[test]
    fn a_graph_given_in_two_fields_merges_as_protobuf_merges_it() {
        let mut proto = decode_model(std::fs::read(SMALL).unwrap(), "m").unwrap();
        let graph = proto.graph.as_mut().unwrap();
        let later = GraphProto {
            initializer: graph.initializer.split_off(1),
            ..GraphProto::default()
        };
        let mut bytes = proto.encode_to_vec();
        encode_key(MODEL_GRAPH, WireType::LengthDelimited, &mut bytes);
        encode_varint(later.encoded_len() as u64, &mut bytes);
        later.encode(&mut bytes).unwrap();
        assert_eq!(
            read_whole(&bytes, 1).unwrap(),
            decode_model(bytes, "m").unwrap()
        );
    }

    #[test]
    fn damaged_files_are_refused_exactly_when_decoding_them_whole_refuses_them() {
        let small = std::fs::read(SMALL).unwrap();
        // Every float initializer deferred, so damage to their shapes meets the checks
        // on data still on disk.
        let verdict = |bytes: &[u8]| {
            let whole = decode_model(bytes.to_vec(), "m").map_err(|e| e.to_string());
            assert_eq!(read_whole(bytes, 1).map_err(|e| e.to_string()), whole);
        };
        for end in 0..small.len() {
            verdict(&small[..end]);
        }
        let mut rng = ChaCha8Rng::seed_from_u64(15);
        for _ in 0..3000 {
            let mut damaged = small.clone();
            let at = rng.random_range(0..damaged.len());
            damaged[at] = rng.random();
            verdict(&damaged);
        }
    }

    #[test]
    fn a_plan_built_from_the_file_gives_the_decoded_plans_bottleneck_bit_for_bit() {
        let backbone = Backbone::load(&ModelSource::Embedded, &Overrides::default()).unwrap();
        let photo = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/flower_sample/daisy/10172379554_b296050f82_n.jpg"
        );
        let input = backbone
            .preprocessing
            .tensor_from_bytes(&std::fs::read(photo).unwrap())
            .unwrap();
        let proto = decode_model(DEFAULT_MODEL, "m").unwrap();
        let decoded = Plan::new(Cow::Owned(proto), &backbone.preprocessing, "features").unwrap();
        let (_dir, file) = on_disk(DEFAULT_MODEL);
        let read = read_deferring(&file, DEFAULT_MODEL.len() as u64, "m", 1).unwrap();
        let from_file =
            Plan::from_onnx_file(read, &[(None, &backbone.preprocessing)], "features").unwrap();
        let expected = decoded.run(input.clone()).unwrap();
        assert_eq!(from_file.run(input).unwrap(), expected);
        assert_eq!(expected.len(), 1024);
    }

    #[test]
    fn a_file_cut_short_after_its_structure_was_read_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.onnx");
        std::fs::write(&path, DEFAULT_MODEL).unwrap();
        let file = File::open(&path).unwrap();
        let read = read(&file, DEFAULT_MODEL.len() as u64, "model.onnx").unwrap();
        let cut = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        cut.set_len(DEFAULT_MODEL.len() as u64 / 2).unwrap();
        let error = read.into_tract().unwrap_err().to_string();
        assert!(
            error.starts_with("model.onnx became shorter while it was read"),
            "{error}"
        );
    }

    #[test]
    fn a_graph_of_more_initializers_than_the_limit_is_refused_before_they_are_decoded() {
        let mut bytes = Vec::new();
        let mut graph = Vec::new();
        let empty = TensorProto::default().encode_to_vec();
        for _ in 0..=MAX_INITIALIZERS {
            encode_key(GRAPH_INITIALIZER, WireType::LengthDelimited, &mut graph);
            encode_varint(empty.len() as u64, &mut graph);
        }
        encode_key(MODEL_GRAPH, WireType::LengthDelimited, &mut bytes);
        encode_varint(graph.len() as u64, &mut bytes);
        bytes.extend(graph);
        let (_dir, file) = on_disk(&bytes);
        let error = read(&file, bytes.len() as u64, "many.onnx").err().unwrap();
        assert_eq!(
            error.to_string(),
            format!("many.onnx is refused: it has more than {MAX_INITIALIZERS} initializers")
        );
    }
}
