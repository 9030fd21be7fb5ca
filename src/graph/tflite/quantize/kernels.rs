//! TFLite's int8 kernels, computing what TensorFlow Lite's builtin kernels compute
//! (`reference_integer_ops`, and the optimized kernels where they round differently:
//! SOFTMAX), so flowers' scores on an int8 `.tflite` equal `tf.lite.Interpreter`'s.
//! Activations are NHWC with batch 1; `offset`s are minus the zero points, as TFLite
//! keeps them.

use super::fixed_point::Multiplier;

/// How an int32 accumulator becomes an int8 output: rescaled by the channel's
/// multiplier, moved to the output zero point, clamped to the fused activation's range.
#[derive(Clone, Debug, PartialEq)]
pub struct Requantize {
    /// One per output channel, or one for all.
    pub multipliers: Vec<Multiplier>,
    pub output_zero_point: i32,
    pub min: i32,
    pub max: i32,
}

impl Requantize {
    fn output(&self, channel: usize, accumulator: i32) -> i8 {
        let multiplier = match self.multipliers.as_slice() {
            [one] => *one,
            many => many[channel],
        };
        let value = multiplier.apply(accumulator) + self.output_zero_point;
        value.clamp(self.min, self.max) as i8
    }
}

/// The sizes of a convolution or pooling window over one NHWC image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Window {
    /// Height, width, channels.
    pub input: [usize; 3],
    pub output: [usize; 3],
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Padding before: top, left.
    pub pad: [usize; 2],
}

impl Window {
    /// The taps of output pixel `(y, x)` that fall inside the image: `(tap index
    /// ky * kernel_w + kx, offset of the input pixel)`. Taps outside are skipped, as
    /// TFLite skips them (an input equal to the zero point contributes nothing).
    fn taps(&self, y: usize, x: usize) -> Vec<(usize, usize)> {
        let [ih, iw, ic] = self.input;
        let [kh, kw] = self.kernel;
        let mut taps = Vec::with_capacity(kh * kw);
        for ky in 0..kh {
            let Some(iy) = (y * self.stride[0] + ky * self.dilation[0]).checked_sub(self.pad[0])
            else {
                continue;
            };
            for kx in 0..kw {
                let Some(ix) =
                    (x * self.stride[1] + kx * self.dilation[1]).checked_sub(self.pad[1])
                else {
                    continue;
                };
                if iy < ih && ix < iw {
                    taps.push((ky * kw + kx, (iy * iw + ix) * ic));
                }
            }
        }
        taps
    }
}

fn dot(a: &[i8], b: &[i8]) -> i32 {
    a.iter()
        .zip(b)
        .map(|(&p, &q)| i32::from(p) * i32::from(q))
        .sum()
}

fn sum(values: &[i8]) -> i32 {
    values.iter().map(|&v| i32::from(v)).sum()
}

/// CONV_2D, per-channel (`ConvPerChannel`): filter OHWI, int32 bias, `acc = bias +
/// sum(filter * (input + input_offset))`. Computed as `sum(filter * input) + input_offset
/// * sum(filter)` per tap: the same integers, with the dot products vectorisable.
pub fn conv2d(
    input: &[i8],
    input_offset: i32,
    filter: &[i8],
    bias: &[i32],
    window: &Window,
    requantize: &Requantize,
) -> Vec<i8> {
    let [_, _, ic] = window.input;
    let [oh, ow, oc] = window.output;
    let taps_per_channel = window.kernel[0] * window.kernel[1];
    let tap_sums: Vec<i32> = filter.chunks_exact(ic).map(sum).collect();
    let mut output = Vec::with_capacity(oh * ow * oc);
    for y in 0..oh {
        for x in 0..ow {
            let taps = window.taps(y, x);
            for (o, &b) in bias.iter().enumerate() {
                let mut acc = b;
                for &(tap, at) in &taps {
                    let t = o * taps_per_channel + tap;
                    let weights = &filter[t * ic..(t + 1) * ic];
                    acc += dot(&input[at..at + ic], weights) + input_offset * tap_sums[t];
                }
                output.push(requantize.output(o, acc));
            }
        }
    }
    output
}

/// DEPTHWISE_CONV_2D, per-channel (`DepthwiseConvPerChannel`): filter [1, kh, kw,
/// C * multiplier], output channel `c * multiplier + m`.
pub fn depthwise_conv2d(
    input: &[i8],
    input_offset: i32,
    filter: &[i8],
    bias: &[i32],
    multiplier: usize,
    window: &Window,
    requantize: &Requantize,
) -> Vec<i8> {
    let [_, _, ic] = window.input;
    let [oh, ow, oc] = window.output;
    let mut output = Vec::with_capacity(oh * ow * oc);
    let mut acc = vec![0i32; oc];
    for y in 0..oh {
        for x in 0..ow {
            acc.copy_from_slice(bias);
            for (tap, at) in window.taps(y, x) {
                let weights = &filter[tap * oc..(tap + 1) * oc];
                let pixel = &input[at..at + ic];
                for (c, &value) in pixel.iter().enumerate() {
                    let shifted = i32::from(value) + input_offset;
                    for m in 0..multiplier {
                        let o = c * multiplier + m;
                        acc[o] += i32::from(weights[o]) * shifted;
                    }
                }
            }
            output.extend(
                acc.iter()
                    .enumerate()
                    .map(|(o, &a)| requantize.output(o, a)),
            );
        }
    }
    output
}

