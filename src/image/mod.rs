//! From file bytes to the backbone's input tensor: decode, orient, resize, normalise.
//!
//! retrain and label call the very same functions here, so the pixels a trained layer saw
//! are the pixels it is later asked about: label_image.py's classic bug was a second,
//! slightly different copy of this code.

mod decode;
mod distort;

use std::fmt;

use fast_image_resize::images::Image as FirImage;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;
use tract_onnx::prelude::{tract_ndarray, Tensor};

pub use decode::{decode_rgb, sniff_format, FORMATS, MAX_DECODE_BYTES, MAX_SIDE};
pub use distort::{Distortions, Draw};

use crate::problem::Problem;
use crate::util::messages::quote;
use crate::util::panic_guard::catching_panics;

/// Memory order of the input tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Nchw,
    Nhwc,
}

impl Layout {
    pub fn as_str(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }

    pub fn parse(s: &str) -> Result<Layout, String> {
        match s {
            "NCHW" => Ok(Layout::Nchw),
            "NHWC" => Ok(Layout::Nhwc),
            _ => Err(format!(
                "unknown layout {} (expected NCHW or NHWC)",
                quote(s)
            )),
        }
    }
}

/// How a photo of any shape becomes height x width pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResizeRule {
    /// The whole image, aspect ratio ignored (retrain.py's rule), with a bilinear filter
    /// that averages over the source when shrinking (as Pillow's).
    Squash,
    /// The whole image, aspect ratio ignored, with TensorFlow 1's `resize_bilinear`
    /// (`align_corners=False`, no antialiasing, float output): exactly what retrain.py and
    /// label_image.py computed, for TensorFlow backbones and graphs.
    SquashTf,
    /// The centred square covering this fraction of the shorter side.
    CenterCrop(f32),
}

/// The smallest centre crop, for `--resize` and graph metadata alike: a smaller fraction of
/// the shorter side is a few pixels of a photo, no preprocessing a backbone was trained
/// with (and near zero the resizer is handed an empty crop).
pub const MIN_CROP_FRACTION: f32 = 0.05;

impl ResizeRule {
    pub fn parse(s: &str) -> Result<ResizeRule, String> {
        match s {
            "squash" => return Ok(ResizeRule::Squash),
            "squash-tf" => return Ok(ResizeRule::SquashTf),
            _ => {}
        }
        let fraction = s
            .strip_prefix("center-crop:")
            .and_then(|f| f.parse::<f32>().ok())
            .ok_or_else(|| {
                format!(
                    "unknown resize rule {} (expected squash, squash-tf or center-crop:F)",
                    quote(s)
                )
            })?;
        if !(MIN_CROP_FRACTION..=1.0).contains(&fraction) {
            return Err(format!(
                "center-crop fraction must be from {MIN_CROP_FRACTION} to 1, got {fraction:?}"
            ));
        }
        Ok(ResizeRule::CenterCrop(fraction))
    }
}

impl fmt::Display for ResizeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResizeRule::Squash => write!(f, "squash"),
            ResizeRule::SquashTf => write!(f, "squash-tf"),
            ResizeRule::CenterCrop(fraction) => write!(f, "center-crop:{fraction}"),
        }
    }
}

/// Everything needed to turn an image into the tensor a graph expects.
#[derive(Clone, Debug, PartialEq)]
pub struct Preprocessing {
    pub height: u32,
    pub width: u32,
    pub layout: Layout,
    /// Per channel (R, G, B): the tensor holds `(pixel - mean) / std`.
    pub mean: [f32; 3],
    pub std: [f32; 3],
    pub resize: ResizeRule,
}

impl Preprocessing {
    /// A stable text form, used in cache keys so that changing any of it gives new bottlenecks.
    pub fn descriptor(&self) -> String {
        format!(
            "size={}x{};layout={};mean={};std={};resize={}",
            self.height,
            self.width,
            self.layout.as_str(),
            channels_text(&self.mean),
            channels_text(&self.std),
            self.resize
        )
    }

    /// Decodes image bytes and returns the input tensor of shape [1, ...].
    ///
    /// A panic inside a decoder (a bug on some hostile file) is caught and reported as a
    /// decode error for this one file, so one bad image never ends a run.
    pub fn tensor_from_bytes(&self, bytes: &[u8]) -> Result<Tensor, Problem> {
        catching_panics(|| self.tensor_from_rgb(decode_rgb(bytes)?))
    }

