//! A 1x1 ("pointwise") convolution op for the backbone's tract plan, blocked for the cache.
//!
//! Why: once [`crate::direct_conv`] took the depthwise layers, MobileNet v1's 13 pointwise
//! layers were ~80% of inference. tract runs them as a matrix product at close to the
//! FMA units' peak when the image is small (14x14: ~52 G multiply-adds/s here), but well
//! below it on the early, large layers (112x112 with 32 inputs: ~21 G/s), where its packed
//! copy of the activations no longer fits the cache and is swept once per band of output
//! channels. Here the columns (pixels) are cut into chunks whose packed copy fits in L2, and
//! every chunk is finished, all output channels, before the next is packed.
//!
//! How: the output is `clamp(W x X + bias)` with `W` `outputs x inputs` and `X` `inputs x
//! pixels` (channels first, batch one). `W` is packed once, when the plan is built, into
//! bands of [`ROWS`] output channels, inputs-major, so the kernel broadcasts six consecutive
//! weights per input. A chunk of `X` is packed into panels of 16 (or, for the last few
//! pixels, 8) columns. The kernel keeps a 6 x 16 tile of outputs in twelve AVX2 registers,
//! adds `inputs` rank-one updates with FMA, then the bias and the clamp (a fused ReLU6), and
//! stores the tile once.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::math::Add;

/// Output channels per band of packed weights, and rows of the kernel's tile.
pub const ROWS: usize = 6;

/// Columns of the kernel's tile: two AVX2 vectors.
const COLUMNS: usize = 16;

/// Bytes of packed activations per chunk: half of a 1 MiB L2, leaving room for the weights
/// of the band in use and the output rows being written.
const CHUNK_BYTES: usize = 512 * 1024;

/// Smaller images stay with tract, whose kernel is as fast there (MobileNet v1's 14x14
/// layers: 0.99 ms against this op's 1.04; 7x7: 0.61 against 0.70).
const MIN_PIXELS: usize = 28 * 28;

/// Shape of one pointwise layer, fixed when the plan is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Pointwise {
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

    fn bands(&self) -> usize {
        self.outputs.div_ceil(ROWS)
    }

    fn output_shape(&self) -> Vec<usize> {
        let mut shape = vec![self.outputs, self.height, self.width];
        if self.batched {
            shape.insert(0, 1);
        }
        shape
    }

    /// Columns packed at a time: as many whole panels as fit in [`CHUNK_BYTES`], at least one.
    fn chunk_columns(&self) -> usize {
        let fit = CHUNK_BYTES / (4 * self.inputs) / COLUMNS * COLUMNS;
        fit.clamp(COLUMNS, self.pixels().next_multiple_of(COLUMNS))
    }
}

/// A layer [`PointwiseConv`] can take over, found by [`eligible`].
pub struct Eligible {
    pub shape: Pointwise,
    /// The weights and bias laid out by [`pack_weights`].
    pub weights: Tensor,
    pub bias: Tensor,
    /// The outlet the op's output replaces: the bias addition if there is one, else the
    /// product itself.
    pub last: OutletId,
}

