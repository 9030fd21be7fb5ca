//! The frozen, ImageNet-pretrained CNN: loading it, knowing its preprocessing, finding its
//! bottleneck, and running it through tract.
//!
//! A small registry of known architectures (matched by the sha256 of the ONNX file) gives
//! the exact preprocessing each was trained with; any other ONNX image classifier works too,
//! with its bottleneck found by looking for the global pooling that feeds the head.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use prost::bytes::Bytes;
use prost::Message;
use sha2::{Digest, Sha256};
use tract_onnx::pb::{self, ModelProto};
use tract_onnx::prelude::*;

use crate::preprocess::{Layout, Preprocessing, ResizeRule};

/// The default backbone, compiled into the binary so `flowers` works from any directory.
pub static DEFAULT_MODEL: &[u8] =
    include_bytes!("../models/mobilenet_v1_1.0_224/mobilenet_v1_1.0_224.onnx");

/// A backbone whose preprocessing and bottleneck are known for certain.
#[derive(Clone, Copy, Debug)]
pub struct Architecture {
    pub name: &'static str,
    pub sha256: &'static str,
    pub bottleneck: &'static str,
    pub mean: f32,
    pub std: f32,
}

/// Known architectures. The first is the embedded default.
pub const ARCHITECTURES: [Architecture; 3] = [
    Architecture {
        name: "mobilenet_v1_1.0_224",
        sha256: "1eb2a7a4914b627db893459d48315d3de32f3819945f4bdb131019d2197b1a94",
        bottleneck: "features",
        mean: 128.0,
        std: 128.0,
    },
    Architecture {
        name: "mobilenet_v2_1.0_224",
        sha256: "0a8fbcd8a8e22d5b28b0180df8eee045eae4a753fdd3d9affc834ec017bdb515",
        bottleneck: "features",
        mean: 128.0,
        std: 128.0,
    },
    Architecture {
        name: "efficientnet_lite0",
        sha256: "f4b18bf5679bf244d43dae229af0a75a77a2c699d18959119c483c791cf1bdf0",
        bottleneck: "features",
        mean: 127.0,
        std: 128.0,
    },
];

/// Mean and std used for an unknown model when no flag says otherwise: the common
/// TensorFlow convention that maps 0..255 to -1..1.
pub const DEFAULT_MEAN: f32 = 127.5;
pub const DEFAULT_STD: f32 = 127.5;

/// The default resize rule: the centred 87.5% square, the standard ImageNet evaluation crop
/// these backbones were verified with. On flower_photos it beat retrain.py's `squash` on
/// held-out images for every seed tried (92.1-92.7% vs 91.1-91.9%, 369 images).
pub const DEFAULT_RESIZE: ResizeRule = ResizeRule::CenterCrop(0.875);

/// Where the backbone comes from.
#[derive(Clone, Debug)]
pub enum ModelSource {
    Embedded,
    File(PathBuf),
}

/// What the user may override about a backbone's preprocessing.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub bottleneck_tensor: Option<String>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub resize: Option<ResizeRule>,
}

/// A loaded backbone, ready to extract bottlenecks and to be exported with a new layer.
pub struct Backbone {
    /// Human-readable name: the registry name, or the file name.
    pub name: String,
    /// sha256 of the ONNX file: the backbone's identity in caches and metadata.
    pub sha256: String,
    pub proto: ModelProto,
    pub input_name: String,
    pub bottleneck: String,
    pub preprocessing: Preprocessing,
}

