//! What a graph file may ask for, checked before anything is built from it.
//!
//! A graph is a program: a few bytes can declare a constant of ten billion values, a
//! `ConstantOfShape` or `Fill` that tract would evaluate while it loads the graph, or a
//! chain of nodes deep enough to make tract's passes crawl. An allocation that fails
//! aborts the process (no error, no cleanup), so every size is checked against these
//! bounds first, from the declared shapes and the bytes actually present.
//!
//! Each bound leaves the largest real backbone flowers knows (inception_v3: a 95 MB
//! frozen graph, 23.8 million weights, its largest constant the 2048 x 1008 logits
//! matrix) working with an order of magnitude or more to spare. The README lists them.

/// Largest graph or model file read (bytes): protobuf cannot encode a larger message, so
/// anything bigger is not a graph.
pub const MAX_GRAPH_BYTES: u64 = 2 << 30;

/// Largest labels file read (bytes): a million labels of sixty characters fit.
pub const MAX_LABELS_BYTES: u64 = 64 << 20;

/// Most nodes in one graph. Real backbones have from about a hundred (the ONNX MobileNets
/// and EfficientNets) to a few thousand (TensorFlow frozen graphs, which spell out every
/// weight read and batch normalisation as nodes).
pub const MAX_NODES: usize = 50_000;

/// Most node attributes in one graph. Decoding gives each attribute (and each node) a
/// fixed-size record whatever its size in the file, so the counts are checked on a shallow
/// pass first: an attribute is a few bytes in the file and up to a few kilobytes decoded.
/// Real nodes have up to about ten attributes.
pub const MAX_ATTRIBUTES: usize = 250_000;

/// Longest chain of nodes from an input to an output. Real backbones are a few hundred
/// deep; tract's graph passes slow down with depth faster than linearly, and its
/// recursive ones use the stack, so a chain of a hundred thousand no-op nodes would cost
/// minutes and gigabytes before failing.
pub const MAX_DEPTH: usize = 10_000;

/// Most values in one tensor, constant or computed: 2^26, 256 MiB of `f32`. The largest
/// weight matrix of a real backbone has about 2.1 million values and the largest
/// activation (batch 1) about 1.6 million.
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 26;

/// Most values in all constants together: 2^28, 1 GiB of `f32`, about ten times
/// inception_v3's weights.
pub const MAX_CONSTANT_ELEMENTS: u64 = 1 << 28;

/// Most values a graph may generate beyond the data it holds, all together: constants
/// declared larger than their value list (TensorFlow repeats the last value) and the
/// outputs of generators with constant arguments (`ConstantOfShape`, `Fill`, `Tile`, ...),
/// which tract computes while it loads the graph. 2^24, 64 MiB of `f32`: real backbones
/// generate at most a few channel vectors this way, and a file of a few bytes must not
/// cost more than this.
pub const MAX_GENERATED_ELEMENTS: u64 = 1 << 24;

/// Most values in all the intermediate tensors tract infers for one image: 2^28. A
/// backbone's activations for one image add up to a few tens of millions of values.
pub const MAX_ACTIVATION_ELEMENTS: u64 = 1 << 28;

/// Newest ONNX IR version flowers reads (ONNX 1.18's). A newer one may change what fields
/// mean; flowers refuses it rather than guess.
pub const MAX_ONNX_IR_VERSION: i64 = 11;

/// Newest ONNX operator set (of the default domain) flowers accepts (ONNX 1.18's). An
/// operator set from the future may change what an operator computes.
pub const MAX_ONNX_OPSET: i64 = 23;

pub use crate::util::messages::{quote, MAX_QUOTED_CHARS};

/// The product of `dims` if every one is non-negative and the product stays within
/// `u64`; `None` for a negative (unknown) dimension or an overflow.
pub fn element_count(dims: impl IntoIterator<Item = i64>) -> Option<u64> {
    dims.into_iter().try_fold(1u64, |product, dim| {
        product.checked_mul(u64::try_from(dim).ok()?)
    })
}

/// A running total of values against a bound, for the "all constants together" and "all
/// activations together" checks.
#[derive(Default)]
pub struct Tally {
    total: u64,
}