/// `node` as a pointwise layer, if it is one this op can run. tract's declutter turns a
/// 1x1 convolution with unit stride and no padding into an `EinSum` such as
/// `NIHW,OI->OHW` with constant weights, followed by an `Add` of a constant `O,1,1` bias;
/// that is the pattern matched here, by the axes' roles rather than their letters. Batch
/// one, channels first, f32, concrete shapes; anything else stays tract's.
pub fn eligible(model: &TypedModel, node: &TypedNode) -> TractResult<Option<Eligible>> {
    let Some(einsum) = node.op_as::<EinSum>() else {
        return Ok(None);
    };
    if einsum.q_params.is_some() || node.inputs.len() != 2 {
        return Ok(None);
    }
    let data = model.outlet_fact(node.inputs[0])?;
    let output = model.outlet_fact(OutletId::new(node.id, 0))?;
    let Some(kernel) = model.outlet_fact(node.inputs[1])?.konst.clone() else {
        return Ok(None);
    };
    let (Some(dims), Some(out_dims)) = (data.shape.as_concrete(), output.shape.as_concrete())
    else {
        return Ok(None);
    };
    let floats = [data.datum_type, kernel.datum_type(), output.datum_type]
        .iter()
        .all(|&t| t == f32::datum_type());
    if !floats || !is_channel_product(&einsum.axes, dims) || kernel.rank() != 2 {
        return Ok(None);
    }
    let (outputs, inputs) = (kernel.shape()[0], kernel.shape()[1]);
    if dims[dims.len() - 2] * dims[dims.len() - 1] < MIN_PIXELS {
        return Ok(None);
    }
    let shape = Pointwise {
        batched: out_dims.len() == 4,
        inputs,
        outputs,
        height: dims[dims.len() - 2],
        width: dims[dims.len() - 1],
    };
    let out = OutletId::new(node.id, 0);
    let (bias, last) = match bias_added(model, out, outputs)? {
        Some((bias, add)) => (bias, OutletId::new(add, 0)),
        None => (vec![0.0; outputs], out),
    };
    let kernel = kernel.try_as_plain_ram()?;
    let (weights, bias) = pack_weights(&shape, kernel.as_slice::<f32>()?, &bias);
    Ok(Some(Eligible {
        shape,
        weights: tensor1(&weights),
        bias: tensor1(&bias),
        last,
    }))
}

/// Whether `axes` reads `data` (`1 x I x H x W` or `I x H x W`) and weights `O x I`, sums
/// over `I` and writes `O x H x W` (or `1 x O x H x W`): a channels-first 1x1 convolution.
fn is_channel_product(axes: &AxesMapping, dims: &[usize]) -> bool {
    let (inputs, outputs) = axes.to_strs();
    let [data, weights] = inputs.as_slice() else {
        return false;
    };
    let [out] = outputs.as_slice() else {
        return false;
    };
    let (data, weights, out): (Vec<char>, Vec<char>, Vec<char>) = (
        data.chars().collect(),
        weights.chars().collect(),
        out.chars().collect(),
    );
    let [o, i] = weights[..] else {
        return false;
    };
    let (batch, planes) = match (&data[..], dims) {
        ([n, c, h, w], [1, _, _, _]) => (Some(*n), [*c, *h, *w]),
        ([c, h, w], [_, _, _]) => (None, [*c, *h, *w]),
        _ => return false,
    };
    let [c, h, w] = planes;
    let out_ok = match &out[..] {
        [oo, oh, ow] => [*oo, *oh, *ow] == [o, h, w],
        [on, oo, oh, ow] => Some(*on) == batch && [*oo, *oh, *ow] == [o, h, w],
        _ => false,
    };
    c == i && out_ok
}

/// The constant bias that the single reader of `outlet` adds to it, one value per output
/// channel (`O x 1 x 1` or `1 x O x 1 x 1`), with that reader's node id.
fn bias_added(
    model: &TypedModel,
    outlet: OutletId,
    outputs: usize,
) -> TractResult<Option<(Vec<f32>, usize)>> {
    let successors = model.outlet_successors(outlet);
    if successors.len() != 1 || model.output_outlets()?.contains(&outlet) {
        return Ok(None);
    }
    let next = model.node(successors[0].node);
    let is_add = next
        .op_as::<TypedBinOp>()
        .is_some_and(|op| op.0.is::<Add>());
    if !is_add || next.inputs.len() != 2 {
        return Ok(None);
    }
    let other = next.inputs[1 - successors[0].slot];
    let Some(konst) = model.outlet_fact(other)?.konst.clone() else {
        return Ok(None);
    };
    let rank = model.outlet_fact(outlet)?.rank();
    let mut per_channel = vec![1; rank];
    per_channel[rank - 3] = outputs;
    let same =
        model.outlet_fact(OutletId::new(next.id, 0))?.shape == model.outlet_fact(outlet)?.shape;
    if !same || konst.shape() != per_channel || konst.datum_type() != f32::datum_type() {
        return Ok(None);
    }
    let bias = konst.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
    Ok(Some((bias, next.id)))
}

