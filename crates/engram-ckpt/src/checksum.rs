//! Per-tensor checksums: every file engram writes records, in its `__metadata__` under
//! `engram.crc32`, a JSON object mapping each tensor to the CRC-32 of its name, dtype, shape
//! and bytes. Readers verify them ([`crate::Model::verify`]): a flipped byte, a rewritten dtype
//! or shape, a renamed, removed or added tensor is an error naming the tensor. CRC-32 detects
//! corruption, not tampering: whoever can rewrite the file can rewrite the checksums.

use crate::dtype::DType;
use rayon::prelude::*;
use std::collections::BTreeMap;

/// The metadata key.
pub const KEY: &str = "engram.crc32";

/// The metadata key of an output's identity, the same in every file of one output (every
/// shard of a model): `IIIIIIII/NNNNN`, the CRC-32 of all its tensors' checksums and its file
/// count. Files of different outputs mixed in one folder disagree on it.
pub const OUTPUT_KEY: &str = "engram.output";

/// The identity of an output of `files` files whose tensors have the checksums `crcs`.
pub fn output_id<'a>(crcs: impl Iterator<Item = (&'a String, &'a u32)>, files: usize) -> String {
    let mut all: Vec<(&String, &u32)> = crcs.collect();
    all.sort();
    let mut h = crc32fast::Hasher::new();
    for (n, c) in all {
        h.update(&(n.len() as u64).to_le_bytes());
        h.update(n.as_bytes());
        h.update(&c.to_le_bytes());
    }
    format!("{:08x}/{files:05}", h.finalize())
}

/// The placeholder of [`OUTPUT_KEY`] (same length as any identity).
pub fn output_placeholder() -> String {
    output_id(std::iter::empty(), 0).replace(|c: char| c != '/', "0")
}

/// Bytes hashed per parallel piece of one tensor (pieces are combined in order).
const PIECE: usize = 16 << 20;

/// The CRC-32 of a tensor: its name, dtype, shape, then its bytes.
pub fn tensor_crc(name: &str, dtype: DType, shape: &[usize], bytes: &[u8]) -> u32 {
    crc_of(name, dtype.name(), shape, bytes)
}

/// Checks a file's tensors against its stored checksums `want`: every listed tensor present
/// (`present`), every tensor of the file (`names`) listed, and `crc(name)` (a present
/// tensor's checksum, computed in parallel over tensors) equal to the stored one. The error
/// names the file and the tensor. Safetensors and GGUF files share it.
pub fn verify_listed<'a>(
    path: &std::path::Path,
    want: &BTreeMap<String, u32>,
    mut names: impl Iterator<Item = &'a str>,
    present: &dyn Fn(&str) -> bool,
    crc: &(dyn Fn(&str) -> Option<u32> + Sync),
) -> crate::Result<()> {
    use crate::Error;
    if let Some(name) = want.keys().find(|n| !present(n)) {
        return Err(Error::tensor(
            path,
            name,
            "is listed in the checksums but missing from the file",
        ));
    }
    if let Some(name) = names.find(|n| !want.contains_key(*n)) {
        return Err(Error::tensor(
            path,
            name,
            "has no stored checksum: the header was rewritten",
        ));
    }
    want.par_iter().try_for_each(|(name, &stored)| match crc(name) {
        Some(c) if c != stored => Err(Error::tensor(
            path,
            name,
            "checksum mismatch: the tensor's bytes, dtype or shape changed since it was written",
        )),
        _ => Ok(()),
    })
}

/// [`tensor_crc`] with the dtype given by name (GGUF's block types have no [`DType`]).
pub fn crc_of(name: &str, dtype: &str, shape: &[usize], bytes: &[u8]) -> u32 {
    crc_releasing(name, dtype, shape, bytes, &|_, _| {})
}

