//! Times each phase of turning an ONNX graph file into a runnable plan, the way `flowers
//! label` does it (`flowers::backbone::onnx_file`: the structure walked and decoded, the
//! weights read straight into tract's tensors), then two inferences:
//!
//!     cargo run --release --example plan_phases [GRAPH.onnx]
//!
//! GRAPH defaults to the embedded backbone (written to a temporary file first); pass a
//! retrained graph to see `label`'s start-up. The digest check that `label` runs beside
//! these phases on a second thread is timed last, alone.
use std::fs::File;
use std::time::Instant;

use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    flowers::util::allocator::keep_freed_memory();
    let scratch = tempfile::tempdir()?;
    let path = match std::env::args().nth(1) {
        Some(path) => path.into(),
        None => {
            let path = scratch.path().join("embedded.onnx");
            std::fs::write(&path, flowers::backbone::DEFAULT_MODEL)?;
            path
        }
    };
    let start = Instant::now();
    let mut last = 0.0;
    let mut lap = |what: &str| {
        let now = start.elapsed().as_secs_f64() * 1000.0;
        println!("{what:>24} {:7.1} ms", now - last);
        last = now;
    };
    let file = File::open(&path)?;
    let size = file.metadata()?.len();
    let read = flowers::backbone::onnx_file::read(&file, size, "graph")?;
    lap("walk + decode + checks");
    let model = read.into_tract()?;
    lap("weights + tract model");
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
    flowers::graph::digest::verify_file(&file, size, "graph")?;
    lap("digest verify (alone)");
    Ok(())
}
