//! [`Model`] -> TFLite flatbuffer bytes, through the code flatc generated from TensorFlow's
//! `schema.fbs`: no hand-made encoding.
//!
//! Buffer 0 is TFLite's always-empty buffer; each constant tensor gets its own buffer,
//! then each metadata entry (`TFLITE_METADATA`, `flowers`) one more, named in
//! `Model.metadata` as TFLite Support's MetadataPopulator does.

use std::collections::{BTreeMap, HashMap};

use flatbuffers::{FlatBufferBuilder, Vector, WIPOffset};

use super::generated::schema as fb;
use super::ir::{Activation, ElementType, Model, Op, Operator, Padding, Quantization, Tensor};

/// `Model.version`: the schema's version 3, the one every TFLite runtime reads.
const SCHEMA_VERSION: u32 = 3;

/// One named metadata buffer (`Model.metadata`).
pub struct MetadataBuffer {
    pub name: String,
    pub data: Vec<u8>,
}

/// Encodes `model` with the metadata buffers, as a `.tflite` file's flatbuffer (file
/// identifier `TFL3`).
pub fn encode(model: &Model, description: &str, metadata: &[MetadataBuffer]) -> Vec<u8> {
    let mut fbb = FlatBufferBuilder::with_capacity(1 << 20);
    let mut buffers = vec![empty_buffer(&mut fbb)];
    let mut tensors = Vec::with_capacity(model.tensors.len());
    let mut zero_points = ZeroPoints::default();
    for tensor in &model.tensors {
        let buffer = match &tensor.data {
            Some(data) => {
                buffers.push(data_buffer(&mut fbb, &data.to_le_bytes()));
                buffers.len() - 1
            }
            None => 0,
        };
        tensors.push(encode_tensor(
            &mut fbb,
            tensor,
            buffer as u32,
            &mut zero_points,
        ));
    }
    let codes = operator_codes(model);
    let operators: Vec<_> = model
        .operators
        .iter()
        .map(|operator| encode_operator(&mut fbb, operator, codes[&code(&operator.op).0]))
        .collect();
    let mut entries = Vec::new();
    for entry in metadata {
        buffers.push(data_buffer(&mut fbb, &entry.data));
        let name = fbb.create_string(&entry.name);
        let args = fb::MetadataArgs {
            name: Some(name),
            buffer: (buffers.len() - 1) as u32,
        };
        entries.push(fb::Metadata::create(&mut fbb, &args));
    }
    let subgraph = encode_subgraph(&mut fbb, model, &tensors, &operators);
    let mut ordered: Vec<(i32, u32)> = codes.iter().map(|(&c, &i)| (c, i)).collect();
    ordered.sort_by_key(|&(_, index)| index);
    let operator_codes: Vec<_> = ordered
        .iter()
        .map(|&(builtin, _)| encode_code(&mut fbb, fb::BuiltinOperator(builtin)))
        .collect();
    let args = fb::ModelArgs {
        version: SCHEMA_VERSION,
        operator_codes: Some(fbb.create_vector(&operator_codes)),
        subgraphs: Some(fbb.create_vector(&[subgraph])),
        description: Some(fbb.create_string(description)),
        buffers: Some(fbb.create_vector(&buffers)),
        metadata: Some(fbb.create_vector(&entries)),
        ..Default::default()
    };
    let root = fb::Model::create(&mut fbb, &args);
    fb::finish_model_buffer(&mut fbb, root);
    fbb.finished_data().to_vec()
}

fn empty_buffer<'a>(fbb: &mut FlatBufferBuilder<'a>) -> WIPOffset<fb::Buffer<'a>> {
    fb::Buffer::create(fbb, &fb::BufferArgs::default())
}

fn data_buffer<'a>(fbb: &mut FlatBufferBuilder<'a>, bytes: &[u8]) -> WIPOffset<fb::Buffer<'a>> {
    let data = fbb.create_vector(bytes);
    let args = fb::BufferArgs { data: Some(data) };
    fb::Buffer::create(fbb, &args)
}

/// The operator codes the model uses, each with its index in `Model.operator_codes`, in
/// order of first use.
fn operator_codes(model: &Model) -> BTreeMap<i32, u32> {
    let mut codes = BTreeMap::new();
    for operator in &model.operators {
        let next = codes.len() as u32;
        codes.entry(code(&operator.op).0).or_insert(next);
    }
    codes
}

