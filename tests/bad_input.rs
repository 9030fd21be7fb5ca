//! Bad and odd inputs: every case gets a clear one-line message naming the file, the
//! documented exit code, and never a panic; one bad image never ends a run.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use flowers::image::{decode_rgb, Layout, Preprocessing, ResizeRule};
use prost::Message;

use common::{copy_sample, flowers, retrain, stderr, stdout};

fn odd(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/odd")
        .join(name)
}

fn preprocessing() -> Preprocessing {
    Preprocessing {
        height: 224,
        width: 224,
        layout: Layout::Nchw,
        mean: [128.0; 3],
        std: [128.0; 3],
        resize: ResizeRule::Squash,
    }
}

/// Images that are odd but legal decode to a full, finite input tensor.
#[test]
fn odd_but_legal_images_decode() {
    for name in [
        "cmyk.jpg",
        "grayscale.jpg",
        "photo.webp",
        "photo.gif",
        "photo.bmp",
        "alpha.png",
        "rgb16.png",
        "one_pixel.png",
        "exif_orientation_6.jpg",
        "png_named.jpg",
        "gif_named.jpg",
    ] {
        let bytes = fs::read(odd(name)).unwrap();
        let tensor = preprocessing()
            .tensor_from_bytes(&bytes)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let view = tensor.to_plain_array_view::<f32>().unwrap();
        assert_eq!(view.shape(), &[1, 3, 224, 224], "{name}");
        assert!(
            view.iter().all(|v| v.is_finite() && v.abs() <= 1.0),
            "{name}"
        );
    }
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 96x64 with orientation 6 (rotate 90 degrees clockwise to display).
    let image = decode_rgb(&fs::read(odd("exif_orientation_6.jpg")).unwrap()).unwrap();
    assert_eq!(image.dimensions(), (64, 96));
}

#[test]
fn broken_files_are_refused_with_their_kind() {
    for (name, kind) in BROKEN_KINDS {
        let start = Instant::now();
        let error = preprocessing()
            .tensor_from_bytes(&fs::read(odd(name)).unwrap())
            .unwrap_err();
        assert_eq!(error.kind(), kind, "{name}: {error}");
        let message = error.to_string();
        assert!(!message.contains('\n'), "{name}: {message}");
        assert!(start.elapsed().as_secs() < 2, "{name} took too long");
    }
}

/// Files that are not usable images, in `tests/data/odd`, and the kind of problem each is.
const BROKEN_KINDS: [(&str, &str); 5] = [
    ("empty.jpg", "empty"),
    ("random_bytes.jpg", "not_an_image"),
    ("notes.txt", "not_an_image"),
    ("huge_header.png", "too_large"),
    ("truncated.jpg", "truncated"),
];

/// A dataset full of traps: broken files, hidden files, nested folders, odd names.
fn messy_dataset(root: &Path) -> usize {
    copy_sample(root, &["daisy", "roses"], 4);
    let daisy = root.join("daisy");
    for (name, _) in BROKEN_KINDS {
        fs::copy(odd(name), daisy.join(name)).unwrap();
    }
    for name in ["cmyk.jpg", "photo.webp", "rgb16.png", "png_named.jpg"] {
        fs::copy(odd(name), root.join("roses").join(name)).unwrap();
    }
    fs::write(daisy.join(".DS_Store"), b"\0\0\0\x01Bud1").unwrap();
    fs::create_dir_all(daisy.join(".thumbnails")).unwrap();
    fs::write(daisy.join(".thumbnails/x.jpg"), b"junk").unwrap();
    fs::create_dir_all(daisy.join("nested/deeper")).unwrap();
    fs::copy(odd("grayscale.jpg"), daisy.join("nested/deeper/gray.jpg")).unwrap();
    fs::copy(odd("photo.gif"), daisy.join("name with spaces.gif")).unwrap();
    fs::copy(odd("photo.bmp"), daisy.join("ünïcödé 花.bmp")).unwrap();
    fs::copy(odd("alpha.png"), daisy.join("new\nline.png")).unwrap();
    fs::write(
        root.join("README.txt"),
        "files beside the class folders are ignored",
    )
    .unwrap();
    5 // broken files
}

