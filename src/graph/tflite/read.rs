//! A `.tflite` file -> [`Model`] and its metadata buffers, refusing what flowers cannot
//! run safely: the flatbuffers verifier runs first (no offset leaves the file), then every
//! count and size is bounded as [`crate::backbone::limits`] bounds ONNX graphs, every
//! constant must hold exactly its shape's bytes, every operator must read tensors already
//! computed, and [`super::run::check`] checks each operator's shapes before any image runs.

use anyhow::{anyhow, bail, Result};
use flatbuffers::VerifierOptions;

use super::generated::schema as fb;
use super::ir::{
    Activation, Data, ElementType, Model, Op, Operator, Padding, Quantization, Tensor,
};
use crate::backbone::limits::{
    self, quote, Tally, MAX_CONSTANT_ELEMENTS, MAX_NODES, MAX_TENSOR_ELEMENTS,
};

/// Most dimensions of a tensor flowers runs (its operators are at most 4-d).
const MAX_RANK: usize = 4;

/// A decoded file: the model and its named metadata buffers.
pub struct Decoded {
    pub model: Model,
    pub metadata: Vec<(String, Vec<u8>)>,
}

/// Whether `bytes` look like a TFLite flatbuffer (its `TFL3` identifier).
pub fn looks_like_tflite(bytes: &[u8]) -> bool {
    fb::model_buffer_has_identifier(bytes)
}

/// Decodes and checks a `.tflite` file, shown as `display` in errors.
pub fn decode(bytes: &[u8], display: &str) -> Result<Decoded> {
    let options = VerifierOptions {
        max_depth: 64,
        max_tables: 4 * MAX_NODES,
        max_apparent_size: limits::MAX_GRAPH_BYTES as usize,
        ignore_missing_null_terminator: false,
    };
    let root = fb::root_as_model_with_opts(&options, bytes).map_err(|e| {
        anyhow!(
            "{display} is not a valid TensorFlow Lite file: {}",
            first_line(&e.to_string())
        )
    })?;
    convert(&root).map_err(|e| anyhow!("{display} is not a TensorFlow Lite file flowers runs: {e}"))
}

fn first_line(text: &str) -> String {
    quote(text.lines().next().unwrap_or_default())
}

fn convert(root: &fb::Model) -> Result<Decoded> {
    let buffers = root.buffers().ok_or_else(|| anyhow!("no buffers"))?;
    let subgraphs = root.subgraphs().ok_or_else(|| anyhow!("no subgraph"))?;
    if subgraphs.len() != 1 {
        bail!("{} subgraphs, not one", subgraphs.len());
    }
    let subgraph = subgraphs.get(0);
    let tensors = subgraph.tensors().ok_or_else(|| anyhow!("no tensors"))?;
    if tensors.len() > 4 * MAX_NODES {
        bail!(
            "{} tensors, over the limit of {}",
            tensors.len(),
            4 * MAX_NODES
        );
    }
    let mut constants = Tally::default();
    let mut model = Model::default();
    for tensor in tensors.iter() {
        model
            .tensors
            .push(read_tensor(&tensor, &buffers, &mut constants)?);
    }
    let count = model.tensors.len();
    model.inputs = indices(subgraph.inputs(), count)?;
    model.outputs = indices(subgraph.outputs(), count)?;
    let codes = root
        .operator_codes()
        .ok_or_else(|| anyhow!("no operator codes"))?;
    let operators = subgraph
        .operators()
        .ok_or_else(|| anyhow!("no operators"))?;
    if operators.len() > MAX_NODES {
        bail!(
            "{} operators, over the limit of {MAX_NODES}",
            operators.len()
        );
    }
    for operator in operators.iter() {
        model
            .operators
            .push(read_operator(&operator, &codes, count)?);
    }
    check_order(&model)?;
    let metadata = read_metadata(root, &buffers)?;
    Ok(Decoded { model, metadata })
}

fn element_type(t: fb::TensorType) -> Result<ElementType> {
    Ok(match t {
        fb::TensorType::FLOAT32 => ElementType::F32,
        fb::TensorType::FLOAT16 => ElementType::F16,
        fb::TensorType::INT32 => ElementType::I32,
        fb::TensorType::INT8 => ElementType::I8,
        fb::TensorType::UINT8 => ElementType::U8,
        fb::TensorType::INT64 => ElementType::I64,
        other => bail!(
            "tensors of type {} are not supported",
            other.variant_name().unwrap_or("unknown")
        ),
    })
}