fn encode_code<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    builtin: fb::BuiltinOperator,
) -> WIPOffset<fb::OperatorCode<'a>> {
    let args = fb::OperatorCodeArgs {
        // Readers before schema 3a look only at the byte-sized field.
        deprecated_builtin_code: builtin.0.min(127) as i8,
        builtin_code: builtin,
        version: 1,
        ..Default::default()
    };
    fb::OperatorCode::create(fbb, &args)
}

fn element_type(element: ElementType) -> fb::TensorType {
    match element {
        ElementType::F32 => fb::TensorType::FLOAT32,
        ElementType::F16 => fb::TensorType::FLOAT16,
        ElementType::I32 => fb::TensorType::INT32,
        ElementType::I8 => fb::TensorType::INT8,
        ElementType::U8 => fb::TensorType::UINT8,
        ElementType::I64 => fb::TensorType::INT64,
    }
}

/// Zero-point vectors already in the buffer, by content. A per-channel quantized
/// convolution has as many zero points for its weights and as many for its bias, all 0:
/// the flatbuffer format lets tables share one vector, and sharing it keeps an int8 file
/// from carrying eight bytes per channel twice (TFLite's schema stores them as int64).
#[derive(Default)]
struct ZeroPoints<'a>(HashMap<Vec<i64>, WIPOffset<Vector<'a, i64>>>);

impl<'a> ZeroPoints<'a> {
    fn vector(
        &mut self,
        fbb: &mut FlatBufferBuilder<'a>,
        values: &[i64],
    ) -> WIPOffset<Vector<'a, i64>> {
        *self
            .0
            .entry(values.to_vec())
            .or_insert_with(|| fbb.create_vector(values))
    }
}

fn encode_tensor<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    tensor: &Tensor,
    buffer: u32,
    zero_points: &mut ZeroPoints<'a>,
) -> WIPOffset<fb::Tensor<'a>> {
    let shape: Vec<i32> = tensor.shape.iter().map(|&d| d as i32).collect();
    let shape = fbb.create_vector(&shape);
    let name = fbb.create_string(&tensor.name);
    let quantization = tensor
        .quantization
        .as_ref()
        .map(|q| encode_quantization(fbb, q, zero_points));
    let args = fb::TensorArgs {
        shape: Some(shape),
        type_: element_type(tensor.element),
        buffer,
        name: Some(name),
        quantization,
        ..Default::default()
    };
    fb::Tensor::create(fbb, &args)
}

fn encode_quantization<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    quantization: &Quantization,
    zero_points: &mut ZeroPoints<'a>,
) -> WIPOffset<fb::QuantizationParameters<'a>> {
    let zero_point = zero_points.vector(fbb, &quantization.zero_point);
    let args = fb::QuantizationParametersArgs {
        scale: Some(fbb.create_vector(&quantization.scale)),
        zero_point: Some(zero_point),
        quantized_dimension: quantization.axis as i32,
        ..Default::default()
    };
    fb::QuantizationParameters::create(fbb, &args)
}

fn encode_subgraph<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    model: &Model,
    tensors: &[WIPOffset<fb::Tensor<'a>>],
    operators: &[WIPOffset<fb::Operator<'a>>],
) -> WIPOffset<fb::SubGraph<'a>> {
    let ids = |ids: &[usize]| ids.iter().map(|&i| i as i32).collect::<Vec<i32>>();
    let args = fb::SubGraphArgs {
        tensors: Some(fbb.create_vector(tensors)),
        inputs: Some(fbb.create_vector(&ids(&model.inputs))),
        outputs: Some(fbb.create_vector(&ids(&model.outputs))),
        operators: Some(fbb.create_vector(operators)),
        name: Some(fbb.create_string("main")),
    };
    fb::SubGraph::create(fbb, &args)
}

