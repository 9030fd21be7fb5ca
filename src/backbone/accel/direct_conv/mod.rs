//! A vectorised direct convolution, swapped into the backbone's tract plan in place of
//! tract's own for depthwise layers and for the stem (a dense convolution on RGB).
//!
//! Why: profiling bottleneck extraction on MobileNet v1 showed tract's depthwise convolution
//! taking a large share of inference time, most of it in the stride-2 layers, which tract
//! runs one multiply at a time (its vector kernel only covers unit stride), and the rest in
//! short rows. The stem, 3 input channels, went through im2col and a matrix product with a
//! 27-deep inner dimension, then a separate ReLU6 pass (BENCHMARKS.md). tract stays the
//! engine: it loads, declutters, optimises and runs the model; this op is one more node type
//! in its graph, used only for float convolutions whose geometry is fully known (see
//! [`super::apply`]), and it takes in the ReLU6 (or ReLU) that follows.
//!
//! How: each input plane is copied once into a zero-padded scratch split into `stride`
//! column phases, so every tap of every output row reads one contiguous run. An output row
//! is then `clamp(bias + sum(tap * run))`, computed eight outputs at a time with AVX2 and
//! FMA, or sixteen with AVX-512F. Depthwise layers on small planes (28 wide or less) are
//! instead taken eight channels at a time, lanes along channels (`x86_64_blocked.rs`), so
//! short rows waste no lanes. Results match tract's to float rounding.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86_64_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_64_avx512;
#[cfg(target_arch = "x86_64")]
mod x86_64_blocked;

use super::cpu::Kernels;
use super::op::{eval_f32, Clip};

/// Dense convolutions with at most this many input channels (a network's stem, on RGB) run
/// here too: tract lowers them to a matrix product with a 27-deep inner dimension, its least
/// efficient shape. Deeper inputs are tract's.
const MAX_DENSE_INPUTS: usize = 4;

/// The geometry of `node` if it is a float convolution this op can run (depthwise, or dense
/// on a few input channels): batch one, channels first, constant OIHW kernel and bias, no
/// dilation, concrete shapes.
pub(crate) fn eligible(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Geometry>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let (inputs, channels) = (conv.input_channels(), conv.output_channels());
    let depthwise = conv.group == inputs && channels == inputs;
    let dense = conv.group == 1 && inputs <= MAX_DENSE_INPUTS;
    let plain = conv.q_params.is_none()
        && conv.kernel_fmt == KernelFormat::OIHW
        && (depthwise || dense)
        && spec.kernel_shape.len() == 2
        && spec.dilations().iter().all(|&d| d == 1)
        && node.inputs.len() == 3;
    if !plain {
        return Ok(None);
    }
    let input = model.outlet_fact(node.inputs[0])?;
    let kernel = model.outlet_fact(node.inputs[1])?;
    let bias = model.outlet_fact(node.inputs[2])?;
    let Some(shape) = input.shape.as_concrete() else {
        return Ok(None);
    };
    let batched = match (spec.data_format, shape.len()) {
        (DataFormat::NCHW, 4) if shape[0] == 1 => true,
        (DataFormat::CHW, 3) => false,
        _ => return Ok(None),
    };
    let (kh, kw) = (spec.kernel_shape[0], spec.kernel_shape[1]);
    let consts_fit = kernel
        .konst
        .as_ref()
        .is_some_and(|k| k.shape() == [channels, if dense { inputs } else { 1 }, kh, kw])
        && bias.konst.as_ref().is_some_and(|b| b.len() == channels);
    if input.datum_type != f32::datum_type() || !consts_fit {
        return Ok(None);
    }
    let hw = &shape[shape.len() - 2..];
    let padded = spec.computed_padding(hw);
    if padded.iter().any(|d| d.convoluted == 0) {
        return Ok(None);
    }
    Ok(Some(Geometry {
        batched,
        dense,
        inputs,
        channels,
        height: hw[0],
        width: hw[1],
        kernel_h: kh,
        kernel_w: kw,
        stride_h: spec.stride(0),
        stride_w: spec.stride(1),
        pad_top: padded[0].pad_before,
        pad_left: padded[1].pad_before,
        out_h: padded[0].convoluted,
        out_w: padded[1].convoluted,
    }))
}