/// `kernel` (`outputs x inputs`, row-major) as bands of [`ROWS`] output channels, each
/// `inputs x ROWS`; the rows past `outputs` in the last band are zero. Also returns the
/// bias padded the same way.
pub fn pack_weights(shape: &Pointwise, kernel: &[f32], bias: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (inputs, outputs) = (shape.inputs, shape.outputs);
    assert!(kernel.len() == inputs * outputs && bias.len() == outputs);
    let mut packed = vec![0f32; shape.bands() * inputs * ROWS];
    for (o, row) in kernel.chunks_exact(inputs).enumerate() {
        let band = &mut packed[o / ROWS * inputs * ROWS..][..inputs * ROWS];
        for (i, &w) in row.iter().enumerate() {
            band[i * ROWS + o % ROWS] = w;
        }
    }
    let mut padded = bias.to_vec();
    padded.resize(shape.bands() * ROWS, 0.0);
    (packed, padded)
}

/// The pointwise convolution node: inputs are the data, the weights as [`pack_weights`]
/// lays them out, and the padded bias. Its output has the shape of the product it replaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PointwiseConv {
    pub shape: Pointwise,
    /// Bounds the outputs are clamped to (ReLU6 fused in), as `f32` bits so the op is `Eq`.
    pub clip: Option<[u32; 2]>,
}

impl PointwiseConv {
    fn clip(&self) -> (f32, f32) {
        match self.clip {
            Some([low, high]) => (f32::from_bits(low), f32::from_bits(high)),
            None => (f32::NEG_INFINITY, f32::INFINITY),
        }
    }
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
        let (data, weights, bias) = args_3!(inputs);
        let data = data.try_as_plain_ram()?;
        let weights = weights.try_as_plain_ram()?;
        let bias = bias.try_as_plain_ram()?;
        let mut output = unsafe { Tensor::uninitialized::<f32>(&self.shape.output_shape())? };
        convolve(
            &self.shape,
            self.clip(),
            data.as_slice::<f32>()?,
            weights.as_slice::<f32>()?,
            bias.as_slice::<f32>()?,
            output.try_as_plain_ram_mut()?.as_slice_mut::<f32>()?,
        );
        Ok(tvec!(output.into_tvalue()))
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
/// [`pack_weights`] returns them, `output` `outputs x pixels`.
pub fn convolve(
    shape: &Pointwise,
    clip: (f32, f32),
    data: &[f32],
    weights: &[f32],
    bias: &[f32],
    output: &mut [f32],
) {
    let (inputs, pixels) = (shape.inputs, shape.pixels());
    assert!(data.len() == inputs * pixels && output.len() == shape.outputs * pixels);
    assert!(weights.len() == shape.bands() * inputs * ROWS && bias.len() == shape.bands() * ROWS);
    let chunk = shape.chunk_columns();
    let mut panels = vec![0f32; inputs * chunk];
    let fast = crate::accelerate::has_avx2_fma();
    for start in (0..pixels).step_by(chunk) {
        let columns = chunk.min(pixels - start);
        pack_panels(data, pixels, inputs, start, columns, &mut panels);
        for band in 0..shape.bands() {
            let tile = Tile {
                weights: &weights[band * inputs * ROWS..][..inputs * ROWS],
                bias: &bias[band * ROWS..][..ROWS],
                clip,
                rows: ROWS.min(shape.outputs - band * ROWS),
            };
            let out = &mut output[band * ROWS * pixels..];
            for (p, panel) in (0..columns).step_by(COLUMNS).enumerate() {
                let width = COLUMNS.min(columns - panel);
                let packed = &panels[p * inputs * COLUMNS..];
                let out = &mut out[start + panel..];
                tile.run(packed, width, out, pixels, fast);
            }
        }
    }
}

/// Copies `columns` columns of `data` (`inputs x pixels`) from `start` into panels of
/// [`COLUMNS`] columns, input-major; the last panel is 8 wide if at most 8 columns are left,
/// and zero-padded.
fn pack_panels(
    data: &[f32],
    pixels: usize,
    inputs: usize,
    start: usize,
    columns: usize,
    panels: &mut [f32],
) {
    for (p, panel) in (0..columns).step_by(COLUMNS).enumerate() {
        let width = COLUMNS.min(columns - panel);
        let stride = panel_stride(width);
        let dst = &mut panels[p * inputs * COLUMNS..][..inputs * stride];
        for (i, dst) in dst.chunks_exact_mut(stride).enumerate() {
            let src = &data[i * pixels + start + panel..][..width];
            dst[..width].copy_from_slice(src);
            dst[width..].fill(0.0);
        }
    }
}

/// Floats per input in a panel holding `width` columns: 8 or 16.
fn panel_stride(width: usize) -> usize {
    if width <= 8 {
        8
    } else {
        COLUMNS
    }
}

/// One band of output channels: its packed weights, padded bias, clamp and real row count.
struct Tile<'a> {
    weights: &'a [f32],
    bias: &'a [f32],
    clip: (f32, f32),
    rows: usize,
}

