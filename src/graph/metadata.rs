//! The contract between `retrain` and `label`: what a retrained graph says about itself.
//!
//! `retrain` writes these entries into the graph (ONNX `metadata_props`), and `label` reads
//! them back, so the labels and the exact preprocessing travel with the graph and cannot
//! drift from what training used. Both sides go through this one module; the round trip is
//! tested here.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use tract_onnx::pb::ModelProto;

use crate::image::{channels_text, parse_channels, Layout, Preprocessing, ResizeRule};
use crate::util::messages::quote;

/// The largest input side a graph may ask for: a 4096x4096 RGB float tensor is 192 MiB
/// per image in flight, and no image classifier is trained on larger inputs.
pub const MAX_INPUT_SIDE: u32 = 4096;

/// The keys, all under `flowers.`.
pub mod keys {
    pub const LABELS: &str = "flowers.labels";
    pub const IMAGE_SIZE: &str = "flowers.image_size";
    pub const LAYOUT: &str = "flowers.layout";
    pub const MEAN: &str = "flowers.mean";
    pub const STD: &str = "flowers.std";
    pub const RESIZE: &str = "flowers.resize";
    pub const BACKBONE: &str = "flowers.backbone";
    /// TensorFlow graphs only: the tensor images are fed to, and the output.
    pub const INPUT: &str = "flowers.input";
    pub const OUTPUT: &str = "flowers.output";
    /// Graphs of combined backbones only: every input, in order, with its preprocessing
    /// (a JSON list; the keys above describe the first).
    pub const INPUTS: &str = "flowers.inputs";
    /// The graph's digest of itself, written last (see [`crate::graph::digest`]).
    pub const DIGEST: &str = "flowers.digest";
    /// Every key begins with this.
    pub const PREFIX: &str = "flowers.";
}

/// What a retrained graph says about itself.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphMetadata {
    /// The class labels in output order; a graph may leave them to a labels file.
    pub labels: Option<Vec<String>>,
    /// How an image becomes the graph's input.
    pub preprocessing: Preprocessing,
    /// The backbone: `name sha256:hex`.
    pub backbone: Option<String>,
    /// The tensor images are fed to and the output tensor, for graphs (TensorFlow) that
    /// do not declare them.
    pub input: Option<String>,
    pub output: Option<String>,
    /// A graph of combined backbones has one input per backbone, each fed its own tensor
    /// of the one image; empty for a graph of one backbone (one input, `preprocessing`).
    pub inputs: Vec<GraphInput>,
}

/// One input of a graph of combined backbones.
#[derive(Clone, Debug, PartialEq)]
pub struct GraphInput {
    /// The graph's input tensor.
    pub name: String,
    pub preprocessing: Preprocessing,
    /// The backbone behind it: `name sha256:hex`.
    pub backbone: String,
}

/// [`GraphInput`] as written: the texts of the single-input keys.
#[derive(serde::Serialize, serde::Deserialize)]
struct InputEntry {
    name: String,
    image_size: String,
    layout: String,
    mean: String,
    std: String,
    resize: String,
    backbone: String,
}

impl GraphMetadata {
    /// The entries as written into a graph, in a fixed order (the same graph bytes for the
    /// same training run).
    pub fn to_entries(&self) -> Vec<(&'static str, String)> {
        let p = &self.preprocessing;
        let mut entries = Vec::new();
        if let Some(labels) = &self.labels {
            let json = serde_json::to_string(labels).expect("strings serialise");
            entries.push((keys::LABELS, json));
        }
        entries.extend([
            (keys::IMAGE_SIZE, format!("{},{}", p.height, p.width)),
            (keys::LAYOUT, p.layout.as_str().to_string()),
            (keys::MEAN, channels_text(&p.mean)),
            (keys::STD, channels_text(&p.std)),
            (keys::RESIZE, p.resize.to_string()),
        ]);
        if let Some(backbone) = &self.backbone {
            entries.push((keys::BACKBONE, backbone.clone()));
        }
        if let Some(input) = &self.input {
            entries.push((keys::INPUT, input.clone()));
        }
        if let Some(output) = &self.output {
            entries.push((keys::OUTPUT, output.clone()));
        }
        if !self.inputs.is_empty() {
            let inputs: Vec<InputEntry> = self.inputs.iter().map(input_entry).collect();
            let json = serde_json::to_string(&inputs).expect("strings serialise");
            entries.push((keys::INPUTS, json));
        }
        entries
    }