fn read_tensor(
    tensor: &fb::Tensor,
    buffers: &flatbuffers::Vector<flatbuffers::ForwardsUOffset<fb::Buffer>>,
    constants: &mut Tally,
) -> Result<Tensor> {
    let name = tensor.name().unwrap_or_default().to_string();
    let dims: Vec<i32> = tensor
        .shape()
        .map(|s| s.iter().collect())
        .unwrap_or_default();
    if dims.len() > MAX_RANK || dims.iter().any(|&d| d < 1) {
        bail!("tensor {} has shape {dims:?}: flowers runs tensors of up to {MAX_RANK} positive dimensions", quote(&name));
    }
    let count = limits::element_count(dims.iter().map(|&d| i64::from(d)))
        .filter(|&n| n <= MAX_TENSOR_ELEMENTS)
        .ok_or_else(|| anyhow!("tensor {} has shape {dims:?}, over the limit of {MAX_TENSOR_ELEMENTS} values or negative", quote(&name)))?;
    let element = element_type(tensor.type_())?;
    let index = tensor.buffer() as usize;
    if index >= buffers.len() {
        bail!(
            "tensor {} names buffer {index} of {}",
            quote(&name),
            buffers.len()
        );
    }
    let bytes = buffers
        .get(index)
        .data()
        .map(|d| d.bytes())
        .unwrap_or_default();
    let data = if bytes.is_empty() {
        None
    } else {
        if bytes.len() as u64 != count * element.size() as u64 {
            bail!(
                "constant {} holds {} bytes, not the {} of its shape {dims:?}",
                quote(&name),
                bytes.len(),
                count * element.size() as u64
            );
        }
        constants
            .add(count, MAX_CONSTANT_ELEMENTS)
            .map_err(|sum| anyhow!("its constants hold {sum} values or more, over the limit of {MAX_CONSTANT_ELEMENTS}"))?;
        Some(Data::from_le_bytes(element, bytes))
    };
    let quantization = tensor.quantization().and_then(|q| {
        let scale: Vec<f32> = q.scale()?.iter().collect();
        let zero_point: Vec<i64> = q
            .zero_point()
            .map(|z| z.iter().collect())
            .unwrap_or_default();
        Some(Quantization {
            scale,
            zero_point,
            axis: q.quantized_dimension().max(0) as usize,
        })
    });
    Ok(Tensor {
        name,
        shape: dims.iter().map(|&d| d as usize).collect(),
        element,
        data,
        quantization,
    })
}

/// Tensor indices, each below `count`.
fn indices(list: Option<flatbuffers::Vector<i32>>, count: usize) -> Result<Vec<usize>> {
    list.into_iter()
        .flatten()
        .map(|i| {
            usize::try_from(i)
                .ok()
                .filter(|&i| i < count)
                .ok_or_else(|| anyhow!("tensor index {i} of {count}"))
        })
        .collect()
}

fn read_operator(
    operator: &fb::Operator,
    codes: &flatbuffers::Vector<flatbuffers::ForwardsUOffset<fb::OperatorCode>>,
    count: usize,
) -> Result<Operator> {
    let index = operator.opcode_index() as usize;
    if index >= codes.len() {
        bail!("operator code {index} of {}", codes.len());
    }
    let code = codes.get(index);
    // Files from before schema 3a have only the byte-sized code.
    let builtin = fb::BuiltinOperator(
        code.builtin_code()
            .0
            .max(i32::from(code.deprecated_builtin_code())),
    );
    let op = read_op(operator, builtin)?;
    Ok(Operator {
        op,
        inputs: indices(operator.inputs(), count)?,
        outputs: indices(operator.outputs(), count)?,
    })
}

fn activation(a: fb::ActivationFunctionType) -> Result<Activation> {
    Ok(match a {
        fb::ActivationFunctionType::NONE => Activation::None,
        fb::ActivationFunctionType::RELU => Activation::Relu,
        fb::ActivationFunctionType::RELU6 => Activation::Relu6,
        other => bail!(
            "fused activation {} is not supported",
            other.variant_name().unwrap_or("unknown")
        ),
    })
}

fn padding(p: fb::Padding) -> Result<Padding> {
    Ok(match p {
        fb::Padding::SAME => Padding::Same,
        fb::Padding::VALID => Padding::Valid,
        _ => bail!("unknown padding {}", p.0),
    })
}

/// A positive stride, dilation or size from the file.
fn positive(v: i32, what: &str) -> Result<usize> {
    usize::try_from(v)
        .ok()
        .filter(|&v| v > 0 && v <= 1 << 16)
        .ok_or_else(|| anyhow!("{what} {v} is out of range"))
}

