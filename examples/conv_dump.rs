use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::cnn::Conv;
fn main() -> TractResult<()> {
    let bytes = flowers::backbone::DEFAULT_MODEL;
    let model = tract_onnx::onnx()
        .model_for_read(&mut &bytes[..])?
        .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())?
        .with_outputs_by_name(["features"])?
        .into_typed()?
        .into_decluttered()?;
    for n in model.nodes() {
        if let Some(c) = n.op_as::<Conv>() {
            let facts: Vec<String> = n.inputs.iter().map(|i| format!("{:?}", model.outlet_fact(*i).unwrap())).collect();
            println!("{} group={} {:?}\n   inputs {:?}", n.name, c.group, c.pool_spec, facts);
        } else {
            println!("{} {}", n.name, n.op.name());
        }
    }
    Ok(())
}
