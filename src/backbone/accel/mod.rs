//! Which layers of the backbone flowers runs with its own ops instead of tract's, and the
//! graph surgery that swaps them in.
//!
//! tract stays the engine: it loads, declutters, optimises and runs the model. [`apply`]
//! walks the typed graph, before tract's declutter, and replaces the layers where
//! profiling showed tract well below what the CPU can do: the stem, the depthwise and the
//! pointwise convolutions. Each replacement takes in the ReLU6 (or ReLU) that follows, so
//! the clamp is applied as outputs are stored instead of in a pass of its own. Results
//! match tract's to float rounding; the tests below check a whole bottleneck against
//! tract's own plan on a real photo, and a residual block on every path.
//!
//! One family of ops, [`blocked`]: the activations stay in blocks of eight channels from
//! the stem to the last layer, residual additions included, and are turned back into
//! planes once, for the pooling. Its kernels come in plain Rust, AVX2 + FMA and AVX-512F
//! flavours, over the same layouts, so the graph surgery is the same on every path.
//!
//! TensorFlow graphs (retrain.py's MobileNets: NHWC activations, HWIO kernels, batch
//! normalisation as a `Mul` and an `Add`) are first rewritten in that channel-first form
//! ([`channels_first`]), so the same ops take them.
//!
//! Layout, as in tract's linalg: the matching ([`layer`]) apart from the ops, each op's
//! tract glue apart from its kernels, and the ISA-specific kernels (`x86_64_avx2.rs`,
//! `x86_64_avx512.rs`) reachable only with the [`cpu`] token that proves the CPU has the
//! features they are compiled for.

mod blocked;
mod channels_first;
mod cpu;
mod layer;
mod op;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::math::{Max, Min};
use tract_onnx::tract_core::ops::source::TypedSource;

use blocked::Isa;
use cpu::Kernels;
use op::Clip;

pub(crate) use layer::Geometry;

/// Replaces every layer of `model` that one of flowers' ops runs faster, with the clamp
/// that follows it; returns how many were replaced. Run it on the typed model, before
/// `into_optimized`: replacing the convolutions before tract's declutter also spares the
/// declutter's work on them. In tract 0.23 that work copies every weight tensor several
/// times (its axis-change search deep-copies each constant it tries, and it copies each
/// 1x1 kernel again into matrix form); BENCHMARKS.md has the plan-build times.
///
/// Only CPUs with AVX2 and FMA get the swap by default: the blocked ops with their AVX2 or
/// AVX-512 kernels. Elsewhere (older x86, ARM, where tract has its own vector kernels) the
/// plain Rust kernels would not beat tract, so the plan is left as is. `FLOWERS_KERNELS`
/// (see [`cpu`]) can ask for tract's plan (`portable`), the plain Rust kernels (`plain`)
/// or a narrower ISA than the CPU's best (`avx2`).
pub fn apply(model: &mut TypedModel) -> TractResult<usize> {
    apply_kernels(model, Kernels::detect())
}

/// [`apply`] with the given kernels; `Portable` leaves tract's plan.
fn apply_kernels(model: &mut TypedModel, kernels: Kernels) -> TractResult<usize> {
    let isa = match kernels {
        Kernels::Portable => return Ok(0),
        Kernels::Plain => Isa::Plain,
        Kernels::Avx2(token) => Isa::Avx2(token),
        Kernels::Avx512(token) => Isa::Avx512(token),
    };
    // Folds constant subgraphs (casts of the biases, say), so the constant inputs show.
    model.prop_consts()?;
    // TensorFlow's NHWC layers, in the form the layers below are recognised in.
    channels_first::rewrite(model, |model, node| Ok(Layer::of(model, node)?.is_some()))?;
    let mut replaced = 0;
    for id in model.eval_order()? {
        if let Some(layer) = Layer::of(model, model.node(id))? {
            if let Layer::Pointwise(_) = layer {
                release_kernel(model, id)?;
            }
            blocked_swap(model, model.node(id), layer, isa)?.apply(model)?;
            replaced += 1;
        } else if let Some(patch) = blocked_add(model, model.node(id))? {
            patch.apply(model)?;
        }
    }
    Ok(replaced)
}

