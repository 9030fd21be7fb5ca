//! Fuzzes `flowers label`'s loading of an ONNX graph from its bytes: protobuf decoding,
//! the limits checks, flowers' metadata, and tract's analysis, optimisation and plan
//! building, through the same library function the binary calls.
//!
//! That function runs behind the panic guard, as in the binary: a panic it catches is an
//! error, not a crash. The hook below keeps the binary's rule (a caught panic is quiet,
//! any other aborts), so libFuzzer reports what a user could still hit: a panic outside
//! the guard, an abort (a failed allocation), running out of memory (`-rss_limit_mb`,
//! `-malloc_limit_mb`) or time (`-timeout`).
#![no_main]

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

fuzz_target!(|data: &[u8]| {
    only_uncaught_panics_crash();
    // Bytes that start like a TensorFlow graph are the other target's.
    if data.first() == Some(&0x0a) {
        return;
    }
    let _ = RetrainedGraph::from_bytes(data.to_vec(), "fuzz.onnx", None, &Default::default());
});