/// Everything about one layer that is fixed when the plan is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Geometry {
    /// Whether the tensors carry a leading batch axis of 1 (NCHW) or none (CHW).
    pub batched: bool,
    /// Every output channel reads every input channel (else channel `c` reads channel `c`).
    pub dense: bool,
    /// Input channels.
    pub inputs: usize,
    /// Output channels.
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel_h: usize,
    pub kernel_w: usize,
    pub stride_h: usize,
    pub stride_w: usize,
    pub pad_top: usize,
    pub pad_left: usize,
    pub out_h: usize,
    pub out_w: usize,
}

impl Geometry {
    /// Whether every size the kernels divide by or count down from is at least one.
    pub(crate) fn is_valid(&self) -> bool {
        [self.out_h, self.out_w, self.stride_h, self.stride_w]
            .iter()
            .chain(&[self.kernel_h, self.kernel_w, self.channels, self.inputs])
            .all(|&n| n >= 1)
    }

    /// Padded rows actually read by some output.
    fn rows(&self) -> usize {
        (self.out_h - 1) * self.stride_h + self.kernel_h
    }

    /// Width of one column phase of the padded scratch.
    fn phase_width(&self) -> usize {
        ((self.out_w - 1) * self.stride_w + self.kernel_w).div_ceil(self.stride_w)
    }

    fn scratch_len(&self) -> usize {
        self.stride_w * self.rows() * self.phase_width()
    }

    /// Input planes one output channel reads.
    fn planes_per_output(&self) -> usize {
        if self.dense {
            self.inputs
        } else {
            1
        }
    }

    /// Where tap `(ky, kx)` of output row 0 starts in the scratch, for every tap in OIHW
    /// kernel order (input plane, then row-major); the scratch of a dense layer holds every
    /// input plane, one after another. Output row `oy` adds `oy * stride_h * phase_width`.
    fn tap_offsets(&self) -> Vec<usize> {
        let (rows, width) = (self.rows(), self.phase_width());
        let mut offsets =
            Vec::with_capacity(self.planes_per_output() * self.kernel_h * self.kernel_w);
        for plane in 0..self.planes_per_output() {
            for ky in 0..self.kernel_h {
                for kx in 0..self.kernel_w {
                    let phase = kx % self.stride_w;
                    let offset = (phase * rows + ky) * width + kx / self.stride_w;
                    offsets.push(plane * self.scratch_len() + offset);
                }
            }
        }
        offsets
    }

    /// Panics unless every tap of every output row of `out` reads inside `scratch`, one
    /// tap per offset, and `out` holds whole rows: the bounds the vector kernels read and
    /// write by without checks.
    fn check_rows(&self, offsets: &[usize], scratch: &[f32], taps: &[f32], out: &[f32]) {
        let whole_rows = self.out_w >= 1 && out.len().is_multiple_of(self.out_w);
        assert!(whole_rows && taps.len() == offsets.len());
        let row_step = self.stride_h * self.phase_width();
        let last_row = (out.len() / self.out_w).saturating_sub(1) * row_step;
        let end = last_row + self.out_w;
        assert!(offsets.iter().all(|&o| end + o <= scratch.len()));
    }

    fn output_shape(&self) -> Vec<usize> {
        let mut shape = vec![self.channels, self.out_h, self.out_w];
        if self.batched {
            shape.insert(0, 1);
        }
        shape
    }

    /// Copies channel plane `plane` into `scratch`: zero padding around it, columns split by
    /// phase, so phase `p` holds padded columns `p, p + stride_w, p + 2 * stride_w, ...`.
    /// Only the plane's own values are written: `scratch` must start zeroed, and the padding,
    /// at the same places for every plane, stays zero from one fill to the next.
    #[inline(always)]
    fn fill_scratch(&self, plane: &[f32], scratch: &mut [f32]) {
        let (rows, width, stride) = (self.rows(), self.phase_width(), self.stride_w);
        if stride == 2 {
            self.fill_scratch_pairs(plane, scratch);
            return;
        }
        for phase in 0..stride {
            // Phase columns j whose source column j * stride + phase - pad_left is inside.
            let first = (self.pad_left.saturating_sub(phase))
                .div_ceil(stride)
                .min(width);
            let end = (self.width + self.pad_left)
                .saturating_sub(phase)
                .div_ceil(stride)
                .clamp(first, width);
            for r in 0..rows {
                let dst = &mut scratch[(phase * rows + r) * width..][..width];
                let y = r.wrapping_sub(self.pad_top);
                if y >= self.height || first == end {
                    continue;
                }
                let src = &plane[y * self.width..][..self.width];
                let start = first * stride + phase - self.pad_left;
                gather(&src[start..], &mut dst[first..end], stride);
            }
        }
    }

