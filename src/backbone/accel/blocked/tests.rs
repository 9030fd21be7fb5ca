//! The blocked ops against the definitions, on every shape the kernels treat apart: whole
//! and partial blocks, pixel and group tails, strides, padding, 3x3, 5x5 and other kernels.

use super::*;
use crate::backbone::accel::cpu::Avx2Fma;
use crate::backbone::accel::direct_conv::tests::{geometry, reference, values};
use crate::backbone::accel::direct_conv::Geometry;

/// The real channels of a blocked result, as planes; panics if a padding lane is not
/// finite, as the next layer would multiply it by a zero weight.
fn planes_of(planes: &Planes, blocked: &[f32]) -> Vec<f32> {
    assert!(blocked.iter().all(|v| v.is_finite()), "{planes:?}");
    let mut out = vec![0f32; planes.channels * planes.pixels()];
    from_blocked(planes, blocked, &mut out);
    out
}

fn assert_close(what: &str, ours: &[f32], expected: &[f32], (low, high): (f32, f32)) {
    assert_eq!(ours.len(), expected.len(), "{what}");
    for (i, (o, e)) in ours.iter().zip(expected).enumerate() {
        let e = e.max(low).min(high);
        assert!((o - e).abs() < 1e-4, "{what} [{i}] {o} vs {e}");
    }
}

/// The floats of a packed tensor.
fn floats(tensor: &Tensor) -> Vec<f32> {
    let plain = tensor.try_as_plain_ram().unwrap();
    plain.as_slice::<f32>().unwrap().to_vec()
}

const CLIPS: [(f32, f32); 2] = [(f32::NEG_INFINITY, f32::INFINITY), (-0.5, 0.5)];

#[test]
fn conversions_round_trip() {
    for channels in [1, 8, 13, 24] {
        let planes = Planes {
            batched: true,
            channels,
            height: 3,
            width: 5,
        };
        let data = values(channels * 15, 3);
        let mut blocked = vec![f32::NAN; planes.blocked_len()];
        to_blocked(&planes, &data, &mut blocked);
        assert_eq!(planes_of(&planes, &blocked), data);
        // Channel 9 of pixel (1, 2): block 1, lane 1.
        if channels > 9 {
            assert_eq!(blocked[(15 + 7) * BLOCK + 1], data[9 * 15 + 7]);
        }
    }
}

#[test]
fn pointwise_matches_the_definition() {
    let Some(isa) = Avx2Fma::detect() else {
        eprintln!("no AVX2 and FMA here: the blocked ops do not run");
        return;
    };
    // Groups of 1 to 4 blocks, partial blocks in and out, pixel tails of each tile.
    for (inputs, outputs) in [
        (3, 8),
        (16, 16),
        (13, 20),
        (32, 24),
        (24, 40),
        (40, 72),
        (9, 1),
    ] {
        for (height, width) in [(1, 1), (1, 5), (7, 7), (10, 10)] {
            let input = Planes {
                batched: false,
                channels: inputs,
                height,
                width,
            };
            let shape = pointwise::Shape { input, outputs };
            let pixels = input.pixels();
            let data = values(inputs * pixels, 5);
            let (kernel, bias) = (values(outputs * inputs, 7), values(outputs, 9));
            let mut expected = vec![0f32; outputs * pixels];
            for o in 0..outputs {
                for p in 0..pixels {
                    let sum: f64 = (0..inputs)
                        .map(|i| (kernel[o * inputs + i] * data[i * pixels + p]) as f64)
                        .sum();
                    expected[o * pixels + p] = (sum + bias[o] as f64) as f32;
                }
            }
            let mut blocked = vec![0f32; input.blocked_len()];
            to_blocked(&input, &data, &mut blocked);
            let (weights, padded) = pointwise::pack(&shape, &kernel, &bias).unwrap();
            let weights = floats(&weights);
            let padded = floats(&padded);
            for clip in CLIPS {
                let mut out = vec![f32::NAN; shape.output().blocked_len()];
                pointwise::convolve(isa, &shape, clip, &blocked, &weights, &padded, &mut out);
                let what = format!("{shape:?}");
                assert_close(&what, &planes_of(&shape.output(), &out), &expected, clip);
            }
        }
    }
}

