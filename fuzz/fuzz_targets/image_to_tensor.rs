//! Fuzzes the whole path from file bytes to the backbone's input tensor: format sniffing,
//! the size check, decoding, EXIF orientation, resizing and normalisation. The functions
//! are called directly (not through `tensor_from_bytes`, which catches panics) so that
//! any panic is a crash libFuzzer reports.
#![no_main]

use flowers::image::{decode_rgb, Layout, Preprocessing, ResizeRule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let preprocessing = Preprocessing {
        height: 224,
        width: 224,
        layout: Layout::Nchw,
        mean: [128.0; 3],
        std: [128.0; 3],
        resize: if data.len() % 2 == 0 {
            ResizeRule::Squash
        } else {
            ResizeRule::CenterCrop(0.875)
        },
    };
    if let Ok(rgb) = decode_rgb(data) {
        let resized = preprocessing.resize_rgb(rgb).expect("resize of a decoded image");
        let tensor = preprocessing.normalise(&resized);
        let view = tensor.to_plain_array_view::<f32>().unwrap();
        assert_eq!(view.shape(), &[1, 3, 224, 224]);
        assert!(view.iter().all(|v| v.is_finite()));
    }
});