/// [`crc_of`] of `map[at..at + len]`, a tensor in a read-only map of a file engram wrote,
/// giving back each hashed piece's pages, so that checksumming a large output does not make it
/// resident (whole pages inside a piece only).
pub fn crc_of_mapped(
    map: &memmap2::Mmap,
    at: usize,
    len: usize,
    name: &str,
    dtype: &str,
    shape: &[usize],
) -> u32 {
    let release = |a: usize, b: usize| {
        const PAGE: usize = 4096;
        let (lo, hi) = ((at + a).next_multiple_of(PAGE), (at + b) / PAGE * PAGE);
        if hi > lo {
            // SAFETY: a read-only, shared file mapping nobody writes through; MADV_DONTNEED
            // only drops page-table entries, and a later read faults the same file contents
            // back in (as `TensorView::release`).
            let _ = unsafe {
                map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo)
            };
        }
    };
    crc_releasing(name, dtype, shape, &map[at..at + len], &release)
}

/// [`crc_of`], calling `done(start, end)` with each byte range of `bytes` once it is hashed,
/// so that a caller reading a mapped file can give those pages back (verifying a large model
/// then keeps only a few pieces resident).
pub fn crc_releasing(
    name: &str,
    dtype: &str,
    shape: &[usize],
    bytes: &[u8],
    done: &(dyn Fn(usize, usize) + Sync),
) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update(dtype.as_bytes());
    h.update(&(shape.len() as u64).to_le_bytes());
    for d in shape {
        h.update(&(*d as u64).to_le_bytes());
    }
    let pieces: Vec<crc32fast::Hasher> = bytes
        .par_chunks(PIECE)
        .enumerate()
        .map(|(i, p)| {
            let mut h = crc32fast::Hasher::new();
            h.update(p);
            done(i * PIECE, i * PIECE + p.len());
            h
        })
        .collect();
    for p in &pieces {
        h.combine(p);
    }
    h.finalize()
}

/// The metadata value: a JSON object of fixed-width hex checksums, so that placeholders (all
/// zero) and final values serialize to the same length.
pub fn encode(crcs: &BTreeMap<String, u32>) -> String {
    let m: serde_json::Map<String, serde_json::Value> = crcs
        .iter()
        .map(|(n, c)| (n.clone(), format!("{c:08x}").into()))
        .collect();
    serde_json::Value::Object(m).to_string()
}

/// Parses the metadata value; `Err` with a message when it is malformed.
pub fn decode(text: &str) -> Result<BTreeMap<String, u32>, String> {
    let m: BTreeMap<String, String> =
        serde_json::from_str(text).map_err(|e| format!("bad {KEY} metadata: {e}"))?;
    m.into_iter()
        .map(|(n, c)| {
            let v = (c.len() == 8)
                .then(|| u32::from_str_radix(&c, 16).ok())
                .flatten()
                .ok_or_else(|| format!("bad {KEY} metadata: '{c}' for tensor '{n}'"))?;
            Ok((n, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn covers_name_dtype_shape_and_bytes() {
        let b = vec![1u8; 40 << 20];
        let c = tensor_crc("w", DType::F16, &[4, 5], &b);
        assert_eq!(c, tensor_crc("w", DType::F16, &[4, 5], &b));
        assert_ne!(c, tensor_crc("v", DType::F16, &[4, 5], &b));
        assert_ne!(c, tensor_crc("w", DType::BF16, &[4, 5], &b));
        assert_ne!(c, tensor_crc("w", DType::F16, &[5, 4], &b));
        let mut f = b.clone();
        f[30 << 20] ^= 1;
        assert_ne!(c, tensor_crc("w", DType::F16, &[4, 5], &f));
        // Pieces combined equal one pass.
        let mut h = crc32fast::Hasher::new();
        h.update(&1u64.to_le_bytes());
        h.update(b"w");
        h.update(b"F16");
        h.update(&2u64.to_le_bytes());
        h.update(&4u64.to_le_bytes());
        h.update(&5u64.to_le_bytes());
        h.update(&b);
        assert_eq!(c, h.finalize());
    }

    #[test]
    fn encodes_fixed_width_and_decodes() {
        let mut m = BTreeMap::new();
        m.insert("a\"b".to_string(), 0u32);
        let zero = encode(&m);
        m.insert("a\"b".to_string(), u32::MAX);
        assert_eq!(zero.len(), encode(&m).len());
        assert_eq!(decode(&encode(&m)).unwrap(), m);
        assert!(decode(r#"{"a":"12"}"#).is_err());
        assert!(decode(r#"{"a":"zzzzzzzz"}"#).is_err());
        assert!(decode("[]").is_err());
    }
}
