//! A 1x1 ("pointwise") convolution op for the backbone's tract plan, blocked for the cache.
//!
//! Why: once [`super::direct_conv`] took the depthwise layers, MobileNet v1's 13 pointwise
//! layers were most of inference. tract ran them as a matrix product near the FMA units'
//! peak on small images, but well below it on the early, large ones, where its packed copy
//! of the activations no longer fits the cache (BENCHMARKS.md has the figures). Taking
//! every pointwise layer also spares tract's declutter, which copied each of their weight
//! tensors several times per plan build (see [`super::apply`]).
//!
//! How: the output is `clamp(W x X + bias)` with `W` `outputs x inputs` and `X` `inputs x
//! pixels` (channels first, batch one). The kernel keeps a tile of outputs in twelve AVX2
//! registers, adds `inputs` rank-one updates with FMA, then the bias and the clamp (a fused
//! ReLU6), and stores the tile once. `W` is packed when the plan is built, in bands of
//! output channels, inputs-major; `X` is packed per call, in panels of pixels. Which way the
//! tile lies depends on the image ([`Orientation`]). On AVX-512F CPUs the 512-bit tiles take
//! two panels at a time in twelve 512-bit registers (`x86_64_avx512.rs`), over the same
//! packed layouts.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::nn::DataFormat;

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86_64_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_64_avx512;

use super::cpu::Kernels;
use super::op::{eval_f32, Clip};

/// How a layer's outputs are laid over the kernel's registers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Orientation {
    /// Vector lanes run along pixels: tiles of 6 channels x 16 pixels, so stores are whole
    /// vectors. For large images: their pixels are cut into chunks whose packed copy fits
    /// in L2, and each chunk is finished, all channels, before the next is packed.
    PixelLanes,
    /// Vector lanes run along output channels: tiles of 16 channels x 6 pixels. For small
    /// images (14x14 has 196 pixels, 7x7 49), where panels of 16 pixels would waste much of
    /// the last one; the tile is transposed on its way out.
    ChannelLanes,
}

/// Images with fewer pixels than this use [`Orientation::ChannelLanes`].
const CHANNEL_LANES_BELOW: usize = 28 * 28;

/// Pixels per tile and per panel with [`Orientation::PixelLanes`]: two AVX2 vectors.
const WIDE: usize = 16;

/// Pixels per tile and per panel with [`Orientation::ChannelLanes`].
const NARROW: usize = 6;

/// Bytes of packed activations per chunk ([`Orientation::PixelLanes`]): half of a 1 MiB
/// L2, leaving room for the weights of the band in use and the output rows being written.
const CHUNK_BYTES: usize = 512 * 1024;

/// Output channels up to which a [`Orientation::PixelLanes`] layer may read its data in
/// place instead of packing it ([`Pointwise::in_place`]).
const IN_PLACE_MAX_OUTPUTS: usize = 64;

/// Input channels from which a [`Orientation::PixelLanes`] layer may read its data in
/// place ([`Pointwise::in_place`]).
const IN_PLACE_MIN_INPUTS: usize = 128;

/// Shape of one pointwise layer, fixed when the plan is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Pointwise {
    /// Whether the tensors carry a leading batch axis of 1 (NCHW) or none (CHW).
    pub batched: bool,
    pub inputs: usize,
    pub outputs: usize,
    pub height: usize,
    pub width: usize,
}

impl Pointwise {
    fn pixels(&self) -> usize {
        self.height * self.width
    }

    pub fn orientation(&self) -> Orientation {
        if self.pixels() < CHANNEL_LANES_BELOW {
            Orientation::ChannelLanes
        } else {
            Orientation::PixelLanes
        }
    }

    /// Output channels per band of packed weights: the tile's channels.
    fn band(&self) -> usize {
        match self.orientation() {
            Orientation::PixelLanes => 6,
            Orientation::ChannelLanes => 16,
        }
    }

    fn bands(&self) -> usize {
        self.outputs.div_ceil(self.band())
    }

    fn output_shape(&self) -> Vec<usize> {
        let mut shape = vec![self.outputs, self.height, self.width];
        if self.batched {
            shape.insert(0, 1);
        }
        shape
    }

