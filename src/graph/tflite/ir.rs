//! flowers' own picture of a TensorFlow Lite model: one subgraph of tensors and builtin
//! operators, in the layouts TFLite defines (NHWC activations, OHWI convolution weights,
//! 1HW(C*M) depthwise weights, [out, in] fully connected weights).
//!
//! Everything goes through this: the exporter builds it from a retrained graph, the
//! quantizer rewrites it, [`super::write`] encodes it with the official schema, and
//! [`super::read`] decodes a file back into it for [`super::run`]. Keeping the flatbuffer
//! types out of the rest of flowers keeps the generated code in two files.

use anyhow::{bail, Result};

/// Index of a tensor in [`Model::tensors`].
pub type TensorId = usize;

/// The element types flowers writes and reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElementType {
    F32,
    /// IEEE half precision, stored as its bits (weights of `--quantize float16`).
    F16,
    I32,
    I8,
    U8,
    I64,
}

impl ElementType {
    /// Bytes per element in a buffer.
    pub fn size(self) -> usize {
        match self {
            ElementType::F32 | ElementType::I32 => 4,
            ElementType::F16 => 2,
            ElementType::I8 | ElementType::U8 => 1,
            ElementType::I64 => 8,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ElementType::F32 => "float32",
            ElementType::F16 => "float16",
            ElementType::I32 => "int32",
            ElementType::I8 => "int8",
            ElementType::U8 => "uint8",
            ElementType::I64 => "int64",
        }
    }
}

/// A constant tensor's values, row-major in the tensor's shape.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    F32(Vec<f32>),
    /// float16 bits.
    F16(Vec<u16>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    I64(Vec<i64>),
}

impl Data {
    pub fn element_type(&self) -> ElementType {
        match self {
            Data::F32(_) => ElementType::F32,
            Data::F16(_) => ElementType::F16,
            Data::I32(_) => ElementType::I32,
            Data::I8(_) => ElementType::I8,
            Data::U8(_) => ElementType::U8,
            Data::I64(_) => ElementType::I64,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Data::F32(v) => v.len(),
            Data::F16(v) => v.len(),
            Data::I32(v) => v.len(),
            Data::I8(v) => v.len(),
            Data::U8(v) => v.len(),
            Data::I64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Little-endian bytes, as a TFLite buffer holds them.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        match self {
            Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I8(v) => v.iter().map(|&x| x as u8).collect(),
            Data::U8(v) => v.clone(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        }
    }

    /// The values of `element` type in little-endian `bytes` (whose length is a multiple
    /// of the element size: the reader checks it).
    pub fn from_le_bytes(element: ElementType, bytes: &[u8]) -> Data {
        fn chunks<const N: usize, T>(bytes: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            bytes
                .chunks_exact(N)
                .map(|c| f(c.try_into().expect("chunks_exact gives N bytes")))
                .collect()
        }
        match element {
            ElementType::F32 => Data::F32(chunks(bytes, f32::from_le_bytes)),
            ElementType::F16 => Data::F16(chunks(bytes, u16::from_le_bytes)),
            ElementType::I32 => Data::I32(chunks(bytes, i32::from_le_bytes)),
            ElementType::I8 => Data::I8(bytes.iter().map(|&b| b as i8).collect()),
            ElementType::U8 => Data::U8(bytes.to_vec()),
            ElementType::I64 => Data::I64(chunks(bytes, i64::from_le_bytes)),
        }
    }
}

/// TFLite's affine quantization: `real = scale * (q - zero_point)`, one pair per tensor
/// or, for per-channel weights, one per index of dimension `axis`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Quantization {
    pub scale: Vec<f32>,
    pub zero_point: Vec<i64>,
    /// `quantized_dimension`: 0 for per-tensor and for OHWI/[out,in] weights, 3 for
    /// depthwise 1HWC weights.
    pub axis: usize,
}

/// One tensor: an activation (no data) or a constant.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub element: ElementType,
    pub data: Option<Data>,
    pub quantization: Option<Quantization>,
}

impl Tensor {
    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The activation TFLite fuses into the operator before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Activation {
    #[default]
    None,
    Relu,
    Relu6,
}

impl Activation {
    /// Applies the activation to a float.
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::None => x,
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
        }
    }
}

/// TFLite's two paddings. `Same` pads `total / 2` before and the rest after, where
/// `total = max((out - 1) * stride + (k - 1) * dilation + 1 - in, 0)` and
/// `out = ceil(in / stride)`; other paddings are an explicit PAD before a `Valid` op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Padding {
    Same,
    Valid,
}

impl Padding {
    /// Output size and padding before, for one spatial dimension.
    pub fn output(
        self,
        input: usize,
        kernel: usize,
        stride: usize,
        dilation: usize,
    ) -> Option<(usize, usize)> {
        let span = (kernel.checked_sub(1)?)
            .checked_mul(dilation)?
            .checked_add(1)?;
        if stride == 0 {
            return None;
        }
        match self {
            Padding::Same => {
                let out = input.div_ceil(stride);
                let total = ((out.checked_sub(1)?) * stride + span).saturating_sub(input);
                Some((out, total / 2))
            }
            Padding::Valid => Some(((input.checked_sub(span)?) / stride + 1, 0)),
        }
    }
}

