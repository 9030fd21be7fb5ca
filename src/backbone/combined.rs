//! Several backbones side by side (`--architecture A+B`, `--model` given more than once):
//! each image goes through each, with its own input size and normalisation, and the
//! bottleneck is the concatenation of theirs. Backbones see different features of one
//! photo, so a final layer on both can separate classes neither separates alone.
//!
//! One backbone is the case every command has always had: a combination of one behaves,
//! caches and exports exactly as before.

use anyhow::{bail, Result};
use tract_onnx::pb::ModelProto;

use super::{Backbone, BackboneGraph, ModelFormat, ModelSource, Overrides};

/// One backbone asked for, and the preprocessing overrides that go with it.
#[derive(Clone, Debug)]
pub struct Choice {
    pub source: ModelSource,
    pub overrides: Overrides,
}

impl Choice {
    /// The embedded default, as it is.
    pub fn embedded() -> Choice {
        Choice {
            source: ModelSource::Embedded,
            overrides: Overrides::default(),
        }
    }
}

/// The loaded backbones, in the order asked for: the order of the bottleneck's parts and
/// of the retrained graph's inputs.
pub struct Backbones {
    parts: Vec<Backbone>,
}

impl Backbones {
    /// Loads each choice; a combination must be of ONNX backbones of one opset, each given
    /// once (a TensorFlow graph cannot be joined with an ONNX one into one file).
    pub fn load(choices: &[Choice]) -> Result<Backbones> {
        if choices.is_empty() {
            bail!("no backbone given: use --architecture or --model");
        }
        let parts = choices
            .iter()
            .map(|c| Backbone::load(&c.source, &c.overrides))
            .collect::<Result<Vec<_>>>()?;
        Backbones::new(parts)
    }

    /// Backbones already loaded, checked as [`Backbones::load`] checks them.
    pub fn new(parts: Vec<Backbone>) -> Result<Backbones> {
        if parts.len() > 1 {
            check_combinable(&parts)?;
        }
        Ok(Backbones { parts })
    }

    pub fn parts(&self) -> &[Backbone] {
        &self.parts
    }

    /// The only backbone, when there is one.
    pub fn single(&self) -> Option<&Backbone> {
        match self.parts.as_slice() {
            [only] => Some(only),
            _ => None,
        }
    }

    pub fn is_combined(&self) -> bool {
        self.parts.len() > 1
    }

    /// The format of the retrained graph: a combination is always ONNX.
    pub fn format(&self) -> ModelFormat {
        self.parts[0].format()
    }

    /// `name`, or `a+b` for a combination.
    pub fn name(&self) -> String {
        let names: Vec<&str> = self.parts.iter().map(|b| b.name.as_str()).collect();
        names.join("+")
    }

    /// `name sha256:hex` of each backbone, joined by ` + `: what reports and the graph's
    /// metadata say it was trained on.
    pub fn describe(&self) -> String {
        let each: Vec<String> = self
            .parts
            .iter()
            .map(|b| format!("{} sha256:{}", b.name, b.sha256))
            .collect();
        each.join(" + ")
    }
}

/// What every node, tensor and input name of backbone `index` (from 0) of a combination
/// begins with in the retrained graph: backbones name their tensors alike (`input`,
/// `features`), and one graph needs each name once.
pub fn name_prefix(index: usize) -> String {
    format!("b{}/", index + 1)
}

/// Refuses combinations that cannot be one retrained graph, or that make no sense.
fn check_combinable(parts: &[Backbone]) -> Result<()> {
    let mut opset = None;
    for (i, part) in parts.iter().enumerate() {
        let BackboneGraph::Onnx(proto) = &part.graph else {
            bail!(
                "{} is a TensorFlow graph: backbones are combined only when all are ONNX (one retrained graph holds them all); use it alone",
                part.name
            );
        };
        if let Some(earlier) = parts[..i].iter().find(|p| p.identity() == part.identity()) {
            bail!(
                "backbone {} is given twice (as {}): give each backbone of a combination once",
                part.name,
                earlier.name
            );
        }
        let version = default_opset(proto);
        match opset {
            None => opset = Some((version, &part.name)),
            Some((first, name)) if first != version => bail!(
                "{} uses ONNX opset {version:?}, {name} opset {first:?}: backbones are combined only when their opsets agree",
                part.name
            ),
            Some(_) => {}
        }
    }
    Ok(())
}

/// The version of the default (`ai.onnx`) operator set a model imports.
pub(crate) fn default_opset(proto: &ModelProto) -> Option<i64> {
    proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map(|o| o.version)
}
