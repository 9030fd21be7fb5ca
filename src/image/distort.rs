//! retrain.py's training-time distortions: a random scale and crop, a mirror, a brightness.
//!
//! retrain.py draws fresh ones at every step and runs the backbone on them, which is why
//! distorted training took hours. flowers draws a fixed pool of distorted copies per
//! training image (see `bottleneck::distorted`); this module only says what one copy is.

use image::RgbImage;
use rand::Rng;
use tract_onnx::prelude::Tensor;

use super::Preprocessing;
use crate::problem::Problem;

/// retrain.py's four distortion flags. Percentages, as retrain.py takes them.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Distortions {
    /// `--flip_left_right`: mirror half of the copies.
    pub flip_left_right: bool,
    /// `--random_crop`: the margin around the crop, in percent of the input size.
    pub random_crop: f32,
    /// `--random_scale`: the most the image is enlarged on top of the margin, in percent.
    pub random_scale: f32,
    /// `--random_brightness`: pixels are multiplied by U[1 - b%, 1 + b%].
    pub random_brightness: f32,
}

impl Distortions {
    /// Whether any distortion is asked for.
    pub fn any(&self) -> bool {
        *self != Distortions::default()
    }

    /// A stable text form, part of the cache key of every distorted copy.
    pub fn descriptor(&self) -> String {
        format!(
            "flip={};crop={};scale={};brightness={}",
            u8::from(self.flip_left_right),
            self.random_crop,
            self.random_scale,
            self.random_brightness
        )
    }
}

/// The random choices of one distorted copy, drawn once and independent of the input
/// size: every backbone of a combination is given the same distortion of the photo (the
/// same enlargement, window, mirror and brightness), each at its own size.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Draw {
    enlarge: f32,
    /// Where the crop window sits in its range of positions, from 0 to 1.
    top: f32,
    left: f32,
    mirrored: bool,
    brightness: f32,
}

impl Draw {
    pub fn new(distortions: &Distortions, rng: &mut impl Rng) -> Draw {
        let enlarge = 1.0 + rng.random::<f32>() * distortions.random_scale / 100.0;
        let top = rng.random::<f32>();
        let left = rng.random::<f32>();
        let mirrored = distortions.flip_left_right && rng.random_bool(0.5);
        let spread = distortions.random_brightness / 100.0;
        let brightness = 1.0 + spread * (2.0 * rng.random::<f32>() - 1.0);
        Draw {
            enlarge,
            top,
            left,
            mirrored,
            brightness,
        }
    }
}

/// One of the `range + 1` window positions, uniformly by `fraction` in [0, 1).
fn position(fraction: f32, range: u32) -> usize {
    ((fraction * (range + 1) as f32) as u32).min(range) as usize
}

impl Preprocessing {
    /// One distorted copy of `rgb` as the backbone's input tensor, as retrain.py's
    /// `add_input_distortions` makes it: the whole image resized (by the backbone's resize
    /// rule) to the input size times `(1 + crop%) * U[1, 1 + scale%]`, a uniformly placed
    /// crop of the input size, a mirror with probability 1/2, and the pixel values times
    /// `U[1 - brightness%, 1 + brightness%]` before normalisation (not clipped, as in
    /// retrain.py).
    pub fn distorted_tensor(
        &self,
        rgb: RgbImage,
        distortions: &Distortions,
        rng: &mut impl Rng,
    ) -> Result<Tensor, Problem> {
        self.drawn_tensor(rgb, distortions, &Draw::new(distortions, rng))
    }

