//! Which layers of the backbone flowers runs with its own ops instead of tract's, and the
//! graph surgery that swaps them in.
//!
//! tract stays the engine: it loads, declutters, optimises and runs the model. [`apply`]
//! walks the typed graph, before tract's declutter, and replaces the layers where
//! profiling showed tract well below what the CPU can do: depthwise convolutions and the
//! stem ([`direct_conv`]), and the pointwise convolutions ([`pointwise`]). Each replacement
//! takes in the ReLU6 (or ReLU) that follows, so the clamp is applied as outputs are stored
//! instead of in a pass of its own. Results match tract's to float rounding; the test
//! below checks a whole bottleneck against tract's own plan on a real photo.
//!
//! Layout, as in tract's linalg: each op's portable code lives apart from its
//! ISA-specific kernels (`x86_64_avx2.rs`), which can only be reached with the [`cpu`]
//! token that proves the CPU has the features they are compiled for.

mod cpu;
mod direct_conv;
mod lanes;
mod op;
mod pointwise;
#[cfg(target_arch = "x86_64")]
mod x86_64_transpose;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::math::{Max, Min};

use cpu::Kernels;
use direct_conv::{DirectConv, Geometry};
use op::Clip;
use pointwise::PointwiseConv;

/// Replaces every layer of `model` that one of flowers' ops runs faster, with the clamp
/// that follows it; returns how many were replaced. Run it on the typed model, before
/// `into_optimized`: replacing the convolutions before tract's declutter also spares the
/// declutter's work on them. In tract 0.23 that work copies every weight tensor several
/// times (its axis-change search deep-copies each constant it tries, and it copies each
/// 1x1 kernel again into matrix form); BENCHMARKS.md has the plan-build times.
///
/// Only CPUs with AVX2 and FMA get the swap, with AVX-512 kernels where the CPU has them:
/// elsewhere (older x86, ARM, where tract has its own vector kernels) the portable paths
/// would not beat tract, so the plan is left as is. `FLOWERS_KERNELS` (see [`cpu`]) can
/// ask for tract's plan (`portable`) or for the AVX2 kernels on an AVX-512 CPU (`avx2`).
pub fn apply(model: &mut TypedModel) -> TractResult<usize> {
    apply_kernels(model, Kernels::detect())
}

/// [`apply`] with the given kernels; `Portable` leaves tract's plan.
fn apply_kernels(model: &mut TypedModel, kernels: Kernels) -> TractResult<usize> {
    if kernels == Kernels::Portable {
        return Ok(0);
    }
    // Folds constant subgraphs (casts of the biases, say), so the constant inputs show.
    model.prop_consts()?;
    let mut replaced = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        if let Some(layer) = Layer::of(model, node)? {
            swap(model, node, layer, kernels)?.apply(model)?;
            replaced += 1;
        }
    }
    Ok(replaced)
}

/// The patch putting flowers' op for `layer` in place of `node` and its clamp.
fn swap(
    model: &TypedModel,
    node: &TypedNode,
    layer: Layer,
    kernels: Kernels,
) -> TractResult<TypedModelPatch> {
    let unclamped = OutletId::new(node.id, 0);
    let (clip, last) = match fused_clip(model, unclamped)? {
        Some((low, high, last)) => (Clip::new(low, high), last),
        None => (Clip::default(), unclamped),
    };
    let mut patch = TypedModelPatch::default();
    let mut inputs = patch.taps(model, &node.inputs)?;
    let op: Box<dyn TypedOp> = match layer {
        Layer::Direct(geometry) => Box::new(DirectConv {
            geometry,
            clip,
            kernels,
        }),
        Layer::Pointwise(found) => {
            let name = &node.name;
            inputs[1] = patch.add_const(format!("{name}.packed_weights"), found.weights)?;
            inputs[2] = patch.add_const(format!("{name}.packed_bias"), found.bias)?;
            let shape = found.shape;
            Box::new(PointwiseConv {
                shape,
                clip,
                kernels,
            })
        }
    };
    let output = patch.wire_node(&node.name, op, &inputs)?[0];
    patch.shunt_outside(model, last, output)?;
    Ok(patch)
}

/// A layer one of flowers' ops can run, with what that op needs.
enum Layer {
    Direct(Geometry),
    Pointwise(Box<pointwise::Eligible>),
}

impl Layer {
    fn of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Layer>> {
        if let Some(geometry) = direct_conv::eligible(model, node)? {
            return Ok(Some(Layer::Direct(geometry)));
        }
        Ok(pointwise::eligible(model, node)?.map(|found| Layer::Pointwise(Box::new(found))))
    }
}