    /// [`Geometry::fill_scratch`] for stride 2: each input row is read once and split into
    /// both phases, a pair of columns at a time, instead of once per phase.
    #[inline(always)]
    fn fill_scratch_pairs(&self, plane: &[f32], scratch: &mut [f32]) {
        let (rows, width) = (self.rows(), self.phase_width());
        let (phase0, phase1) = scratch[..2 * rows * width].split_at_mut(rows * width);
        // Input columns some output reads: padded column x + pad_left below 2 * width.
        let end = self.width.min((2 * width).saturating_sub(self.pad_left));
        for r in 0..rows {
            let y = r.wrapping_sub(self.pad_top);
            if y >= self.height {
                continue;
            }
            let src = &plane[y * self.width..][..self.width];
            let (even, odd) = (
                &mut phase0[r * width..][..width],
                &mut phase1[r * width..][..width],
            );
            // A first column landing in phase 1 goes alone; then pairs (phase 0, phase 1).
            let mut x = 0;
            if !self.pad_left.is_multiple_of(2) && end > 0 {
                put_column(even, odd, self.pad_left, src[0]);
                x = 1;
            }
            let pairs = end.saturating_sub(x) / 2;
            let j = (x + self.pad_left) / 2;
            let targets = even[j..j + pairs].iter_mut().zip(&mut odd[j..j + pairs]);
            for ((e, o), pair) in targets.zip(src[x..x + 2 * pairs].chunks_exact(2)) {
                *e = pair[0];
                *o = pair[1];
            }
            let rest = x + 2 * pairs;
            for (x, &value) in src[..end].iter().enumerate().skip(rest) {
                put_column(even, odd, x + self.pad_left, value);
            }
        }
    }
}

/// Planes up to this size are prefetched all at once (L1's size).
const PREFETCH_AT_ONCE_BYTES: usize = 32 * 1024;

/// Output rows computed between two shares of a larger plane's prefetch.
const PREFETCH_BAND_ROWS: usize = 8;

/// Asks the CPU to bring `values` into its L2 cache, a line at a time, while the current
/// plane is computed.
#[inline(always)]
fn prefetch(values: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    for line in values.chunks(16) {
        // SAFETY: a prefetch is only a hint; it reads nothing and never faults.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                line.as_ptr().cast(),
            )
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// Puts the value of padded column `padded` into its phase row (stride 2).
#[inline(always)]
fn put_column(even: &mut [f32], odd: &mut [f32], padded: usize, value: f32) {
    let phase = if padded.is_multiple_of(2) { even } else { odd };
    phase[padded / 2] = value;
}

/// `dst[j] = src[j * stride]` for every `j` of `dst`, stride 1 spelled out so it compiles
/// to block copies rather than one load at a time (stride 2 has its own fill,
/// [`Geometry::fill_scratch_pairs`]).
#[inline(always)]
fn gather(src: &[f32], dst: &mut [f32], stride: usize) {
    if stride == 1 {
        copy_run(&src[..dst.len()], dst);
        return;
    }
    for (d, s) in dst.iter_mut().zip(src.iter().step_by(stride)) {
        *d = *s;
    }
}

/// `dst.copy_from_slice(src)` for the short runs of a plane row, in blocks of eight whose
/// length is known at compile time, the last block overlapping the one before: a few vector
/// moves inline instead of a call to `memmove` per row.
#[inline(always)]
fn copy_run(src: &[f32], dst: &mut [f32]) {
    const BLOCK: usize = 8;
    let len = dst.len();
    assert_eq!(src.len(), len);
    if len < BLOCK {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = *s;
        }
        return;
    }
    for (d, s) in dst.chunks_exact_mut(BLOCK).zip(src.chunks_exact(BLOCK)) {
        d.copy_from_slice(s);
    }
    dst[len - BLOCK..].copy_from_slice(&src[len - BLOCK..]);
}

