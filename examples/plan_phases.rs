//! Times each phase of turning an ONNX graph into a runnable plan, the way `flowers label`
//! and `retrain` do it (`flowers::backbone::Plan::new`), then two inferences:
//!
//!     cargo run --release --example plan_phases [GRAPH.onnx]
//!
//! GRAPH defaults to the embedded backbone; pass a retrained graph to see `label`'s start-up.
//! The binary also tunes glibc's malloc (`keep_freed_memory` in util/allocator.rs); this
//! example does not, so its phases run somewhat slower than the binary's.
use std::time::Instant;

use prost::Message;
use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let start = Instant::now();
    let mut last = 0.0;
    let mut lap = |what: &str| {
        let now = start.elapsed().as_secs_f64() * 1000.0;
        println!("{what:>24} {:7.1} ms", now - last);
        last = now;
    };
    let bytes = match std::env::args().nth(1) {
        Some(path) => std::fs::read(path)?,
        None => flowers::backbone::DEFAULT_MODEL.to_vec(),
    };
    lap("read");
    // What `label` checks before decoding a graph flowers wrote (one sha256 pass).
    flowers::graph::digest::verify(&bytes, "graph")?;
    lap("digest verify");
    let proto = tract_onnx::pb::ModelProto::decode(prost::bytes::Bytes::from(bytes))?;
    lap("protobuf decode");
    let model = tract_onnx::onnx().model_for_proto_model(&proto)?;
    drop(proto);
    lap("tract model from proto");
    let mut model = model
        .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())?
        .into_typed()?;
    lap("typed");
    let replaced = flowers::backbone::accelerate(&mut model)?;
    lap(&format!("flowers ops ({replaced})"));
    let model = model.into_optimized()?;
    lap("declutter + optimise");
    let plan = model.into_runnable()?;
    lap("runnable");
    let input = Tensor::zero::<f32>(&[1, 3, 224, 224])?;
    plan.run(tvec!(input.clone().into()))?;
    lap("first inference");
    plan.run(tvec!(input.into()))?;
    lap("second inference");
    Ok(())
}