/// The builtin code of an operator.
pub(super) fn code(op: &Op) -> fb::BuiltinOperator {
    match op {
        Op::Conv2d { .. } => fb::BuiltinOperator::CONV_2D,
        Op::DepthwiseConv2d { .. } => fb::BuiltinOperator::DEPTHWISE_CONV_2D,
        Op::AveragePool2d { .. } => fb::BuiltinOperator::AVERAGE_POOL_2D,
        Op::Mean { .. } => fb::BuiltinOperator::MEAN,
        Op::Add { .. } => fb::BuiltinOperator::ADD,
        Op::Mul { .. } => fb::BuiltinOperator::MUL,
        Op::Pad => fb::BuiltinOperator::PAD,
        Op::Reshape => fb::BuiltinOperator::RESHAPE,
        Op::FullyConnected { .. } => fb::BuiltinOperator::FULLY_CONNECTED,
        Op::Softmax { .. } => fb::BuiltinOperator::SOFTMAX,
        Op::Relu => fb::BuiltinOperator::RELU,
        Op::Relu6 => fb::BuiltinOperator::RELU6,
        Op::Quantize => fb::BuiltinOperator::QUANTIZE,
        Op::Dequantize => fb::BuiltinOperator::DEQUANTIZE,
    }
}

fn activation(activation: Activation) -> fb::ActivationFunctionType {
    match activation {
        Activation::None => fb::ActivationFunctionType::NONE,
        Activation::Relu => fb::ActivationFunctionType::RELU,
        Activation::Relu6 => fb::ActivationFunctionType::RELU6,
    }
}

fn padding(padding: Padding) -> fb::Padding {
    match padding {
        Padding::Same => fb::Padding::SAME,
        Padding::Valid => fb::Padding::VALID,
    }
}

fn encode_operator<'a>(
    fbb: &mut FlatBufferBuilder<'a>,
    operator: &Operator,
    opcode_index: u32,
) -> WIPOffset<fb::Operator<'a>> {
    let (options_type, options) = encode_options(fbb, &operator.op);
    let inputs: Vec<i32> = operator.inputs.iter().map(|&i| i as i32).collect();
    let outputs: Vec<i32> = operator.outputs.iter().map(|&i| i as i32).collect();
    let args = fb::OperatorArgs {
        opcode_index,
        inputs: Some(fbb.create_vector(&inputs)),
        outputs: Some(fbb.create_vector(&outputs)),
        builtin_options_type: options_type,
        builtin_options: options,
        ..Default::default()
    };
    fb::Operator::create(fbb, &args)
}

type Options = (
    fb::BuiltinOptions,
    Option<WIPOffset<flatbuffers::UnionWIPOffset>>,
);

