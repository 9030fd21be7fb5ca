//! What a `.tflite` file says about itself: TFLite Model Metadata (the `TFLITE_METADATA`
//! buffer, `metadata_schema.fbs`) for TFLite Support, the Task Library and Model Maker's
//! readers; the labels file packed as TFLite Support packs associated files (a zip
//! appended to the flatbuffer, offsets counted from the start of the file, as Python's
//! `zipfile` appends one); and flowers' own entries (the `flowers` buffer), which carry
//! what `flowers label` needs and the file's digest of itself.

use std::io::{Cursor, Read, Write};

use anyhow::{anyhow, bail, Context, Result};
use flatbuffers::FlatBufferBuilder;

use super::generated::metadata as md;
use crate::image::Preprocessing;

/// The name TFLite Support looks for in `Model.metadata`.
pub const TFLITE_METADATA: &str = "TFLITE_METADATA";

/// The name of flowers' own metadata buffer.
pub const FLOWERS_METADATA: &str = "flowers";

/// The labels file inside the `.tflite`, as Model Maker names it.
pub const LABELS_FILE: &str = "labels.txt";

/// The oldest metadata parser that reads what flowers writes: image properties,
/// normalisation, stats and a TENSOR_AXIS_LABELS file are all from version 1.0.0.
const MIN_PARSER_VERSION: &str = "1.0.0";

/// What the TFLite metadata describes.
pub struct Description<'a> {
    pub name: &'a str,
    pub description: &'a str,
    pub preprocessing: &'a Preprocessing,
    pub classes: usize,
}

/// The `TFLITE_METADATA` buffer (file identifier `M001`).
pub fn tflite_metadata(what: &Description) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::new();
    let input = input_metadata(&mut fbb, what.preprocessing);
    let output = output_metadata(&mut fbb, what.classes);
    let subgraph_args = md::SubGraphMetadataArgs {
        input_tensor_metadata: Some(fbb.create_vector(&[input])),
        output_tensor_metadata: Some(fbb.create_vector(&[output])),
        ..Default::default()
    };
    let subgraph = md::SubGraphMetadata::create(&mut fbb, &subgraph_args);
    let args = md::ModelMetadataArgs {
        name: Some(fbb.create_string(what.name)),
        description: Some(fbb.create_string(what.description)),
        version: Some(fbb.create_string(env!("CARGO_PKG_VERSION"))),
        author: Some(fbb.create_string("flowers")),
        subgraph_metadata: Some(fbb.create_vector(&[subgraph])),
        min_parser_version: Some(fbb.create_string(MIN_PARSER_VERSION)),
        ..Default::default()
    };
    let root = md::ModelMetadata::create(&mut fbb, &args);
    md::finish_model_metadata_buffer(&mut fbb, root);
    fbb.finished_data().to_vec()
}

/// The image input: RGB, normalised with the graph's mean and std, pixels 0 to 255.
fn input_metadata<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    p: &Preprocessing,
) -> flatbuffers::WIPOffset<md::TensorMetadata<'a>> {
    let image = md::ImageProperties::create(
        fbb,
        &md::ImagePropertiesArgs {
            color_space: md::ColorSpaceType::RGB,
            default_size: None,
        },
    );
    let content = md::Content::create(
        fbb,
        &md::ContentArgs {
            content_properties_type: md::ContentProperties::ImageProperties,
            content_properties: Some(image.as_union_value()),
            range: None,
        },
    );
    let normalization_args = md::NormalizationOptionsArgs {
        mean: Some(fbb.create_vector(&p.mean)),
        std_: Some(fbb.create_vector(&p.std)),
    };
    let normalization = md::NormalizationOptions::create(fbb, &normalization_args);
    let unit = md::ProcessUnit::create(
        fbb,
        &md::ProcessUnitArgs {
            options_type: md::ProcessUnitOptions::NormalizationOptions,
            options: Some(normalization.as_union_value()),
        },
    );
    let stats_args = md::StatsArgs {
        max: Some(fbb.create_vector(&[255.0f32])),
        min: Some(fbb.create_vector(&[0.0f32])),
    };
    let stats = md::Stats::create(fbb, &stats_args);
    let description = format!(
        "Input image to be classified: RGB, {}x{} (height x width), resized by the rule {}, then (pixel - mean) / std.",
        p.height, p.width, p.resize
    );
    let args = md::TensorMetadataArgs {
        name: Some(fbb.create_string("image")),
        description: Some(fbb.create_string(&description)),
        content: Some(content),
        process_units: Some(fbb.create_vector(&[unit])),
        stats: Some(stats),
        ..Default::default()
    };
    md::TensorMetadata::create(fbb, &args)
}

