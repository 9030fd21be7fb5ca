//! Times the embedded backbone in tract with tract's own convolutions and with flowers' ops
//! swapped in (`flowers::backbone::accelerate`: depthwise layers, the stem and the large pointwise
//! layers), on one thread and on two threads sharing one plan, and prints the largest
//! difference between their outputs.
//!
//!     cargo run --release --example backbone_speed [RUNS] [--nodes] [--model PATH]
//!
//! `--model` times another ONNX backbone instead of the embedded one (its bottleneck output
//! and input layout found as `flowers retrain --model` finds them).
//!
//! `--flowers-only` times only flowers' plan, on one thread, as the median of RUNS after 5
//! warm-up runs: the peer of `bench/onnxruntime_one_thread.py` in `bench/run.sh`.
//!
//! `--nodes` also lists the time of every node of flowers' plan taking over 0.05 ms (one
//! thread, median of RUNS): how the stem, the ReLU6 passes and the slow pointwise layers were found.
//!
//! Environment variables of tract apply, e.g. `TRACT_CPU_ISA=-avx512f` to try its AVX2
//! matrix kernels instead of the 512-bit ones.
use std::sync::Arc;
use std::time::Instant;

use flowers::backbone::{Backbone, BackboneGraph, ModelSource, Overrides};
use flowers::image::Layout;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::plan::{eval, SimpleState};

fn plan(backbone: &Backbone, accelerated: bool) -> TractResult<Arc<TypedRunnableModel>> {
    let BackboneGraph::Onnx(proto) = &backbone.graph else {
        anyhow::bail!("backbone_speed times ONNX backbones");
    };
    let mut model = tract_onnx::onnx()
        .model_for_proto_model(proto)?
        .with_input_fact(0, f32::fact(input_shape(backbone)).into())?
        .with_outputs_by_name([backbone.bottleneck.as_str()])?
        .into_typed()?;
    if accelerated {
        let replaced = flowers::backbone::accelerate(&mut model)?;
        println!("{replaced} layers run by flowers' ops");
    }
    model.into_optimized()?.into_runnable()
}

fn input_shape(backbone: &Backbone) -> [usize; 4] {
    let p = &backbone.preprocessing;
    let (h, w) = (p.height as usize, p.width as usize);
    match p.layout {
        Layout::Nchw => [1, 3, h, w],
        Layout::Nhwc => [1, h, w, 3],
    }
}

/// Milliseconds per image when `threads` threads run `runs` images each.
fn time(plan: &Arc<TypedRunnableModel>, input: &Tensor, threads: usize, runs: usize) -> f64 {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                for _ in 0..runs {
                    plan.run(tvec!(input.clone().into())).expect("inference");
                }
            });
        }
    });
    start.elapsed().as_secs_f64() * 1000.0 / (threads * runs) as f64
}

/// Prints the mean time of each node over `runs` runs on this thread.
fn node_times(plan: &Arc<TypedRunnableModel>, input: &Tensor, runs: usize) -> TractResult<()> {
    let mut times = vec![vec![]; plan.model().nodes().len()];
    for _ in 0..runs {
        let mut state = SimpleState::new(plan)?;
        state.run_plan_with_eval(
            tvec!(input.clone().into()),
            |ctx, op_state, node, inputs| {
                let start = Instant::now();
                let outputs = eval(ctx, op_state, node, inputs);
                times[node.id].push(start.elapsed().as_secs_f64() * 1000.0);
                outputs
            },
        )?;
    }
    // Medians: this VM's speed drifts, and a mean takes in every hiccup.
    let medians: Vec<f64> = times.into_iter().map(median).collect();
    for node in plan.model().nodes() {
        if medians[node.id] > 0.05 {
            let shape = &node.outputs[0].fact.shape;
            let name = &node.name[node.name.len().saturating_sub(50)..];
            let op = node.op.name();
            println!("{:8.3} ms  {op} {shape:?}  {name}", medians[node.id]);
        }
    }
    println!(
        "{:8.3} ms  in all (sum of medians)",
        medians.iter().sum::<f64>()
    );
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> TractResult<()> {
    flowers::util::allocator::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let nodes = args.iter().any(|a| a == "--nodes");
    let model = args
        .iter()
        .position(|a| a == "--model")
        .map(|i| &args[i + 1]);
    let runs = args.iter().find_map(|a| a.parse().ok()).unwrap_or(40);
    let source = match model {
        Some(path) => ModelSource::File(path.into()),
        None => ModelSource::Embedded,
    };
    let backbone = Backbone::load(&source, &Overrides::default())?;
    let shape = input_shape(&backbone);
    let input: Tensor = tract_ndarray::ArrayD::<f32>::from_shape_fn(&shape[..], |index| {
        ((index[1] * 7 + index[2] * 3 + index[3]) % 255) as f32 / 128.0 - 1.0
    })
    .into();
    if args.iter().any(|a| a == "--flowers-only") {
        // The peer of bench/onnxruntime_one_thread.py: 5 warm-up runs, then the median.
        let plan = plan(&backbone, true)?;
        for _ in 0..5 {
            plan.run(tvec!(input.clone().into()))?;
        }
        let times = (0..runs)
            .map(|_| {
                let start = Instant::now();
                plan.run(tvec!(input.clone().into()))
                    .map(|_| start.elapsed())
            })
            .map(|t| t.map(|t| t.as_secs_f64() * 1000.0))
            .collect::<TractResult<Vec<f64>>>()?;
        println!("flowers ops 1 thread: median {:.2} ms", median(times));
        return Ok(());
    }
    let mut outputs = vec![];
    for (name, accelerated) in [("tract", false), ("flowers ops", true)] {
        let plan = plan(&backbone, accelerated)?;
        let output = plan.run(tvec!(input.clone().into()))?.remove(0);
        outputs.push(
            output
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect::<Vec<f32>>(),
        );
        if nodes && accelerated {
            node_times(&plan, &input, runs)?;
        }
        let one = time(&plan, &input, 1, runs);
        let two = time(&plan, &input, 2, runs);
        println!("{name:18} 1 thread {one:5.1} ms/image   2 threads {two:5.1} ms/image");
    }
    let difference = outputs[0]
        .iter()
        .zip(&outputs[1])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("largest output difference {difference:e}");
    Ok(())
}