    /// Whether a [`Orientation::PixelLanes`] layer reads its data in place: when it has
    /// few output channels, fewer than twice its inputs, and many inputs (a projection,
    /// say). Packing pays when many bands reuse each panel; with few bands the packing pass
    /// costs more than it saves, and the few output rows written side by side stay cheap.
    /// Layers with more outputs lost up to half their speed in place, and layers with
    /// fewer inputs lost too, inside the network (BENCHMARKS.md).
    fn in_place(&self) -> bool {
        self.outputs <= IN_PLACE_MAX_OUTPUTS
            && self.outputs < 2 * self.inputs
            && self.inputs >= IN_PLACE_MIN_INPUTS
    }

    /// Pixels packed at a time ([`Orientation::PixelLanes`]): as many whole panels as fit
    /// in [`CHUNK_BYTES`], at least one.
    fn chunk_pixels(&self) -> usize {
        let fit = CHUNK_BYTES / (4 * self.inputs) / WIDE * WIDE;
        fit.clamp(WIDE, self.pixels().next_multiple_of(WIDE))
    }
}

/// A layer [`PointwiseConv`] can take over, found by [`eligible`].
pub(crate) struct Eligible {
    pub shape: Pointwise,
    /// The kernel, `outputs x inputs`, row-major.
    pub kernel: Vec<f32>,
    pub bias: Vec<f32>,
}

impl Eligible {
    /// The weights and bias laid out by [`pack_weights`].
    pub fn packed(&self) -> TractResult<(Tensor, Tensor)> {
        let shape = &self.shape;
        let mut packed = Tensor::zero::<f32>(&[shape.bands() * shape.inputs * shape.band()])?;
        let mut padded = Tensor::zero::<f32>(&[shape.bands() * shape.band()])?;
        pack_weights(
            shape,
            &self.kernel,
            &self.bias,
            packed.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
            padded.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        );
        Ok((packed, padded))
    }
}

/// `node` as a pointwise layer, if it is one this op can run: a float 1x1 `Conv` with unit
/// stride and no padding, batch one, channels first, constant OIHW kernel and bias,
/// concrete shapes. Anything else stays tract's.
///
/// This matches the model before tract's declutter, which would turn such a convolution
/// into an `EinSum` and, on the way, copy its weights several times.
pub(crate) fn eligible(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Eligible>> {
    let Some(conv) = node.op_as::<Conv>() else {
        return Ok(None);
    };
    let spec = &conv.pool_spec;
    let (inputs, outputs) = (conv.input_channels(), conv.output_channels());
    let plain = conv.q_params.is_none()
        && conv.kernel_fmt == KernelFormat::OIHW
        && conv.group == 1
        && spec.kernel_shape.as_slice() == [1, 1]
        && (0..2).all(|axis| spec.stride(axis) == 1)
        && node.inputs.len() == 3;
    if !plain {
        return Ok(None);
    }
    let facts = [0, 1, 2].map(|slot| model.outlet_fact(node.inputs[slot]));
    let [data, kernel, bias] = facts;
    let (data, kernel, bias) = (data?, kernel?, bias?);
    let Some(dims) = data.shape.as_concrete() else {
        return Ok(None);
    };
    let batched = match (spec.data_format, dims.len()) {
        (DataFormat::NCHW, 4) if dims[0] == 1 => true,
        (DataFormat::CHW, 3) => false,
        _ => return Ok(None),
    };
    let (height, width) = (dims[dims.len() - 2], dims[dims.len() - 1]);
    let unpadded = spec
        .computed_padding(&[height, width])
        .iter()
        .zip([height, width])
        .all(|(p, size)| p.pad_before == 0 && p.convoluted == size);
    let (Some(kernel), Some(bias)) = (&kernel.konst, &bias.konst) else {
        return Ok(None);
    };
    let fits = kernel.shape() == [outputs, inputs, 1, 1] && bias.len() == outputs;
    let floats = [data.datum_type, kernel.datum_type(), bias.datum_type()]
        .iter()
        .all(|&t| t == f32::datum_type());
    if !(unpadded && fits && floats) {
        return Ok(None);
    }
    let shape = Pointwise {
        batched,
        inputs,
        outputs,
        height,
        width,
    };
    let kernel = kernel.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    let bias = bias.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    Ok(Some(Eligible {
        shape,
        kernel,
        bias,
    }))
}

/// Packs `kernel` (`outputs x inputs`, row-major) into `packed` as bands of
/// [`Pointwise::band`] output channels, each `inputs x band`, and `bias` into `padded`;
/// channels past `outputs` in the last band stay zero (both buffers start zeroed).
pub(crate) fn pack_weights(
    shape: &Pointwise,
    kernel: &[f32],
    bias: &[f32],
    packed: &mut [f32],
    padded: &mut [f32],
) {
    let (inputs, outputs, band) = (shape.inputs, shape.outputs, shape.band());
    assert!(kernel.len() == inputs * outputs && bias.len() == outputs);
    assert!(packed.len() == shape.bands() * inputs * band && padded.len() == shape.bands() * band);
    // Written in order, read in `band` streams: faster than the other way round.
    for (b, dst) in packed.chunks_exact_mut(inputs * band).enumerate() {
        let rows = &kernel[b * band * inputs..];
        let channels = band.min(outputs - b * band);
        for (i, dst) in dst.chunks_exact_mut(band).enumerate() {
            for (r, d) in dst[..channels].iter_mut().enumerate() {
                *d = rows[r * inputs + i];
            }
        }
    }
    padded[..outputs].copy_from_slice(bias);
}

/// The pointwise convolution node: inputs are the data, the weights as [`pack_weights`]
/// lays them out, and the padded bias, as in tract's own `Conv` but packed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PointwiseConv {
    pub shape: Pointwise,
    /// The clamp applied as outputs are stored (a fused ReLU6).
    pub clip: Clip,
    /// The kernels this CPU runs.
    pub kernels: Kernels,
}

