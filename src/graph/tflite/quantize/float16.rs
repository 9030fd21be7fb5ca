//! `--quantize float16`, as TensorFlow Lite's converter writes it
//! (`target_spec.supported_types = [tf.float16]`): every float32 constant is stored as
//! float16 and a DEQUANTIZE operator at the start of the model turns it back into the
//! float32 tensor the operators read. Half the size; the computation stays float32.
//! Reading such a file back, [`dequantize_constants`] folds those operators away.

use anyhow::{bail, Result};
use half::f16;

use crate::graph::tflite::ir::{Data, ElementType, Model, Op, Operator};

/// The float16 model of `float`.
pub fn quantize(float: &Model) -> Model {
    let mut model = float.clone();
    let mut dequantize = Vec::new();
    for id in 0..model.tensors.len() {
        if !matches!(model.tensors[id].data, Some(Data::F32(_))) {
            continue;
        }
        let Some(Data::F32(values)) = model.tensors[id].data.take() else {
            unreachable!("checked just above");
        };
        let halves: Vec<u16> = values.iter().map(|&v| f16::from_f32(v).to_bits()).collect();
        let name = format!("{}_float16", model.tensors[id].name);
        let shape = model.tensors[id].shape.clone();
        let stored = model.add_constant(&name, shape, Data::F16(halves));
        dequantize.push(Operator {
            op: Op::Dequantize,
            inputs: vec![stored],
            outputs: vec![id],
        });
    }
    dequantize.append(&mut model.operators);
    model.operators = dequantize;
    model
}

/// Folds each DEQUANTIZE of a float16 constant into a float32 constant, so the float
/// interpreter runs a float16 file as the float32 model it stands for (the float16
/// constants themselves are left unread).
pub fn dequantize_constants(mut model: Model) -> Result<Model> {
    let mut operators = Vec::with_capacity(model.operators.len());
    for operator in std::mem::take(&mut model.operators) {
        let source = operator.inputs.first().map(|&i| &model.tensors[i]);
        let Some(Data::F16(halves)) = source.and_then(|t| t.data.clone()) else {
            operators.push(operator);
            continue;
        };
        if operator.op != Op::Dequantize {
            bail!(
                "{} reads a float16 constant: only DEQUANTIZE may",
                operator.op.name()
            );
        }
        let values = halves.iter().map(|&h| f16::from_bits(h).to_f32()).collect();
        let target = &mut model.tensors[operator.outputs[0]];
        if target.len() != halves.len() {
            bail!(
                "DEQUANTIZE of {} values into {:?}",
                halves.len(),
                target.shape
            );
        }
        target.data = Some(Data::F32(values));
        target.element = ElementType::F32;
    }
    model.operators = operators;
    Ok(model)
}
