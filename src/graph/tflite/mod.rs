//! TensorFlow Lite: the retrained graph as a `.tflite` file a phone app loads, with its
//! labels and input normalisation as TFLite Model Metadata, and flowers reading and
//! running such a file.
//!
//! [`ir`] is flowers' picture of a TFLite model; [`convert`] builds it from a retrained
//! ONNX graph ([`convert_tf`] from a TensorFlow one), [`write`] encodes it with the official schema ([`generated`]),
//! [`model_metadata`] writes and reads the `TFLITE_METADATA` buffer and the packed labels
//! file, [`read`] decodes and checks a file, and [`run`] computes it.

pub mod convert;
pub mod convert_tf;
pub mod export;
pub mod file;
pub mod generated;
pub mod ir;
pub mod model_metadata;
pub mod quantize;
pub mod read;
pub mod run;
pub mod write;