/// Lets go of the graph's hold on the kernel of the pointwise layer `id` when the layer is
/// its only reader: the constant becomes a source of the same shape that nothing will
/// read once the layer is swapped, so the [`layer::Eligible`] found for the layer owns the
/// kernel alone and packing can reuse its memory ([`blocked::pack_grouped_owned`]).
/// A kernel shared with another reader stays, and is packed from a copy.
fn release_kernel(model: &mut TypedModel, id: usize) -> TractResult<()> {
    let outlet = model.node(id).inputs[1];
    let sole_reader = model.outlet_successors(outlet).len() == 1
        && !model.output_outlets()?.contains(&outlet)
        && model.node(outlet.node).op_is::<Const>();
    if sole_reader {
        let fact = model.outlet_fact(outlet)?.without_value();
        let constant = model.node_mut(outlet.node);
        constant.op = Box::new(TypedSource::new(fact.clone()));
        constant.outputs[0].fact = fact;
    }
    Ok(())
}

/// The patch putting the blocked op for `layer` in place of `node` and its clamp: it reads
/// blocks (unless it is the stem, which reads the image's planes) and writes blocks, which
/// a [`blocked::FromBlocked`] turns back into planes for whatever reads `node` now. When
/// the next layer is swapped in turn, it reads the blocks directly ([`blocked_input`]),
/// and the conversion, read by nothing, is dropped with the rest of the unused nodes.
fn blocked_swap(
    model: &TypedModel,
    node: &TypedNode,
    layer: Layer,
    isa: Isa,
) -> TractResult<TypedModelPatch> {
    use blocked::*;
    let (clip, last) = clamp_after(model, node)?;
    let mut patch = TypedModelPatch::default();
    let name = &node.name;
    let konst = |slot: usize| -> TractResult<Vec<f32>> {
        let fact = model.outlet_fact(node.inputs[slot])?;
        let Some(konst) = fact.konst.as_ref() else {
            anyhow::bail!("{} reads weights that are not constant", node.name)
        };
        Ok(konst.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
    };
    let (op, data, (weights, bias), output): (Box<dyn TypedOp>, _, _, _) = match layer {
        Layer::Direct(g) if g.dense => {
            let data = patch.tap_model(model, node.inputs[0])?;
            let packed = pack_dense(&g, &konst(1)?, &konst(2)?)?;
            let op = BlockedDirectConv {
                geometry: g,
                clip,
                isa,
            };
            (Box::new(op), data, packed, output_planes(&g))
        }
        Layer::Direct(g) => {
            let data = blocked_input(model, &mut patch, node.inputs[0], input_planes(&g))?;
            let taps = g.kernel_h * g.kernel_w;
            let packed = pack_taps(&konst(1)?, &konst(2)?, g.channels, taps)?;
            let op = BlockedDirectConv {
                geometry: g,
                clip,
                isa,
            };
            (Box::new(op), data, packed, output_planes(&g))
        }
        Layer::Pointwise(found) => {
            let s = &found.shape;
            let input = Planes {
                batched: s.batched,
                channels: s.inputs,
                height: s.height,
                width: s.width,
            };
            let shape = PointwiseShape {
                input,
                outputs: s.outputs,
            };
            let data = blocked_input(model, &mut patch, node.inputs[0], input)?;
            let layer::Eligible { kernel, bias, .. } = *found;
            let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?;
            let packed = pack_pointwise(&shape, isa, kernel, bias)?;
            let op = BlockedPointwise { shape, clip, isa };
            (Box::new(op), data, packed, shape.output())
        }
    };
    let weights = patch.add_const(format!("{name}.blocked_weights"), weights)?;
    let bias = patch.add_const(format!("{name}.blocked_bias"), bias)?;
    let blocks = patch.wire_node(name, op, &[data, weights, bias])?[0];
    let planes = patch.wire_node(format!("{name}.planes"), FromBlocked(output), &[blocks])?;
    patch.shunt_outside(model, last, planes[0])?;
    Ok(patch)
}

/// `outlet` (an image of `planes`) in blocks, in `patch`: the blocks themselves when it
/// is a [`blocked::FromBlocked`] of them, else a [`blocked::ToBlocked`] of it.
fn blocked_input(
    model: &TypedModel,
    patch: &mut TypedModelPatch,
    outlet: OutletId,
    planes: blocked::Planes,
) -> TractResult<OutletId> {
    let producer = model.node(outlet.node);
    if let Some(from) = producer.op_as::<blocked::FromBlocked>() {
        if from.0 == planes {
            return patch.tap_model(model, producer.inputs[0]);
        }
    }
    let tap = patch.tap_model(model, outlet)?;
    let name = format!("{}.blocks", producer.name);
    Ok(patch.wire_node(name, blocked::ToBlocked(planes), &[tap])?[0])
}

/// The patch moving a residual addition of two blocked layers' outputs onto their blocks,
/// if `node` is one: an `Add` is elementwise, so adding the blocks is adding the planes,
/// and the next layer can read the sum's blocks without a conversion.
fn blocked_add(model: &TypedModel, node: &TypedNode) -> TractResult<Option<TypedModelPatch>> {
    use tract_onnx::tract_core::ops::math::Add;
    let is_add = node
        .op_as::<TypedBinOp>()
        .is_some_and(|op| op.0.is::<Add>());
    if !is_add || node.inputs.len() != 2 {
        return Ok(None);
    }
    let producers = [0, 1].map(|i| model.node(node.inputs[i].node));
    let [Some(a), Some(b)] = producers.map(|p| p.op_as::<blocked::FromBlocked>()) else {
        return Ok(None);
    };
    let same = a.0 == b.0
        && model
            .outlet_fact(OutletId::new(node.id, 0))?
            .shape
            .as_concrete()
            == Some(&a.0.planar_shape());
    if !same {
        return Ok(None);
    }
    let mut patch = TypedModelPatch::default();
    let blocks = [
        patch.tap_model(model, producers[0].inputs[0])?,
        patch.tap_model(model, producers[1].inputs[0])?,
    ];
    let sum = patch.wire_node(&node.name, node.op.clone(), &blocks)?[0];
    let name = format!("{}.planes", node.name);
    let planes = patch.wire_node(name, blocked::FromBlocked(a.0), &[sum])?[0];
    patch.shunt_outside(model, OutletId::new(node.id, 0), planes)?;
    Ok(Some(patch))
}

/// A layer one of flowers' ops can run, with what that op needs.
enum Layer {
    Direct(Geometry),
    Pointwise(Box<layer::Eligible>),
}

impl Layer {
    fn of(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Layer>> {
        if let Some(geometry) = layer::direct(model, node)? {
            return Ok(Some(Layer::Direct(geometry)));
        }
        Ok(layer::pointwise(model, node)?.map(|found| Layer::Pointwise(Box::new(found))))
    }
}

/// The clamp an op replacing `node` takes in, and the outlet whose readers it takes over:
/// the clamp's output, or `node`'s own when no clamp follows.
fn clamp_after(model: &TypedModel, node: &TypedNode) -> TractResult<(Clip, OutletId)> {
    let unclamped = OutletId::new(node.id, 0);
    Ok(match fused_clip(model, unclamped)? {
        Some((low, high, last)) => (Clip::new(low, high), last),
        None => (Clip::default(), unclamped),
    })
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
    let Some((next, op, konst)) = sole_binary_reader(model, outlet)? else {
        return Ok(None);
    };
    if !op.0.is::<B>() || konst.len() != 1 || konst.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let value = konst.try_as_plain_ram()?.as_slice::<f32>()?[0];
    Ok((!value.is_nan()).then_some((next.id, value)))
}

/// The binary node that alone reads `outlet` (not a model output), with a constant on its
/// other side and `outlet`'s shape on its output: the node, its op and the constant. A
/// layer's clamp is found so, and in TensorFlow graphs its scale and bias too.
fn sole_binary_reader(
    model: &TypedModel,
    outlet: OutletId,
) -> TractResult<Option<(&TypedNode, &TypedBinOp, Arc<Tensor>)>> {
    let successors = model.outlet_successors(outlet);
    if successors.len() != 1 || model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    let next = model.node(successors[0].node);
    let Some(op) = next.op_as::<TypedBinOp>() else {
        return Ok(None);
    };
    if next.inputs.len() != 2 {
        return Ok(None);
    }
    let other = next.inputs[1 - successors[0].slot];
    let Some(konst) = model.outlet_fact(other)?.konst.clone() else {
        return Ok(None);
    };
    let same_shape =
        model.outlet_fact(OutletId::new(next.id, 0))?.shape == model.outlet_fact(outlet)?.shape;
    Ok(same_shape.then_some((next, op, konst)))
}

/// What a test learns from a model with `kernels` swapped in: the layers replaced, the
/// conversions left (from blocks, to blocks) and the output on `input`.
#[cfg(test)]
fn run_swapped(
    mut model: TypedModel,
    kernels: Kernels,
    input: &Tensor,
) -> (usize, (usize, usize), Vec<f32>) {
    let replaced = apply_kernels(&mut model, kernels).unwrap();
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let nodes = plan.model().nodes();
    let named = |name: &str| nodes.iter().filter(|n| n.op.name() == name).count();
    let conversions = (named("FlowersFromBlocked"), named("FlowersToBlocked"));
    let output = plan.run(tvec!(input.clone().into())).unwrap();
    let values = output[0].to_plain_array_view::<f32>().unwrap();
    (replaced, conversions, values.iter().copied().collect())
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

    #[test]
    fn a_pointwise_kernel_read_by_its_layer_alone_is_released_to_it() {
        let mut model = tract_onnx::onnx()
            .model_for_read(&mut &crate::backbone::registry::DEFAULT_MODEL[..])
            .unwrap()
            .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())
            .unwrap()
            .with_outputs_by_name(["features"])
            .unwrap()
            .into_typed()
            .unwrap();
        model.prop_consts().unwrap();
        let mut released = 0;
        for id in model.eval_order().unwrap() {
            let Some(found) = layer::pointwise(&model, model.node(id)).unwrap() else {
                continue;
            };
            assert!(std::sync::Arc::strong_count(&found.kernel) > 1);
            release_kernel(&mut model, id).unwrap();
            assert_eq!(std::sync::Arc::strong_count(&found.kernel), 1);
            let kernel = model.node(id).inputs[1];
            assert!(model.outlet_fact(kernel).unwrap().konst.is_none());
            released += 1;
        }
        // MobileNet v1's thirteen pointwise layers.
        assert_eq!(released, 13);
    }

    /// The clamp a node of flowers' applies, if it is one of its convolutions.
    pub(crate) fn fused_clip_of(node: &TypedNode) -> Option<Clip> {
        let clip = node.op_as::<blocked::BlockedDirectConv>().map(|d| d.clip);
        clip.or_else(|| node.op_as::<blocked::BlockedPointwise>().map(|p| p.clip))
    }

    /// Every path this machine can run (plain Rust, AVX2, AVX-512) against tract's own
    /// plan, on a real photo.
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
            let nodes = plan.model().nodes();
            let fused = nodes.iter().filter_map(fused_clip_of);
            assert_eq!(fused.filter(|&c| c != Clip::default()).count(), replaced);
            // Blocked from the stem on, back to planes once, for the pooling.
            let named = |name: &str| nodes.iter().filter(|n| n.op.name() == name).count();
            if kernels != Kernels::Portable {
                assert_eq!(named("FlowersFromBlocked"), 1);
                assert_eq!(named("FlowersToBlocked"), 0);
            }
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

    /// A residual block with channel counts that are not multiples of 8, 3x3 and 5x5
    /// depthwise layers and odd image sizes (`tests/fixtures/onnx`): every path against
    /// tract's plan, and the residual `Add` on blocks, so the planes
    /// come back only for the pooling.
    #[test]
    fn a_residual_block_gives_tracts_result_on_every_path() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/onnx/residual_block.onnx"
        );
        let input: Tensor =
            tract_ndarray::Array4::<f32>::from_shape_fn((1, 3, 37, 41), |(_, c, y, x)| {
                ((c * 31 + y * 7 + x * 3) % 17) as f32 / 8.0 - 1.0
            })
            .into();
        let run = |kernels| {
            let model = tract_onnx::onnx()
                .model_for_path(path)
                .unwrap()
                .into_typed()
                .unwrap();
            super::run_swapped(model, kernels, &input)
        };
        let (_, _, tracts) = run(Kernels::Portable);
        assert_eq!(tracts.len(), 24);
        assert!(
            tracts.iter().filter(|&&v| v > 0.01).count() > 12,
            "{tracts:?}"
        );
        for kernels in Kernels::supported().into_iter().skip(1) {
            let (replaced, conversions, ours) = run(kernels);
            assert_eq!(replaced, 9, "{kernels:?}");
            assert_eq!(conversions, (1, 0), "{kernels:?}");
            for (a, b) in tracts.iter().zip(&ours) {
                assert!(
                    (a - b).abs() < 1e-4,
                    "{kernels:?}: {tracts:?} against {ours:?}"
                );
            }
        }
    }
}
