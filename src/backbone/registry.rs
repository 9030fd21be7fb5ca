//! The backbones flowers knows by name (`--architecture`): where each comes from, its
//! format, and the preprocessing and bottleneck it was made for.
//!
//! Three kinds of entries:
//! - the embedded default, MobileNet v1 1.0 224 as ONNX, and three more ONNX backbones
//!   (MobileNet v2, EfficientNet-Lite0 and Lite2) that are recognised by their sha256 when
//!   given with `--model`;
//! - retrain.py's own names (`inception_v3`, `mobilenet_<v>_<s>[_quantized]`) with
//!   retrain.py's exact meaning: the TensorFlow archives it downloaded, fed where it fed
//!   them, with its mean and std;
//! - ImageNet classifiers of the ONNX model zoo, by their public URLs, with the sha256 and
//!   size of their Git LFS pointers.
//!
//! `flowers architectures` prints this table; README lists which entries were verified on
//! real files here and which rest on published names and hashes.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::image::{Layout, ResizeRule};

/// The default backbone, compiled into the binary so `flowers` works from any directory.
pub static DEFAULT_MODEL: &[u8] =
    include_bytes!("../../models/mobilenet_v1_1.0_224/mobilenet_v1_1.0_224.onnx");

/// The name of the embedded default.
pub const DEFAULT_ARCHITECTURE: &str = "mobilenet_v1_1.0_224";

/// Mean and std used for an unknown model when no flag says otherwise: the common
/// TensorFlow convention that maps 0..255 to -1..1.
pub const DEFAULT_MEAN: f32 = 127.5;
pub const DEFAULT_STD: f32 = 127.5;

/// The default resize rule for ONNX backbones: the centred 87.5% square, the standard
/// ImageNet evaluation crop these backbones were verified with. On flower_photos it beat
/// retrain.py's `squash` on held-out images for every seed tried (BENCHMARKS.md).
pub const DEFAULT_RESIZE: ResizeRule = ResizeRule::CenterCrop(0.875);

/// retrain.py's MobileNet bottleneck: the 1001 logits of the old head.
pub const MOBILENET_LOGITS: &str = "MobilenetV1/Predictions/Reshape";
/// The pooled features under those logits; flowers' default for the TensorFlow MobileNets,
/// measured better on flower photos (README, *Architectures*).
pub const MOBILENET_POOLED: &str = "MobilenetV1/Logits/AvgPool_1a/AvgPool";

/// How a backbone file is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFormat {
    Onnx,
    /// A frozen TensorFlow 1 `GraphDef`.
    TensorFlow,
}

impl ModelFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            ModelFormat::Onnx => "ONNX",
            ModelFormat::TensorFlow => "TensorFlow",
        }
    }
}

/// Where a backbone comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Origin {
    /// Compiled into the binary.
    Embedded,
    /// Fetched from `url`: the model file itself, or a `.tgz` holding it at `member`.
    Download {
        url: String,
        member: Option<String>,
        /// sha256 of what `url` serves, where known. Without it a download is kept only
        /// once it loaded and computed a bottleneck (`backbone::fetched`).
        sha256: Option<&'static str>,
        /// Its size in bytes, where known: checked against `Content-Length` before the
        /// body is read. Without it `--max-download-size` bounds the download.
        size: Option<u64>,
    },
    /// No public URL: recognised by its sha256 when given with `--model`.
    LocalFile,
}

/// One known backbone.
#[derive(Clone, Debug, PartialEq)]
pub struct Architecture {
    pub name: String,
    pub about: &'static str,
    pub origin: Origin,
    pub format: ModelFormat,
    /// sha256 of the model file itself, which recognises it when given with `--model`.
    pub file_sha256: Option<&'static str>,
    /// The tensor the image is fed to (TensorFlow graphs are cut there); `None`: the
    /// graph's input.
    pub input: Option<String>,
    /// `(height, width)` fixed by the entry; `None`: from the graph.
    pub input_size: Option<(u32, u32)>,
    pub layout: Option<Layout>,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// The bottleneck tensor; `None`: found by looking for the last global pooling.
    pub bottleneck: Option<String>,
    pub resize: ResizeRule,
}