impl Backbone {
    pub fn load(source: &ModelSource, overrides: &Overrides) -> Result<Backbone> {
        let (bytes, display): (Bytes, String) = match source {
            ModelSource::Embedded => (DEFAULT_MODEL.into(), "embedded backbone".into()),
            ModelSource::File(path) => (
                std::fs::read(path)
                    .with_context(|| format!("cannot read model {}", path.display()))?
                    .into(),
                path.display().to_string(),
            ),
        };
        let sha256 = hex(&Sha256::digest(&bytes));
        let proto = decode_model(bytes, &display)?;
        let known = ARCHITECTURES.iter().find(|a| a.sha256 == sha256);
        let name = match (known, source) {
            (Some(arch), _) => arch.name.to_string(),
            (None, ModelSource::File(path)) => file_stem(path),
            (None, ModelSource::Embedded) => "embedded".to_string(),
        };
        let input = graph_input(&proto).with_context(|| format!("in model {display}"))?;
        let (height, width, layout) =
            input_geometry(&input).with_context(|| format!("in model {display}"))?;
        let bottleneck = match (&overrides.bottleneck_tensor, known) {
            (Some(name), _) => resolve_tensor(&proto, name).with_context(|| {
                format!("--bottleneck-tensor {name:?} is not a tensor or node of {display}")
            })?,
            (None, Some(arch)) => arch.bottleneck.to_string(),
            (None, None) => find_bottleneck(&proto).ok_or_else(|| {
                anyhow!(
                    "no pooled feature tensor (bottleneck) found in {display}: name one with --bottleneck-tensor"
                )
            })?,
        };
        let (mean, std) = known.map_or((DEFAULT_MEAN, DEFAULT_STD), |a| (a.mean, a.std));
        let preprocessing = Preprocessing {
            height,
            width,
            layout,
            mean: overrides.mean.unwrap_or([mean; 3]),
            std: overrides.std.unwrap_or([std; 3]),
            resize: overrides.resize.unwrap_or(DEFAULT_RESIZE),
        };
        Ok(Backbone {
            name,
            sha256,
            proto,
            input_name: input.name.clone(),
            bottleneck,
            preprocessing,
        })
    }

    /// Identity of the bottlenecks this backbone produces: model bytes, bottleneck tensor and
    /// preprocessing. Any change to one of them gives different cache entries.
    pub fn identity(&self) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.sha256.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.bottleneck.as_bytes());
        hasher.update(b"\0");
        hasher.update(self.preprocessing.descriptor().as_bytes());
        hasher.finalize().into()
    }

    /// Builds the tract plan that maps an input image tensor to the bottleneck vector.
    pub fn extractor(&self) -> Result<Plan> {
        let plan = Plan::new(
            Cow::Borrowed(&self.proto),
            &self.preprocessing,
            &self.bottleneck,
        )
        .with_context(|| format!("cannot prepare backbone {} for inference", self.name))?;
        if plan.output_len == 0 {
            bail!("bottleneck {:?} of {} is empty", self.bottleneck, self.name);
        }
        Ok(plan)
    }
}

/// Steers tract away from its 512-bit matrix kernels on AMD Zen 4 (CPU family 25).
///
/// Zen 4 runs each 512-bit FMA as two 256-bit halves, so those kernels do the same work
/// as tract's AVX2 ones with more overhead: on an EPYC Zen 4 the backbone ran 5-7% faster
/// without them. tract's `TRACT_CPU_ISA` knob does the steering; this sets it below the
/// environment, so a user's own `TRACT_CPU_ISA` still wins. Other CPUs are left to tract.
fn prefer_fastest_matmul_kernels() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if is_amd_zen4() {
            // Only fails if another config set the knob differently; keep theirs then.
            let _ = tract_onnx::tract_core::knobs::set_config_global("TRACT_CPU_ISA", "-avx512f");
        }
    });
}

