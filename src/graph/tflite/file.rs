//! A whole `.tflite` file as flowers writes it: the model flatbuffer with its
//! `TFLITE_METADATA` and `flowers` metadata buffers, the labels packed after it, and the
//! digest of the whole file sealed into the `flowers` entries.

use anyhow::{anyhow, bail, Result};

use super::ir::Model;
use super::model_metadata::{self as mm, Description};
use super::read;
use super::write::{self, MetadataBuffer};
use crate::graph::digest;
use crate::graph::metadata::{keys, GraphMetadata};
use crate::image::Layout;

/// The `.tflite` file of `model`, classifying into `metadata`'s labels with its
/// preprocessing (the input is the normalised NHWC image).
pub fn encode(model: &Model, metadata: &GraphMetadata) -> Result<Vec<u8>> {
    let labels = metadata
        .labels
        .as_ref()
        .ok_or_else(|| anyhow!("the graph carries no labels"))?;
    let classes = model.output()?.len();
    if classes != labels.len() {
        bail!(
            "the graph has {classes} outputs but {} labels: pass the labels file written with this graph",
            labels.len()
        );
    }
    let mut metadata = metadata.clone();
    metadata.preprocessing.layout = Layout::Nhwc;
    metadata.input = None;
    metadata.output = None;
    let backbone = metadata.backbone.as_deref().unwrap_or("a backbone");
    let description = format!(
        "Image classifier of {} labels, retrained by flowers {} on {backbone}.",
        labels.len(),
        env!("CARGO_PKG_VERSION")
    );
    let tflite = mm::tflite_metadata(&Description {
        name: "flowers image classifier",
        description: &description,
        preprocessing: &metadata.preprocessing,
        classes: labels.len(),
    });
    let mut entries = metadata.to_entries();
    entries.push((keys::DIGEST, digest::UNSEALED.to_string()));
    let buffers = [
        MetadataBuffer {
            name: mm::TFLITE_METADATA.into(),
            data: tflite,
        },
        MetadataBuffer {
            name: mm::FLOWERS_METADATA.into(),
            data: mm::flowers_buffer(&entries),
        },
    ];
    let bytes = write::encode(
        model,
        &format!("flowers {}", env!("CARGO_PKG_VERSION")),
        &buffers,
    );
    let mut text = labels.join("\n");
    text.push('\n');
    let mut bytes = mm::append_packed_files(bytes, &[(mm::LABELS_FILE, text.as_bytes())])?;
    digest::seal(&mut bytes);
    Ok(bytes)
}

/// A decoded flowers `.tflite` file: its model and flowers' metadata.
pub struct TfliteFile {
    pub model: Model,
    pub metadata: GraphMetadata,
}

/// Decodes a `.tflite` file flowers wrote (its digest is checked by the caller, as for
/// every graph), shown as `display` in errors.
pub fn decode(bytes: &[u8], display: &str) -> Result<TfliteFile> {
    let decoded = read::decode(bytes, display)?;
    let Some((_, buffer)) = decoded
        .metadata
        .iter()
        .find(|(name, _)| name == mm::FLOWERS_METADATA)
    else {
        bail!("{display} has no flowers metadata (was it written by `flowers export` or `flowers retrain --output-tflite`?)");
    };
    let entries = mm::parse_flowers_buffer(buffer).map_err(|e| anyhow!("{display}: {e}"))?;
    let metadata =
        GraphMetadata::from_entries(entries.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|e| anyhow!("{display} has unusable flowers metadata: {e}"))?;
    if metadata.preprocessing.layout != Layout::Nhwc {
        bail!(
            "{display}: {} must be NHWC in a TensorFlow Lite file",
            keys::LAYOUT
        );
    }
    let input = decoded
        .model
        .input()
        .map_err(|e| anyhow!("{display}: {e}"))?;
    let p = &metadata.preprocessing;
    let expected = [1, p.height as usize, p.width as usize, 3];
    if input.shape != expected {
        bail!(
            "{display}: its input has shape {:?}, its metadata says {expected:?}",
            input.shape
        );
    }
    Ok(TfliteFile {
        model: decoded.model,
        metadata,
    })
}