impl Architecture {
    /// The file this entry's graph lives in under `model_dir` (the member, for archives).
    pub fn path_in(&self, model_dir: &Path) -> Option<PathBuf> {
        match &self.origin {
            Origin::Download {
                member: Some(member),
                ..
            } => Some(model_dir.join(member)),
            Origin::Download { url, .. } => url.rsplit('/').next().map(|f| model_dir.join(f)),
            Origin::Embedded | Origin::LocalFile => None,
        }
    }

    /// Where to get it, for people: the URL, "embedded", or how to give it.
    pub fn source(&self) -> String {
        match &self.origin {
            Origin::Embedded => "embedded in the binary".into(),
            Origin::Download { url, .. } => url.clone(),
            Origin::LocalFile => "--model FILE (recognised by sha256)".into(),
        }
    }

    /// Download size in bytes, where known.
    pub fn size(&self) -> Option<u64> {
        match &self.origin {
            Origin::Embedded => Some(DEFAULT_MODEL.len() as u64),
            Origin::Download { size, .. } => *size,
            Origin::LocalFile => None,
        }
    }
}

/// Every known architecture, the embedded default first.
pub fn all() -> Vec<Architecture> {
    let mut all = onnx_files();
    all.push(inception_v3());
    for version in ["1.0", "0.75", "0.50", "0.25"] {
        for size in [224, 192, 160, 128] {
            for quantized in [false, true] {
                all.push(tensorflow_mobilenet(version, size, quantized));
            }
        }
    }
    all.extend(onnx_zoo());
    all
}

/// The architecture called `name`; an unknown name is an error naming the closest ones.
pub fn find(name: &str) -> Result<Architecture> {
    let all = all();
    if let Some(found) = all.iter().find(|a| a.name == name) {
        return Ok(found.clone());
    }
    let mut scored: Vec<(f64, &str)> = all
        .iter()
        .map(|a| (strsim::jaro_winkler(name, &a.name), a.name.as_str()))
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    let closest: Vec<&str> = scored.iter().take(3).map(|(_, n)| *n).collect();
    bail!(
        "unknown --architecture {name:?}; closest: {} (`flowers architectures` lists all)",
        closest.join(", ")
    )
}

/// The registered architecture whose model file has this sha256, if any.
pub fn by_sha256(sha256: &str) -> Option<Architecture> {
    all().into_iter().find(|a| a.file_sha256 == Some(sha256))
}

/// The ONNX backbones of `../shared/models`, verified here: the embedded default and three
/// more that a `--model` file is recognised as.
fn onnx_files() -> Vec<Architecture> {
    let entry = |name: &str, about, origin, sha256, mean: f32, std: f32| Architecture {
        name: name.to_string(),
        about,
        origin,
        format: ModelFormat::Onnx,
        file_sha256: Some(sha256),
        input: None,
        input_size: None,
        layout: None,
        mean: [mean; 3],
        std: [std; 3],
        bottleneck: Some("features".into()),
        resize: DEFAULT_RESIZE,
    };
    vec![
        entry(
            DEFAULT_ARCHITECTURE,
            "MobileNet v1 1.0 224, ONNX (the default)",
            Origin::Embedded,
            "1eb2a7a4914b627db893459d48315d3de32f3819945f4bdb131019d2197b1a94",
            128.0,
            128.0,
        ),
        entry(
            "mobilenet_v2_1.0_224",
            "MobileNet v2 1.0 224, ONNX",
            Origin::LocalFile,
            "0a8fbcd8a8e22d5b28b0180df8eee045eae4a753fdd3d9affc834ec017bdb515",
            128.0,
            128.0,
        ),
        entry(
            "efficientnet_lite0",
            "EfficientNet-Lite0, ONNX",
            Origin::LocalFile,
            "f4b18bf5679bf244d43dae229af0a75a77a2c699d18959119c483c791cf1bdf0",
            127.0,
            128.0,
        ),
        entry(
            "efficientnet_lite2",
            "EfficientNet-Lite2 (260 px), ONNX",
            Origin::LocalFile,
            "8003262b889f4358b67d5f4a4cee5884926c00b89a2e97dc428ec370879fc0d6",
            127.0,
            128.0,
        ),
    ]
}