/// The convolution node: inputs are the data, the OIHW kernel and the bias, as in tract's
/// own `Conv`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DirectConv {
    pub geometry: Geometry,
    /// The clamp applied as outputs are stored (a fused ReLU6).
    pub clip: Clip,
    /// The kernels this CPU runs.
    pub kernels: Kernels,
}

/// What is done to each output besides the taps: `min(max(bias + sum, low), high)`.
#[derive(Clone, Copy, Debug)]
struct Finish {
    bias: f32,
    low: f32,
    high: f32,
}

impl Op for DirectConv {
    fn name(&self) -> StaticName {
        "FlowersDirectConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.geometry)])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for DirectConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let shape = self.geometry.output_shape();
        // SAFETY: `convolve` writes every output: one full row per output row of every
        // channel (its asserts match `output` to the geometry).
        unsafe {
            eval_f32(inputs, &shape, |data, kernel, bias, output| {
                convolve(
                    &self.geometry,
                    self.clip.bounds(),
                    data,
                    kernel,
                    bias,
                    output,
                    self.kernels,
                )
            })
        }
    }
}

impl TypedOp for DirectConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 3,
            "a convolution takes data, kernel and bias"
        );
        Ok(tvec!(f32::fact(self.geometry.output_shape())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let g = &self.geometry;
        let fmas = g.channels * g.out_h * g.out_w * g.kernel_h * g.kernel_w * g.planes_per_output();
        Ok(tvec!((Cost::FMA(f32::datum_type()), fmas.into())))
    }

    as_op!();
}

/// Runs the whole layer: `data` is `inputs x H x W`, `kernel` `channels x (1 or inputs) x
/// KH x KW` (depthwise or dense), `output` `channels x OH x OW`, computed by `kernels`.
///
/// Sound whatever its arguments: slices of the wrong length and degenerate geometries
/// panic here, before any kernel runs.
pub(crate) fn convolve(
    g: &Geometry,
    (low, high): (f32, f32),
    data: &[f32],
    kernel: &[f32],
    bias: &[f32],
    output: &mut [f32],
    kernels: Kernels,
) {
    assert!(g.is_valid(), "degenerate convolution geometry {g:?}");
    let (plane, out_plane) = (g.height * g.width, g.out_h * g.out_w);
    let taps = g.planes_per_output() * g.kernel_h * g.kernel_w;
    assert!(data.len() == g.inputs * plane && kernel.len() == g.channels * taps);
    assert!(bias.len() == g.channels && output.len() == g.channels * out_plane);
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = channel_blocked(g, kernels) {
        x86_64_blocked::depthwise(isa, g, (low, high), data, kernel, bias, output);
        return;
    }
    let offsets = g.tap_offsets();
    let finish = |c: usize| Finish {
        bias: bias[c],
        low,
        high,
    };
    let len = g.scratch_len();
    let mut scratch = vec![0f32; len * g.planes_per_output()];
    if g.dense {
        for (i, input) in data.chunks_exact(plane).enumerate() {
            fill(g, input, &mut scratch[i * len..][..len], kernels);
        }
        // Every output channel reads all of the scratch, which for a stem on a large image
        // outgrows L2: taking the channels a band of output rows at a time keeps the rows
        // they read in cache.
        let row_step = g.stride_h * g.phase_width();
        let band = (DENSE_BAND_BYTES / (4 * row_step * g.stride_w * g.inputs)).max(1);
        for first in (0..g.out_h).step_by(band) {
            let count = band.min(g.out_h - first);
            let scratch = &scratch[first * row_step..];
            let mut c = 0;
            while c < g.channels {
                let len = count * g.out_w;
                let at = |c: usize| c * out_plane + first * g.out_w;
                #[cfg(target_arch = "x86_64")]
                if let (Kernels::Avx2(isa), true) = (kernels, c + 1 < g.channels) {
                    // Two output channels share every load of the input rows.
                    let (head, tail) = output.split_at_mut(at(c + 1));
                    let pair = [&mut head[at(c)..][..len], &mut tail[..len]];
                    let taps = [c, c + 1].map(|c| &kernel[c * taps..][..taps]);
                    let finish = [finish(c), finish(c + 1)];
                    x86_64_avx2::rows_pair(isa, g, &offsets, scratch, taps, finish, pair);
                    c += 2;
                    continue;
                }
                let out = &mut output[at(c)..][..len];
                rows(
                    g,
                    &offsets,
                    scratch,
                    &kernel[c * taps..][..taps],
                    finish(c),
                    out,
                    kernels,
                );
                c += 1;
            }
        }
        return;
    }
    // The next plane comes in from memory while this one is computed: all of it at once if
    // it fits in L1, else a share of it before each band of output rows, so the requests
    // are spread over the computation instead of queueing up at its start.
    let bands = match plane * 4 > PREFETCH_AT_ONCE_BYTES {
        true => g.out_h.div_ceil(PREFETCH_BAND_ROWS),
        false => 1,
    };
    let band_rows = g.out_h.div_ceil(bands);
    let row_step = g.stride_h * g.phase_width();
    for c in 0..g.channels {
        fill(g, &data[c * plane..][..plane], &mut scratch, kernels);
        let next = data
            .get((c + 1) * plane..(c + 2) * plane)
            .unwrap_or_default();
        let mut shares = next.chunks(next.len().div_ceil(bands).max(1));
        let taps = &kernel[c * taps..][..taps];
        let out = &mut output[c * out_plane..][..out_plane];
        for first in (0..g.out_h).step_by(band_rows) {
            prefetch(shares.next().unwrap_or_default());
            let out = &mut out[first * g.out_w..][..band_rows.min(g.out_h - first) * g.out_w];
            let scratch = &scratch[first * row_step..];
            rows(g, &offsets, scratch, taps, finish(c), out, kernels);
        }
    }
}