impl Op for PointwiseConv {
    fn name(&self) -> StaticName {
        "FlowersPointwiseConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{:?}", self.shape)])
    }

    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for PointwiseConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        // SAFETY: `convolve` writes every output: every band's channels over every panel's
        // pixels (its asserts match `output` to the shape).
        unsafe {
            eval_f32(
                inputs,
                &self.shape.output_shape(),
                |data, weights, bias, output| {
                    convolve(
                        &self.shape,
                        self.clip.bounds(),
                        data,
                        weights,
                        bias,
                        output,
                        self.kernels,
                    )
                },
            )
        }
    }
}

impl TypedOp for PointwiseConv {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.len() == 3,
            "a pointwise convolution takes data, packed weights and bias"
        );
        Ok(tvec!(f32::fact(self.shape.output_shape())))
    }

    fn cost(&self, _inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        let s = &self.shape;
        let fmas = s.outputs * s.inputs * s.pixels();
        Ok(tvec!((Cost::FMA(f32::datum_type()), fmas.into())))
    }

    as_op!();
}

/// Runs the whole layer: `data` is `inputs x pixels`, `weights` and `bias` as
/// [`pack_weights`] lays them out, `output` `outputs x pixels`, computed by `kernels`.
/// Slices of the wrong length panic here, before any kernel runs.
pub(crate) fn convolve(
    shape: &Pointwise,
    clip: (f32, f32),
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
    kernels: Kernels,
) {
    let (inputs, pixels, band) = (shape.inputs, shape.pixels(), shape.band());
    assert!(data.len() == inputs * pixels && output.len() == shape.outputs * pixels);
    assert!(weights.len() == shape.bands() * inputs * band && bias.len() == shape.bands() * band);
    let bands = (0..shape.bands()).map(|b| Band {
        weights: &weights[b * inputs * band..][..inputs * band],
        bias: &bias[b * band..][..band],
        clip,
        channels: band.min(shape.outputs - b * band),
        first: b * band,
    });
    match shape.orientation() {
        Orientation::PixelLanes => pixel_lanes(shape, data, bands, output, kernels),
        Orientation::ChannelLanes => channel_lanes(shape, data, bands, output, kernels),
    }
}

/// One band of output channels: its packed weights, padded bias, clamp, real channel count
/// and first channel.
struct Band<'a> {
    weights: &'a [f32],
    bias: &'a [f32],
    clip: (f32, f32),
    channels: usize,
    first: usize,
}

