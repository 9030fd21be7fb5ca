//! The retrained graph: writing it ([`export`]), what it says about itself
//! ([`metadata`]), its digest of itself ([`digest`]), loading it to classify images
//! ([`classifier`]), and the same graph as a TensorFlow Lite file ([`tflite`]).

pub mod classifier;
pub mod digest;
pub mod export;
pub mod metadata;
pub mod tflite;

pub use classifier::{read_labels, Prediction, RetrainedGraph, DEFAULT_LABELS};
pub use export::{
    retrained_graph, retrained_graph_of, write_graph, write_labels, RetrainedGraphFile,
};
pub use metadata::GraphMetadata;