impl Tally {
    /// Adds `count` values; `Err` with the new total once it passes `limit`.
    pub fn add(&mut self, count: u64, limit: u64) -> Result<(), u64> {
        self.total = self.total.saturating_add(count);
        if self.total > limit {
            return Err(self.total);
        }
        Ok(())
    }
}

/// Checks the node and attribute counts of a shallow pass, before the full decode.
pub fn check_counts(nodes: usize, attributes: usize) -> anyhow::Result<()> {
    if nodes > MAX_NODES {
        anyhow::bail!("it has {nodes} nodes, over the limit of {MAX_NODES}");
    }
    if attributes > MAX_ATTRIBUTES {
        anyhow::bail!("it has {attributes} node attributes, over the limit of {MAX_ATTRIBUTES}");
    }
    Ok(())
}

/// Checks a graph's node count and depth, given for each node the nodes it reads from
/// (indices, one per edge). Linear in nodes and edges: Kahn's topological order, each
/// node's depth one more than its deepest producer's.
pub fn check_structure(producers: &[Vec<usize>]) -> anyhow::Result<()> {
    if producers.len() > MAX_NODES {
        anyhow::bail!(
            "it has {} nodes, over the limit of {MAX_NODES}",
            producers.len()
        );
    }
    let mut consumers: Vec<Vec<usize>> = vec![Vec::new(); producers.len()];
    let mut waiting: Vec<usize> = producers.iter().map(Vec::len).collect();
    for (node, inputs) in producers.iter().enumerate() {
        for &producer in inputs {
            consumers[producer].push(node);
        }
    }
    let mut depth = vec![1usize; producers.len()];
    let mut ready: Vec<usize> = (0..producers.len()).filter(|&n| waiting[n] == 0).collect();
    let mut visited = 0;
    while let Some(node) = ready.pop() {
        visited += 1;
        if depth[node] > MAX_DEPTH {
            anyhow::bail!("it is more than {MAX_DEPTH} nodes deep, over the limit");
        }
        for &consumer in &consumers[node] {
            depth[consumer] = depth[consumer].max(depth[node] + 1);
            waiting[consumer] -= 1;
            if waiting[consumer] == 0 {
                ready.push(consumer);
            }
        }
    }
    if visited < producers.len() {
        anyhow::bail!("its nodes form a cycle");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_in_quotes() {
        assert_eq!(quote("daisy"), "\"daisy\"");
        let quoted = quote(&"x".repeat(10_000_000));
        assert!(quoted.len() < MAX_QUOTED_CHARS + 10, "{}", quoted.len());
        assert!(quoted.ends_with("..."));
        // Multi-byte characters are cut at a character boundary.
        assert!(quote(&"é".repeat(100)).starts_with("\"éé"));
    }

    #[test]
    fn element_counts_refuse_negative_dims_and_overflow() {
        assert_eq!(element_count([2, 3, 4]), Some(24));
        assert_eq!(element_count([]), Some(1));
        assert_eq!(element_count([2, -1]), None);
        assert_eq!(element_count([1 << 40, 1 << 40]), None);
    }

    #[test]
    fn depth_and_cycles_are_found_in_linear_time() {
        let chain = |n: usize| -> Vec<Vec<usize>> {
            (0..n)
                .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
                .collect()
        };
        assert!(check_structure(&chain(MAX_DEPTH)).is_ok());
        let error = check_structure(&chain(MAX_DEPTH + 1)).unwrap_err();
        assert!(error.to_string().contains("deep"), "{error}");
        let error = check_structure(&chain(MAX_NODES + 1)).unwrap_err();
        assert!(error.to_string().contains("nodes"), "{error}");
        let error = check_structure(&[vec![1], vec![0], vec![]]).unwrap_err();
        assert!(error.to_string().contains("cycle"), "{error}");
        // A diamond: two paths of different lengths into one node.
        assert!(check_structure(&[vec![], vec![0], vec![1], vec![0, 2, 2]]).is_ok());
    }

    #[test]
    fn a_tally_fails_once_past_its_limit() {
        let mut tally = Tally::default();
        assert!(tally.add(5, 10).is_ok());
        assert!(tally.add(5, 10).is_ok());
        assert_eq!(tally.add(1, 10), Err(11));
        assert_eq!(tally.add(u64::MAX, 10), Err(u64::MAX));
    }
}