#[test]
fn retrain_skips_and_counts_bad_images() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    let broken = messy_dataset(&images);
    let output = retrain(work.path(), "images", 50, &["--json"]);
    let err = stderr(&output);
    assert!(output.status.success(), "{err}");
    let summary: serde_json::Value = serde_json::from_str(stdout(&output).trim()).unwrap();
    let skipped = summary["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), broken, "{skipped:?}");
    for (name, kind) in BROKEN_KINDS {
        let entry = skipped
            .iter()
            .find(|s| s["path"].as_str().unwrap().ends_with(name))
            .unwrap_or_else(|| panic!("{name} not in {skipped:?}"));
        assert_eq!(entry["kind"], kind, "{entry}");
    }
    // Recognised as images by content: 8 sample photos, 4 odd roses, 4 odd daisies
    // (grayscale, gif, bmp, png) and the 2 broken ones that look like images at first.
    assert_eq!(summary["images"], 18);
    for (name, _) in BROKEN_KINDS {
        let line = err
            .lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no warning for {name}: {err}"));
        assert!(line.starts_with("warning: skipping "), "{line}");
    }
    assert!(
        !err.contains("DS_Store") && !err.contains("thumbnails"),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    // The file name with a newline is printed escaped, on one line.
    assert!(!err.contains("new\nline"), "{err}");
}

#[test]
fn label_labels_every_good_file_and_exits_1_for_bad_ones() {
    let work = tempfile::tempdir().unwrap();
    let images = work.path().join("images");
    copy_sample(&images, &["daisy", "roses"], 4);
    let trained = retrain(work.path(), "images", 30, &[]);
    assert!(trained.status.success(), "{}", stderr(&trained));
    let odd_dir = odd("");
    let output = flowers(&["label", "--json", odd_dir.to_str().unwrap()], work.path());
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    let lines: Vec<serde_json::Value> = stdout(&output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let entries = fs::read_dir(&odd_dir).unwrap().count();
    assert_eq!(lines.len(), entries);
    let labelled = lines
        .iter()
        .filter(|l| l.get("predictions").is_some())
        .count();
    let failed: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.get("error").map(|_| l["image"].as_str().unwrap()))
        .collect();
    assert_eq!(failed.len(), 6, "{failed:?}"); // 5 broken + README.txt
    for line in lines.iter().filter(|l| l.get("error").is_some()) {
        let image = line["image"].as_str().unwrap();
        let expected = BROKEN_KINDS
            .iter()
            .find(|(name, _)| image.ends_with(name))
            .map_or("not_an_image", |(_, kind)| kind); // README.txt
        assert_eq!(line["kind"], expected, "{line}");
    }
    assert_eq!(labelled, entries - 6);
    assert_eq!(stderr(&output).lines().count(), 6, "{}", stderr(&output));
}

#[test]
fn unusable_datasets_and_paths_exit_2_with_one_line() {
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    copy_sample(&root.join("one"), &["daisy"], 2);
    copy_sample(&root.join("two"), &["daisy", "roses"], 2);
    fs::create_dir_all(root.join("two_empty/empty")).unwrap();
    copy_sample(&root.join("two_empty"), &["daisy"], 2);
    fs::write(root.join("file.txt"), "x").unwrap();
    fs::write(root.join("model.onnx"), "not a model").unwrap();
    fs::write(root.join("pool_free.onnx"), relu_only_model()).unwrap();
    let cases: [(&[&str], &str); 7] = [
        (&["--image-dir", "one"], "needs at least two"),
        (&["--image-dir", "file.txt"], "is not a directory"),
        (&["--image-dir", "two_empty"], "has no images"),
        (
            &["--image-dir", "two", "--output-graph", "missing/dir/g.onnx"],
            "cannot write missing/dir/g.onnx",
        ),
        (
            &["--image-dir", "two", "--model", "model.onnx"],
            "model.onnx is not an ONNX model",
        ),
        (
            &["--image-dir", "two", "--model", "pool_free.onnx"],
            "no pooled feature tensor",
        ),
        (
            &[
                "--image-dir",
                "two",
                "--validation-percentage",
                "60",
                "--testing-percentage",
                "50",
            ],
            "less than 100",
        ),
    ];
    for (args, message) in cases {
        let mut all = vec![
            "retrain",
            "--bottleneck-dir",
            "cache",
            "--how-many-training-steps",
            "5",
        ];
        all.extend_from_slice(args);
        let output = flowers(&all, root);
        let err = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
        assert_eq!(
            err.lines().filter(|l| l.starts_with("error:")).count(),
            1,
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A valid ONNX model with an image input but no pooling: no bottleneck to find.
fn relu_only_model() -> Vec<u8> {
    use tract_onnx::pb;
    let dim = |v: i64| pb::tensor_shape_proto::Dimension {
        denotation: String::new(),
        value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(v)),
    };
    let value = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: vec![dim(1), dim(3), dim(8), dim(8)],
                }),
            })),
        }),
        doc_string: String::new(),
    };
    pb::ModelProto {
        ir_version: 7,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 13,
        }],
        graph: Some(pb::GraphProto {
            node: vec![pb::NodeProto {
                input: vec!["input".into()],
                output: vec!["output".into()],
                name: "relu".into(),
                op_type: "Relu".into(),
                ..Default::default()
            }],
            name: "relu_only".into(),
            input: vec![value("input")],
            output: vec![value("output")],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}