    /// Every input with its preprocessing: the one of a graph of one backbone (unnamed:
    /// the graph's only input), or each of a combined graph's.
    pub fn input_list(&self) -> Vec<(Option<&str>, &Preprocessing)> {
        if self.inputs.is_empty() {
            return vec![(None, &self.preprocessing)];
        }
        let each = self.inputs.iter();
        each.map(|i| (Some(i.name.as_str()), &i.preprocessing))
            .collect()
    }

    /// The metadata of a flowers ONNX graph (`metadata_props`), shown as `display` in
    /// errors: every reader of flowers' ONNX graphs asks for it the same way.
    pub fn of_onnx(proto: &ModelProto, display: &str) -> Result<GraphMetadata> {
        let entries = proto.metadata_props.iter();
        GraphMetadata::from_entries(entries.map(|p| (p.key.as_str(), p.value.as_str())))
            .with_context(|| {
                format!(
                    "{display} has no usable flowers metadata (was it written by `flowers retrain`?)"
                )
            })
    }

    /// Reads the entries of a graph. Keys other than flowers' are ignored; a missing or
    /// malformed preprocessing key is an error naming it.
    pub fn from_entries<'a>(
        entries: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<GraphMetadata> {
        let map: HashMap<&str, &str> = entries.into_iter().collect();
        let get = |key: &str| {
            map.get(key)
                .copied()
                .ok_or_else(|| anyhow!("missing metadata {key}"))
        };
        let preprocessing = preprocessing_of(&get)?;
        let labels = match map.get(keys::LABELS) {
            Some(json) => Some(
                serde_json::from_str(json)
                    .map_err(|_| anyhow!("unreadable {} metadata", keys::LABELS))?,
            ),
            None => None,
        };
        let inputs = match map.get(keys::INPUTS) {
            Some(json) => graph_inputs(json)?,
            None => Vec::new(),
        };
        Ok(GraphMetadata {
            labels,
            preprocessing,
            backbone: map.get(keys::BACKBONE).map(|b| b.to_string()),
            input: map.get(keys::INPUT).map(|b| b.to_string()),
            output: map.get(keys::OUTPUT).map(|b| b.to_string()),
            inputs,
        })
    }
}

/// The entry of one input, in the single-input keys' text forms.
fn input_entry(input: &GraphInput) -> InputEntry {
    let p = &input.preprocessing;
    InputEntry {
        name: input.name.clone(),
        image_size: format!("{},{}", p.height, p.width),
        layout: p.layout.as_str().to_string(),
        mean: channels_text(&p.mean),
        std: channels_text(&p.std),
        resize: p.resize.to_string(),
        backbone: input.backbone.clone(),
    }
}

/// The inputs of `flowers.inputs`, each checked as the single-input keys are.
fn graph_inputs(json: &str) -> Result<Vec<GraphInput>> {
    let entries: Vec<InputEntry> = serde_json::from_str(json)
        .map_err(|e| anyhow!("unreadable {} metadata: {e}", keys::INPUTS))?;
    entries
        .into_iter()
        .enumerate()
        .map(|(i, entry)| {
            let get = |key: &str| -> Result<&str> {
                Ok(match key {
                    keys::IMAGE_SIZE => &entry.image_size,
                    keys::LAYOUT => &entry.layout,
                    keys::MEAN => &entry.mean,
                    keys::STD => &entry.std,
                    _ => &entry.resize,
                })
            };
            let preprocessing = preprocessing_of(&get)
                .with_context(|| format!("in input {} of {}", i + 1, keys::INPUTS))?;
            Ok(GraphInput {
                name: entry.name.clone(),
                preprocessing,
                backbone: entry.backbone.clone(),
            })
        })
        .collect()
}