/// FULLY_CONNECTED (`reference_integer_ops::FullyConnected`): weights [out, in],
/// `acc = bias + sum((w + filter_offset) * (x + input_offset))`.
pub fn fully_connected(
    input: &[i8],
    input_offset: i32,
    weights: &[i8],
    filter_offset: i32,
    bias: &[i32],
    requantize: &Requantize,
) -> Vec<i8> {
    let depth = input.len();
    let input_sum = sum(input);
    bias.iter()
        .enumerate()
        .map(|(o, &b)| {
            let w = &weights[o * depth..(o + 1) * depth];
            let acc = b
                + dot(input, w)
                + input_offset * sum(w)
                + filter_offset * input_sum
                + depth as i32 * input_offset * filter_offset;
            requantize.output(o, acc)
        })
        .collect()
}

/// AVERAGE_POOL_2D: the mean of the taps inside the image, rounded half away from zero
/// (`(acc +- count / 2) / count`), input and output sharing their quantization.
pub fn average_pool(input: &[i8], window: &Window, min: i32, max: i32) -> Vec<i8> {
    let [_, _, c] = window.input;
    let [oh, ow, _] = window.output;
    let mut output = Vec::with_capacity(oh * ow * c);
    let mut acc = vec![0i32; c];
    for y in 0..oh {
        for x in 0..ow {
            acc.fill(0);
            let taps = window.taps(y, x);
            for &(_, at) in &taps {
                for (a, &v) in acc.iter_mut().zip(&input[at..at + c]) {
                    *a += i32::from(v);
                }
            }
            let count = taps.len().max(1) as i32;
            output.extend(acc.iter().map(|&a| {
                let rounded = if a > 0 {
                    (a + count / 2) / count
                } else {
                    (a - count / 2) / count
                };
                rounded.clamp(min, max) as i8
            }));
        }
    }
    output
}

/// ADD's rescaling (`reference_integer_ops::Add`): both inputs brought to twice the
/// larger input scale with 20 bits of headroom, summed, then rescaled to the output.
#[derive(Clone, Debug, PartialEq)]
pub struct AddParams {
    pub input_offsets: [i32; 2],
    pub input_multipliers: [Multiplier; 2],
    pub output: Requantize,
}

/// The left shift TFLite's int8 ADD gives its inputs.
const ADD_LEFT_SHIFT: i32 = 20;

impl AddParams {
    /// As `PrepareGeneralSubOp`/`Add`'s prepare compute them from the three scales.
    pub fn new(scales: [f32; 3], zero_points: [i32; 3], min: i32, max: i32) -> AddParams {
        let twice_max = 2.0 * f64::from(scales[0].max(scales[1]));
        let input = |i: usize| Multiplier::new(f64::from(scales[i]) / twice_max);
        let output = twice_max / (f64::from(1 << ADD_LEFT_SHIFT) * f64::from(scales[2]));
        AddParams {
            input_offsets: [-zero_points[0], -zero_points[1]],
            input_multipliers: [input(0), input(1)],
            output: Requantize {
                multipliers: vec![Multiplier::new(output)],
                output_zero_point: zero_points[2],
                min,
                max,
            },
        }
    }

    fn scaled(&self, i: usize, value: i8) -> i32 {
        let shifted = (i32::from(value) + self.input_offsets[i]) * (1 << ADD_LEFT_SHIFT);
        self.input_multipliers[i].apply(shifted)
    }
}

/// ADD of two int8 tensors of the same shape (flowers' graphs add residuals, never
/// broadcast).
pub fn add(a: &[i8], b: &[i8], params: &AddParams) -> Vec<i8> {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            params
                .output
                .output(0, params.scaled(0, x) + params.scaled(1, y))
        })
        .collect()
}