impl Tile<'_> {
    /// Writes `rows x width` outputs to `out` (rows `stride` apart) from one packed panel.
    fn run(&self, panel: &[f32], width: usize, out: &mut [f32], stride: usize, fast: bool) {
        let inputs = self.weights.len() / ROWS;
        assert!(panel.len() >= inputs * panel_stride(width));
        assert!(out.len() >= (self.rows - 1) * stride + width);
        #[cfg(target_arch = "x86_64")]
        if fast {
            // SAFETY: `fast` is only set when AVX2 and FMA were found; the asserts above
            // bound every read of `panel` and every write to `out`.
            return unsafe {
                if width > 8 {
                    x86::tile::<2>(self, panel, width, out, stride)
                } else {
                    x86::tile::<1>(self, panel, width, out, stride)
                }
            };
        }
        let _ = fast;
        self.portable(panel, width, out, stride);
    }

    /// The same tile, one multiply-add at a time.
    fn portable(&self, panel: &[f32], width: usize, out: &mut [f32], stride: usize) {
        let lanes = panel_stride(width);
        let (low, high) = self.clip;
        for r in 0..self.rows {
            for c in 0..width {
                let mut sum = self.bias[r];
                for (i, w) in self.weights.chunks_exact(ROWS).enumerate() {
                    sum += w[r] * panel[i * lanes + c];
                }
                out[r * stride + c] = sum.max(low).min(high);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{Tile, ROWS};
    use std::arch::x86_64::*;

    /// A `ROWS x 8V` tile: `V` vectors of 8 columns per row, all in registers.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA; `panel` holds `inputs x 8V` floats and `out`
    /// reaches `(tile.rows - 1) * stride + width` (checked by the caller).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const V: usize>(
        tile: &Tile,
        panel: &[f32],
        width: usize,
        out: &mut [f32],
        stride: usize,
    ) {
        let inputs = tile.weights.len() / ROWS;
        let (w, x) = (tile.weights.as_ptr(), panel.as_ptr());
        let mut acc = [[_mm256_setzero_ps(); V]; ROWS];
        unsafe {
            for (r, row) in acc.iter_mut().enumerate() {
                *row = [_mm256_broadcast_ss(&tile.bias[r]); V];
            }
            for i in 0..inputs {
                let mut xs = [_mm256_setzero_ps(); V];
                for (v, xv) in xs.iter_mut().enumerate() {
                    *xv = _mm256_loadu_ps(x.add((i * V + v) * 8));
                }
                for (r, row) in acc.iter_mut().enumerate() {
                    let wv = _mm256_broadcast_ss(&*w.add(i * ROWS + r));
                    for (a, xv) in row.iter_mut().zip(xs) {
                        *a = _mm256_fmadd_ps(wv, xv, *a);
                    }
                }
            }
            let (low, high) = (_mm256_set1_ps(tile.clip.0), _mm256_set1_ps(tile.clip.1));
            let dst = out.as_mut_ptr();
            for (r, row) in acc.iter().enumerate().take(tile.rows) {
                let dst = dst.add(r * stride);
                if width == 8 * V {
                    for (v, a) in row.iter().enumerate() {
                        let a = _mm256_min_ps(_mm256_max_ps(*a, low), high);
                        _mm256_storeu_ps(dst.add(v * 8), a);
                    }
                } else {
                    let mut buffer = [[0f32; 8]; V];
                    for (b, a) in buffer.iter_mut().zip(row) {
                        let a = _mm256_min_ps(_mm256_max_ps(*a, low), high);
                        _mm256_storeu_ps(b.as_mut_ptr(), a);
                    }
                    std::ptr::copy_nonoverlapping(buffer.as_ptr() as *const f32, dst, width);
                }
            }
        }
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
        // (inputs, outputs, height, width): full tiles, partial bands, 8- and 16-wide tails,
        // one pixel, and chunks of more than one panel (4096 inputs: one panel per chunk).
        let cases = [
            (32, 64, 16, 16),
            (5, 7, 3, 5),
            (13, 6, 7, 7),
            (8, 13, 1, 1),
            (17, 12, 5, 9),
            (4096, 7, 5, 7),
            (64, 20, 100, 41),
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
            let (weights, padded) = pack_weights(&s, &kernel, &bias);
            for (low, high) in [(f32::NEG_INFINITY, f32::INFINITY), (-0.5, 0.5)] {
                let expected = reference(&s, &data, &kernel, &bias);
                let mut fast = vec![f32::NAN; expected.len()];
                convolve(&s, (low, high), &data, &weights, &padded, &mut fast);
                let mut portable = vec![f32::NAN; expected.len()];
                portable_convolve(&s, (low, high), &data, &weights, &padded, &mut portable);
                let tolerance = 1e-5 * inputs as f32;
                for (i, e) in expected.iter().map(|e| e.max(low).min(high)).enumerate() {
                    let (f, p) = (fast[i], portable[i]);
                    assert!((f - e).abs() < tolerance, "{s:?} fast [{i}] {f} vs {e}");
                    assert!((p - e).abs() < tolerance, "{s:?} portable [{i}] {p} vs {e}");
                }
            }
        }
    }

    /// [`convolve`] with the portable tile forced.
    fn portable_convolve(
        s: &Pointwise,
        clip: (f32, f32),
        data: &[f32],
        weights: &[f32],
        bias: &[f32],
        output: &mut [f32],
    ) {
        let (inputs, pixels) = (s.inputs, s.pixels());
        let mut panels = vec![0f32; inputs * pixels.next_multiple_of(COLUMNS)];
        pack_panels(data, pixels, inputs, 0, pixels, &mut panels);
        for band in 0..s.bands() {
            let tile = Tile {
                weights: &weights[band * inputs * ROWS..][..inputs * ROWS],
                bias: &bias[band * ROWS..][..ROWS],
                clip,
                rows: ROWS.min(s.outputs - band * ROWS),
            };
            for (p, panel) in (0..pixels).step_by(COLUMNS).enumerate() {
                let width = COLUMNS.min(pixels - panel);
                let out = &mut output[band * ROWS * pixels + panel..];
                tile.run(&panels[p * inputs * COLUMNS..], width, out, pixels, false);
            }
        }
    }
}