/// The operator's builtin options table, as the union TFLite expects.
fn encode_options(fbb: &mut FlatBufferBuilder<'_>, op: &Op) -> Options {
    use fb::BuiltinOptions as B;
    match *op {
        Op::Conv2d {
            stride,
            dilation,
            padding: pad,
            activation: act,
        } => {
            let args = fb::Conv2DOptionsArgs {
                padding: padding(pad),
                stride_h: stride[0] as i32,
                stride_w: stride[1] as i32,
                dilation_h_factor: dilation[0] as i32,
                dilation_w_factor: dilation[1] as i32,
                fused_activation_function: activation(act),
            };
            let table = fb::Conv2DOptions::create(fbb, &args);
            (B::Conv2DOptions, Some(table.as_union_value()))
        }
        Op::DepthwiseConv2d {
            stride,
            dilation,
            padding: pad,
            multiplier,
            activation: act,
        } => {
            let args = fb::DepthwiseConv2DOptionsArgs {
                padding: padding(pad),
                stride_h: stride[0] as i32,
                stride_w: stride[1] as i32,
                dilation_h_factor: dilation[0] as i32,
                dilation_w_factor: dilation[1] as i32,
                depth_multiplier: multiplier as i32,
                fused_activation_function: activation(act),
            };
            let table = fb::DepthwiseConv2DOptions::create(fbb, &args);
            (B::DepthwiseConv2DOptions, Some(table.as_union_value()))
        }
        Op::AveragePool2d {
            filter,
            stride,
            padding: pad,
            activation: act,
        } => {
            let args = fb::Pool2DOptionsArgs {
                padding: padding(pad),
                stride_h: stride[0] as i32,
                stride_w: stride[1] as i32,
                filter_height: filter[0] as i32,
                filter_width: filter[1] as i32,
                fused_activation_function: activation(act),
            };
            let table = fb::Pool2DOptions::create(fbb, &args);
            (B::Pool2DOptions, Some(table.as_union_value()))
        }
        Op::Mean { keep_dims } => {
            let table = fb::ReducerOptions::create(fbb, &fb::ReducerOptionsArgs { keep_dims });
            (B::ReducerOptions, Some(table.as_union_value()))
        }
        Op::Add { activation: act } => {
            let args = fb::AddOptionsArgs {
                fused_activation_function: activation(act),
                ..Default::default()
            };
            let table = fb::AddOptions::create(fbb, &args);
            (B::AddOptions, Some(table.as_union_value()))
        }
        Op::Mul { activation: act } => {
            let args = fb::MulOptionsArgs {
                fused_activation_function: activation(act),
            };
            let table = fb::MulOptions::create(fbb, &args);
            (B::MulOptions, Some(table.as_union_value()))
        }
        Op::Pad => {
            let table = fb::PadOptions::create(fbb, &fb::PadOptionsArgs {});
            (B::PadOptions, Some(table.as_union_value()))
        }
        // The new shape is the second input; TFLite reads that one first.
        Op::Reshape => {
            let table = fb::ReshapeOptions::create(fbb, &fb::ReshapeOptionsArgs::default());
            (B::ReshapeOptions, Some(table.as_union_value()))
        }
        Op::FullyConnected { activation: act } => {
            let args = fb::FullyConnectedOptionsArgs {
                fused_activation_function: activation(act),
                ..Default::default()
            };
            let table = fb::FullyConnectedOptions::create(fbb, &args);
            (B::FullyConnectedOptions, Some(table.as_union_value()))
        }
        Op::Softmax { beta } => {
            let table = fb::SoftmaxOptions::create(fbb, &fb::SoftmaxOptionsArgs { beta });
            (B::SoftmaxOptions, Some(table.as_union_value()))
        }
        Op::Quantize => {
            let table = fb::QuantizeOptions::create(fbb, &fb::QuantizeOptionsArgs {});
            (B::QuantizeOptions, Some(table.as_union_value()))
        }
        Op::Dequantize => {
            let table = fb::DequantizeOptions::create(fbb, &fb::DequantizeOptionsArgs {});
            (B::DequantizeOptions, Some(table.as_union_value()))
        }
        Op::Relu | Op::Relu6 => (B::NONE, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::tflite::ir::Data;

    fn quantized(model: &mut Model, name: &str, channels: usize) {
        let id = model.add_constant(name, vec![channels], Data::I8(vec![1; channels]));
        model.tensors[id].quantization = Some(Quantization {
            scale: (1..=channels).map(|c| c as f32 / 100.0).collect(),
            zero_point: vec![0; channels],
            axis: 0,
        });
    }

    /// Equal zero-point vectors are stored once and shared by the tensors' quantization
    /// tables; different ones stay apart, and every tensor still reads its own values.
    #[test]
    fn equal_zero_points_share_one_vector() {
        let mut model = Model::default();
        quantized(&mut model, "weights", 4);
        quantized(&mut model, "bias", 4);
        quantized(&mut model, "other", 3);
        let bytes = encode(&model, "", &[]);
        let root = fb::root_as_model(&bytes).expect("a valid flatbuffer");
        let tensors = root.subgraphs().unwrap().get(0).tensors().unwrap();
        let zero_points: Vec<_> = (0..3)
            .map(|i| tensors.get(i).quantization().unwrap().zero_point().unwrap())
            .collect();
        let lengths: Vec<usize> = zero_points.iter().map(|v| v.len()).collect();
        assert_eq!(lengths, [4, 4, 3]);
        assert!(zero_points.iter().all(|v| v.iter().all(|z| z == 0)));
        let at = |i: usize| zero_points[i].bytes().as_ptr();
        assert_eq!(at(0), at(1), "equal zero points are one vector");
        assert_ne!(at(0), at(2));
        let scales = tensors.get(1).quantization().unwrap().scale().unwrap();
        assert_eq!(
            scales.iter().collect::<Vec<f32>>(),
            [0.01, 0.02, 0.03, 0.04]
        );
    }
}
