//! retrain.py's deterministic train/validation/test split: an image's set follows from its
//! name alone, so it never changes between runs, machines or added images, and a test
//! photo never leaks into training.

use sha1::{Digest, Sha1};

/// retrain.py's constant: the split hash is taken modulo this plus one.
pub const MAX_NUM_IMAGES_PER_CLASS: u32 = (1 << 27) - 1;

/// Which set an image belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    Training,
    Validation,
    Testing,
}

/// retrain.py's split rule on the path relative to the image directory: the sha1 of the
/// name (with anything from `_nohash_` on removed from the file name, so variants of one
/// photo stay together) picks a stable percentage in [0, 100].
pub fn split_of(relative: &str, validation_percentage: f64, testing_percentage: f64) -> Split {
    let percentage = split_percentage(relative);
    if percentage < validation_percentage {
        Split::Validation
    } else if percentage < validation_percentage + testing_percentage {
        Split::Testing
    } else {
        Split::Training
    }
}

/// The percentage in [0, 100] that decides an image's split.
pub fn split_percentage(relative: &str) -> f64 {
    let file_start = relative.rfind('/').map_or(0, |i| i + 1);
    let hash_name = match relative[file_start..].find("_nohash_") {
        Some(i) => &relative[..file_start + i],
        None => relative,
    };
    let digest = Sha1::digest(hash_name.as_bytes());
    let low = u32::from_be_bytes([digest[16], digest[17], digest[18], digest[19]]);
    let bucket = low & MAX_NUM_IMAGES_PER_CLASS;
    f64::from(bucket) * (100.0 / f64::from(MAX_NUM_IMAGES_PER_CLASS))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn split_matches_retrain_py() {
        // Python: (int(hashlib.sha1(name).hexdigest(), 16) % (MAX + 1)) * (100.0 / MAX)
        // with MAX = 2**27 - 1 and `_nohash_.*$` removed first, as retrain.py does.
        for (name, expected) in [
            ("daisy/5547758_eea9edfd54_n.jpg", 68.68499941144138),
            ("roses/12240303_80d87f77a3_n.jpg", 56.4537879560425),
            ("tulips/x_nohash_3.jpg", 29.628200304718316),
        ] {
            assert!((split_percentage(name) - expected).abs() < 1e-9, "{name}");
        }
    }

    #[test]
    fn nohash_variants_share_a_split() {
        let a = split_percentage("cats/felix_nohash_1.jpg");
        let b = split_percentage("cats/felix_nohash_2.jpg");
        let c = split_percentage("cats/felix");
        assert_eq!(a, b);
        assert_eq!(a, c);
        // `_nohash_` in a folder name is not special.
        assert_ne!(
            split_percentage("a_nohash_x/one.jpg"),
            split_percentage("a_nohash_y/one.jpg")
        );
    }

    #[test]
    fn split_is_deterministic_and_roughly_proportional() {
        let names: Vec<String> = (0..10_000).map(|i| format!("c/img{i}.jpg")).collect();
        let mut counts: HashMap<Split, usize> = HashMap::new();
        for name in &names {
            let split = split_of(name, 10.0, 10.0);
            assert_eq!(split, split_of(name, 10.0, 10.0));
            *counts.entry(split).or_default() += 1;
        }
        assert!((800..1200).contains(&counts[&Split::Validation]));
        assert!((800..1200).contains(&counts[&Split::Testing]));
        assert!((7600..8400).contains(&counts[&Split::Training]));
    }
}
