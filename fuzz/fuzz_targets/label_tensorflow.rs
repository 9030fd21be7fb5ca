//! Fuzzes `flowers label`'s loading of a TensorFlow frozen graph from its bytes:
//! protobuf decoding, the limits checks, the rewrites for tract, and tract's analysis,
//! optimisation and plan building, through the same library function the binary calls,
//! as label_image.py's graphs are loaded (`input` to `final_result`, a labels file).
//!
//! The input is the graph after its first byte: every `GraphDef` starts with 0x0a (its
//! first node), which is how flowers tells the formats apart. Panics caught by the guard
//! are errors, as in the binary; see label_onnx.rs for what counts as a crash.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use flowers::graph::classifier::RetrainedGraph;
use flowers::util::panic_guard::panics_are_caught;
use libfuzzer_sys::fuzz_target;

fn only_uncaught_panics_crash() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            if !panics_are_caught() {
                eprintln!("uncaught panic: {info}");
                std::process::abort();
            }
        }))
    });
}

/// Two labels, as the seed graphs have two classes.
fn labels_file() -> &'static PathBuf {
    static LABELS: OnceLock<PathBuf> = OnceLock::new();
    LABELS.get_or_init(|| {
        let path = std::env::temp_dir().join(format!("flowers-fuzz-labels-{}", std::process::id()));
        std::fs::write(&path, "daisy\nroses\n").expect("a labels file in the temporary folder");
        path
    })
}

fuzz_target!(|data: &[u8]| {
    only_uncaught_panics_crash();
    let mut bytes = Vec::with_capacity(data.len() + 1);
    bytes.push(0x0a);
    bytes.extend_from_slice(data);
    let labels = Some(labels_file().as_path());
    let _ = RetrainedGraph::from_bytes(bytes, "fuzz.pb", labels, &Default::default());
});
