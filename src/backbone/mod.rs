//! The frozen, ImageNet-pretrained CNN: loading it, knowing its preprocessing, finding its
//! bottleneck, and running it through tract.
//!
//! [`registry`] names the known architectures, [`combined`] puts several side by side, [`download`] fetches them, [`onnx`] and
//! [`tensorflow`] read the two formats, [`limits`] bounds what a graph file may ask for,
//! [`plan`] builds tract's runnable plan, and [`accel`] swaps flowers' own convolution ops
//! into it. Loading runs behind the panic guard: a panic in a dependency on a damaged
//! file becomes a one-line error naming it.

pub(crate) mod accel;
pub mod combined;
pub mod download;
pub mod limits;
pub mod names;
pub mod onnx;
pub mod onnx_file;
mod plan;
pub mod registry;
pub mod tensorflow;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use prost::bytes::Bytes;
use sha2::{Digest, Sha256};
use tract_onnx::pb::ModelProto;

pub use accel::apply as accelerate;
pub use combined::{Backbones, Choice};
pub use plan::Plan;
pub use registry::{Architecture, ModelFormat, DEFAULT_MODEL};

use crate::image::{Layout, Preprocessing, ResizeRule};
use crate::util::files::read_regular;
use crate::util::hex;
use crate::util::panic_guard::catching_panics_in;
use onnx::{decode_model, find_bottleneck, graph_input, input_geometry, resolve_tensor};
use registry::{Origin, DEFAULT_MEAN, DEFAULT_RESIZE, DEFAULT_STD};

/// Where the backbone comes from.
#[derive(Clone, Debug)]
pub enum ModelSource {
    Embedded,
    File(PathBuf),
    /// A registry entry, fetched into `model_dir` if it is not there yet.
    Architecture(Fetch),
}

/// How to get a registry entry onto the disk.
#[derive(Clone, Debug)]
pub struct Fetch {
    pub name: String,
    /// Where downloads go and are looked for (`--model-dir`).
    pub model_dir: PathBuf,
    /// A mirror replacing everything before the file name in the entry's URL.
    pub base_url: Option<String>,
    /// No progress bar.
    pub quiet: bool,
    /// Largest download accepted when the registry knows no size (`--max-download-size`);
    /// `None`: [`download::DEFAULT_MAX_DOWNLOAD_BYTES`].
    pub max_download_size: Option<u64>,
}

/// What the user may override about a backbone's preprocessing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overrides {
    pub bottleneck_tensor: Option<String>,
    pub mean: Option<[f32; 3]>,
    pub std: Option<[f32; 3]>,
    pub resize: Option<ResizeRule>,
}

/// The backbone's graph, in the format it came in.
pub enum BackboneGraph {
    Onnx(Box<ModelProto>),
    TensorFlow(tensorflow::GraphDef),
}

/// A loaded backbone, ready to extract bottlenecks and to be exported with a new layer.
pub struct Backbone {
    /// Human-readable name: the registry name, or the file name.
    pub name: String,
    /// sha256 of the model file: the backbone's identity in caches and metadata.
    pub sha256: String,
    pub graph: BackboneGraph,
    /// The tensor images are fed to (TensorFlow graphs are cut there).
    pub input_name: String,
    pub bottleneck: String,
    pub preprocessing: Preprocessing,
}

/// Whether `bytes` are the model embedded in this binary, as `arch` says it is.
fn is_embedded(arch: &Architecture, bytes: &[u8]) -> bool {
    arch.origin == Origin::Embedded && std::ptr::eq(bytes, DEFAULT_MODEL)
}

impl Backbone {
    pub fn load(source: &ModelSource, overrides: &Overrides) -> Result<Backbone> {
        let (bytes, display, known): (Bytes, String, Option<Architecture>) = match source {
            ModelSource::Embedded => (
                DEFAULT_MODEL.into(),
                "embedded backbone".into(),
                registry::find(registry::DEFAULT_ARCHITECTURE).ok(),
            ),
            ModelSource::File(path) => (read_model(path)?, path.display().to_string(), None),
            ModelSource::Architecture(fetch) => {
                let architecture = registry::find(&fetch.name)?;
                let (bytes, display) = match fetched(&architecture, fetch)? {
                    Some(path) => (read_model(&path)?, path.display().to_string()),
                    None => (DEFAULT_MODEL.into(), "embedded backbone".into()),
                };
                (bytes, display, Some(architecture))
            }
        };
        Self::from_bytes(bytes, display, known, source, overrides)
    }

