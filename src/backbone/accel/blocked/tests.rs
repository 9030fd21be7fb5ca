//! The blocked ops against the definitions, on every path this CPU has (plain Rust, AVX2,
//! AVX-512) and every shape the kernels treat apart: whole and partial blocks, pixel and
//! group tails, strides, padding, 3x3, 5x5 and other kernels.

use super::*;

/// The definition, written as plainly as possible.
pub(crate) fn reference(g: &Geometry, data: &[f32], kernel: &[f32], bias: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; g.channels * g.out_h * g.out_w];
    let planes = if g.dense { g.inputs } else { 1 };
    for c in 0..g.channels {
        for oy in 0..g.out_h {
            for ox in 0..g.out_w {
                let mut sum = bias[c] as f64;
                for p in 0..planes {
                    let input = if g.dense { p } else { c };
                    for ky in 0..g.kernel_h {
                        for kx in 0..g.kernel_w {
                            let y = (oy * g.stride_h + ky) as isize - g.pad_top as isize;
                            let x = (ox * g.stride_w + kx) as isize - g.pad_left as isize;
                            if y < 0 || x < 0 || y >= g.height as isize || x >= g.width as isize {
                                continue;
                            }
                            let v = data[(input * g.height + y as usize) * g.width + x as usize];
                            let k = kernel[((c * planes + p) * g.kernel_h + ky) * g.kernel_w + kx];
                            sum += (v * k) as f64;
                        }
                    }
                }
                out[(c * g.out_h + oy) * g.out_w + ox] = sum as f32;
            }
        }
    }
    out
}

pub(crate) fn geometry(
    size: (usize, usize),
    kernel: usize,
    stride: usize,
    pads: [usize; 4],
) -> Geometry {
    let [top, left, bottom, right] = pads;
    Geometry {
        batched: true,
        dense: false,
        inputs: 3,
        channels: 3,
        height: size.0,
        width: size.1,
        kernel_h: kernel,
        kernel_w: kernel,
        stride_h: stride,
        stride_w: stride,
        pad_top: top,
        pad_left: left,
        out_h: (size.0 + top + bottom - kernel) / stride + 1,
        out_w: (size.1 + left + right - kernel) / stride + 1,
    }
}

pub(crate) fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

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
    // Groups of 1 to 4 blocks, partial blocks in and out, pixel tails of each tile, more
    // input blocks than a pass over the pixels takes.
    for (inputs, outputs) in [
        (3, 8),
        (16, 16),
        (13, 20),
        (32, 24),
        (24, 40),
        (40, 72),
        (16, 32),
        (8, 56),
        (72, 40),
        (136, 16),
        (9, 1),
    ] {
        for (height, width) in [(1, 1), (1, 5), (3, 9), (5, 6), (7, 7), (10, 10)] {
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
            for isa in Isa::supported() {
                let (weights, padded) = pointwise::pack(&shape, isa, &kernel, &bias).unwrap();
                let weights = floats(&weights);
                let padded = floats(&padded);
                for clip in CLIPS {
                    let mut out = vec![f32::NAN; shape.output().blocked_len()];
                    pointwise::convolve(isa, &shape, clip, &blocked, &weights, &padded, &mut out);
                    let what = format!("{isa:?} {shape:?}");
                    assert_close(&what, &planes_of(&shape.output(), &out), &expected, clip);
                }
            }
        }
    }
}

/// A layer big enough to be split between two threads of a pool gives the bits it gives
/// on one thread, with an odd number of groups.
#[test]
fn pointwise_split_on_a_pool_is_the_whole_layer_bit_for_bit() {
    let input = Planes {
        batched: true,
        channels: 64,
        height: 14,
        width: 14,
    };
    let shape = pointwise::Shape {
        input,
        outputs: 136,
    };
    let (kernel, bias) = (values(136 * 64, 3), values(136, 4));
    let mut blocked = vec![0f32; input.blocked_len()];
    to_blocked(&input, &values(64 * input.pixels(), 6), &mut blocked);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    assert!(!pointwise::worth_a_second_thread(1 << 30));
    assert!(pool.install(|| pointwise::worth_a_second_thread(1 << 20)));
    for isa in Isa::supported() {
        let (weights, padded) = pointwise::pack(&shape, isa, &kernel, &bias).unwrap();
        let (weights, padded) = (floats(&weights), floats(&padded));
        let run = || {
            let mut out = vec![f32::NAN; shape.output().blocked_len()];
            pointwise::convolve(
                isa,
                &shape,
                (0.0, 6.0),
                &blocked,
                &weights,
                &padded,
                &mut out,
            );
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        };
        assert_eq!(pool.install(run), run(), "{isa:?}");
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
        for (isa, clip) in Isa::supported()
            .into_iter()
            .flat_map(|i| CLIPS.map(|c| (i, c)))
        {
            let mut out = vec![f32::NAN; output.blocked_len()];
            depthwise::convolve(isa, &g, clip, &blocked, &packed, &padded, &mut out);
            let what = format!("{isa:?} {g:?}");
            assert_close(&what, &planes_of(&output, &out), &expected, clip);
        }
    }
}

#[test]
fn dense_matches_the_definition() {
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
        for (isa, clip) in Isa::supported()
            .into_iter()
            .flat_map(|i| CLIPS.map(|c| (i, c)))
        {
            let mut out = vec![f32::NAN; output.blocked_len()];
            dense::convolve(isa, &g, clip, &data, &weights, &padded, &mut out);
            let what = format!("{isa:?} {g:?}");
            assert_close(&what, &planes_of(&output, &out), &expected, clip);
        }
    }
}

#[test]
fn packing_in_the_kernels_own_memory_lays_out_what_packing_a_copy_does() {
    // Whole blocks (packed where the kernel was), partial blocks and padded inputs (packed
    // from the kernel into new memory), and a kernel another owner still holds.
    for (outputs, inputs) in [(64, 32), (136, 64), (20, 16), (16, 20), (1024, 40)] {
        for max in [2, 4] {
            let kernel = values(outputs * inputs, 9);
            let bias = values(outputs, 10);
            let rows = inputs.div_ceil(BLOCK) * BLOCK;
            let (expected, expected_bias) =
                pack_grouped(&kernel, &bias, (outputs, inputs), rows, max).unwrap();
            let tensor = || {
                let t = Tensor::from_shape(&[outputs, inputs, 1, 1], &kernel).unwrap();
                Arc::new(t)
            };
            let unique = tensor();
            let address = unique
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .as_ptr();
            let (packed, packed_bias) =
                pack_grouped_owned(unique, &bias, (outputs, inputs), rows, max).unwrap();
            assert_eq!(
                floats(&packed),
                floats(&expected),
                "{outputs}x{inputs} by {max}"
            );
            assert_eq!(floats(&packed_bias), floats(&expected_bias));
            let in_place = packed
                .try_as_plain_ram()
                .unwrap()
                .as_slice::<f32>()
                .unwrap()
                .as_ptr();
            assert_eq!(in_place == address, rows == inputs && outputs % BLOCK == 0);
            let shared = tensor();
            let holder = shared.clone();
            let (packed, _) =
                pack_grouped_owned(shared, &bias, (outputs, inputs), rows, max).unwrap();
            assert_eq!(floats(&packed), floats(&expected));
            assert_eq!(floats(&holder), kernel);
        }
    }
}