/// The `Max(x, low)` then `Min(x, high)` that follow `outlet` (MobileNet's ReLU6), or a lone
/// `Max` (ReLU), when nothing else reads the values in between: they can be applied as the
/// outputs are stored, saving a pass over the layer's output. Returns the bounds and the
/// outlet whose readers the fused op takes over.
fn fused_clip(model: &TypedModel, outlet: OutletId) -> TractResult<Option<(f32, f32, OutletId)>> {
    let Some((max, low)) = bounded_by::<Max>(model, outlet)? else {
        return Ok(None);
    };
    let after_max = OutletId::new(max, 0);
    Ok(Some(match bounded_by::<Min>(model, after_max)? {
        Some((min, high)) if high >= low => (low, high, OutletId::new(min, 0)),
        _ => (low, f32::INFINITY, after_max),
    }))
}

/// The node applying binary op `B` with a scalar constant to `outlet`, if it is the only
/// reader of `outlet` and `outlet` is not a model output.
fn bounded_by<B: BinMiniOp>(
    model: &TypedModel,
    outlet: OutletId,
) -> TractResult<Option<(usize, f32)>> {
    let successors = model.outlet_successors(outlet);
    if successors.len() != 1 || model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    let next = model.node(successors[0].node);
    let Some(op) = next.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if !op.0.is::<B>() || next.inputs.len() != 2 {
        return Ok(None);
    }
    let other = next.inputs[1 - successors[0].slot];
    let Some(konst) = model.outlet_fact(other)?.konst.clone() else {
        return Ok(None);
    };
    if konst.len() != 1 || konst.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let value = konst.try_as_plain_ram()?.as_slice::<f32>()?[0];
    let same_shape =
        model.outlet_fact(OutletId::new(next.id, 0))?.shape == model.outlet_fact(outlet)?.shape;
    Ok((same_shape && !value.is_nan()).then_some((next.id, value)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded backbone's plan, with flowers' ops running `kernels` (tract's own
    /// plan for `Portable`).
    fn backbone_plan(kernels: Kernels) -> (usize, std::sync::Arc<TypedRunnableModel>) {
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &crate::backbone::registry::DEFAULT_MODEL[..])
            .unwrap()
            .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())
            .unwrap()
            .with_outputs_by_name(["features"])
            .unwrap()
            .into_typed()
            .unwrap();
        let replaced = apply_kernels(&mut model, kernels).unwrap();
        (
            replaced,
            model.into_optimized().unwrap().into_runnable().unwrap(),
        )
    }

    /// Every path this machine can run (AVX2, AVX-512, and the 512-bit kernels with
    /// emulated lanes) against tract's own plan, on a real photo.
    #[test]
    fn the_backbone_gives_tracts_bottleneck_on_a_real_photo() {
        use crate::backbone::{Backbone, ModelSource, Overrides};
        let backbone = Backbone::load(&ModelSource::Embedded, &Overrides::default()).unwrap();
        let photo = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/flower_sample/daisy/10172379554_b296050f82_n.jpg"
        );
        let input = backbone
            .preprocessing
            .tensor_from_bytes(&std::fs::read(photo).unwrap())
            .unwrap();
        let run = |kernels| {
            let (replaced, plan) = backbone_plan(kernels);
            // Every one of those layers is followed by ReLU6, fused in.
            let fused = plan.model().nodes().iter();
            let fused = fused.filter(|n| {
                let clip = n
                    .op_as::<DirectConv>()
                    .map(|d| d.clip)
                    .or_else(|| n.op_as::<PointwiseConv>().map(|p| p.clip));
                clip.is_some_and(|c| c != Clip::default())
            });
            assert_eq!(fused.count(), replaced);
            let output = plan.run(tvec!(input.clone().into())).unwrap();
            let values: Vec<f32> = output[0]
                .to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect();
            (replaced, values)
        };
        let (none, tracts) = run(Kernels::Portable);
        assert_eq!(none, 0);
        assert_eq!(tracts.len(), 1024);
        assert!(
            tracts.iter().any(|&v| v > 0.5),
            "a degenerate bottleneck proves nothing"
        );
        let paths = Kernels::supported();
        for kernels in paths.into_iter().filter(|&k| k != Kernels::Portable) {
            let (replaced, ours) = run(kernels);
            // MobileNet v1 has a stem, 13 depthwise and 13 pointwise layers.
            assert_eq!(replaced, 27, "{kernels:?}");
            let largest = tracts
                .iter()
                .zip(&ours)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                largest < 1e-4,
                "{kernels:?}: bottlenecks differ by {largest}"
            );
        }
    }
}