/// Depthwise layers whose output rows are at most this wide are taken eight channels at a
/// time (`x86_64_blocked.rs`); on wider planes the row kernels were measured as fast or
/// faster (BENCHMARKS.md).
const CHANNEL_BLOCKED_MAX_WIDTH: usize = 28;

/// The AVX2 token, if this depthwise layer is taken eight channels at a time. The AVX-512
/// path takes the same AVX2 code: its 16-lane rows would waste even more of each vector
/// on these planes.
#[cfg(target_arch = "x86_64")]
fn channel_blocked(g: &Geometry, kernels: Kernels) -> Option<super::cpu::Avx2Fma> {
    if g.dense || g.out_w > CHANNEL_BLOCKED_MAX_WIDTH {
        return None;
    }
    match kernels {
        Kernels::Avx2(isa) => Some(isa),
        Kernels::Avx512(isa) => Some(isa.avx2()),
        _ => None,
    }
}

/// Bytes of scratch a dense convolution's band of output rows reads (see [`convolve`]): half
/// of a 32 KiB L1 data cache.
const DENSE_BAND_BYTES: usize = 16 * 1024;

/// Fills the scratch from one input plane (see [`Geometry::fill_scratch`]).
/// The 512-bit path fills with the AVX2 code: the copies are short rows, and what they
/// cost is memory traffic, not vector width.
fn fill(g: &Geometry, plane: &[f32], scratch: &mut [f32], kernels: Kernels) {
    match kernels {
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx2(isa) => x86_64_avx2::fill(isa, g, plane, scratch),
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx512(isa) => x86_64_avx2::fill(isa.avx2(), g, plane, scratch),
        _ => g.fill_scratch(plane, scratch),
    }
}

