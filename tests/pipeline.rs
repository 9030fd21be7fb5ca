//! The library's stages on real photos and the real embedded backbone: discovery, the
//! bottleneck cache's invalidation, and the exported graph against the trained layer.

mod common;

use std::fs;

use flowers::backbone::{Backbone, ModelSource, Overrides, DEFAULT_MODEL};
use flowers::bottleneck::{extract_all, Cache};
use flowers::dataset::Dataset;
use flowers::graph::RetrainedGraph;
use flowers::graph::{retrained_graph, write_graph};
use flowers::train::FinalLayer;
use prost::Message;
use rand::SeedableRng;

use common::{copy_sample, sample_dir};

#[test]
fn discovery_finds_classes_images_and_labels_as_written() {
    let dataset = Dataset::discover(&sample_dir()).unwrap();
    assert_eq!(
        dataset.labels,
        ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
    );
    assert_eq!(dataset.images.len(), 70);
    assert_eq!(dataset.class_counts(), vec![14; 5]);
    assert!(dataset.skipped.is_empty());
    let first = &dataset.images[0];
    assert!(first.relative.starts_with("daisy/"), "{}", first.relative);
}

#[test]
fn labels_keep_their_case_and_clashes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    copy_sample(dir.path(), &["daisy", "roses"], 2);
    fs::rename(dir.path().join("roses"), dir.path().join("Wild Roses")).unwrap();
    let dataset = Dataset::discover(dir.path()).unwrap();
    assert_eq!(dataset.labels, ["Wild Roses", "daisy"]);

    copy_sample(dir.path(), &["daisy"], 1);
    fs::rename(dir.path().join("daisy"), dir.path().join("wild roses")).unwrap();
    let error = Dataset::discover(dir.path()).unwrap_err().to_string();
    assert!(error.contains("differ only in case"), "{error}");
}

#[test]
fn cache_is_keyed_by_image_content_and_model() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    copy_sample(&images, &["daisy", "roses"], 2);
    let dataset = Dataset::discover(&images).unwrap();
    let backbone = Backbone::load(&ModelSource::Embedded, &Overrides::default()).unwrap();
    let cache = Cache::open(&dir.path().join("cache"), backbone.identity()).unwrap();

    let (first, report) = extract_all(&dataset.images, &backbone, &cache).unwrap();
    assert_eq!((report.cached, report.computed), (0, 4));
    assert_eq!(first.dim(), 1024);
    let (second, report) = extract_all(&dataset.images, &backbone, &cache).unwrap();
    assert_eq!((report.cached, report.computed), (4, 0));
    let every_row = [0, 1, 2, 3];
    assert_eq!(
        first.matrix.gather(&every_row).unwrap(),
        second.matrix.gather(&every_row).unwrap()
    );
    assert!(first.present.iter().all(|&p| p));

    // Edit one image (same name, other pixels): only it is recomputed, to a new vector.
    let edited = &dataset.images[0].path;
    fs::copy(common::sample_image("tulips"), edited).unwrap();
    let (third, report) = extract_all(&dataset.images, &backbone, &cache).unwrap();
    assert_eq!((report.cached, report.computed), (3, 1));
    assert_ne!(third.get(0).unwrap(), first.get(0).unwrap());
    for i in 1..4 {
        assert_eq!(third.get(i).unwrap(), first.get(i).unwrap());
    }
    // Content is the key: a file with the same bytes as a cached one is a hit.
    fs::copy(&dataset.images[3].path, edited).unwrap();
    let (fourth, report) = extract_all(&dataset.images, &backbone, &cache).unwrap();
    assert_eq!((report.cached, report.computed), (4, 0));
    assert_eq!(fourth.get(0).unwrap(), first.get(3).unwrap());

    // Another model file (the same network with different bytes) never reuses vectors.
    let mut proto = flowers::backbone::onnx::decode_model(DEFAULT_MODEL, "default").unwrap();
    proto.doc_string = "another model".into();
    let other_path = dir.path().join("other.onnx");
    fs::write(&other_path, proto.encode_to_vec()).unwrap();
    let other = Backbone::load(&ModelSource::File(other_path), &Overrides::default()).unwrap();
    assert_ne!(other.identity(), backbone.identity());
    let other_cache = Cache::open(&dir.path().join("cache"), other.identity()).unwrap();
    let (_, report) = extract_all(&dataset.images, &other, &other_cache).unwrap();
    assert_eq!((report.cached, report.computed), (0, 4));
}

#[test]
fn exported_graph_gives_the_trained_layers_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    copy_sample(&images, &["daisy", "dandelion", "tulips"], 2);
    let dataset = Dataset::discover(&images).unwrap();
    let backbone = Backbone::load(&ModelSource::Embedded, &Overrides::default()).unwrap();
    let cache = Cache::open(&dir.path().join("cache"), backbone.identity()).unwrap();
    let (bottlenecks, _) = extract_all(&dataset.images, &backbone, &cache).unwrap();

    // A layer with non-trivial weights, so the comparison means something.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let mut layer = FinalLayer::new(bottlenecks.dim(), 3, &mut rng);
    layer.weights.mapv_inplace(|w| w * 30.0);
    layer.biases = ndarray::arr1(&[0.1, -0.2, 0.05]);

    let graph_path = dir.path().join("graph.onnx");
    let proto = retrained_graph(&backbone, &layer, &dataset.labels, "final_result").unwrap();
    write_graph(&graph_path, &proto).unwrap();
    let graph = RetrainedGraph::load(&graph_path, None, &Default::default()).unwrap();
    assert_eq!(graph.labels, dataset.labels);
    assert_eq!(graph.preprocessing, backbone.preprocessing);

    assert!(bottlenecks.present.iter().all(|&p| p));
    let every_row: Vec<usize> = (0..dataset.images.len()).collect();
    let features = bottlenecks.matrix.gather(&every_row).unwrap();
    let expected = layer.probabilities(features.view());
    let mut largest = 0.0f32;
    for (row, image) in dataset.images.iter().enumerate() {
        let actual = graph
            .probabilities(&fs::read(&image.path).unwrap())
            .unwrap();
        for (class, value) in actual.iter().enumerate() {
            largest = largest.max((value - expected[[row, class]]).abs());
        }
    }
    assert!(largest < 1e-5, "graph and layer differ by {largest}");
    // The probabilities must not be degenerate, or the check above proves little.
    assert!(
        expected.iter().any(|&p| p > 0.05 && p < 0.95),
        "{expected:?}"
    );
}
