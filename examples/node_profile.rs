//! Per-node time of the embedded backbone's plan as flowers builds it (with
//! `flowers::direct_conv`), averaged over 50 runs on one thread; nodes under 0.05 ms are not
//! listed. This is how the stem and the ReLU6 passes were found (BENCHMARKS.md).
//!
//!     cargo run --release --example node_profile
use std::collections::HashMap;
use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{eval, SimpleState};
fn main() -> TractResult<()> {
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &flowers::backbone::DEFAULT_MODEL[..])?
        .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())?
        .with_outputs_by_name(["features"])?
        .into_typed()?
        .into_decluttered()?;
    flowers::direct_conv::accelerate(&mut model)?;
    let plan = model.into_optimized()?.into_runnable()?;
    let input: Tensor =
        tract_ndarray::Array4::<f32>::from_shape_fn((1, 3, 224, 224), |(_, c, y, x)| {
            ((c * 7 + y * 3 + x) % 255) as f32 / 128.0 - 1.0
        })
        .into();
    let mut times: HashMap<usize, (String, String, f64)> = HashMap::new();
    let runs = 50;
    for _ in 0..runs {
        let mut state = SimpleState::new(&plan)?;
        state.run_plan_with_eval(tvec!(input.clone().into()), |ctx, st, node, inputs| {
            let t = Instant::now();
            let r = eval(ctx, st, node, inputs);
            let e = times.entry(node.id).or_insert((
                node.name.clone(),
                format!("{} {:?}", node.op.name(), node.outputs[0].fact.shape),
                0.0,
            ));
            e.2 += t.elapsed().as_secs_f64() * 1000.0 / runs as f64;
            r
        })?;
    }
    let mut v: Vec<_> = times.into_iter().collect();
    v.sort_by_key(|(id, _)| *id);
    let total: f64 = v.iter().map(|(_, t)| t.2).sum();
    for (id, (name, op, ms)) in &v {
        if *ms > 0.05 {
            println!(
                "{id:4} {ms:6.3} ms {op}  {}",
                &name[name.len().saturating_sub(50)..]
            );
        }
    }
    println!("total {total:.2} ms");
    Ok(())
}
