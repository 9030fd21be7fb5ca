//! The frozen, ImageNet-pretrained CNN: loading it, knowing its preprocessing, finding its
//! bottleneck, and running it through tract.
//!
//! [`registry`] names the known architectures, [`onnx`] reads ONNX files, [`plan`] builds
//! tract's runnable plan, and [`accel`] swaps flowers' own convolution ops into it.

pub(crate) mod accel;
pub mod onnx;
mod plan;
pub mod registry;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use prost::bytes::Bytes;
use sha2::{Digest, Sha256};
use tract_onnx::pb::ModelProto;

pub use accel::apply as accelerate;
pub use plan::Plan;
pub use registry::{Architecture, ARCHITECTURES, DEFAULT_MODEL};

use crate::image::{Preprocessing, ResizeRule};
use crate::util::hex;
use onnx::{decode_model, find_bottleneck, graph_input, input_geometry, resolve_tensor};
use registry::{DEFAULT_MEAN, DEFAULT_RESIZE, DEFAULT_STD};

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
        let known = registry::by_sha256(&sha256);
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