/// The output: one probability per label of the packed labels file.
fn output_metadata<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    classes: usize,
) -> flatbuffers::WIPOffset<md::TensorMetadata<'a>> {
    let features = md::FeatureProperties::create(fbb, &md::FeaturePropertiesArgs {});
    let content = md::Content::create(
        fbb,
        &md::ContentArgs {
            content_properties_type: md::ContentProperties::FeatureProperties,
            content_properties: Some(features.as_union_value()),
            range: None,
        },
    );
    let file_args = md::AssociatedFileArgs {
        name: Some(fbb.create_string(LABELS_FILE)),
        description: Some(fbb.create_string(
            "Labels for the classes the model recognises, one per line, in output order.",
        )),
        type_: md::AssociatedFileType::TENSOR_AXIS_LABELS,
        ..Default::default()
    };
    let labels = md::AssociatedFile::create(fbb, &file_args);
    let stats_args = md::StatsArgs {
        max: Some(fbb.create_vector(&[1.0f32])),
        min: Some(fbb.create_vector(&[0.0f32])),
    };
    let stats = md::Stats::create(fbb, &stats_args);
    let description = format!("Probabilities of the {classes} labels.");
    let args = md::TensorMetadataArgs {
        name: Some(fbb.create_string("probability")),
        description: Some(fbb.create_string(&description)),
        content: Some(content),
        stats: Some(stats),
        associated_files: Some(fbb.create_vector(&[labels])),
        ..Default::default()
    };
    md::TensorMetadata::create(fbb, &args)
}

/// Appends `files` to `file` as a zip archive whose offsets count from the start of
/// `file`, stored uncompressed, as TFLite Support's MetadataPopulator packs them.
pub fn append_packed_files(file: Vec<u8>, files: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let end = file.len() as u64;
    let mut cursor = Cursor::new(file);
    cursor.set_position(end);
    let mut zip = zip::ZipWriter::new(cursor);
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, bytes) in files {
        zip.start_file(*name, options)?;
        zip.write_all(bytes)?;
    }
    Ok(zip.finish()?.into_inner())
}

/// The files packed at the end of a `.tflite` file, by name.
pub fn packed_files(bytes: &[u8]) -> Result<Vec<(String, Vec<u8>)>> {
    let mut archive =
        zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| anyhow!("no packed files: {e}"))?;
    let mut files = Vec::new();
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i)?;
        let mut data = Vec::new();
        entry
            .by_ref()
            .take(crate::backbone::limits::MAX_LABELS_BYTES)
            .read_to_end(&mut data)?;
        let name = entry
            .name()
            .map_err(|e| anyhow!("a packed file has no usable name: {e}"))?;
        files.push((name.to_string(), data));
    }
    Ok(files)
}

/// flowers' entries as the `flowers` buffer: a JSON array of `key=value` strings, the
/// digest last (its `=sha256:` is what [`crate::graph::digest`] finds and seals).
pub fn flowers_buffer(entries: &[(&str, String)]) -> Vec<u8> {
    let lines: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
    serde_json::to_vec(&lines).expect("strings serialise")
}

/// The entries of a `flowers` buffer.
pub fn parse_flowers_buffer(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let lines: Vec<String> =
        serde_json::from_slice(bytes).context("the flowers metadata is not a JSON list")?;
    lines
        .into_iter()
        .map(|line| match line.split_once('=') {
            Some((key, value)) => Ok((key.to_string(), value.to_string())),
            None => bail!("the flowers metadata has an entry without '='"),
        })
        .collect()
}

/// What flowers' tests and checks read back from a `TFLITE_METADATA` buffer.
#[derive(Debug, PartialEq)]
pub struct Summary {
    pub name: String,
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    pub labels_file: Option<String>,
}

/// Reads the parts of a `TFLITE_METADATA` buffer flowers writes, verifying it first.
pub fn read_tflite_metadata(bytes: &[u8]) -> Result<Summary> {
    if !md::model_metadata_buffer_has_identifier(bytes) {
        bail!("the TFLite metadata lacks its M001 identifier");
    }
    let metadata = md::root_as_model_metadata(bytes)
        .map_err(|e| anyhow!("the TFLite metadata is malformed: {e}"))?;
    let subgraph = metadata
        .subgraph_metadata()
        .filter(|s| !s.is_empty())
        .map(|s| s.get(0))
        .ok_or_else(|| anyhow!("the TFLite metadata has no subgraph"))?;
    let input = subgraph
        .input_tensor_metadata()
        .filter(|t| !t.is_empty())
        .map(|t| t.get(0))
        .ok_or_else(|| anyhow!("the TFLite metadata has no input"))?;
    let normalization = input
        .process_units()
        .into_iter()
        .flatten()
        .find_map(|unit| unit.options_as_normalization_options());
    let floats =
        |v: Option<flatbuffers::Vector<f32>>| v.map(|v| v.iter().collect()).unwrap_or_default();
    let labels_file = subgraph
        .output_tensor_metadata()
        .into_iter()
        .flatten()
        .flat_map(|t| t.associated_files().into_iter().flatten())
        .find(|f| f.type_() == md::AssociatedFileType::TENSOR_AXIS_LABELS)
        .and_then(|f| f.name().map(str::to_string));
    Ok(Summary {
        name: metadata.name().unwrap_or_default().to_string(),
        mean: floats(normalization.and_then(|n| n.mean())),
        std: floats(normalization.and_then(|n| n.std_())),
        labels_file,
    })
}