/// The preprocessing the keys `get` reads describe, checked.
fn preprocessing_of<'a>(get: &dyn Fn(&str) -> Result<&'a str>) -> Result<Preprocessing> {
    {
        let size = get(keys::IMAGE_SIZE)?;
        let [height, width] = size
            .split(',')
            .map(|v| v.trim().parse::<u32>().ok())
            .collect::<Option<Vec<u32>>>()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| {
                anyhow!(
                    "{} must be height,width, got {}",
                    keys::IMAGE_SIZE,
                    quote(size)
                )
            })?;
        let preprocessing = Preprocessing {
            height,
            width,
            layout: Layout::parse(get(keys::LAYOUT)?).map_err(|e| anyhow!(e))?,
            mean: parse_channels(get(keys::MEAN)?, keys::MEAN).map_err(|e| anyhow!(e))?,
            std: parse_channels(get(keys::STD)?, keys::STD).map_err(|e| anyhow!(e))?,
            resize: ResizeRule::parse(get(keys::RESIZE)?)
                .map_err(|e| anyhow!("{}: {e}", keys::RESIZE))?,
        };
        check_ranges(&preprocessing)?;
        Ok(preprocessing)
    }
}

/// Refuses preprocessing no image can be put through, naming the key: found when the
/// graph is loaded, not blamed on every image. (The resize rule's range is
/// [`ResizeRule::parse`]'s, shared with `--resize`.)
fn check_ranges(p: &Preprocessing) -> Result<()> {
    let sides = 1..=MAX_INPUT_SIDE;
    if !sides.contains(&p.height) || !sides.contains(&p.width) {
        bail!(
            "{} must be two sizes from 1 to {MAX_INPUT_SIDE}, got {},{}",
            keys::IMAGE_SIZE,
            p.height,
            p.width
        );
    }
    if let Some(mean) = p.mean.iter().find(|m| !m.is_finite()) {
        bail!("{} must be finite, got {mean:?}", keys::MEAN);
    }
    if let Some(std) = p.std.iter().find(|&&s| !(s.is_finite() && s > 0.0)) {
        bail!("{} must be positive and finite, got {std:?}", keys::STD);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> GraphMetadata {
        GraphMetadata {
            labels: Some(vec!["daisy".into(), "roses \"red\"".into(), "花".into()]),
            preprocessing: Preprocessing {
                height: 224,
                width: 192,
                layout: Layout::Nhwc,
                mean: [123.675, 116.28, 103.53],
                std: [58.395, 57.12, 57.375],
                resize: ResizeRule::CenterCrop(0.875),
            },
            backbone: Some("mobilenet_v1_1.0_224 sha256:1eb2".into()),
            input: None,
            output: None,
            inputs: Vec::new(),
        }
    }

    #[test]
    fn metadata_round_trips() {
        let metadata = sample();
        let entries = metadata.to_entries();
        let read = GraphMetadata::from_entries(entries.iter().map(|(k, v)| (*k, v.as_str())));
        assert_eq!(read.unwrap(), metadata);
        let no_labels = GraphMetadata {
            labels: None,
            backbone: None,
            ..sample()
        };
        let tensorflow = GraphMetadata {
            input: Some("Mul".into()),
            output: Some("final_result".into()),
            ..sample()
        };
        let entries = tensorflow.to_entries();
        let read = GraphMetadata::from_entries(entries.iter().map(|(k, v)| (*k, v.as_str())));
        assert_eq!(read.unwrap(), tensorflow);
        let entries = no_labels.to_entries();
        let read = GraphMetadata::from_entries(entries.iter().map(|(k, v)| (*k, v.as_str())));
        assert_eq!(read.unwrap(), no_labels);
    }

    #[test]
    fn the_inputs_of_a_combined_graph_round_trip_and_are_checked() {
        let second = Preprocessing {
            height: 260,
            width: 260,
            layout: Layout::Nchw,
            mean: [127.0; 3],
            std: [128.0; 3],
            resize: ResizeRule::Squash,
        };
        let combined = GraphMetadata {
            inputs: vec![
                GraphInput {
                    name: "b1/input".into(),
                    preprocessing: sample().preprocessing,
                    backbone: "a sha256:1".into(),
                },
                GraphInput {
                    name: "b2/input".into(),
                    preprocessing: second,
                    backbone: "b sha256:2".into(),
                },
            ],
            ..sample()
        };
        let entries = combined.to_entries();
        let read = GraphMetadata::from_entries(entries.iter().map(|(k, v)| (*k, v.as_str())));
        let read = read.unwrap();
        assert_eq!(read, combined);
        let names: Vec<Option<&str>> = read.input_list().iter().map(|(n, _)| *n).collect();
        assert_eq!(names, [Some("b1/input"), Some("b2/input")]);
        assert_eq!(sample().input_list(), [(None, &sample().preprocessing)]);
        let (_, json) = entries.iter().find(|(k, _)| *k == keys::INPUTS).unwrap();
        let damaged = json.replace("\"std\":\"128,128,128\"", "\"std\":\"0\"");
        assert_ne!(&damaged, json);
        let kept = entries.iter().filter(|(k, _)| *k != keys::INPUTS);
        let entries = kept
            .map(|(k, v)| (*k, v.as_str()))
            .chain([(keys::INPUTS, damaged.as_str())]);
        let error = format!("{:#}", GraphMetadata::from_entries(entries).unwrap_err());
        assert!(
            error.contains("input 2") && error.contains(keys::STD),
            "{error}"
        );
    }

    #[test]
    fn entries_are_written_as_label_reads_them() {
        // The exact text is what graphs already written carry: it must not change.
        let entries = sample().to_entries();
        let text: Vec<String> = entries.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            text,
            [
                r#"flowers.labels=["daisy","roses \"red\"","花"]"#,
                "flowers.image_size=224,192",
                "flowers.layout=NHWC",
                "flowers.mean=123.675,116.28,103.53",
                "flowers.std=58.395,57.12,57.375",
                "flowers.resize=center-crop:0.875",
                "flowers.backbone=mobilenet_v1_1.0_224 sha256:1eb2",
            ]
        );
    }

    #[test]
    fn missing_or_bad_keys_are_named() {
        let entries = sample().to_entries();
        let without = |key: &str| {
            let kept = entries.iter().filter(|(k, _)| *k != key);
            GraphMetadata::from_entries(kept.map(|(k, v)| (*k, v.as_str())))
                .unwrap_err()
                .to_string()
        };
        assert!(without(keys::RESIZE).contains(keys::RESIZE));
        assert!(without(keys::IMAGE_SIZE).contains(keys::IMAGE_SIZE));
        let bad = [(keys::IMAGE_SIZE, "224")];
        let error = GraphMetadata::from_entries(
            entries
                .iter()
                .map(|(k, v)| (*k, v.as_str()))
                .filter(|(k, _)| *k != keys::IMAGE_SIZE)
                .chain(bad),
        )
        .unwrap_err();
        assert!(error.to_string().contains("height,width"), "{error}");
    }

    #[test]
    fn out_of_range_preprocessing_is_refused_naming_the_key() {
        let entries = sample().to_entries();
        let with = |key: &str, value: &str| {
            let kept = entries.iter().filter(|(k, _)| *k != key);
            let entries = kept.map(|(k, v)| (*k, v.as_str())).chain([(key, value)]);
            GraphMetadata::from_entries(entries).map(|m| m.preprocessing)
        };
        for (key, value) in [
            (keys::RESIZE, "center-crop:1e-30"),
            (keys::RESIZE, "center-crop:NaN"),
            (keys::RESIZE, "center-crop:1.5"),
            (keys::MEAN, "NaN,0,0"),
            (keys::MEAN, "inf"),
            (keys::STD, "0"),
            (keys::STD, "-1,1,1"),
            (keys::STD, "1,1,NaN"),
            (keys::IMAGE_SIZE, "0,224"),
            (keys::IMAGE_SIZE, "224,100000"),
            (keys::IMAGE_SIZE, "4294967295,1"),
        ] {
            let error = with(key, value).unwrap_err().to_string();
            assert!(error.contains(key), "{key}={value}: {error}");
            assert!(!error.contains('\n'), "{error}");
        }
        let edge = with(keys::RESIZE, "center-crop:0.05").unwrap();
        assert_eq!(edge.resize, ResizeRule::CenterCrop(0.05));
        let largest = with(keys::IMAGE_SIZE, "4096,4096").unwrap();
        assert_eq!((largest.height, largest.width), (4096, 4096));
    }
}