fn read_op(operator: &fb::Operator, builtin: fb::BuiltinOperator) -> Result<Op> {
    use fb::BuiltinOperator as B;
    let missing = || {
        anyhow!(
            "a {} operator without its options",
            builtin.variant_name().unwrap_or("?")
        )
    };
    Ok(match builtin {
        B::CONV_2D => {
            let o = operator
                .builtin_options_as_conv_2_doptions()
                .ok_or_else(missing)?;
            Op::Conv2d {
                stride: [
                    positive(o.stride_h(), "stride")?,
                    positive(o.stride_w(), "stride")?,
                ],
                dilation: [
                    positive(o.dilation_h_factor(), "dilation")?,
                    positive(o.dilation_w_factor(), "dilation")?,
                ],
                padding: padding(o.padding())?,
                activation: activation(o.fused_activation_function())?,
            }
        }
        B::DEPTHWISE_CONV_2D => {
            let o = operator
                .builtin_options_as_depthwise_conv_2_doptions()
                .ok_or_else(missing)?;
            Op::DepthwiseConv2d {
                stride: [
                    positive(o.stride_h(), "stride")?,
                    positive(o.stride_w(), "stride")?,
                ],
                dilation: [
                    positive(o.dilation_h_factor(), "dilation")?,
                    positive(o.dilation_w_factor(), "dilation")?,
                ],
                padding: padding(o.padding())?,
                multiplier: positive(o.depth_multiplier(), "depth multiplier")?,
                activation: activation(o.fused_activation_function())?,
            }
        }
        B::AVERAGE_POOL_2D => {
            let o = operator
                .builtin_options_as_pool_2_doptions()
                .ok_or_else(missing)?;
            Op::AveragePool2d {
                filter: [
                    positive(o.filter_height(), "filter")?,
                    positive(o.filter_width(), "filter")?,
                ],
                stride: [
                    positive(o.stride_h(), "stride")?,
                    positive(o.stride_w(), "stride")?,
                ],
                padding: padding(o.padding())?,
                activation: activation(o.fused_activation_function())?,
            }
        }
        B::MEAN => Op::Mean {
            keep_dims: operator
                .builtin_options_as_reducer_options()
                .is_some_and(|o| o.keep_dims()),
        },
        B::ADD => Op::Add {
            activation: match operator.builtin_options_as_add_options() {
                Some(o) => activation(o.fused_activation_function())?,
                None => Activation::None,
            },
        },
        B::MUL => Op::Mul {
            activation: match operator.builtin_options_as_mul_options() {
                Some(o) => activation(o.fused_activation_function())?,
                None => Activation::None,
            },
        },
        B::PAD => Op::Pad,
        B::RESHAPE => Op::Reshape,
        B::FULLY_CONNECTED => {
            let o = operator.builtin_options_as_fully_connected_options();
            if o.is_some_and(|o| {
                o.weights_format() != fb::FullyConnectedOptionsWeightsFormat::DEFAULT
                    || o.keep_num_dims()
            }) {
                bail!("FULLY_CONNECTED with shuffled weights or kept dimensions is not supported");
            }
            Op::FullyConnected {
                activation: match o {
                    Some(o) => activation(o.fused_activation_function())?,
                    None => Activation::None,
                },
            }
        }
        B::SOFTMAX => {
            let beta = operator
                .builtin_options_as_softmax_options()
                .ok_or_else(missing)?
                .beta();
            if !beta.is_finite() {
                bail!("SOFTMAX with beta {beta}");
            }
            Op::Softmax { beta }
        }
        B::RELU => Op::Relu,
        B::RELU6 => Op::Relu6,
        B::QUANTIZE => Op::Quantize,
        B::DEQUANTIZE => Op::Dequantize,
        other => bail!(
            "operator {} is not one flowers runs",
            other
                .variant_name()
                .map(str::to_string)
                .unwrap_or_else(|| format!("#{}", other.0))
        ),
    })
}

/// Every operator reads the input, constants or tensors written before it, and writes
/// tensors nothing else writes: the file runs in order, with no cycle.
fn check_order(model: &Model) -> Result<()> {
    let mut ready: Vec<bool> = model.tensors.iter().map(|t| t.data.is_some()).collect();
    for &input in &model.inputs {
        ready[input] = true;
    }
    for (index, operator) in model.operators.iter().enumerate() {
        if let Some(&missing) = operator.inputs.iter().find(|&&i| !ready[i]) {
            bail!(
                "operator {index} ({}) reads tensor {} before anything writes it",
                operator.op.name(),
                quote(&model.tensors[missing].name)
            );
        }
        for &output in &operator.outputs {
            if ready[output] {
                bail!(
                    "operator {index} ({}) overwrites tensor {}",
                    operator.op.name(),
                    quote(&model.tensors[output].name)
                );
            }
            ready[output] = true;
        }
    }
    if let Some(&output) = model.outputs.iter().find(|&&o| !ready[o]) {
        bail!(
            "the output {} is never computed",
            quote(&model.tensors[output].name)
        );
    }
    Ok(())
}

fn read_metadata(
    root: &fb::Model,
    buffers: &flatbuffers::Vector<flatbuffers::ForwardsUOffset<fb::Buffer>>,
) -> Result<Vec<(String, Vec<u8>)>> {
    let mut entries = Vec::new();
    for entry in root.metadata().into_iter().flatten() {
        let index = entry.buffer() as usize;
        if index >= buffers.len() {
            bail!("metadata names buffer {index} of {}", buffers.len());
        }
        let data = buffers
            .get(index)
            .data()
            .map(|d| d.bytes().to_vec())
            .unwrap_or_default();
        entries.push((entry.name().unwrap_or_default().to_string(), data));
    }
    Ok(entries)
}
