//! Makes the test fixtures of tests/tflite_int8.rs (see make_int8_fixtures.py there): a
//! small model with every operator flowers quantizes, deterministic weights, calibrated
//! on deterministic inputs, written as int8 (float and uint8 ends), float16 and float32.
//! (`flowers export --quantize` does the same for retrained graphs.)
//!
//!     cargo run --release --example tflite_quantized -- tests/fixtures/tflite/tiny_
use anyhow::Result;

use flowers::graph::tflite::ir::{Activation, Data, Model, Op, Operator, Padding};
use flowers::graph::tflite::quantize::{calibration, float16, int8, Io};
use flowers::graph::tflite::write;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    tiny(&args)
}

/// A deterministic value in [-1, 1) for index `i` of stream `k`: exact in f32, and the
/// same formula in make_int8_fixtures.py.
fn wave(i: usize, k: usize) -> f32 {
    ((i * 37 + k * 101) % 256) as f32 / 128.0 - 1.0
}

/// The tiny model: 8x8x3 -> CONV 3x3/2 SAME RELU6 (8) -> DEPTHWISE 3x3 SAME RELU6 -> CONV
/// 1x1 (8) -> ADD with the first conv -> PAD -> AVERAGE_POOL 2x2/2 VALID -> MEAN ->
/// FULLY_CONNECTED (5) -> SOFTMAX.
fn tiny_model() -> Model {
    let mut m = Model::default();
    let constant = |m: &mut Model, name: &str, shape: Vec<usize>, k: usize, scale: f32| {
        let len = shape.iter().product();
        let values = (0..len).map(|i| wave(i, k) * scale).collect();
        m.add_constant(name, shape, Data::F32(values))
    };
    let input = m.add_activation("input", vec![1, 8, 8, 3]);
    m.inputs = vec![input];
    let w1 = constant(&mut m, "conv1/weights", vec![8, 3, 3, 3], 1, 0.5);
    let b1 = constant(&mut m, "conv1/bias", vec![8], 2, 0.1);
    let c1 = m.add_activation("conv1", vec![1, 4, 4, 8]);
    let conv = |activation| Op::Conv2d {
        stride: [2, 2],
        dilation: [1, 1],
        padding: Padding::Same,
        activation,
    };
    m.operators.push(Operator {
        op: conv(Activation::Relu6),
        inputs: vec![input, w1, b1],
        outputs: vec![c1],
    });
    let w2 = constant(&mut m, "dw/weights", vec![1, 3, 3, 8], 3, 0.7);
    let b2 = constant(&mut m, "dw/bias", vec![8], 4, 0.1);
    let d = m.add_activation("dw", vec![1, 4, 4, 8]);
    let dw = Op::DepthwiseConv2d {
        stride: [1, 1],
        dilation: [1, 1],
        padding: Padding::Same,
        multiplier: 1,
        activation: Activation::Relu6,
    };
    m.operators.push(Operator {
        op: dw,
        inputs: vec![c1, w2, b2],
        outputs: vec![d],
    });
    let w3 = constant(&mut m, "pw/weights", vec![8, 1, 1, 8], 5, 0.4);
    let b3 = constant(&mut m, "pw/bias", vec![8], 6, 0.1);
    let p = m.add_activation("pw", vec![1, 4, 4, 8]);
    let pw = Op::Conv2d {
        stride: [1, 1],
        dilation: [1, 1],
        padding: Padding::Valid,
        activation: Activation::None,
    };
    m.operators.push(Operator {
        op: pw,
        inputs: vec![d, w3, b3],
        outputs: vec![p],
    });
    let sum = m.add_activation("add", vec![1, 4, 4, 8]);
    m.operators.push(Operator {
        op: Op::Add {
            activation: Activation::None,
        },
        inputs: vec![p, c1],
        outputs: vec![sum],
    });
    let pads = m.add_constant(
        "pad/paddings",
        vec![4, 2],
        Data::I32(vec![0, 0, 1, 1, 1, 1, 0, 0]),
    );
    let padded = m.add_activation("pad", vec![1, 6, 6, 8]);
    m.operators.push(Operator {
        op: Op::Pad,
        inputs: vec![sum, pads],
        outputs: vec![padded],
    });
    let pooled = m.add_activation("pool", vec![1, 3, 3, 8]);
    let pool = Op::AveragePool2d {
        filter: [2, 2],
        stride: [2, 2],
        padding: Padding::Valid,
        activation: Activation::None,
    };
    m.operators.push(Operator {
        op: pool,
        inputs: vec![padded],
        outputs: vec![pooled],
    });
    let axes = m.add_constant("mean/axes", vec![2], Data::I32(vec![1, 2]));
    let mean = m.add_activation("mean", vec![1, 8]);
    m.operators.push(Operator {
        op: Op::Mean { keep_dims: false },
        inputs: vec![pooled, axes],
        outputs: vec![mean],
    });
    let w4 = constant(&mut m, "fc/weights", vec![5, 8], 7, 1.5);
    let b4 = constant(&mut m, "fc/bias", vec![5], 8, 0.2);
    let logits = m.add_activation("logits", vec![1, 5]);
    m.operators.push(Operator {
        op: Op::FullyConnected {
            activation: Activation::None,
        },
        inputs: vec![mean, w4, b4],
        outputs: vec![logits],
    });
    let scores = m.add_activation("scores", vec![1, 5]);
    m.operators.push(Operator {
        op: Op::Softmax { beta: 1.0 },
        inputs: vec![logits],
        outputs: vec![scores],
    });
    m.outputs = vec![scores];
    m
}

/// The inputs of the tiny model: calibration uses streams 0..16, the fixture 100..108.
fn tiny_input(k: usize) -> Vec<f32> {
    (0..8 * 8 * 3).map(|i| wave(i, k) * 2.5).collect()
}

fn tiny(args: &[String]) -> Result<()> {
    let [prefix] = args else {
        anyhow::bail!("usage: tflite_quantized OUT_PREFIX");
    };
    let float = tiny_model();
    let inputs: Vec<Vec<f32>> = (0..16).map(tiny_input).collect();
    let ranges = calibration::measure_inputs(&float, &inputs)?;
    for (io, name) in [(Io::Float, "int8"), (Io::Uint8, "int8_uint8")] {
        let quantized = int8::quantize(&float, &ranges, io)?;
        std::fs::write(
            format!("{prefix}{name}.tflite"),
            write::encode(&quantized, "flowers int8 test model", &[]),
        )?;
    }
    std::fs::write(
        format!("{prefix}float16.tflite"),
        write::encode(
            &float16::quantize(&float),
            "flowers float16 test model",
            &[],
        ),
    )?;
    std::fs::write(
        format!("{prefix}float.tflite"),
        write::encode(&float, "flowers float test model", &[]),
    )?;
    Ok(())
}