    /// [`Preprocessing::distorted_tensor`] with its random choices already drawn.
    pub fn drawn_tensor(
        &self,
        rgb: RgbImage,
        distortions: &Distortions,
        draw: &Draw,
    ) -> Result<Tensor, Problem> {
        let margin = 1.0 + distortions.random_crop / 100.0;
        let (h, w) = (self.height, self.width);
        // retrain.py truncates the scaled size to an integer, as a cast does.
        let scaled = |side: u32| ((side as f32 * margin * draw.enlarge) as u32).max(side);
        let precrop = Preprocessing {
            height: scaled(h),
            width: scaled(w),
            ..self.clone()
        };
        let pixels = precrop.resize_rgb(rgb)?;
        let top = position(draw.top, precrop.height - h);
        let left = position(draw.left, precrop.width - w);
        let (w, stride, mirrored) = (w as usize, precrop.width as usize, draw.mirrored);
        let value = |y: usize, x: usize, c: usize| {
            let x = if mirrored { w - 1 - x } else { x };
            let pixel = f32::from(pixels[((top + y) * stride + left + x) * 3 + c]);
            (pixel * draw.brightness - self.mean[c]) / self.std[c]
        };
        Ok(self.tensor_of(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{Layout, ResizeRule};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use tract_onnx::prelude::tract_ndarray::Ix4;

    fn preprocessing() -> Preprocessing {
        Preprocessing {
            height: 4,
            width: 6,
            layout: Layout::Nhwc,
            mean: [0.0; 3],
            std: [1.0; 3],
            resize: ResizeRule::Squash,
        }
    }

    /// A 6x4 image whose red channel is 40 * x and green 50 * y.
    fn ramp() -> RgbImage {
        RgbImage::from_fn(6, 4, |x, y| image::Rgb([40 * x as u8, 50 * y as u8, 7]))
    }

    fn pixels(tensor: &Tensor) -> tract_onnx::prelude::tract_ndarray::Array4<f32> {
        let view = tensor.to_plain_array_view::<f32>().unwrap();
        view.into_dimensionality::<Ix4>().unwrap().to_owned()
    }

    #[test]
    fn no_distortion_is_the_plain_tensor() {
        let p = preprocessing();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let plain = p.normalise(&p.resize_rgb(ramp()).unwrap());
        let copy = p
            .distorted_tensor(ramp(), &Distortions::default(), &mut rng)
            .unwrap();
        assert_eq!(pixels(&copy), pixels(&plain));
    }

    #[test]
    fn a_flip_mirrors_and_brightness_scales_within_its_range() {
        let p = preprocessing();
        let flip = Distortions {
            flip_left_right: true,
            ..Default::default()
        };
        let mut mirrored = 0;
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..40 {
            let copy = pixels(&p.distorted_tensor(ramp(), &flip, &mut rng).unwrap());
            let first_red = copy[[0, 0, 0, 0]];
            assert!(first_red == 0.0 || first_red == 200.0, "{first_red}");
            mirrored += usize::from(first_red == 200.0);
        }
        assert!((10..=30).contains(&mirrored), "{mirrored} of 40 mirrored");

        let bright = Distortions {
            random_brightness: 20.0,
            ..Default::default()
        };
        let copy = pixels(&p.distorted_tensor(ramp(), &bright, &mut rng).unwrap());
        let factor = copy[[0, 0, 5, 0]] / 200.0;
        assert!((0.8..=1.2).contains(&factor) && factor != 1.0, "{factor}");
        assert!((copy[[0, 0, 0, 2]] / 7.0 - factor).abs() < 1e-5);
    }

    #[test]
    fn window_positions_cover_their_range_uniformly() {
        let mut seen = [0usize; 4];
        for i in 0..400 {
            seen[position(i as f32 / 400.0, 3)] += 1;
        }
        assert_eq!(seen, [100; 4]);
        assert_eq!(position(0.999_999_9, 0), 0);
    }

    #[test]
    fn one_draw_is_the_same_distortion_at_every_size() {
        let crop = Distortions {
            flip_left_right: true,
            random_crop: 50.0,
            random_scale: 50.0,
            random_brightness: 30.0,
        };
        let draw = Draw::new(&crop, &mut ChaCha8Rng::seed_from_u64(4));
        let small = preprocessing();
        let large = Preprocessing {
            height: 8,
            width: 12,
            ..preprocessing()
        };
        let a = pixels(&small.drawn_tensor(ramp(), &crop, &draw).unwrap());
        let b = pixels(&large.drawn_tensor(ramp(), &crop, &draw).unwrap());
        // The same mirror and brightness: the blue channel (7 everywhere) says both.
        assert_eq!(a[[0, 0, 0, 2]], b[[0, 0, 0, 2]]);
        // The same mirror: red decreases left to right in both, or increases in both.
        let falling = |p: &tract_onnx::prelude::tract_ndarray::Array4<f32>, w: usize| {
            p[[0, 0, 0, 0]] > p[[0, 0, w - 1, 0]]
        };
        assert_eq!(falling(&a, 6), falling(&b, 12));
    }

    #[test]
    fn a_crop_is_a_window_of_the_enlarged_image() {
        let p = preprocessing();
        let crop = Distortions {
            random_crop: 50.0,
            random_scale: 50.0,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..20 {
            let copy = pixels(&p.distorted_tensor(ramp(), &crop, &mut rng).unwrap());
            assert_eq!(copy.dim(), (1, 4, 6, 3));
            // An enlarged ramp still increases left to right and top to bottom, by less
            // than the original's step.
            for x in 1..6 {
                let step = copy[[0, 0, x, 0]] - copy[[0, 0, x - 1, 0]];
                assert!((0.0..=41.0).contains(&step), "{step}");
            }
            assert!(copy[[0, 3, 0, 1]] >= copy[[0, 0, 0, 1]]);
        }
    }
}