#[cfg(target_arch = "x86_64")]
fn is_amd_zen4() -> bool {
    use std::arch::x86_64::__cpuid;
    // SAFETY: cpuid exists on every x86_64 CPU; newer rustc deems this block redundant.
    #[allow(unused_unsafe)]
    let (vendor, signature) = unsafe { (__cpuid(0), __cpuid(1).eax) };
    let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    let family = ((signature >> 8) & 0xf) + ((signature >> 20) & 0xff);
    amd && family == 25 && std::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn is_amd_zen4() -> bool {
    false
}

/// An optimised tract plan with batch 1 (fastest in tract), shared by worker threads.
pub struct Plan {
    runnable: Arc<TypedRunnableModel>,
    /// Number of values in one output (the batch dimension removed).
    pub output_len: usize,
    /// How images become this plan's input.
    pub preprocessing: Preprocessing,
}

impl Plan {
    /// Loads `proto` with a fixed batch-1 input shaped by `preprocessing`, output `output`.
    /// An owned `proto` is dropped as soon as tract has its own copy of the weights, so
    /// that the allocator hands that memory to tract's next copies instead of faulting in
    /// fresh pages (see `keep_freed_memory` in main.rs).
    pub fn new(
        proto: Cow<'_, ModelProto>,
        preprocessing: &Preprocessing,
        output: &str,
    ) -> Result<Plan> {
        prefer_fastest_matmul_kernels();
        let (h, w) = (preprocessing.height as usize, preprocessing.width as usize);
        let shape = match preprocessing.layout {
            Layout::Nchw => [1, 3, h, w],
            Layout::Nhwc => [1, h, w, 3],
        };
        let model = tract_onnx::onnx().model_for_proto_model(&proto)?;
        drop(proto);
        let mut model = model
            .with_input_fact(0, f32::fact(shape).into())?
            .with_outputs_by_name([output])?
            .into_typed()?;
        crate::accelerate::apply(&mut model)?;
        let model = model.into_optimized()?;
        let fact = model.output_fact(0)?;
        let dims = fact
            .shape
            .as_concrete()
            .ok_or_else(|| anyhow!("output {output:?} has no fixed shape"))?
            .to_vec();
        if dims.len() == 4 && dims[2] * dims[3] != 1 && dims[1] * dims[2] != 1 {
            bail!("output {output:?} has shape {dims:?}, not a pooled feature vector");
        }
        let output_len = dims.iter().skip(1).product();
        Ok(Plan {
            runnable: model.into_runnable()?,
            output_len,
            preprocessing: preprocessing.clone(),
        })
    }

    /// Runs one input tensor and returns the flattened output.
    pub fn run(&self, input: Tensor) -> Result<Vec<f32>> {
        let outputs = self.runnable.run(tvec!(input.into()))?;
        let values = outputs[0].to_plain_array_view::<f32>()?;
        Ok(values.iter().copied().collect())
    }
}

/// Parses ONNX bytes, turning protobuf noise into a message a user can act on.
pub fn decode_model(bytes: impl Into<Bytes>, display: &str) -> Result<ModelProto> {
    // Decoding from `Bytes` lets prost slice the weight fields out of the buffer before its
    // one copy into each tensor, instead of copying them twice from a `&[u8]` (17 MB: 12 ->
    // 8 ms of a one-image `label`).
    let proto = ModelProto::decode(bytes.into())
        .map_err(|_| anyhow!("{display} is not an ONNX model (protobuf decoding failed)"))?;
    if proto.graph.as_ref().is_none_or(|g| g.node.is_empty()) {
        bail!("{display} is not an ONNX model (it has no graph)");
    }
    Ok(proto)
}

/// The image input: the first graph input that is not an initializer.
fn graph_input(proto: &ModelProto) -> Result<pb::ValueInfoProto> {
    let graph = proto.graph.as_ref().ok_or_else(|| anyhow!("no graph"))?;
    let initializers: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph
        .input
        .iter()
        .find(|i| !initializers.contains(&i.name.as_str()))
        .cloned()
        .ok_or_else(|| anyhow!("the graph has no input"))
}

/// Height, width and layout of a 4-d image input; symbolic spatial dims default to 224.
fn input_geometry(input: &pb::ValueInfoProto) -> Result<(u32, u32, Layout)> {
    use pb::tensor_shape_proto::dimension::Value;
    use pb::type_proto::Value as Type;
    let dims: Vec<Option<i64>> = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(Type::TensorType(t)) => t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(Value::DimValue(v)) if v > 0 => Some(v),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default(),
        None => vec![],
    };
    if dims.len() != 4 {
        bail!(
            "input {:?} is not a 4-d image tensor (rank {})",
            input.name,
            dims.len()
        );
    }
    let side = |d: Option<i64>| d.map_or(224, |v| v as u32);
    match (dims[1], dims[3]) {
        (Some(3), _) => Ok((side(dims[2]), side(dims[3]), Layout::Nchw)),
        (_, Some(3)) => Ok((side(dims[1]), side(dims[2]), Layout::Nhwc)),
        _ => bail!(
            "input {:?} has no 3-channel axis (shape {dims:?})",
            input.name
        ),
    }
}