/// retrain.py's default: Inception v3 of 2015, fed at `Mul` (after its own JPEG decoding
/// and resizing, which are cut off), bottleneck `pool_3/_reshape`.
fn inception_v3() -> Architecture {
    Architecture {
        name: "inception_v3".into(),
        about: "Inception v3 (2015), TensorFlow; retrain.py's default",
        origin: Origin::Download {
            url: "http://download.tensorflow.org/models/image/imagenet/inception-2015-12-05.tgz"
                .into(),
            member: Some("classify_image_graph_def.pb".into()),
            sha256: None,
            // No hash was ever published, but retrain.py printed the size on every first
            // run ("Successfully downloaded inception-2015-12-05.tgz 88931400 bytes."), so a
            // response of another length is refused before its body is read.
            size: Some(88_931_400),
        },
        format: ModelFormat::TensorFlow,
        file_sha256: None,
        input: Some("Mul".into()),
        input_size: Some((299, 299)),
        layout: Some(Layout::Nhwc),
        mean: [128.0; 3],
        std: [128.0; 3],
        bottleneck: Some("pool_3/_reshape".into()),
        resize: ResizeRule::SquashTf,
    }
}

/// retrain.py's `mobilenet_<version>_<size>[_quantized]`.
fn tensorflow_mobilenet(version: &str, size: u32, quantized: bool) -> Architecture {
    let stem = format!("mobilenet_v1_{version}_{size}");
    let graph = if quantized {
        "quantized_graph.pb"
    } else {
        "frozen_graph.pb"
    };
    // The graphs of the archive this project holds, checked here: a `--model` file with
    // one of these hashes is recognised as this entry.
    let file_sha256 = match (version, size, quantized) {
        ("0.25", 224, false) => {
            Some("bf56de7d43277493cbf251dc97e5ce3332725f2d134cf62418d666278f9b5ff7")
        }
        ("0.25", 224, true) => {
            Some("afd3860980c05c339d823c575f87b4cc54cc03ab151855809a59186ef719b0d7")
        }
        _ => None,
    };
    // The two archives this project has seen, checked here.
    let (sha256, bytes) = match (version, size) {
        ("0.25", 224) => (
            Some("1cddeede49eb35af36061aaa66bf643b81f7ea89abc85f6ffef8f0bf00891756"),
            Some(2_621_521),
        ),
        ("0.25", 128) => (
            Some("30af63cf9039861bc03f86c7b8092fab754d51b27f042830c456ddbfa2b72fce"),
            Some(2_617_289),
        ),
        _ => (None, None),
    };
    Architecture {
        name: format!(
            "mobilenet_{version}_{size}{}",
            if quantized { "_quantized" } else { "" }
        ),
        about: if quantized {
            "MobileNet v1, TensorFlow, 8-bit weights; retrain.py's name"
        } else {
            "MobileNet v1, TensorFlow; retrain.py's name"
        },
        origin: Origin::Download {
            url: format!("http://download.tensorflow.org/models/{stem}_frozen.tgz"),
            member: Some(format!("{stem}/{graph}")),
            sha256,
            size: bytes,
        },
        format: ModelFormat::TensorFlow,
        file_sha256,
        input: Some("input".into()),
        input_size: Some((size, size)),
        layout: Some(Layout::Nhwc),
        mean: [127.5; 3],
        std: [127.5; 3],
        bottleneck: Some(MOBILENET_POOLED.into()),
        resize: ResizeRule::SquashTf,
    }
}