/// Height and width strides or dilations.
pub type Pair = [usize; 2];

/// The builtin operators flowers writes and runs, with their options. Inputs and outputs
/// follow TFLite's operator definitions (for instance CONV_2D: input, filter, bias).
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// input [1,H,W,Ci], filter OHWI, bias [O].
    Conv2d {
        stride: Pair,
        dilation: Pair,
        padding: Padding,
        activation: Activation,
    },
    /// input [1,H,W,C], filter [1,kh,kw,C*M], bias [C*M].
    DepthwiseConv2d {
        stride: Pair,
        dilation: Pair,
        padding: Padding,
        multiplier: usize,
        activation: Activation,
    },
    AveragePool2d {
        filter: Pair,
        stride: Pair,
        padding: Padding,
        activation: Activation,
    },
    /// input, axes (int32 constant).
    Mean {
        keep_dims: bool,
    },
    /// Two inputs with NumPy broadcasting.
    Add {
        activation: Activation,
    },
    Mul {
        activation: Activation,
    },
    /// input, paddings (int32 constant [rank, 2]); pads with zeros.
    Pad,
    /// input, new shape (int32 constant).
    Reshape,
    /// input [batch, in], weights [out, in], bias [out].
    FullyConnected {
        activation: Activation,
    },
    Softmax {
        beta: f32,
    },
    Relu,
    Relu6,
    /// float -> int8/uint8 (or int8 <-> uint8 requantization).
    Quantize,
    /// int8/uint8/float16 -> float.
    Dequantize,
}

impl Op {
    /// TFLite's name of the operator, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "CONV_2D",
            Op::DepthwiseConv2d { .. } => "DEPTHWISE_CONV_2D",
            Op::AveragePool2d { .. } => "AVERAGE_POOL_2D",
            Op::Mean { .. } => "MEAN",
            Op::Add { .. } => "ADD",
            Op::Mul { .. } => "MUL",
            Op::Pad => "PAD",
            Op::Reshape => "RESHAPE",
            Op::FullyConnected { .. } => "FULLY_CONNECTED",
            Op::Softmax { .. } => "SOFTMAX",
            Op::Relu => "RELU",
            Op::Relu6 => "RELU6",
            Op::Quantize => "QUANTIZE",
            Op::Dequantize => "DEQUANTIZE",
        }
    }

    /// The fused activation, for the operators that have one.
    pub fn activation_mut(&mut self) -> Option<&mut Activation> {
        match self {
            Op::Conv2d { activation, .. }
            | Op::DepthwiseConv2d { activation, .. }
            | Op::AveragePool2d { activation, .. }
            | Op::Add { activation }
            | Op::Mul { activation }
            | Op::FullyConnected { activation } => Some(activation),
            _ => None,
        }
    }
}

/// One operator applied to tensors.
#[derive(Clone, Debug, PartialEq)]
pub struct Operator {
    pub op: Op,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
}

/// A whole model: one subgraph, in execution order.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Model {
    pub tensors: Vec<Tensor>,
    pub operators: Vec<Operator>,
    pub inputs: Vec<TensorId>,
    pub outputs: Vec<TensorId>,
}

impl Model {
    /// Adds a tensor and returns its id.
    pub fn add_tensor(&mut self, tensor: Tensor) -> TensorId {
        self.tensors.push(tensor);
        self.tensors.len() - 1
    }

    /// Adds an activation tensor (no data) of type float32.
    pub fn add_activation(&mut self, name: &str, shape: Vec<usize>) -> TensorId {
        self.add_tensor(Tensor {
            name: name.to_string(),
            shape,
            element: ElementType::F32,
            data: None,
            quantization: None,
        })
    }

    /// Adds a constant tensor.
    pub fn add_constant(&mut self, name: &str, shape: Vec<usize>, data: Data) -> TensorId {
        self.add_tensor(Tensor {
            name: name.to_string(),
            shape,
            element: data.element_type(),
            data: Some(data),
            quantization: None,
        })
    }

    /// The constant values of tensor `id`, if it is a float32 constant.
    pub fn constant_f32(&self, id: TensorId) -> Option<&[f32]> {
        match &self.tensors.get(id)?.data {
            Some(Data::F32(values)) => Some(values),
            _ => None,
        }
    }

    /// The constant values of tensor `id`, if it is an int32 constant.
    pub fn constant_i32(&self, id: TensorId) -> Option<&[i32]> {
        match &self.tensors.get(id)?.data {
            Some(Data::I32(values)) => Some(values),
            _ => None,
        }
    }

    /// The operators that read tensor `id`.
    pub fn consumers(&self, id: TensorId) -> impl Iterator<Item = usize> + '_ {
        (0..self.operators.len()).filter(move |&i| self.operators[i].inputs.contains(&id))
    }

    /// The single input tensor, as flowers' models have one.
    pub fn input(&self) -> Result<&Tensor> {
        match self.inputs.as_slice() {
            [id] => Ok(&self.tensors[*id]),
            ids => bail!("the model has {} inputs, not one image input", ids.len()),
        }
    }

    /// The single output tensor.
    pub fn output(&self) -> Result<&Tensor> {
        match self.outputs.as_slice() {
            [id] => Ok(&self.tensors[*id]),
            ids => bail!("the model has {} outputs, not one", ids.len()),
        }
    }
}