/// Where a pixel tile ([`Orientation::PixelLanes`]) reads its inputs: input `i` of the
/// tile's pixel `c` is `floats[i * step + c]`, and of its pixel `WIDE + c` (the second half
/// of a 32-pixel tile) `floats[second + i * step + c]`. Packed panels have `step` 8 or 16
/// and `second` one panel further; the layer's own data has `step` = its pixel count.
#[derive(Clone, Copy)]
pub(crate) struct Pixels<'a> {
    floats: &'a [f32],
    step: usize,
    second: usize,
}

impl Pixels<'_> {
    /// Panics unless `lanes` floats per input, for `inputs` inputs, from `start`, are
    /// within `floats`: the bound the vector kernels' unchecked loads rely on.
    fn check(&self, inputs: usize, start: usize, lanes: usize) {
        if let Some(last) = inputs.checked_sub(1) {
            assert!(start + last * self.step + lanes <= self.floats.len());
        }
    }
}

/// [`Orientation::PixelLanes`]: layers with few outputs read their data in place
/// ([`pixel_lanes_in_place`]); the others chunk by chunk, every band over every panel of
/// the chunk.
fn pixel_lanes<'a>(
    shape: &Pointwise,
    data: &[f32],
    bands: impl Iterator<Item = Band<'a>> + Clone,
    output: &mut [f32],
    kernels: Kernels,
) {
    if shape.in_place() {
        return pixel_lanes_in_place(shape, data, bands, output, kernels);
    }
    let (inputs, pixels, chunk) = (shape.inputs, shape.pixels(), shape.chunk_pixels());
    with_panels(inputs * chunk, |panels| {
        for start in (0..pixels).step_by(chunk) {
            let count = chunk.min(pixels - start);
            pack_wide_panels(data, pixels, inputs, start, count, panels);
            for band in bands.clone() {
                let out = &mut output[band.first * pixels + start..];
                let mut first = 0;
                while first < count {
                    let panels = packed_pixels(panels, first / WIDE, inputs, count - first);
                    let out = &mut out[first..];
                    first += band.pixel_tile(panels, count - first, out, pixels, kernels);
                }
            }
        }
    });
}

/// [`Orientation::PixelLanes`] without packing, for layers with few outputs: every band
/// over each run of 16 or 32 pixels in turn, read where they lie in `data`, so that the
/// run's inputs and the weights stay in L1 while the bands take them. The last pixels
/// short of a whole 16 are packed into one panel, so no load reads past the data.
fn pixel_lanes_in_place<'a>(
    shape: &Pointwise,
    data: &[f32],
    bands: impl Iterator<Item = Band<'a>> + Clone,
    output: &mut [f32],
    kernels: Kernels,
) {
    let (inputs, pixels) = (shape.inputs, shape.pixels());
    let whole = pixels / WIDE * WIDE;
    let mut first = 0;
    while first < whole {
        let mut run = 0;
        for band in bands.clone() {
            let source = Pixels {
                floats: &data[first..],
                step: pixels,
                second: WIDE,
            };
            let out = &mut output[band.first * pixels + first..];
            run = band.pixel_tile(source, whole - first, out, pixels, kernels);
        }
        first += run;
    }
    if first < pixels {
        with_panels(inputs * WIDE, |panel| {
            pack_wide_panels(data, pixels, inputs, first, pixels - first, panel);
            for band in bands {
                let source = packed_pixels(panel, 0, inputs, pixels - first);
                let out = &mut output[band.first * pixels + first..];
                band.pixel_tile(source, pixels - first, out, pixels, kernels);
            }
        });
    }
}

/// Packed [`WIDE`] panels from panel `p` on, for a tile with `remaining` pixels left.
fn packed_pixels(panels: &[f32], p: usize, inputs: usize, remaining: usize) -> Pixels<'_> {
    Pixels {
        floats: &panels[p * inputs * WIDE..],
        step: wide_panel_stride(WIDE.min(remaining)),
        second: inputs * WIDE,
    }
}

