//! From file bytes to 8-bit RGB pixels, defensively: the format is recognised by content,
//! sizes are checked before any pixel is allocated, truncated JPEGs are refused instead of
//! being grey-filled, and every failure is a [`Problem`] for that one file.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits, RgbImage};

use crate::problem::Problem;

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

/// Decodes any supported image to 8-bit RGB, applying its EXIF orientation.
///
/// The format is recognised from the bytes. Alpha is dropped, grayscale and CMYK become
/// RGB, 16-bit samples are scaled to 8 bits.
pub fn decode_rgb(bytes: &[u8]) -> Result<RgbImage, Problem> {
    if bytes.is_empty() {
        return Err(Problem::Empty);
    }
    let format = sniff_format(bytes).ok_or(Problem::NotAnImage)?;
    check_dimensions(bytes, format)?;
    if format == ImageFormat::Jpeg && !jpeg_is_complete(bytes) {
        return Err(Problem::Truncated);
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
        return Err(Problem::Corrupt("image has no pixels".into()));
    }
    Ok(image.into_rgb8())
}

/// Reads only the header and refuses sizes over the limit before any pixel is allocated.
fn check_dimensions(bytes: &[u8], format: ImageFormat) -> Result<(), Problem> {
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.no_limits();
    let (w, h) = reader.into_dimensions().map_err(describe_image_error)?;
    if w > MAX_SIDE || h > MAX_SIDE {
        return Err(Problem::TooLarge(format!(
            "image header claims {w}x{h} pixels, over the limit of {MAX_SIDE} per side"
        )));
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

fn describe_image_error(error: image::ImageError) -> Problem {
    match error {
        image::ImageError::Limits(_) => {
            Problem::TooLarge(format!("image is too large to decode safely ({error})"))
        }
        other => Problem::Corrupt(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_images_are_refused_with_their_kind() {
        assert_eq!(decode_rgb(b""), Err(Problem::Empty));
        assert_eq!(decode_rgb(b"hello, I am text"), Err(Problem::NotAnImage));
    }

    #[test]
    fn a_jpeg_cut_before_its_end_marker_is_truncated() {
        let complete = [0xFF, 0xD8, 0xFF, 0xDA, 1, 2, 3, 0xFF, 0xD9];
        assert!(jpeg_is_complete(&complete));
        assert!(!jpeg_is_complete(&complete[..7]));
        assert!(!jpeg_is_complete(&[0xFF, 0xD8, 0xFF, 0xD9]));
    }
}