    /// [`Backbone::load`] once the model's bytes are read: `known` is the registry entry
    /// they are, if any; `source` names an unknown one.
    fn from_bytes(
        bytes: Bytes,
        display: String,
        known: Option<Architecture>,
        source: &ModelSource,
        overrides: &Overrides,
    ) -> Result<Backbone> {
        let load = |format, known: Option<&Architecture>| {
            catching_panics_in(&display, || match format {
                ModelFormat::Onnx => load_onnx(bytes.clone(), &display, known, overrides),
                ModelFormat::TensorFlow => {
                    load_tensorflow(bytes.clone(), &display, known, overrides)
                }
            })
        };
        let hash = || hex(&Sha256::digest(&bytes));
        let (sha256, known, loaded) = match known {
            // The embedded backbone's bytes are this binary's own: their sha256 is the
            // registry's (a test checks it), so no run hashes 17 MB to learn it again.
            Some(arch) if is_embedded(&arch, &bytes) => {
                let sha256 = arch.file_sha256.map(str::to_string).unwrap_or_else(hash);
                let loaded = load(arch.format, Some(&arch));
                (sha256, Some(arch), loaded)
            }
            // The registry says what the bytes are: hash them on a second thread while
            // this one decodes them (the embedded backbone on every run).
            Some(arch) => std::thread::scope(|scope| {
                let hashing = scope.spawn(hash);
                let loaded = load(arch.format, Some(&arch));
                let sha256 = hashing
                    .join()
                    .unwrap_or_else(|p| std::panic::resume_unwind(p));
                (sha256, Some(arch), loaded)
            }),
            // A file is recognised by its hash first.
            None => {
                let sha256 = hash();
                let known = registry::by_sha256(&sha256);
                let format = match &known {
                    Some(arch) => arch.format,
                    None if tensorflow::looks_like_graph_def(&bytes) => ModelFormat::TensorFlow,
                    None => ModelFormat::Onnx,
                };
                let loaded = load(format, known.as_ref());
                (sha256, known, loaded)
            }
        };
        let loaded = loaded?;
        let format = match &loaded.graph {
            BackboneGraph::Onnx(_) => ModelFormat::Onnx,
            BackboneGraph::TensorFlow(_) => ModelFormat::TensorFlow,
        };
        let name = match (&known, source) {
            (Some(arch), _) => arch.name.clone(),
            (None, ModelSource::File(path)) => file_stem(path),
            (None, _) => "embedded".to_string(),
        };
        let (mean, std) = known
            .as_ref()
            .map_or(([DEFAULT_MEAN; 3], [DEFAULT_STD; 3]), |a| (a.mean, a.std));
        let default_resize = known.as_ref().map_or(
            match format {
                ModelFormat::Onnx => DEFAULT_RESIZE,
                ModelFormat::TensorFlow => ResizeRule::SquashTf,
            },
            |a| a.resize,
        );
        let preprocessing = Preprocessing {
            height: loaded.height,
            width: loaded.width,
            layout: loaded.layout,
            mean: overrides.mean.unwrap_or(mean),
            std: overrides.std.unwrap_or(std),
            resize: overrides.resize.unwrap_or(default_resize),
        };
        Ok(Backbone {
            name,
            sha256,
            graph: loaded.graph,
            input_name: loaded.input,
            bottleneck: loaded.bottleneck,
            preprocessing,
        })
    }

    pub fn format(&self) -> ModelFormat {
        match self.graph {
            BackboneGraph::Onnx(_) => ModelFormat::Onnx,
            BackboneGraph::TensorFlow(_) => ModelFormat::TensorFlow,
        }
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
        let plan = catching_panics_in(&self.name, || match &self.graph {
            BackboneGraph::Onnx(proto) => {
                Plan::new(Cow::Borrowed(proto), &self.preprocessing, &self.bottleneck)
            }
            BackboneGraph::TensorFlow(graph) => Plan::from_tensorflow(
                graph,
                &self.preprocessing,
                &self.input_name,
                &self.bottleneck,
            ),
        })
        .with_context(|| format!("cannot prepare backbone {} for inference", self.name))?;
        if plan.output_len == 0 {
            bail!("bottleneck {:?} of {} is empty", self.bottleneck, self.name);
        }
        Ok(plan)
    }
}