/// Depthwise geometries: both strides, 3x3 and 5x5 (unrolled) and 1x3 (not), symmetric
/// and one-sided padding, images narrower than a tile, a partial last block.
fn depthwise_cases() -> Vec<Geometry> {
    let cases = [
        geometry((112, 112), 3, 1, [1, 1, 1, 1]),
        geometry((56, 56), 3, 2, [0, 0, 1, 1]),
        geometry((7, 7), 3, 1, [1, 1, 1, 1]),
        geometry((13, 17), 3, 2, [1, 1, 1, 1]),
        geometry((9, 33), 5, 1, [2, 2, 2, 2]),
        geometry((20, 23), 5, 2, [1, 2, 2, 1]),
        geometry((6, 6), 3, 3, [0, 0, 0, 0]),
        geometry((1, 1), 3, 1, [1, 1, 1, 1]),
        geometry((2, 3), 5, 1, [2, 2, 2, 2]),
    ];
    let mut all: Vec<Geometry> = cases.to_vec();
    all.push(Geometry {
        kernel_h: 1,
        out_h: 8,
        ..geometry((8, 11), 3, 1, [0, 1, 0, 1])
    });
    all.iter()
        .zip([8, 16, 11, 19, 8, 13, 3, 8, 5, 9].iter().cycle())
        .map(|(g, &channels)| Geometry {
            inputs: channels,
            channels,
            ..*g
        })
        .collect()
}

#[test]
fn depthwise_matches_the_definition() {
    let Some(isa) = Avx2Fma::detect() else {
        eprintln!("no AVX2 and FMA here: the blocked ops do not run");
        return;
    };
    for g in depthwise_cases() {
        let (input, output) = (input_planes(&g), output_planes(&g));
        let data = values(g.channels * input.pixels(), 7);
        let taps = g.kernel_h * g.kernel_w;
        let (kernel, bias) = (values(g.channels * taps, 11), values(g.channels, 13));
        let expected = reference(&g, &data, &kernel, &bias);
        let mut blocked = vec![0f32; input.blocked_len()];
        to_blocked(&input, &data, &mut blocked);
        let (packed, padded) = pack_taps(&kernel, &bias, g.channels, taps).unwrap();
        let packed = floats(&packed);
        let padded = floats(&padded);
        for clip in CLIPS {
            let mut out = vec![f32::NAN; output.blocked_len()];
            depthwise::convolve(isa, &g, clip, &blocked, &packed, &padded, &mut out);
            assert_close(
                &format!("{g:?}"),
                &planes_of(&output, &out),
                &expected,
                clip,
            );
        }
    }
}

#[test]
fn dense_matches_the_definition() {
    let Some(isa) = Avx2Fma::detect() else {
        eprintln!("no AVX2 and FMA here: the blocked ops do not run");
        return;
    };
    // MobileNet's stem, and groups of 1 to 4 blocks and more, partial blocks, pixel tails.
    let cases = [
        (geometry((224, 224), 3, 2, [0, 0, 1, 1]), 3, 32),
        (geometry((24, 24), 3, 2, [1, 1, 1, 1]), 3, 5),
        (geometry((9, 17), 3, 1, [1, 1, 1, 1]), 2, 16),
        (geometry((13, 10), 5, 2, [2, 1, 2, 2]), 4, 24),
        (geometry((7, 8), 3, 1, [0, 0, 0, 0]), 1, 40),
    ];
    for (g, inputs, channels) in cases {
        let g = Geometry {
            dense: true,
            inputs,
            channels,
            ..g
        };
        let output = output_planes(&g);
        let data = values(inputs * g.height * g.width, 7);
        let taps = dense::taps(&g);
        let (kernel, bias) = (values(channels * taps, 11), values(channels, 13));
        let expected = reference(&g, &data, &kernel, &bias);
        let (weights, padded) = pack_dense(&g, &kernel, &bias).unwrap();
        let weights = floats(&weights);
        let padded = floats(&padded);
        for clip in CLIPS {
            let mut out = vec![f32::NAN; output.blocked_len()];
            dense::convolve(isa, &g, clip, &data, &weights, &padded, &mut out);
            assert_close(
                &format!("{g:?}"),
                &planes_of(&output, &out),
                &expected,
                clip,
            );
        }
    }
}