/// [`Orientation::ChannelLanes`]: all pixels packed at once, then every band over every panel.
fn channel_lanes<'a>(
    shape: &Pointwise,
    data: &[f32],
    bands: impl Iterator<Item = Band<'a>>,
    output: &mut [f32],
    kernels: Kernels,
) {
    let (inputs, pixels) = (shape.inputs, shape.pixels());
    with_panels(pixels.div_ceil(NARROW) * inputs * NARROW, |panels| {
        for (p, panel) in panels.chunks_exact_mut(inputs * NARROW).enumerate() {
            let width = NARROW.min(pixels - p * NARROW);
            for (i, dst) in panel.chunks_exact_mut(NARROW).enumerate() {
                copy_short(&data[i * pixels + p * NARROW..], &mut dst[..width]);
            }
        }
        for band in bands {
            let out = &mut output[band.first * pixels..];
            let mut first = 0;
            while first < pixels {
                let source = Pixels {
                    floats: &panels[first / NARROW * inputs * NARROW..],
                    step: NARROW,
                    second: inputs * NARROW,
                };
                let out = &mut out[first..];
                first += band.channel_tile(source, pixels - first, out, pixels, kernels);
            }
        }
    });
}

thread_local! {
    /// The packed panels of the layer being computed on this thread, kept from one layer
    /// to the next.
    static PANELS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `pack_and_compute` on `len` floats of this thread's panel buffer, which keeps the
/// largest size asked for: allocating and zeroing the panels afresh for every layer was a
/// pass over memory for nothing, since packing writes every float the kernels read.
/// Stale floats from an earlier layer are only ever read into results that are not
/// stored (the lanes past a last, partial panel).
fn with_panels<R>(len: usize, pack_and_compute: impl FnOnce(&mut [f32]) -> R) -> R {
    PANELS.with_borrow_mut(|panels| {
        if panels.len() < len {
            panels.resize(len, 0.0);
        }
        pack_and_compute(&mut panels[..len])
    })
}

/// Copies `count` pixels of `data` (`inputs x pixels`) from `start` into panels of [`WIDE`]
/// pixels, input-major; the last panel is 8 wide if at most 8 pixels are left, and
/// zero-padded.
fn pack_wide_panels(
    data: &[f32],
    pixels: usize,
    inputs: usize,
    start: usize,
    count: usize,
    panels: &mut [f32],
) {
    for (p, first) in (0..count).step_by(WIDE).enumerate() {
        let width = WIDE.min(count - first);
        let stride = wide_panel_stride(width);
        let dst = &mut panels[p * inputs * WIDE..][..inputs * stride];
        for (i, dst) in dst.chunks_exact_mut(stride).enumerate() {
            copy_short(&data[i * pixels + start + first..], &mut dst[..width]);
            dst[width..].fill(0.0);
        }
    }
}

/// `dst.copy_from_slice(&src[..dst.len()])` for the short rows of a panel: the full-width
/// cases have a length known at compile time, so they become a few vector moves instead of
/// a call to `memmove` per row (BENCHMARKS.md).
#[inline(always)]
fn copy_short(src: &[f32], dst: &mut [f32]) {
    match dst.len() {
        WIDE => dst.copy_from_slice(&src[..WIDE]),
        NARROW => dst.copy_from_slice(&src[..NARROW]),
        n => dst.copy_from_slice(&src[..n]),
    }
}

/// Floats per input in a [`WIDE`] panel holding `width` pixels: 8 or 16.
fn wide_panel_stride(width: usize) -> usize {
    if width <= 8 {
        8
    } else {
        WIDE
    }
}

impl Band<'_> {
    fn inputs(&self) -> usize {
        self.weights.len() / self.bias.len()
    }

    /// Writes the outputs of the next pixels of `remaining` to `out` (channels `stride`
    /// apart) from `source`, and returns how many pixels that was: 32 (a 6 x 32 tile) with
    /// the 512-bit kernels while they last, else 16 (6 x 16), or what is left if less.
    fn pixel_tile(
        &self,
        source: Pixels,
        remaining: usize,
        out: &mut [f32],
        stride: usize,
        kernels: Kernels,
    ) -> usize {
        let width = WIDE.min(remaining);
        match kernels {
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512(isa) if remaining >= 2 * WIDE => {
                x86_64_avx512::pixel_pair(isa, self, source, out, stride);
                return 2 * WIDE;
            }
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512(isa) => {
                x86_64_avx2::pixel_tile(isa.avx2(), self, source, width, out, stride)
            }
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2(isa) => x86_64_avx2::pixel_tile(isa, self, source, width, out, stride),
            #[cfg(all(test, target_arch = "x86_64"))]
            Kernels::Emulated512 if remaining >= 2 * WIDE => {
                x86_64_avx512::emulated::pixel_pair(self, source, out, stride);
                return 2 * WIDE;
            }
            _ => {
                let (floats, step) = (source.floats, source.step);
                portable::tile(self, |i, c| floats[i * step + c], width, out, stride);
            }
        }
        width
    }

    /// Writes the outputs of the next pixels of `remaining` to `out` (channels `stride`
    /// apart) from `source`, and returns how many pixels that was: two panels (a 16 x 12 tile) with the 512-bit kernels while they last,
    /// else one (16 x 6).
    fn channel_tile(
        &self,
        source: Pixels,
        remaining: usize,
        out: &mut [f32],
        stride: usize,
        kernels: Kernels,
    ) -> usize {
        let width = NARROW.min(remaining);
        match kernels {
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512(isa) if remaining >= 2 * NARROW => {
                x86_64_avx512::channel_pair(isa, self, source, out, stride);
                return 2 * NARROW;
            }
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx512(isa) => {
                x86_64_avx2::channel_tile(isa.avx2(), self, source, width, out, stride)
            }
            #[cfg(target_arch = "x86_64")]
            Kernels::Avx2(isa) => x86_64_avx2::channel_tile(isa, self, source, width, out, stride),
            #[cfg(all(test, target_arch = "x86_64"))]
            Kernels::Emulated512 if remaining >= 2 * NARROW => {
                x86_64_avx512::emulated::channel_pair(self, source, out, stride);
                return 2 * NARROW;
            }
            _ => {
                let (floats, step) = (source.floats, source.step);
                portable::tile(self, |i, c| floats[i * step + c], width, out, stride);
            }
        }
        width
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// The definition, in f64.
    fn reference(s: &Pointwise, data: &[f32], kernel: &[f32], bias: &[f32]) -> Vec<f32> {
        let pixels = s.pixels();
        let mut out = vec![0f32; s.outputs * pixels];
        for o in 0..s.outputs {
            for p in 0..pixels {
                let mut sum = bias[o] as f64;
                for i in 0..s.inputs {
                    sum += kernel[o * s.inputs + i] as f64 * data[i * pixels + p] as f64;
                }
                out[o * pixels + p] = sum as f32;
            }
        }
        out
    }

    #[test]
    fn matches_the_definition_for_every_shape_and_path() {
        // (inputs, outputs, height, width). Pixel lanes (784 pixels or more): full tiles,
        // partial bands, 8- and 16-wide tails, chunks of one panel (4096 inputs) and of
        // several, packed (64 and 70 outputs) and read in place (the others). Channel lanes
        // (fewer): MobileNet's 14x14 and 7x7 layers, partial bands and panels, one pixel.
        let cases = [
            (32, 64, 28, 28),
            (16, 70, 29, 30),
            (17, 13, 29, 31),
            (4096, 7, 28, 29),
            (64, 20, 100, 41),
            (512, 512, 14, 14),
            (1024, 1024, 7, 7),
            (5, 7, 3, 5),
            (13, 6, 7, 7),
            (8, 13, 1, 1),
            (17, 33, 5, 9),
        ];
        for (inputs, outputs, height, width) in cases {
            let s = Pointwise {
                batched: true,
                inputs,
                outputs,
                height,
                width,
            };
            let data = values(inputs * s.pixels(), 7);
            let kernel = values(inputs * outputs, 11);
            let bias = values(outputs, 13);
            let mut weights = vec![0f32; s.bands() * inputs * s.band()];
            let mut padded = vec![0f32; s.bands() * s.band()];
            pack_weights(&s, &kernel, &bias, &mut weights, &mut padded);
            let expected = reference(&s, &data, &kernel, &bias);
            for (low, high) in [(f32::NEG_INFINITY, f32::INFINITY), (-0.5, 0.5)] {
                for kernels in Kernels::supported() {
                    let mut out = vec![f32::NAN; expected.len()];
                    convolve(&s, (low, high), &data, &weights, &padded, &mut out, kernels);
                    let tolerance = 1e-5 * inputs as f32;
                    for (i, e) in expected.iter().map(|e| e.max(low).min(high)).enumerate() {
                        let o = out[i];
                        assert!(
                            (o - e).abs() < tolerance,
                            "{s:?} {kernels:?} [{i}] {o} vs {e}"
                        );
                    }
                }
            }
        }
    }
}