/// A graph as loaded, with what loading it found out.
struct Loaded {
    graph: BackboneGraph,
    input: String,
    bottleneck: String,
    height: u32,
    width: u32,
    layout: Layout,
}

fn load_onnx(
    bytes: Bytes,
    display: &str,
    known: Option<&Architecture>,
    overrides: &Overrides,
) -> Result<Loaded> {
    let proto = decode_model(bytes, display)?;
    let input = graph_input(&proto).with_context(|| format!("in model {display}"))?;
    let (height, width, layout) =
        input_geometry(&input).with_context(|| format!("in model {display}"))?;
    let bottleneck = match (&overrides.bottleneck_tensor, known.and_then(|a| a.bottleneck.clone())) {
        (Some(name), _) => resolve_tensor(&proto, name).with_context(|| {
            format!("--bottleneck-tensor {name:?} is not a tensor or node of {display}")
        })?,
        (None, Some(known)) => known,
        (None, None) => find_bottleneck(&proto).ok_or_else(|| {
            anyhow!(
                "no pooled feature tensor (bottleneck) found in {display}: name one with --bottleneck-tensor"
            )
        })?,
    };
    Ok(Loaded {
        graph: BackboneGraph::Onnx(Box::new(proto)),
        input: input.name.clone(),
        bottleneck,
        height,
        width,
        layout,
    })
}

fn load_tensorflow(
    bytes: Bytes,
    display: &str,
    known: Option<&Architecture>,
    overrides: &Overrides,
) -> Result<Loaded> {
    let graph = tensorflow::decode_graph(bytes, display)?;
    let input = match known.and_then(|a| a.input.clone()) {
        Some(input) => input,
        None => tensorflow_input(&graph).ok_or_else(|| {
            anyhow!(
                "{display} has no image input (no `input` placeholder, no Inception-style `Mul`)"
            )
        })?,
    };
    if graph.node(&input).is_none() {
        bail!(
            "{display} has no input node {}: is it an image classifier's frozen graph?",
            limits::quote(&input)
        );
    }
    let bottleneck = match (
        &overrides.bottleneck_tensor,
        known.and_then(|a| a.bottleneck.clone()),
    ) {
        (Some(name), _) => name.clone(),
        (None, Some(known)) => known,
        (None, None) => bail!("{display}: name its bottleneck tensor with --bottleneck-tensor"),
    };
    let bottleneck = tensorflow::node_name(&bottleneck).to_string();
    if graph.node(&bottleneck).is_none() {
        bail!("--bottleneck-tensor {bottleneck:?} is not a node of {display}");
    }
    let inception_style = input == "Mul";
    let (height, width) = known
        .and_then(|a| a.input_size)
        .or_else(|| graph.placeholder_size(&input))
        .unwrap_or(if inception_style {
            (299, 299)
        } else {
            (224, 224)
        });
    Ok(Loaded {
        graph: BackboneGraph::TensorFlow(graph),
        input,
        bottleneck,
        height,
        width,
        layout: Layout::Nhwc,
    })
}

/// Where an unknown frozen graph takes images: its `input` placeholder (MobileNet and
/// most TF-slim graphs), else Inception's `Mul` (after its own JPEG decoding, which is cut
/// off), else its only float placeholder.
fn tensorflow_input(graph: &tensorflow::GraphDef) -> Option<String> {
    if graph.node("input").is_some() {
        return Some("input".into());
    }
    if graph.node("Mul").is_some() && graph.node.iter().any(|n| n.op == "DecodeJpeg") {
        return Some("Mul".into());
    }
    let mut placeholders = graph.node.iter().filter(|n| n.op == "Placeholder");
    match (placeholders.next(), placeholders.next()) {
        (Some(only), None) => Some(only.name.clone()),
        _ => None,
    }
}

