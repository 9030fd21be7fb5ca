//! The names a retrained graph keeps from its backbone, so that a name flowers adds to it
//! (`--final-tensor-name`) can be refused before any work, not after training, and a graph
//! with two tensors of one name (that ONNX checkers and runtimes reject) is never written.

use std::collections::{HashMap, HashSet};

use super::combined::name_prefix;
use super::tensorflow::{node_name, METADATA_NODE};
use super::{Backbone, BackboneGraph, Backbones};

/// Name prefixes of the nodes flowers appends (ONNX and TensorFlow exports).
const RESERVED_PREFIXES: [&str; 2] = ["final_layer/", "final_retrain_ops/"];

/// Whether `name` is already used by what the retrained graph keeps of `backbone` (its
/// nodes up to the bottleneck, their tensors, the graph's inputs), or by what flowers
/// adds besides the final tensor.
pub fn is_taken(backbone: &Backbone, name: &str) -> bool {
    if is_taken_by_flowers(name) {
        return true;
    }
    match &backbone.graph {
        BackboneGraph::Onnx(proto) => proto
            .graph
            .as_ref()
            .is_some_and(|graph| onnx_names(graph, &backbone.bottleneck).contains(name)),
        BackboneGraph::TensorFlow(graph) => {
            tensorflow_names(&graph.node, &backbone.bottleneck).contains(name)
        }
    }
}

/// [`is_taken`] for the graph of `backbones`: a combination's graph names backbone `i`'s
/// tensors with [`name_prefix`]`(i)` before them.
pub fn is_taken_in(backbones: &Backbones, name: &str) -> bool {
    if let Some(only) = backbones.single() {
        return is_taken(only, name);
    }
    is_taken_by_flowers(name)
        || backbones.parts().iter().enumerate().any(|(i, backbone)| {
            name.strip_prefix(&name_prefix(i))
                .is_some_and(|inner| is_taken(backbone, inner))
        })
}

/// Names flowers adds itself.
fn is_taken_by_flowers(name: &str) -> bool {
    name == METADATA_NODE || RESERVED_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The tensor names of the ONNX nodes the bottleneck depends on, and the graph's inputs.
fn onnx_names<'a>(graph: &'a tract_onnx::pb::GraphProto, bottleneck: &'a str) -> HashSet<&'a str> {
    let mut needed: HashSet<&str> = HashSet::from([bottleneck]);
    for node in graph.node.iter().rev() {
        if node.output.iter().any(|o| needed.contains(o.as_str())) {
            needed.extend(node.output.iter().map(String::as_str));
            needed.extend(node.input.iter().map(String::as_str));
        }
    }
    needed.extend(graph.input.iter().map(|i| i.name.as_str()));
    needed
}

/// The names of the TensorFlow nodes the bottleneck depends on.
fn tensorflow_names<'a>(
    nodes: &'a [super::tensorflow::NodeDef],
    bottleneck: &'a str,
) -> HashSet<&'a str> {
    let by_name: HashMap<&str, &super::tensorflow::NodeDef> =
        nodes.iter().map(|n| (n.name.as_str(), n)).collect();
    let mut needed = HashSet::new();
    let mut stack = vec![node_name(bottleneck)];
    while let Some(name) = stack.pop() {
        if !needed.insert(name) {
            continue;
        }
        if let Some(node) = by_name.get(name) {
            stack.extend(node.input.iter().map(|i| node_name(i)));
        }
    }
    needed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backbone::{ModelSource, Overrides};

    #[test]
    fn the_embedded_backbones_input_and_inner_tensors_are_taken() {
        let backbone = Backbone::load(&ModelSource::Embedded, &Overrides::default()).unwrap();
        assert!(is_taken(&backbone, &backbone.input_name));
        assert!(is_taken(&backbone, &backbone.bottleneck));
        assert!(is_taken(&backbone, "final_layer/logits"));
        assert!(is_taken(&backbone, METADATA_NODE));
        assert!(!is_taken(&backbone, "final_result"));
    }
}