    /// The input tensor of an image already decoded: several backbones (or a combined
    /// graph's inputs) are fed from one decoding.
    pub fn tensor_from_rgb(&self, rgb: RgbImage) -> Result<Tensor, Problem> {
        if self.resize == ResizeRule::SquashTf {
            return Ok(self.normalise_tf(&rgb));
        }
        let resized = self.resize_rgb(rgb)?;
        Ok(self.normalise(&resized))
    }

    /// Resizes to height x width with bilinear filtering (the same filter as Pillow's
    /// `Image.resize(..., BILINEAR)`, so a Python client reproduces it).
    pub fn resize_rgb(&self, rgb: RgbImage) -> Result<Vec<u8>, Problem> {
        let (w, h) = rgb.dimensions();
        let cannot_resize = |e: &dyn fmt::Display| Problem::Corrupt(format!("cannot resize: {e}"));
        let src = FirImage::from_vec_u8(w, h, rgb.into_raw(), PixelType::U8x3)
            .map_err(|e| cannot_resize(&e))?;
        let mut dst = FirImage::new(self.width, self.height, PixelType::U8x3);
        let mut options =
            ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
        if let ResizeRule::CenterCrop(fraction) = self.resize {
            let side = f64::from(w.min(h)) * f64::from(fraction);
            let left = (f64::from(w) - side) / 2.0;
            let top = (f64::from(h) - side) / 2.0;
            options = options.crop(left, top, side, side);
        }
        Resizer::new()
            .resize(&src, &mut dst, &options)
            .map_err(|e| cannot_resize(&e))?;
        Ok(dst.into_vec())
    }

    /// TensorFlow 1's `resize_bilinear` (`align_corners=False`, `half_pixel_centers=False`)
    /// of the whole image to height x width, kept in float as TensorFlow keeps it, then
    /// normalised: output pixel `(y, x)` samples the source at `(y * in_h / out_h, x *
    /// in_w / out_w)`, interpolating along x, then y.
    pub fn normalise_tf(&self, rgb: &RgbImage) -> Tensor {
        let (in_w, in_h) = (rgb.width() as usize, rgb.height() as usize);
        let (h, w) = (self.height as usize, self.width as usize);
        let pixels = rgb.as_raw();
        let axis = |out: usize, len: usize| -> Vec<(usize, usize, f32)> {
            let scale = len as f32 / out as f32;
            (0..out)
                .map(|i| {
                    let at = i as f32 * scale;
                    let low = (at.floor() as usize).min(len - 1);
                    (low, (low + 1).min(len - 1), at - at.floor())
                })
                .collect()
        };
        let (ys, xs) = (axis(h, in_h), axis(w, in_w));
        let at = |y: usize, x: usize, c: usize| f32::from(pixels[(y * in_w + x) * 3 + c]);
        let value = |y: usize, x: usize, c: usize| {
            let ((y0, y1, dy), (x0, x1, dx)) = (ys[y], xs[x]);
            let top = at(y0, x0, c) + (at(y0, x1, c) - at(y0, x0, c)) * dx;
            let bottom = at(y1, x0, c) + (at(y1, x1, c) - at(y1, x0, c)) * dx;
            let v = top + (bottom - top) * dy;
            (v - self.mean[c]) / self.std[c]
        };
        self.tensor_of(value)
    }

    /// The input tensor whose element at pixel `(y, x)`, channel `c` is `value(y, x, c)`.
    /// Written in memory order with plain loops: `from_shape_fn` walked a 4-D index per
    /// element, which profiling put at a few percent of a cold retrain (BENCHMARKS.md).
    fn tensor_of(&self, value: impl Fn(usize, usize, usize) -> f32) -> Tensor {
        let (h, w) = (self.height as usize, self.width as usize);
        let mut values = Vec::with_capacity(3 * h * w);
        let shape = match self.layout {
            Layout::Nchw => {
                for c in 0..3 {
                    for y in 0..h {
                        values.extend((0..w).map(|x| value(y, x, c)));
                    }
                }
                [1, 3, h, w]
            }
            Layout::Nhwc => {
                for y in 0..h {
                    for x in 0..w {
                        values.extend((0..3).map(|c| value(y, x, c)));
                    }
                }
                [1, h, w, 3]
            }
        };
        tract_ndarray::Array4::from_shape_vec(shape, values)
            .expect("3 x height x width values")
            .into()
    }

    /// Turns height x width RGB bytes into the normalised float tensor.
    pub fn normalise(&self, rgb: &[u8]) -> Tensor {
        let w = self.width as usize;
        let scale = self.std.map(|s| 1.0 / s);
        let value = |y: usize, x: usize, c: usize| {
            (f32::from(rgb[(y * w + x) * 3 + c]) - self.mean[c]) * scale[c]
        };
        self.tensor_of(value)
    }
}

