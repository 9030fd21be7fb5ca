//! Usage: resize-check IMAGE OUT.raw WIDTH HEIGHT [CROP_FRACTION]
//!        resize-check --decode IMAGE OUT.raw   (writes "W H\n" + RGB bytes)
//! Decodes like flowers (image crate, EXIF orientation applied, RGB8) and resizes
//! with fast_image_resize exactly as flowers' src/preprocess.rs does, so the bytes
//! can be compared with Pillow (ImageOps.exif_transpose + Image.resize(..., BILINEAR)).
use fast_image_resize::images::Image as FirImage;
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

fn decode(path: &str) -> RgbImage {
    let mut decoder = ImageReader::open(path)
        .unwrap()
        .with_guessed_format()
        .unwrap()
        .into_decoder()
        .unwrap();
    let orientation = decoder.orientation().unwrap();
    let mut image = DynamicImage::from_decoder(decoder).unwrap();
    image.apply_orientation(orientation);
    image.into_rgb8()
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    if a[1] == "--decode" {
        let rgb = decode(&a[2]);
        let mut out = format!("{} {}\n", rgb.width(), rgb.height()).into_bytes();
        out.extend_from_slice(rgb.as_raw());
        std::fs::write(&a[3], out).unwrap();
        return;
    }
    let rgb = decode(&a[1]);
    let (tw, th): (u32, u32) = (a[3].parse().unwrap(), a[4].parse().unwrap());
    let (w, h) = rgb.dimensions();
    let src = FirImage::from_vec_u8(w, h, rgb.into_raw(), PixelType::U8x3).unwrap();
    let mut dst = FirImage::new(tw, th, PixelType::U8x3);
    let mut options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    if let Some(f) = a.get(5) {
        let f: f32 = f.parse().unwrap();
        let side = f64::from(w.min(h)) * f64::from(f);
        options = options.crop((f64::from(w) - side) / 2.0, (f64::from(h) - side) / 2.0, side, side);
    }
    Resizer::new().resize(&src, &mut dst, &options).unwrap();
    std::fs::write(&a[2], dst.into_vec()).unwrap();
}