/// SOFTMAX int8 -> int8 as TFLite's optimized kernel computes it on x86: a table of
/// `exp(-input_scale * beta * d)` for the 256 distances `d` from the row's maximum,
/// summed in float, each probability divided by the output scale and rounded half away
/// from zero onto the output zero point.
pub fn softmax(
    input: &[i8],
    input_scale: f32,
    beta: f32,
    output_scale: f32,
    output_zero: i32,
) -> Vec<i8> {
    let scale = -input_scale * beta;
    let table: Vec<f32> = (0..256).map(|d| (scale * d as f32).exp()).collect();
    let max = input.iter().copied().max().unwrap_or(0);
    let exp = |v: i8| table[(i32::from(max) - i32::from(v)) as usize];
    let sum: f32 = input.iter().map(|&v| exp(v)).sum();
    let inverse = 1.0 / (sum * output_scale);
    input
        .iter()
        .map(|&v| ((exp(v) * inverse).round() as i32 + output_zero).clamp(-128, 127) as i8)
        .collect()
}

/// QUANTIZE float -> int8/uint8 (`AffineQuantize`): `round(x / scale) + zero_point`,
/// clamped to `[min, max]`.
pub fn quantize(input: &[f32], scale: f32, zero_point: i32, min: i32, max: i32) -> Vec<i32> {
    input
        .iter()
        .map(|&x| ((x / scale).round() as i32 + zero_point).clamp(min, max))
        .collect()
}

/// QUANTIZE int8 <-> uint8 (`Requantize`): `(q - input_zero) * (input_scale /
/// output_scale) + output_zero`, clamped.
pub fn requantize(
    input: &[i32],
    input_zero: i32,
    multiplier: Multiplier,
    output_zero: i32,
    min: i32,
    max: i32,
) -> Vec<i32> {
    input
        .iter()
        .map(|&q| (multiplier.apply(q - input_zero) + output_zero).clamp(min, max))
        .collect()
}

/// DEQUANTIZE: `scale * (q - zero_point)`, in double as TFLite's kernel computes it.
pub fn dequantize(input: &[i32], scale: f32, zero_point: i32) -> Vec<f32> {
    input
        .iter()
        .map(|&q| (f64::from(scale) * f64::from(q - zero_point)) as f32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(zero: i32) -> Requantize {
        Requantize {
            multipliers: vec![Multiplier::new(1.0)],
            output_zero_point: zero,
            min: -128,
            max: 127,
        }
    }

    #[test]
    fn conv_skips_padding_and_applies_the_input_offset() {
        // 2x2 input, one channel, 3x3 kernel of ones, padding 1: each output is the sum
        // of (x + offset) over the taps inside the image.
        let window = Window {
            input: [2, 2, 1],
            output: [2, 2, 1],
            kernel: [3, 3],
            stride: [1, 1],
            dilation: [1, 1],
            pad: [1, 1],
        };
        let out = conv2d(&[1, 2, 3, 4], 1, &[1; 9], &[10], &window, &identity(0));
        assert_eq!(out, [24, 24, 24, 24]);
        let depthwise =
            depthwise_conv2d(&[1, 2, 3, 4], 1, &[1; 9], &[10], 1, &window, &identity(0));
        assert_eq!(depthwise, out);
    }

    #[test]
    fn average_pool_and_softmax_round_as_tflite() {
        let window = Window {
            input: [2, 2, 1],
            output: [1, 1, 1],
            kernel: [2, 2],
            stride: [2, 2],
            dilation: [1, 1],
            pad: [0, 0],
        };
        assert_eq!(average_pool(&[1, 2, 2, 1], &window, -128, 127), [2]); // 1.5 -> 2
        assert_eq!(average_pool(&[-1, -2, -2, -1], &window, -128, 127), [-2]); // -1.5 -> -2
                                                                               // Equal logits: 1/3 each at scale 1/256 is 85.33 -> 85 - 128.
        assert_eq!(softmax(&[5, 5, 5], 0.1, 1.0, 1.0 / 256.0, -128), [-43; 3]);
        let scores = softmax(&[100, 0, -100], 0.1, 1.0, 1.0 / 256.0, -128);
        assert_eq!(scores, [127, -128, -128]);
    }

    #[test]
    fn add_rescales_both_inputs() {
        // Inputs at scale 0.5 and 0.25, output at 1.0: 4 * 0.5 + 8 * 0.25 = 4.
        let params = AddParams::new([0.5, 0.25, 1.0], [0, 0, 0], -128, 127);
        assert_eq!(add(&[4, -4], &[8, -8], &params), [4, -4]);
        let zero_points = AddParams::new([1.0, 1.0, 1.0], [3, -2, 1], -128, 127);
        assert_eq!(add(&[3], &[-2], &zero_points), [1]);
    }

    #[test]
    fn quantize_and_dequantize_round_trip() {
        let q = quantize(&[0.0, 0.26, -1.0, 100.0], 0.5, -10, -128, 127);
        assert_eq!(q, [-10, -9, -12, 127]);
        assert_eq!(dequantize(&[-10, -12], 0.5, -10), [0.0, -1.0]);
        let to_uint8 = requantize(&[-128, 0, 127], -5, Multiplier::new(1.0), 123, 0, 255);
        assert_eq!(to_uint8, [0, 128, 255]);
    }
}