/// One channel triple as text, `R,G,B`: the form of cache keys, graph metadata and flags.
pub fn channels_text(values: &[f32; 3]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// One value for all channels, or one per channel (`R,G,B`); `what` names the flag or
/// metadata key in the error.
pub fn parse_channels(text: &str, what: &str) -> Result<[f32; 3], String> {
    let values = text
        .split(',')
        .map(|v| v.trim().parse::<f32>())
        .collect::<Result<Vec<f32>, _>>()
        .map_err(|_| format!("bad value {} for {what}", quote(text)))?;
    match values[..] {
        [v] => Ok([v; 3]),
        [r, g, b] => Ok([r, g, b]),
        _ => Err(format!(
            "{what} needs one value or three (R,G,B), got {}",
            quote(text)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::{DynamicImage, ImageFormat};
    use std::io::Cursor;

    fn png_bytes(image: &DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        image.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    fn preprocessing(layout: Layout) -> Preprocessing {
        Preprocessing {
            height: 4,
            width: 6,
            layout,
            mean: [128.0; 3],
            std: [128.0; 3],
            resize: ResizeRule::Squash,
        }
    }

    #[test]
    fn resize_rules_parse_and_print() {
        assert_eq!(ResizeRule::parse("squash").unwrap(), ResizeRule::Squash);
        let crop = ResizeRule::parse("center-crop:0.875").unwrap();
        assert_eq!(crop, ResizeRule::CenterCrop(0.875));
        assert_eq!(crop.to_string(), "center-crop:0.875");
        assert!(ResizeRule::parse("center-crop:0").is_err());
        assert!(ResizeRule::parse("center-crop:1e-30").is_err());
        assert!(ResizeRule::parse("center-crop:NaN").is_err());
        assert!(ResizeRule::parse("center-crop:0.05").is_ok());
        assert!(ResizeRule::parse("stretch").is_err());
    }

    #[test]
    fn uniform_image_normalises_to_expected_values() {
        let image = DynamicImage::ImageRgb8(RgbImage::from_pixel(10, 7, image::Rgb([0, 128, 255])));
        for layout in [Layout::Nchw, Layout::Nhwc] {
            let tensor = preprocessing(layout)
                .tensor_from_bytes(&png_bytes(&image))
                .unwrap();
            let view = tensor.to_plain_array_view::<f32>().unwrap();
            let channel_of = |c: usize| match layout {
                Layout::Nchw => view[[0, c, 1, 2]],
                Layout::Nhwc => view[[0, 1, 2, c]],
            };
            let expected_shape: &[usize] = match layout {
                Layout::Nchw => &[1, 3, 4, 6],
                Layout::Nhwc => &[1, 4, 6, 3],
            };
            assert_eq!(view.shape(), expected_shape);
            assert_eq!(channel_of(0), -1.0);
            assert_eq!(channel_of(1), 0.0);
            assert!((channel_of(2) - 127.0 / 128.0).abs() < 1e-6);
        }
    }

    #[test]
    fn tensorflow_bilinear_samples_at_scaled_corners() {
        // 2x1 image, black then white, stretched to 4 wide: TF1 samples x at 0, 0.5, 1, 1.5.
        let image = RgbImage::from_fn(2, 1, |x, _| image::Rgb([if x == 0 { 0 } else { 255 }; 3]));
        let p = Preprocessing {
            height: 1,
            width: 4,
            layout: Layout::Nhwc,
            mean: [0.0; 3],
            std: [1.0; 3],
            resize: ResizeRule::SquashTf,
        };
        let tensor = p.normalise_tf(&image);
        let row: Vec<f32> = tensor
            .to_plain_array_view::<f32>()
            .unwrap()
            .iter()
            .step_by(3)
            .copied()
            .collect();
        assert_eq!(row, [0.0, 127.5, 255.0, 255.0]);
        assert_eq!(
            ResizeRule::parse("squash-tf").unwrap(),
            ResizeRule::SquashTf
        );
        assert_eq!(ResizeRule::SquashTf.to_string(), "squash-tf");
    }

    #[test]
    fn channel_triples_round_trip_through_text() {
        for values in [[128.0; 3], [123.675, 116.28, 103.53], [0.5, -1.0, 1e-3]] {
            assert_eq!(
                parse_channels(&channels_text(&values), "x").unwrap(),
                values
            );
        }
        assert_eq!(parse_channels("127.5", "x").unwrap(), [127.5; 3]);
        assert!(parse_channels("1,2", "--input-mean").is_err());
        assert!(parse_channels("a", "--input-mean").is_err());
    }
}
