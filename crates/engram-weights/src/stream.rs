//! Chunked parallel visits over the same tensor in several models.

use crate::merge::CHUNK_ELEMS;
use engram_ckpt::{Result, TensorView};
use rayon::prelude::*;

/// One chunk of one tensor across several models, decoded to f32.
pub struct Chunk<'a> {
    /// Chunk number within the tensor.
    pub index: usize,
    /// Element offset within the tensor.
    pub start: usize,
    /// One slice per view, in the order given.
    pub values: &'a [Vec<f32>],
}

/// Calls `f` on fixed chunks of the tensor in every view (same shape), in parallel.
/// Chunk boundaries are multiples of `CHUNK_ELEMS` (a multiple of 8), whatever the threads.
pub fn visit_chunks(views: &[TensorView], f: &(dyn Fn(&Chunk) -> Result<()> + Sync)) -> Result<()> {
    let n = views.first().map(|v| v.numel()).unwrap_or(0);
    (0..n.div_ceil(CHUNK_ELEMS))
        .into_par_iter()
        .try_for_each(|index| {
            let start = index * CHUNK_ELEMS;
            let len = CHUNK_ELEMS.min(n - start);
            let values = views
                .iter()
                .map(|v| {
                    let mut buf = vec![0f32; len];
                    v.read_f32_into(start, &mut buf)?;
                    Ok(buf)
                })
                .collect::<Result<Vec<_>>>()?;
            for v in views {
                v.release(start, start + len);
            }
            f(&Chunk {
                index,
                start,
                values: &values,
            })
        })
}

/// Packs booleans MSB first (numpy's `packbits` order): bit 7 of byte 0 is element 0.
pub fn pack_bits(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            out[i / 8] |= 0x80 >> (i % 8);
        }
    }
    out
}

/// Reads element `i` of an MSB-first packed bit array.
#[inline]
pub fn bit(packed: &[u8], i: usize) -> bool {
    packed[i / 8] & (0x80 >> (i % 8)) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_msb_first() {
        let bits = [true, false, false, false, false, false, false, true, true];
        let p = pack_bits(&bits);
        assert_eq!(p, vec![0b1000_0001, 0b1000_0000]);
        assert!((0..bits.len()).all(|i| bit(&p, i) == bits[i]));
    }
}
