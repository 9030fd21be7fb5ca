//! The protobuf messages of an event file, mirroring `tensorflow/core/util/event.proto`
//! and `tensorflow/core/framework/summary.proto` field for field (only the fields flowers
//! writes or may want to inspect).

/// The version string TensorBoard expects in the first event of each file.
pub const FILE_VERSION: &str = "brain.Event:2";

/// `tensorflow.Event`: one timestamped record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// Global training step.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event carries.
    #[prost(oneof = "What", tags = "3, 4, 5, 9")]
    pub what: Option<What>,
}

/// `Event.what`: the payload of an event (other variants are skipped when decoding).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// Starts every file: "brain.Event:2".
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// An encoded `GraphDef`.
    #[prost(bytes, tag = "4")]
    GraphDef(Vec<u8>),
    /// Scalars, histograms, images...
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// An encoded `MetaGraphDef`.
    #[prost(bytes, tag = "9")]
    MetaGraphDef(Vec<u8>),
}

/// `tensorflow.Summary`: a set of tagged values logged at one step.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// `tensorflow.Summary.Value`: one tagged value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    #[prost(string, tag = "7")]
    pub node_name: String,
    /// The chart name in TensorBoard.
    #[prost(string, tag = "1")]
    pub tag: String,
    /// Plugin data; legacy `simple_value` and `histo` summaries leave it unset.
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    #[prost(oneof = "ValueKind", tags = "2, 3, 4, 5, 8")]
    pub value: Option<ValueKind>,
}

/// `Summary.Value.value`: the kinds of value (audio is skipped when decoding).
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ValueKind {
    /// A scalar, what `tf.summary.scalar` wrote in TF 1.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    #[prost(bytes, tag = "3")]
    ObsoleteOldStyleHistogram(Vec<u8>),
    #[prost(message, tag = "4")]
    Image(Image),
    /// A histogram, what `tf.summary.histogram` wrote in TF 1.
    #[prost(message, tag = "5")]
    Histo(HistogramProto),
    /// An encoded `TensorProto`, kept opaque: we never write one.
    #[prost(bytes, tag = "8")]
    Tensor(Vec<u8>),
}

/// `tensorflow.SummaryMetadata`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
    #[prost(string, tag = "2")]
    pub display_name: String,
    #[prost(string, tag = "3")]
    pub summary_description: String,
    /// `DataClass` enum value.
    #[prost(int32, tag = "4")]
    pub data_class: i32,
}

/// `tensorflow.SummaryMetadata.PluginData`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    #[prost(string, tag = "1")]
    pub plugin_name: String,
    #[prost(bytes, tag = "2")]
    pub content: Vec<u8>,
}

/// `tensorflow.Summary.Image`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    #[prost(int32, tag = "1")]
    pub height: i32,
    #[prost(int32, tag = "2")]
    pub width: i32,
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    #[prost(bytes, tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// `tensorflow.HistogramProto`: bucket `i` spans `bucket_limit[i-1] .. bucket_limit[i]`
/// (the first starts at -DBL_MAX) and holds `bucket[i]` values.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistogramProto {
    #[prost(double, tag = "1")]
    pub min: f64,
    #[prost(double, tag = "2")]
    pub max: f64,
    #[prost(double, tag = "3")]
    pub num: f64,
    #[prost(double, tag = "4")]
    pub sum: f64,
    #[prost(double, tag = "5")]
    pub sum_squares: f64,
    #[prost(double, repeated, packed = "true", tag = "6")]
    pub bucket_limit: Vec<f64>,
    #[prost(double, repeated, packed = "true", tag = "7")]
    pub bucket: Vec<f64>,
}
