//! From file bytes to the backbone's input tensor: decode, orient, resize, normalise.
//!
//! retrain and label call the very same functions here, so the pixels a trained layer saw
//! are the pixels it is later asked about: label_image.py's classic bug was a second,
//! slightly different copy of this code.

use std::fmt;
use std::io::Cursor;

use fast_image_resize::images::Image as FirImage;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};
use tract_onnx::prelude::{tract_ndarray, Tensor};

/// The largest width or height accepted. Larger headers are refused before any pixel
/// buffer is allocated, so a forged 60000x60000 header cannot eat the machine.
pub const MAX_SIDE: u32 = 20_000;
/// The most memory one decode may allocate (a 20000x10000 RGBA photo fits).
pub const MAX_DECODE_BYTES: u64 = 1 << 30;

/// The formats flowers reads, recognised by content, never by file extension.
pub const FORMATS: [ImageFormat; 5] = [
    ImageFormat::Jpeg,
    ImageFormat::Png,
    ImageFormat::Gif,
    ImageFormat::Bmp,
    ImageFormat::WebP,
];

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
            _ => Err(format!("unknown layout {s:?} (expected NCHW or NHWC)")),
        }
    }
}

/// How a photo of any shape becomes height x width pixels.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ResizeRule {
    /// The whole image, aspect ratio ignored (retrain.py's rule).
    Squash,
    /// The centred square covering this fraction of the shorter side.
    CenterCrop(f32),
}

impl ResizeRule {
    pub fn parse(s: &str) -> Result<ResizeRule, String> {
        if s == "squash" {
            return Ok(ResizeRule::Squash);
        }
        let fraction = s
            .strip_prefix("center-crop:")
            .and_then(|f| f.parse::<f32>().ok())
            .ok_or_else(|| {
                format!("unknown resize rule {s:?} (expected squash or center-crop:F)")
            })?;
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(format!(
                "center-crop fraction must be in (0, 1], got {fraction}"
            ));
        }
        Ok(ResizeRule::CenterCrop(fraction))
    }
}

impl fmt::Display for ResizeRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResizeRule::Squash => write!(f, "squash"),
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
            join_floats(&self.mean),
            join_floats(&self.std),
            self.resize
        )
    }

    /// Decodes image bytes and returns the input tensor of shape [1, ...].
    ///
    /// A panic inside a decoder (a bug on some hostile file) is caught and reported as a
    /// decode error for this one file, so one bad image never ends a run.
    pub fn tensor_from_bytes(&self, bytes: &[u8]) -> Result<Tensor, String> {
        catching_panics(|| {
            let rgb = decode_rgb(bytes)?;
            let resized = self.resize_rgb(rgb)?;
            Ok(self.normalise(&resized))
        })
    }

    /// Resizes to height x width with bilinear filtering (the same filter as Pillow's
    /// `Image.resize(..., BILINEAR)`, so a Python client reproduces it).
    pub fn resize_rgb(&self, rgb: RgbImage) -> Result<Vec<u8>, String> {
        let (w, h) = rgb.dimensions();
        let src = FirImage::from_vec_u8(w, h, rgb.into_raw(), PixelType::U8x3)
            .map_err(|e| format!("cannot resize: {e}"))?;
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
            .map_err(|e| format!("cannot resize: {e}"))?;
        Ok(dst.into_vec())
    }

    /// Turns height x width RGB bytes into the normalised float tensor.
    pub fn normalise(&self, rgb: &[u8]) -> Tensor {
        let (h, w) = (self.height as usize, self.width as usize);
        let scale = self.std.map(|s| 1.0 / s);
        let value = |y: usize, x: usize, c: usize| {
            (f32::from(rgb[(y * w + x) * 3 + c]) - self.mean[c]) * scale[c]
        };
        let array = match self.layout {
            Layout::Nchw => {
                tract_ndarray::Array4::from_shape_fn((1, 3, h, w), |(_, c, y, x)| value(y, x, c))
            }
            Layout::Nhwc => {
                tract_ndarray::Array4::from_shape_fn((1, h, w, 3), |(_, y, x, c)| value(y, x, c))
            }
        };
        array.into()
    }
}

/// Decodes any supported image to 8-bit RGB, applying its EXIF orientation.
///
/// The format is recognised from the bytes. Alpha is dropped, grayscale and CMYK become
/// RGB, 16-bit samples are scaled to 8 bits. Errors are one short sentence without the
/// file name; callers add it.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, String> {
    if bytes.is_empty() {
        return Err("empty file (0 bytes)".into());
    }
    let format = sniff_format(bytes).ok_or(
        "not a supported image (flowers reads JPEG, PNG, GIF, BMP and WebP, recognised by content)",
    )?;
    check_dimensions(bytes, format)?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err("truncated JPEG (no end-of-image marker after the last scan)".into());
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(describe_image_error)?;
    let orientation = decoder.orientation().map_err(describe_image_error)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(describe_image_error)?;
    image.apply_orientation(orientation);
    if image.width() == 0 || image.height() == 0 {
        return Err("image has no pixels".into());
    }
    Ok(image.into_rgb8())
}

thread_local! {
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// True while this thread runs code whose panics are caught and reported as errors; a
/// panic hook can stay quiet then.
pub fn panics_are_caught() -> bool {
    CATCHING.with(|c| c.get())
}

fn catching_panics<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let was = CATCHING.with(|c| c.replace(true));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(was));
    result.unwrap_or_else(|_| Err("the image decoder crashed on this file".into()))
}

/// Reads only the header and refuses sizes over the limit before any pixel is allocated.
fn check_dimensions(bytes: &[u8], format: ImageFormat) -> Result<(), String> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits();
    let (w, h) = reader.into_dimensions().map_err(describe_image_error)?;
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(format!(
            "image header claims {w}x{h} pixels, over the limit of {MAX_SIDE} per side"
        ));
    }
    Ok(())
}

/// A JPEG is complete when an end-of-image marker (FF D9) follows its last start-of-scan
/// (FF DA). Inside entropy-coded data an FF byte is always followed by 00 or a restart
/// marker, so neither marker can appear by accident. Decoders fill a truncated JPEG with
/// grey and call it a success; training on half a photo is worse than skipping it.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let last_scan = bytes.windows(2).rposition(|w| w == [0xFF, 0xDA]);
    match last_scan {
        Some(start) => bytes[start..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// The image format these bytes start with, if it is one flowers reads.
pub fn sniff_format(bytes: &[u8]) -> Option<ImageFormat> {
    image::guess_format(bytes)
        .ok()
        .filter(|format| FORMATS.contains(format))
}

fn describe_image_error(error: image::ImageError) -> String {
    match error {
        image::ImageError::Limits(_) => {
            format!("image is too large to decode safely ({error})")
        }
        other => format!("cannot decode image: {other}"),
    }
}

fn join_floats(values: &[f32]) -> String {
    values
        .iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn non_images_are_refused_with_a_reason() {
        assert!(decode_rgb(b"").unwrap_err().contains("empty"));
        assert!(decode_rgb(b"hello, I am text")
            .unwrap_err()
            .contains("not a supported image"));
    }
}