/// ImageNet classifiers of the ONNX model zoo, with the sha256 and size of their Git LFS
/// pointers. Preprocessing as their READMEs give it: ImageNet mean and std, the shorter
/// side resized to 256 and the centre 224 cropped (a centre crop of 0.875).
fn onnx_zoo() -> Vec<Architecture> {
    const BASE: &str = "https://github.com/onnx/models/raw/main/validated/vision/classification";
    const MEAN: [f32; 3] = [123.675, 116.28, 103.53];
    const STD: [f32; 3] = [58.395, 57.12, 57.375];
    let entry = |path: &str, about, sha256, size| {
        let file = path.rsplit('/').next().unwrap_or(path);
        Architecture {
            name: file.trim_end_matches(".onnx").to_string(),
            about,
            origin: Origin::Download {
                url: format!("{BASE}/{path}"),
                member: None,
                sha256: Some(sha256),
                size: Some(size),
            },
            format: ModelFormat::Onnx,
            file_sha256: Some(sha256),
            input: None,
            input_size: None,
            layout: None,
            mean: MEAN,
            std: STD,
            bottleneck: None,
            resize: DEFAULT_RESIZE,
        }
    };
    let mut zoo = vec![
        entry(
            "mobilenet/model/mobilenetv2-12.onnx",
            "MobileNet v2, ONNX model zoo",
            "c0c3f76d93fa3fd6580652a45618618a220fced18babf65774ed169de0432ad5",
            13_964_571,
        ),
        entry(
            "resnet/model/resnet18-v1-7.onnx",
            "ResNet-18 v1, ONNX model zoo",
            "4e8f8653e7a2222b3904cc3fe8e304cd8b339ce1d05fd24688162f86fb6df52c",
            46_820_737,
        ),
        entry(
            "resnet/model/resnet50-v1-12.onnx",
            "ResNet-50 v1, ONNX model zoo",
            "3f03fdef724b22947eed826f1eef1dc5c34151bb4c37d634f1db89dfa2dd1526",
            102_576_593,
        ),
        entry(
            "resnet/model/resnet50-v2-7.onnx",
            "ResNet-50 v2, ONNX model zoo",
            "79102261eb6e5fd7af5d27f41316293e388c5cb691e5d25bfb035c4f64fefe31",
            102_442_452,
        ),
        entry(
            "shufflenet/model/shufflenet-v2-12.onnx",
            "ShuffleNet v2, ONNX model zoo",
            "ea69821b4dd374ae2f33f9710dd1229ac263d0ee5b5a46ca3521f6483e1ba035",
            9_218_556,
        ),
        entry(
            "efficientnet-lite4/model/efficientnet-lite4-11.onnx",
            "EfficientNet-Lite4, ONNX model zoo",
            "d111689907c06eea7c82e4833ddef758da6453b9d4cf60b7e99ca05c7cbd9c12",
            51_946_641,
        ),
    ];
    // EfficientNet-Lite4 takes (x - 127) / 128, channels last.
    if let Some(lite4) = zoo.last_mut() {
        lite4.mean = [127.0; 3];
        lite4.std = [128.0; 3];
    }
    zoo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retrain_py_names_mean_what_retrain_py_meant() {
        let mobilenet = find("mobilenet_0.50_224").unwrap();
        let Origin::Download { url, member, .. } = &mobilenet.origin else {
            panic!("{mobilenet:?}");
        };
        assert_eq!(
            url,
            "http://download.tensorflow.org/models/mobilenet_v1_0.50_224_frozen.tgz"
        );
        assert_eq!(
            member.as_deref(),
            Some("mobilenet_v1_0.50_224/frozen_graph.pb")
        );
        assert_eq!((mobilenet.mean, mobilenet.std), ([127.5; 3], [127.5; 3]));
        assert_eq!(mobilenet.input.as_deref(), Some("input"));
        let quantized = find("mobilenet_0.25_128_quantized").unwrap();
        assert_eq!(
            quantized.path_in(Path::new("m")).unwrap(),
            Path::new("m/mobilenet_v1_0.25_128/quantized_graph.pb")
        );
        assert_eq!(quantized.input_size, Some((128, 128)));
        let inception = find("inception_v3").unwrap();
        assert_eq!(inception.input.as_deref(), Some("Mul"));
        assert_eq!(inception.bottleneck.as_deref(), Some("pool_3/_reshape"));
        assert_eq!(
            (inception.mean, inception.input_size),
            ([128.0; 3], Some((299, 299)))
        );
        assert_eq!(all().len(), 4 + 1 + 32 + 6);
    }

    #[test]
    fn names_are_unique_and_unknown_ones_get_suggestions() {
        let all = all();
        let mut names: Vec<&str> = all.iter().map(|a| a.name.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all.len());
        let error = find("mobilnet_0.25_224").unwrap_err().to_string();
        assert!(error.contains("mobilenet_0.25_224"), "{error}");
    }
}
