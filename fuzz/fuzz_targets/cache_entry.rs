//! Fuzzes the bottleneck cache's entry reader: any bytes on disk under an entry's name
//! (truncated, zero-filled, another backbone's, hostile) must read as "no entry" or as a
//! finite vector, never panic. The identity and image hash it expects are taken from
//! the input itself, so that the fuzzer gets past the header to the length and checksum.
#![no_main]

use flowers::bottleneck::cache::decode_entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut identity = [0u8; 32];
    let mut image_sha = [0u8; 32];
    if data.len() >= 72 {
        identity.copy_from_slice(&data[8..40]);
        image_sha.copy_from_slice(&data[40..72]);
    }
    if let Some(vector) = decode_entry(data, &identity, &image_sha) {
        assert!(vector.iter().all(|v| v.is_finite()));
    }
});
