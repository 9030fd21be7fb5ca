//! The retrained graph: writing it ([`export`]), what it says about itself
//! ([`metadata`]), its digest of itself ([`digest`]), and loading it to classify images
//! ([`classifier`]).

pub mod classifier;
pub mod digest;
pub mod export;
pub mod metadata;
pub mod tflite;

pub use classifier::{read_labels, Prediction, RetrainedGraph, DEFAULT_LABELS};
pub use export::{retrained_graph, write_graph, write_labels, RetrainedGraphFile};
pub use metadata::GraphMetadata;