/// The path of a registry entry's graph, fetched first if it is not on disk; `None` for
/// the embedded default.
fn fetched(architecture: &Architecture, fetch: &Fetch) -> Result<Option<PathBuf>> {
    let Origin::Download {
        url,
        member,
        sha256,
        size,
    } = &architecture.origin
    else {
        return match architecture.origin {
            Origin::Embedded => Ok(None),
            _ => bail!(
                "--architecture {} has no public download: give its file with --model",
                architecture.name
            ),
        };
    };
    let url = download::mirrored(url, fetch.base_url.as_deref());
    let archive = download::Archive {
        url: &url,
        sha256: *sha256,
        size: *size,
    };
    let options = download::Options {
        show_progress: !fetch.quiet,
        max_download_bytes: fetch
            .max_download_size
            .unwrap_or(download::DEFAULT_MAX_DOWNLOAD_BYTES),
        ..Default::default()
    };
    // `root` is the staged extraction (archives) or the downloaded file itself.
    let verify = |root: &Path| {
        let graph = member.as_ref().map_or(root.to_path_buf(), |m| root.join(m));
        verify_download(architecture, &graph, member.as_deref())
    };
    let path = match member {
        Some(member) => {
            let root = download::ensure_archive(&archive, &fetch.model_dir, &options, &verify)?;
            root.join(member)
        }
        None => download::ensure_file(&archive, &fetch.model_dir, &options, &verify)?,
    };
    if !path.is_file() {
        bail!(
            "{} has no {}: the archive is not the one --architecture {} expects",
            fetch.model_dir.display(),
            path.display(),
            architecture.name
        );
    }
    Ok(Some(path))
}

/// The check a download with no published sha256 passes before it is kept: the graph is
/// there, loads as `architecture` (with its registry defaults, whatever the user's
/// flags) and computes a finite bottleneck of a grey image. A panic in a dependency on
/// a hostile graph counts as a failed check.
fn verify_download(architecture: &Architecture, graph: &Path, member: Option<&str>) -> Result<()> {
    if !graph.is_file() {
        bail!("it has no {}", member.unwrap_or("model file"));
    }
    let check = || {
        let bytes = read_model(graph)?;
        let source = ModelSource::File(graph.to_path_buf());
        let display = member.unwrap_or(&architecture.name).to_string();
        let known = Some(architecture.clone());
        let backbone = Backbone::from_bytes(bytes, display, known, &source, &Overrides::default())?;
        let p = &backbone.preprocessing;
        let grey = vec![128u8; p.height as usize * p.width as usize * 3];
        let values = backbone.extractor()?.run(p.normalise(&grey))?;
        if values.is_empty() || values.iter().any(|v| !v.is_finite()) {
            bail!("its bottleneck of a grey image is not a finite vector");
        }
        Ok(())
    };
    catching_panics_in(&graph.display().to_string(), check)
        .with_context(|| format!("it is not a working {} backbone", architecture.name))
}

/// Reads a model file: a regular file (not a device or a FIFO) of at most
/// [`limits::MAX_GRAPH_BYTES`].
fn read_model(path: &Path) -> Result<Bytes> {
    let bytes = read_regular(path, limits::MAX_GRAPH_BYTES)
        .map_err(|e| anyhow!("cannot read model {}: {e}", path.display()))?;
    Ok(bytes.into())
}

fn file_stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Layout;

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
    fn the_embedded_bytes_hash_to_the_registered_sha256_that_load_takes_on_trust() {
        let arch = registry::find(registry::DEFAULT_ARCHITECTURE).unwrap();
        assert_eq!(
            Some(hex(&Sha256::digest(DEFAULT_MODEL)).as_str()),
            arch.file_sha256
        );
        assert!(is_embedded(&arch, &Bytes::from_static(DEFAULT_MODEL)));
        assert!(!is_embedded(&arch, &Bytes::from(DEFAULT_MODEL.to_vec())));
        let backbone = Backbone::load(&ModelSource::Embedded, &Overrides::default()).unwrap();
        assert_eq!(Some(backbone.sha256.as_str()), arch.file_sha256);
    }

    #[test]
    fn the_embedded_backbones_identity_is_stable() {
        // It names the bottleneck cache's folder: changing it orphans every user's cache.
        let backbone = Backbone::load(&ModelSource::Embedded, &Overrides::default()).unwrap();
        assert_eq!(&hex(&backbone.identity())[..16], "2103c5c67317a097");
        assert_eq!(
            backbone.preprocessing.descriptor(),
            "size=224x224;layout=NCHW;mean=128,128,128;std=128,128,128;resize=center-crop:0.875"
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