/// Computes one output channel (or a band of its rows) from the filled scratch.
fn rows(
    g: &Geometry,
    offsets: &[usize],
    scratch: &[f32],
    taps: &[f32],
    finish: Finish,
    out: &mut [f32],
    kernels: Kernels,
) {
    match kernels {
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx2(isa) => x86_64_avx2::rows(isa, g, offsets, scratch, taps, finish, out),
        #[cfg(target_arch = "x86_64")]
        Kernels::Avx512(isa) => x86_64_avx512::rows(isa, g, offsets, scratch, taps, finish, out),
        #[cfg(all(test, target_arch = "x86_64"))]
        Kernels::Emulated512 => {
            x86_64_avx512::rows_emulated(g, offsets, scratch, taps, finish, out)
        }
        _ => portable::rows(g, offsets, scratch, taps, finish, out),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The definition, written as plainly as possible.
    pub(crate) fn reference(g: &Geometry, data: &[f32], kernel: &[f32], bias: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; g.channels * g.out_h * g.out_w];
        let planes = g.planes_per_output();
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
                                if y < 0 || x < 0 || y >= g.height as isize || x >= g.width as isize
                                {
                                    continue;
                                }
                                let v =
                                    data[(input * g.height + y as usize) * g.width + x as usize];
                                let k =
                                    kernel[((c * planes + p) * g.kernel_h + ky) * g.kernel_w + kx];
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

    #[test]
    fn matches_the_definition_for_every_geometry_and_path() {
        let cases = [
            geometry((112, 112), 3, 1, [1, 1, 1, 1]),
            geometry((112, 112), 3, 2, [0, 0, 1, 1]),
            geometry((7, 7), 3, 1, [1, 1, 1, 1]),
            geometry((14, 14), 3, 2, [0, 0, 1, 1]),
            geometry((13, 17), 3, 2, [1, 1, 1, 1]),
            geometry((9, 33), 5, 1, [2, 2, 2, 2]),
            geometry((20, 23), 5, 2, [1, 2, 2, 1]),
            geometry((6, 6), 3, 3, [0, 0, 0, 0]),
            geometry((1, 1), 3, 1, [1, 1, 1, 1]),
            // Channel-blocked depthwise: whole blocks of eight, a partial last block, rows
            // shorter and longer than a block of pixels, 5x5 and stride 2.
            Geometry {
                inputs: 16,
                channels: 16,
                ..geometry((7, 7), 3, 1, [1, 1, 1, 1])
            },
            Geometry {
                inputs: 19,
                channels: 19,
                ..geometry((14, 14), 3, 2, [0, 0, 1, 1])
            },
            Geometry {
                inputs: 11,
                channels: 11,
                ..geometry((13, 10), 5, 1, [2, 2, 2, 2])
            },
            Geometry {
                inputs: 8,
                channels: 8,
                ..geometry((23, 21), 5, 2, [1, 2, 2, 1])
            },
            // Dense, as MobileNet's stem: 3 inputs, more outputs.
            Geometry {
                dense: true,
                channels: 5,
                ..geometry((24, 24), 3, 2, [0, 0, 1, 1])
            },
            Geometry {
                dense: true,
                inputs: 2,
                channels: 4,
                ..geometry((9, 17), 3, 1, [1, 1, 1, 1])
            },
            // A stem large enough to be taken in bands of output rows, the last one short.
            Geometry {
                dense: true,
                channels: 4,
                ..geometry((97, 95), 3, 2, [0, 0, 1, 1])
            },
        ];
        for g in cases {
            let data = values(g.inputs * g.height * g.width, 7);
            let kernel = values(
                g.channels * g.planes_per_output() * g.kernel_h * g.kernel_w,
                11,
            );
            let bias = values(g.channels, 13);
            // Unclamped, and clamped as a fused ReLU6 would be (here to [-0.5, 0.5]).
            for (low, high) in [(f32::NEG_INFINITY, f32::INFINITY), (-0.5, 0.5)] {
                check(&g, (low, high), &data, &kernel, &bias);
            }
        }
    }

    /// Every path this machine can run (portable, emulated 512-bit, AVX2, AVX-512) against
    /// the definition.
    fn check(g: &Geometry, (low, high): (f32, f32), data: &[f32], kernel: &[f32], bias: &[f32]) {
        let expected: Vec<f32> = reference(g, data, kernel, bias)
            .into_iter()
            .map(|v| v.max(low).min(high))
            .collect();
        for kernels in Kernels::supported() {
            let mut out = vec![f32::NAN; expected.len()];
            convolve(g, (low, high), data, kernel, bias, &mut out, kernels);
            for (i, (o, e)) in out.iter().zip(&expected).enumerate() {
                assert!((o - e).abs() < 1e-5, "{g:?} {kernels:?} [{i}] {o} vs {e}");
            }
        }
    }
}
