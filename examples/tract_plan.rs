//! Experiment: time the embedded backbone under different tract plan rewrites.
use std::time::Instant;
use tract_onnx::prelude::*;
use tract_onnx::tract_core;
use tract_core::transform::ModelTransform;

fn build(nhwc: bool) -> TractResult<std::sync::Arc<TypedRunnableModel>> {
    let bytes = flowers::backbone::DEFAULT_MODEL;
    let mut model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])?
        .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())?
        .with_outputs_by_name(["features"])?
        .into_typed()?
        .into_decluttered()?;
    if nhwc {
        let n = flowers::depthwise::accelerate(&mut model)?;
        eprintln!("replaced {n}");
    }
    let model = model.into_optimized()?;
    if std::env::var("SHOW").is_ok() {
        for n in model.nodes() {
            eprintln!("{} {}", n.name, n.op.name());
        }
    }
    model.into_runnable()
}

fn main() -> TractResult<()> {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(40);
    let input: Tensor = tract_ndarray::Array4::<f32>::from_shape_fn((1, 3, 224, 224), |(_, c, y, x)| {
        ((c * 7 + y * 3 + x) % 255) as f32 / 128.0 - 1.0
    })
    .into();
    let mut reference: Option<Vec<f32>> = None;
    let modes: Vec<bool> = match std::env::var("MODE").as_deref() { Ok("tract") => vec![false], Ok("flowers") => vec![true], _ => vec![false, true] };
    for nhwc in modes {
        let t0 = Instant::now();
        let plan = build(nhwc)?;
        let load = t0.elapsed();
        let out = plan.run(tvec!(input.clone().into()))?;
        let v: Vec<f32> = out[0].to_plain_array_view::<f32>()?.iter().copied().collect();
        let diff = reference.as_ref().map(|r| r.iter().zip(&v).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max));
        reference.get_or_insert(v);
        let t = Instant::now();
        for _ in 0..n {
            plan.run(tvec!(input.clone().into()))?;
        }
        let one = t.elapsed().as_secs_f64() * 1000.0 / n as f64;
        
        let t = Instant::now();
        std::thread::scope(|s| {
            for _ in 0..2 {
                let plan = plan.clone();
                let input = input.clone();
                s.spawn(move || {
                    for _ in 0..n {
                        plan.run(tvec!(input.clone().into())).unwrap();
                    }
                });
            }
        });
        let two = t.elapsed().as_secs_f64() * 1000.0 / (2 * n) as f64;
        println!("accelerated={nhwc} load={:.0}ms 1thread={one:.1}ms/img 2threads={two:.1}ms/img maxdiff={diff:?}", load.as_secs_f64() * 1000.0);
    }
    Ok(())
}
