//! TensorFlow graphs, checked against TensorFlow itself: `tests/fixtures/tf/expected.json`
//! holds what TensorFlow computed on the same photos (made by `make_fixtures.py`; these
//! tests never run TensorFlow). The genuine MobileNet archive retrain.py downloads, a
//! small graph with the ops of Inception's 2015 graph, and a graph retrain.py wrote.
//!
//! TensorFlow decodes JPEGs with a fast integer IDCT, the `image` crate with an accurate
//! one, so pixels differ by a few levels: values are compared by cosine similarity and
//! top classes, not to the last bit.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use flowers::backbone::{Backbone, Fetch, ModelSource, Overrides};
use flowers::graph::classifier::LabelImageFlags;
use flowers::graph::RetrainedGraph;
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/tf")
        .join(name)
}

fn expected() -> Value {
    serde_json::from_str(&fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn photos() -> Vec<String> {
    let expected = expected();
    let photos = expected["photos"].as_array().unwrap();
    photos
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

fn photo_bytes(photo: &str) -> Vec<u8> {
    fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(photo)).unwrap()
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| f64::from(*x) * f64::from(*y))
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn argmax(values: &[f32]) -> usize {
    (0..values.len())
        .max_by(|&a, &b| values[a].total_cmp(&values[b]))
        .unwrap()
}

/// The genuine archive installed in a fresh model folder, as a download leaves it.
fn mobilenet_model_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let archive = "mobilenet_v1_0.25_224_frozen.tgz";
    fs::copy(fixture(archive), dir.path().join(archive)).unwrap();
    dir
}

fn mobilenet(model_dir: &Path, bottleneck: Option<&str>) -> Backbone {
    let source = ModelSource::Architecture(Fetch {
        name: "mobilenet_0.25_224".into(),
        model_dir: model_dir.to_path_buf(),
        // Nothing listens there: the archive in place must be used without a request.
        base_url: Some("http://127.0.0.1:9/".into()),
        quiet: true,
        max_download_size: None,
    });
    let overrides = Overrides {
        bottleneck_tensor: bottleneck.map(str::to_string),
        ..Default::default()
    };
    Backbone::load(&source, &overrides).unwrap()
}

fn bottleneck_of(backbone: &Backbone, photo: &str) -> Vec<f32> {
    let plan = backbone.extractor().unwrap();
    let input = backbone
        .preprocessing
        .tensor_from_bytes(&photo_bytes(photo))
        .unwrap();
    plan.run(input).unwrap()
}

#[test]
fn genuine_mobilenet_gives_tensorflows_pooled_features_and_logits() {
    let expected = expected();
    let graphs = &expected["mobilenet"]["mobilenet_v1_0.25_224/frozen_graph.pb"]["photos"];
    let model_dir = mobilenet_model_dir();
    let pooled = mobilenet(model_dir.path(), None);
    assert_eq!(pooled.bottleneck, "MobilenetV1/Logits/AvgPool_1a/AvgPool");
    let logits = mobilenet(model_dir.path(), Some("MobilenetV1/Predictions/Reshape:0"));
    for photo in photos() {
        let tf = &graphs[&photo];
        let ours = bottleneck_of(&pooled, &photo);
        let similarity = cosine(&ours, &floats(&tf["pooled_256"]));
        assert!(similarity > 0.99, "{photo}: pooled cosine {similarity}");
        let ours = bottleneck_of(&logits, &photo);
        let theirs = floats(&tf["logits_1001"]);
        assert!(cosine(&ours, &theirs) > 0.99, "{photo}: logits");
        assert_eq!(argmax(&ours), argmax(&theirs), "{photo}: top class");
    }
}

/// The archive's quantized member (installed in `model_dir` by [`mobilenet`]) loaded as a
/// plain file, cut at the logits.
fn quantized_logits(model_dir: &std::path::Path) -> Backbone {
    let file = model_dir.join("mobilenet_v1_0.25_224/quantized_graph.pb");
    let overrides = Overrides {
        bottleneck_tensor: Some("MobilenetV1/Predictions/Reshape".into()),
        ..Default::default()
    };
    Backbone::load(&ModelSource::File(file), &overrides).unwrap()
}

#[test]
fn quantized_mobilenet_runs_with_its_weights_dequantized() {
    let expected = expected();
    let graphs = &expected["mobilenet"]["mobilenet_v1_0.25_224/quantized_graph.pb"]["photos"];
    let model_dir = mobilenet_model_dir();
    // Installs the archive, then loads the quantized member as a plain file.
    mobilenet(model_dir.path(), None);
    let backbone = quantized_logits(model_dir.path());
    // Recognised by its sha256, with retrain.py's preprocessing for it.
    assert_eq!(backbone.name, "mobilenet_0.25_224_quantized");
    assert_eq!(backbone.preprocessing.height, 224);
    for photo in photos() {
        let ours = bottleneck_of(&backbone, &photo);
        let theirs = floats(&graphs[&photo]["logits_1001"]);
        assert!(cosine(&ours, &theirs) > 0.99, "{photo}");
        assert_eq!(argmax(&ours), argmax(&theirs), "{photo}");
    }
}

#[test]
fn inception_style_graph_is_cut_at_mul() {
    let expected = expected();
    let photos_expected = &expected["inception_like"]["photos"];
    let overrides = Overrides {
        bottleneck_tensor: Some("pool_3/_reshape".into()),
        ..Default::default()
    };
    let source = ModelSource::File(fixture("inception_like.pb"));
    let backbone = Backbone::load(&source, &overrides).unwrap();
    assert_eq!(backbone.input_name, "Mul");
    assert_eq!(
        (backbone.preprocessing.height, backbone.preprocessing.width),
        (299, 299)
    );
    for photo in photos() {
        let ours = bottleneck_of(&backbone, &photo);
        let theirs = floats(&photos_expected[&photo]["pool_3/_reshape:0"]);
        let similarity = cosine(&ours, &theirs);
        assert!(similarity > 0.995, "{photo}: cosine {similarity}");
    }
}

#[test]
fn a_graph_retrain_py_wrote_labels_as_tensorflow_did() {
    let expected = expected();
    let legacy = &expected["legacy_retrained"];
    let flags = LabelImageFlags {
        input_mean: Some(128.0),
        input_std: Some(128.0),
        ..Default::default()
    };
    let labels = fixture("retrained_labels.txt");
    let graph =
        RetrainedGraph::load(&fixture("retrained_graph.pb"), Some(&labels), &flags).unwrap();
    // The input size fixed in the graph wins over label_image.py's default 224.
    assert_eq!(graph.preprocessing.height, 128);
    assert_eq!(graph.labels.len(), 6);
    for photo in photos() {
        let ours = graph.probabilities(&photo_bytes(&photo)).unwrap();
        let theirs = floats(&legacy["photos"][&photo]["mean128_std128"]["final_result"]);
        assert_eq!(
            argmax(&ours),
            argmax(&theirs),
            "{photo}: {ours:?} vs {theirs:?}"
        );
        let largest = ours
            .iter()
            .zip(&theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(largest < 0.1, "{photo}: probabilities differ by {largest}");
    }
}

#[test]
fn an_inception_graph_without_metadata_is_fed_at_mul_with_299_pixels() {
    use flowers::backbone::tensorflow::{GraphDef, METADATA_NODE};
    use flowers::graph::{retrained_graph, write_labels, RetrainedGraphFile};
    use flowers::train::FinalLayer;
    use prost::Message;
    use rand::SeedableRng;

    let overrides = Overrides {
        bottleneck_tensor: Some("pool_3/_reshape".into()),
        ..Default::default()
    };
    let backbone =
        Backbone::load(&ModelSource::File(fixture("inception_like.pb")), &overrides).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let layer = FinalLayer::new(32, 3, &mut rng);
    let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let RetrainedGraphFile::TensorFlow(graph) =
        retrained_graph(&backbone, &layer, &labels, "final_result").unwrap()
    else {
        panic!("a TensorFlow backbone gives a TensorFlow graph");
    };
    // As retrain.py would have written it: no flowers metadata.
    let legacy = GraphDef {
        node: graph
            .node
            .into_iter()
            .filter(|n| n.name != METADATA_NODE)
            .collect(),
        versions: graph.versions,
    };
    let work = tempfile::tempdir().unwrap();
    let path = work.path().join("retrained_graph.pb");
    fs::write(&path, legacy.encode_to_vec()).unwrap();
    let labels_path = work.path().join("labels.txt");
    write_labels(&labels_path, &labels).unwrap();
    let flags = LabelImageFlags {
        input_layer: Some("Mul".into()),
        ..Default::default()
    };
    let loaded = RetrainedGraph::load(&path, Some(&labels_path), &flags).unwrap();
    assert_eq!(loaded.preprocessing.height, 299);
    let photo = &photos()[0];
    let probabilities = loaded.probabilities(&photo_bytes(photo)).unwrap();
    assert!((probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-4);
}

/// Whether plans run flowers' own ops here: an x86 CPU with AVX2 and FMA, and
/// `FLOWERS_KERNELS` not asking for tract's plan.
fn flowers_ops_expected() -> bool {
    #[cfg(target_arch = "x86_64")]
    let capable = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    let capable = false;
    capable && std::env::var("FLOWERS_KERNELS").as_deref() != Ok("portable")
}

/// retrain.py's NHWC graphs, frozen and quantized, run flowers' ops from the stem to the
/// pooling (a stem, 13 depthwise and 13 pointwise layers), not tract's generic ones; the
/// tests above check their bottlenecks against TensorFlow's.
#[test]
fn genuine_mobilenet_runs_flowers_own_layers() {
    let model_dir = mobilenet_model_dir();
    let expected = |layers: usize| if flowers_ops_expected() { layers } else { 0 };
    let pooled = mobilenet(model_dir.path(), None).extractor().unwrap();
    assert_eq!(pooled.flowers_layers, expected(27));
    let logits = mobilenet(model_dir.path(), Some("MobilenetV1/Predictions/Reshape"));
    assert_eq!(logits.extractor().unwrap().flowers_layers, expected(27));
    let quantized = quantized_logits(model_dir.path());
    assert_eq!(quantized.extractor().unwrap().flowers_layers, expected(27));
}
