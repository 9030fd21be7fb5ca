//! The tract plan: a backbone (or a retrained graph) loaded, cut at one output, optimised,
//! with flowers' own convolution ops swapped in, ready to run on many threads.

use std::borrow::Cow;
use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;

use super::limits::{self, quote, Tally, MAX_ACTIVATION_ELEMENTS, MAX_TENSOR_ELEMENTS};
use crate::image::{Layout, Preprocessing};

/// Steers tract away from its 512-bit matrix kernels on AMD Zen 4 (CPU family 25).
///
/// Zen 4 runs each 512-bit FMA as two 256-bit halves, so those kernels do the same work
/// as tract's AVX2 ones with more overhead: on an EPYC Zen 4 the backbone ran faster
/// without them (BENCHMARKS.md). tract's `TRACT_CPU_ISA` knob does the steering; this sets it below the
/// environment, so a user's own `TRACT_CPU_ISA` still wins. Other CPUs are left to tract.
fn prefer_fastest_matmul_kernels() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if is_amd_zen4() {
            // Only fails if another config set the knob differently; keep theirs then.
            let _ = tract_onnx::tract_core::knobs::set_config_global("TRACT_CPU_ISA", "-avx512f");
        }
    });
}

#[cfg(target_arch = "x86_64")]
fn is_amd_zen4() -> bool {
    use std::arch::x86_64::__cpuid;
    // SAFETY: cpuid exists on every x86_64 CPU; newer rustc deems this block redundant.
    #[allow(unused_unsafe)]
    let (vendor, signature) = unsafe { (__cpuid(0), __cpuid(1).eax) };
    let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
    let family = ((signature >> 8) & 0xf) + ((signature >> 20) & 0xff);
    amd && family == 25 && std::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn is_amd_zen4() -> bool {
    false
}

/// An optimised tract plan with batch 1 (fastest in tract), shared by worker threads.
pub struct Plan {
    runnable: Arc<TypedRunnableModel>,
    /// Number of values in one output (the batch dimension removed).
    pub output_len: usize,
    /// How images become this plan's input (its first, for a graph of several).
    pub preprocessing: Preprocessing,
    /// How many layers run flowers' own ops instead of tract's (none where the CPU, or
    /// `FLOWERS_KERNELS=portable`, keeps tract's plan): how tests see that a graph, a
    /// TensorFlow one say, took the fast path.
    pub flowers_layers: usize,
    /// A graph of combined backbones takes several inputs: how images become each, in
    /// the order [`Plan::run_all`] takes them. One entry for every other graph.
    pub inputs: Vec<Preprocessing>,
}

impl Plan {
    /// Loads `proto` with a fixed batch-1 input shaped by `preprocessing`, output `output`.
    /// An owned `proto` is dropped as soon as tract has its own copy of the weights, so
    /// that the allocator hands that memory to tract's next copies instead of faulting in
    /// fresh pages (see `keep_freed_memory` in util/allocator.rs).
    pub fn new(
        proto: Cow<'_, ModelProto>,
        preprocessing: &Preprocessing,
        output: &str,
    ) -> Result<Plan> {
        Plan::with_inputs(proto, &[(None, preprocessing)], output)
    }

    /// [`Plan::new`] for a graph of several named inputs (a combined graph's), each
    /// shaped by its preprocessing; an unnamed one is the graph's input of its position.
    pub fn with_inputs(
        proto: Cow<'_, ModelProto>,
        inputs: &[(Option<&str>, &Preprocessing)],
        output: &str,
    ) -> Result<Plan> {
        prefer_fastest_matmul_kernels();
        let model = tract_onnx::onnx().model_for_proto_model(&proto)?;
        drop(proto);
        Plan::finish(model, inputs, output)
    }

    /// [`Plan::with_inputs`] for an ONNX graph read from its file, its weights read
    /// straight into tract's tensors.
    pub fn from_onnx_file(
        file: super::onnx_file::OnnxFile<'_>,
        inputs: &[(Option<&str>, &Preprocessing)],
        output: &str,
    ) -> Result<Plan> {
        prefer_fastest_matmul_kernels();
        Plan::finish(file.into_tract()?, inputs, output)
    }

    /// The same for a TensorFlow frozen graph, cut at `input` (a tensor the image is fed
    /// to, `input` for MobileNet, `Mul` for Inception) and at `output`.
    pub fn from_tensorflow(
        graph: &super::tensorflow::GraphDef,
        preprocessing: &Preprocessing,
        input: &str,
        output: &str,
    ) -> Result<Plan> {
        prefer_fastest_matmul_kernels();
        let (h, w) = (preprocessing.height as i64, preprocessing.width as i64);
        let graph = super::tensorflow::for_tract(graph, input, output, [1, h, w, 3])?;
        let model = tract_tensorflow::tensorflow().model_for_proto_model(&graph)?;
        drop(graph);
        Plan::finish(
            model,
            &[(None, preprocessing)],
            super::tensorflow::node_name(output),
        )
    }

    /// Fixes the input shape and the output, swaps flowers' ops in, and optimises.
    fn finish(
        mut model: InferenceModel,
        inputs: &[(Option<&str>, &Preprocessing)],
        output: &str,
    ) -> Result<Plan> {
        // An output cut from the input (a constant, say) leaves tract a graph without one.
        if model.input_outlets()?.is_empty() {
            bail!(
                "output {} does not depend on the image input",
                quote(output)
            );
        }
        let mut ordered: Vec<(usize, Preprocessing)> = Vec::new();
        for (position, (name, preprocessing)) in inputs.iter().enumerate() {
            let index = match name {
                None => position,
                Some(name) => input_index(&model, name)?,
            };
            let (h, w) = (preprocessing.height as usize, preprocessing.width as usize);
            let shape = match preprocessing.layout {
                Layout::Nchw => [1, 3, h, w],
                Layout::Nhwc => [1, h, w, 3],
            };
            model = model.with_input_fact(index, f32::fact(shape).into())?;
            ordered.push((index, (*preprocessing).clone()));
        }
        ordered.sort_by_key(|(index, _)| *index);
        let inputs: Vec<Preprocessing> = ordered.into_iter().map(|(_, p)| p).collect();
        let mut model = model.with_outputs_by_name([output])?.into_typed()?;
        check_tensor_sizes(&model)?;
        let output_node = model.node(model.output_outlets()?[0].node);
        if output_node.op_is::<Const>() {
            bail!(
                "output {} is a constant: it does not depend on the image",
                quote(output)
            );
        }
        let flowers_layers = super::accel::apply(&mut model)?;
        let model = model.into_optimized()?;
        let fact = model.output_fact(0)?;
        let dims = fact
            .shape
            .as_concrete()
            .ok_or_else(|| anyhow!("output {} has no fixed shape", quote(output)))?
            .to_vec();
        if dims.len() == 4 && dims[2] * dims[3] != 1 && dims[1] * dims[2] != 1 {
            bail!(
                "output {} has shape {dims:?}, not a pooled feature vector",
                quote(output)
            );
        }
        let output_len = dims.iter().skip(1).product();
        Ok(Plan {
            runnable: model.into_runnable()?,
            output_len,
            preprocessing: inputs[0].clone(),
            inputs,
            flowers_layers,
        })
    }

    /// Runs one input tensor and returns the flattened output.
    pub fn run(&self, input: Tensor) -> Result<Vec<f32>> {
        self.run_all(vec![input])
    }

    /// Runs one tensor per input, in the order of [`Plan::inputs`].
    pub fn run_all(&self, inputs: Vec<Tensor>) -> Result<Vec<f32>> {
        let outputs = self
            .runnable
            .run(inputs.into_iter().map(TValue::from).collect())?;
        let values = outputs[0].to_plain_array_view::<f32>()?;
        Ok(values.iter().copied().collect())
    }
}

/// The position among the graph's inputs of the one called `name`.
fn input_index(model: &InferenceModel, name: &str) -> Result<usize> {
    let outlets = model.input_outlets()?;
    outlets
        .iter()
        .position(|outlet| model.node(outlet.node).name == name)
        .ok_or_else(|| anyhow!("the graph has no input {}", quote(name)))
}

/// Every tensor tract inferred for one image, and all of them together, within
/// [`limits`]: checked once the shapes are known and before optimisation, which folds
/// constants and plans the buffers running the graph will allocate.
fn check_tensor_sizes(model: &TypedModel) -> Result<()> {
    let mut total = Tally::default();
    for node in model.nodes() {
        for output in &node.outputs {
            let Some(dims) = output.fact.shape.as_concrete() else {
                continue;
            };
            let count = limits::element_count(dims.iter().map(|&d| d as i64))
                .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
                .ok_or_else(|| {
                    anyhow!(
                        "node {} makes a tensor of shape {dims:?}, over the limit of {MAX_TENSOR_ELEMENTS} values",
                        quote(&node.name)
                    )
                })?;
            total.add(count, MAX_ACTIVATION_ELEMENTS).map_err(|sum| {
                anyhow!("its tensors for one image hold {sum} values or more, over the limit of {MAX_ACTIVATION_ELEMENTS}")
            })?;
        }
    }
    Ok(())
}
