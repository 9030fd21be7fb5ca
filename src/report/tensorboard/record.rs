//! TFRecord framing: `u64 length (LE) | u32 masked_crc32c(length) | data |
//! u32 masked_crc32c(data)`.

use anyhow::{bail, ensure};

/// One TFRecord: length, its masked CRC, the data, its masked CRC.
pub(super) fn frame_record(data: &[u8]) -> Vec<u8> {
    let length = (data.len() as u64).to_le_bytes();
    let mut record = Vec::with_capacity(data.len() + 16);
    record.extend_from_slice(&length);
    record.extend_from_slice(&masked_crc32c(&length).to_le_bytes());
    record.extend_from_slice(data);
    record.extend_from_slice(&masked_crc32c(data).to_le_bytes());
    record
}

/// Checks the TFRecord at `offset`; returns its data and the offset of the next record.
pub(super) fn unframe_record(bytes: &[u8], offset: usize) -> anyhow::Result<(&[u8], usize)> {
    let rest = &bytes[offset..];
    ensure!(
        rest.len() >= 12,
        "truncated record header ({} bytes left)",
        rest.len()
    );
    let length_bytes = &rest[..8];
    ensure!(
        read_u32(&rest[8..12]) == masked_crc32c(length_bytes),
        "length CRC mismatch"
    );
    let length = u64::from_le_bytes(length_bytes.try_into()?);
    let Some(end) = usize::try_from(length).ok().and_then(|n| n.checked_add(16)) else {
        bail!("record length {length} too large");
    };
    ensure!(
        rest.len() >= end,
        "truncated record: {length} data bytes announced"
    );
    let data = &rest[12..end - 4];
    ensure!(
        read_u32(&rest[end - 4..end]) == masked_crc32c(data),
        "data CRC mismatch"
    );
    Ok((data, offset + end))
}

/// A little-endian u32 from exactly four bytes.
fn read_u32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

/// TFRecord masks CRCs so that a CRC of data that itself contains CRCs stays strong.
pub(super) fn masked_crc32c(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// CRC-32C (Castagnoli), reflected, as TFRecord uses.
pub(super) fn crc32c(data: &[u8]) -> u32 {
    let crc = data.iter().fold(!0u32, |crc, &byte| {
        CRC32C_TABLE[((crc ^ u32::from(byte)) & 0xff) as usize] ^ (crc >> 8)
    });
    !crc
}

/// Byte-at-a-time lookup table, computed at compile time.
const CRC32C_TABLE: [u32; 256] = crc32c_table();

/// The reflected Castagnoli polynomial's table: entry `i` is the CRC of byte `i`.
const fn crc32c_table() -> [u32; 256] {
    const POLYNOMIAL: u32 = 0x82F6_3B78;
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = i as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ POLYNOMIAL
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
}