/// Maps a tensor name or a node name to a tensor name produced in the graph.
fn resolve_tensor(proto: &ModelProto, name: &str) -> Result<String> {
    let graph = proto.graph.as_ref().ok_or_else(|| anyhow!("no graph"))?;
    for node in &graph.node {
        if node.output.iter().any(|o| o == name) {
            return Ok(name.to_string());
        }
    }
    graph
        .node
        .iter()
        .find(|n| n.name == name)
        .and_then(|n| n.output.first().cloned())
        .ok_or_else(|| anyhow!("no such tensor"))
}

/// The pooled feature tensor: output of the last global pooling, followed through any
/// Flatten/Reshape/Squeeze that only reshapes it.
pub fn find_bottleneck(proto: &ModelProto) -> Option<String> {
    const POOLS: [&str; 4] = [
        "GlobalAveragePool",
        "AveragePool",
        "ReduceMean",
        "GlobalMaxPool",
    ];
    const RESHAPES: [&str; 3] = ["Flatten", "Reshape", "Squeeze"];
    let graph = proto.graph.as_ref()?;
    let pool = graph
        .node
        .iter()
        .rev()
        .find(|n| POOLS.contains(&n.op_type.as_str()))?;
    let mut tensor = pool.output.first()?.clone();
    let consumers = consumer_map(graph);
    while let Some(reshape) = consumers
        .get(tensor.as_str())
        .into_iter()
        .flatten()
        .map(|&index| &graph.node[index])
        .find(|node| RESHAPES.contains(&node.op_type.as_str()))
    {
        tensor = reshape.output.first()?.clone();
    }
    Some(tensor)
}

fn consumer_map(graph: &pb::GraphProto) -> HashMap<&str, Vec<usize>> {
    let mut map: HashMap<&str, Vec<usize>> = HashMap::new();
    for (index, node) in graph.node.iter().enumerate() {
        for input in &node.input {
            map.entry(input.as_str()).or_default().push(index);
        }
    }
    map
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// Lower-case hex of a byte string.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_the_registered_mobilenet() {
        let backbone = Backbone::load(&ModelSource::Embedded, &Overrides::default()).unwrap();
        assert_eq!(backbone.name, "mobilenet_v1_1.0_224");
        assert_eq!(backbone.bottleneck, "features");
        assert_eq!(backbone.preprocessing.layout, Layout::Nchw);
        assert_eq!(
            (backbone.preprocessing.height, backbone.preprocessing.width),
            (224, 224)
        );
    }

    #[test]
    fn bottleneck_heuristic_finds_the_flattened_pool() {
        let proto = decode_model(DEFAULT_MODEL, "default").unwrap();
        assert_eq!(find_bottleneck(&proto).as_deref(), Some("features"));
    }

    #[test]
    fn not_onnx_is_a_clear_error() {
        let error = decode_model(&b"definitely not a model"[..], "x.onnx").unwrap_err();
        assert!(error.to_string().contains("x.onnx is not an ONNX model"));
    }
}
