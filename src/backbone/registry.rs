//! The backbones flowers knows by name: what each one is, where it comes from, and the
//! preprocessing and bottleneck it was verified with. A known file (matched by sha256)
//! gets its exact preprocessing; any other ONNX classifier works too, with defaults.

use crate::image::ResizeRule;

/// The default backbone, compiled into the binary so `flowers` works from any directory.
pub static DEFAULT_MODEL: &[u8] =
    include_bytes!("../../models/mobilenet_v1_1.0_224/mobilenet_v1_1.0_224.onnx");

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
/// held-out images for every seed tried (BENCHMARKS.md).
pub const DEFAULT_RESIZE: ResizeRule = ResizeRule::CenterCrop(0.875);

/// The registered architecture whose ONNX file has this sha256, if any.
pub fn by_sha256(sha256: &str) -> Option<&'static Architecture> {
    ARCHITECTURES.iter().find(|a| a.sha256 == sha256)
}
