//! Entropy-coded TALL masks: fewer than one bit per weight per task, rebuilt bit for bit.
//! Paper: Localizing Task Information for Improved Model Merging and Compression (arXiv 2405.07813); card: methods/merging.md ("TALL compression storage"), BENCHMARKS.md B6.
//!
//! Masks are far from random: a weight whose |τ_MTL| is large is in more masks than one
//! whose |τ_MTL| is tiny, and a mask has structure along the rows and columns of its
//! matrix (an input pixel or a unit that one task relies on). Each mask bit is coded with an
//! adaptive binary range coder (the LZMA construction: 11-bit probabilities, adaptation
//! shift 5) under a context the decoder rebuilds from what it already has:
//! - the magnitude bucket of |τ_MTL| at that weight, relative to the chunk's mean |τ_MTL|
//!   (16 octaves; the decoder has τ_MTL: the bundle stores it);
//! - the two previous bits of the same mask (along a row);
//! - the bits one and two rows above (same column), for tensors with rows.
//!
//! Each task's mask is coded on its own, so rebuilding one task decodes one stream. (On
//! the merge-8 masks, coding each mask relative to a shared "consensus" mask cost more
//! than it saved: the shared mask itself takes ~0.1 bit per weight per task.) Each chunk
//! of `CHUNK_ELEMS` weights is coded on its own (probabilities restart), so chunks are
//! coded and decoded in parallel. A stream is `[u32 LE chunks][u32 LE length of each
//! chunk][chunk bytes...]`.

const PROB_BITS: u32 = 11;
const PROB_ONE: u32 = 1 << PROB_BITS;
const ADAPT: u32 = 5;
const TOP: u32 = 1 << 24;

/// Number of magnitude buckets (octaves of |τ| / mean |τ|).
pub const BUCKETS: usize = 16;

struct Encoder {
    low: u64,
    range: u32,
    cache: u8,
    cache_size: u64,
    out: Vec<u8>,
}

impl Encoder {
    fn new() -> Encoder {
        Encoder {
            low: 0,
            range: u32::MAX,
            cache: 0,
            cache_size: 1,
            out: Vec::new(),
        }
    }

    fn shift_low(&mut self) {
        if (self.low as u32) < 0xFF00_0000 || (self.low >> 32) != 0 {
            let carry = (self.low >> 32) as u8;
            let mut temp = self.cache;
            loop {
                self.out.push(temp.wrapping_add(carry));
                temp = 0xFF;
                self.cache_size -= 1;
                if self.cache_size == 0 {
                    break;
                }
            }
            self.cache = ((self.low >> 24) & 0xFF) as u8;
        }
        self.cache_size += 1;
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    fn encode(&mut self, p: &mut u16, bit: bool) {
        let bound = (self.range >> PROB_BITS) * u32::from(*p);
        if bit {
            self.low += u64::from(bound);
            self.range -= bound;
            *p -= *p >> ADAPT;
        } else {
            self.range = bound;
            *p += ((PROB_ONE - u32::from(*p)) >> ADAPT) as u16;
        }
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    fn finish(mut self) -> Vec<u8> {
        for _ in 0..5 {
            self.shift_low();
        }
        self.out
    }
}

struct Decoder<'a> {
    code: u32,
    range: u32,
    input: &'a [u8],
    pos: usize,
}

impl<'a> Decoder<'a> {
    fn new(input: &'a [u8]) -> Result<Decoder<'a>, String> {
        if input.len() < 5 {
            return Err("mask stream shorter than its 5-byte preamble".into());
        }
        let mut d = Decoder {
            code: 0,
            range: u32::MAX,
            input,
            pos: 0,
        };
        for _ in 0..5 {
            d.code = (d.code << 8) | u32::from(d.next()?);
        }
        Ok(d)
    }

    fn next(&mut self) -> Result<u8, String> {
        let b = *self
            .input
            .get(self.pos)
            .ok_or("mask stream ends early (truncated or corrupt)")?;
        self.pos += 1;
        Ok(b)
    }

    /// Branch-free on the decoded bit (mask bits are close to random: a branch on them
    /// mispredicts half the time).
    #[inline]
    fn decode(&mut self, p: &mut u16) -> Result<bool, String> {
        let pv = u32::from(*p);
        let bound = (self.range >> PROB_BITS) * pv;
        let bit = self.code >= bound;
        let m = u32::from(bit).wrapping_neg();
        self.code -= bound & m;
        self.range = ((self.range - bound) & m) | (bound & !m);
        let up = (PROB_ONE - pv) >> ADAPT;
        let down = pv >> ADAPT;
        *p = (pv + (up & !m)).wrapping_sub(down & m) as u16;
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | u32::from(self.next()?);
        }
        Ok(bit)
    }
}

/// Magnitude bucket of each |τ|: its binary exponent relative to that of the mean |τ| of
/// the slice, + 8, clamped to 0..=15 (0 also for τ = 0). Integer arithmetic on the f32
/// bits, so coder and decoder (same values, same summation order) agree exactly.
pub fn magnitude_buckets(tau: &[f32]) -> Vec<u8> {
    let mean = tau.iter().map(|x| f64::from(x.abs())).sum::<f64>() / tau.len().max(1) as f64;
    let mean = mean as f32;
    if mean.is_nan() || mean <= 0.0 || !mean.is_finite() {
        return vec![0; tau.len()];
    }
    let exp = |x: f32| ((x.to_bits() >> 23) & 0xFF) as i32;
    let m = exp(mean);
    tau.iter()
        .map(|x| {
            let a = x.abs();
            if a == 0.0 {
                0
            } else {
                (exp(a) - m + 8).clamp(0, 15) as u8
            }
        })
        .collect()
}

/// Context of element `k`: side value, two previous bits, bits one and two rows above.
#[inline]
fn context(side: u8, n_side: usize, bits: &[bool], k: usize, row: usize) -> usize {
    let b = |i: Option<usize>| i.is_some_and(|i| bits[i]) as usize;
    let p1 = b(k.checked_sub(1));
    let p2 = b(k.checked_sub(2));
    let (a1, a2) = if row > 0 {
        (b(k.checked_sub(row)), b(k.checked_sub(2 * row)))
    } else {
        (0, 0)
    };
    (usize::from(side).min(n_side - 1) << 4) | (p1 << 3) | (p2 << 2) | (a1 << 1) | a2
}

/// Codes `bits` (rows of `row` elements; 0 for none) under the per-element side context
/// `side` (values below `n_side`) and the neighbouring bits.
pub fn encode_bits(bits: &[bool], side: &[u8], n_side: usize, row: usize) -> Vec<u8> {
    debug_assert_eq!(bits.len(), side.len());
    let mut probs = vec![(PROB_ONE / 2) as u16; n_side * 16];
    let mut enc = Encoder::new();
    for (k, (&b, &s)) in bits.iter().zip(side).enumerate() {
        let ctx = context(s, n_side, bits, k, row);
        enc.encode(&mut probs[ctx], b);
    }
    enc.finish()
}

/// Inverse of [`encode_bits`]: fills `out` (its length is the number of bits).
pub fn decode_bits(
    bytes: &[u8],
    side: &[u8],
    n_side: usize,
    row: usize,
    out: &mut [bool],
) -> Result<(), String> {
    if side.len() != out.len() {
        return Err("mask context and output lengths differ".into());
    }
    let mut probs = vec![(PROB_ONE / 2) as u16; n_side * 16];
    let mut dec = Decoder::new(bytes)?;
    for k in 0..out.len() {
        let ctx = context(side[k], n_side, out, k, row);
        out[k] = dec.decode(&mut probs[ctx])?;
    }
    Ok(())
}

/// Row length used as the "above" context of a tensor of this shape: the elements per
/// first-axis slice (0 for vectors and scalars).
pub fn row_len(shape: &[usize]) -> usize {
    if shape.len() < 2 {
        0
    } else {
        shape[1..].iter().product()
    }
}

/// Joins per-chunk streams into one: count, lengths, bytes.
pub fn join_chunks(chunks: &[Vec<u8>]) -> Vec<u8> {
    let mut out =
        Vec::with_capacity(4 + 4 * chunks.len() + chunks.iter().map(Vec::len).sum::<usize>());
    out.extend_from_slice(&(chunks.len() as u32).to_le_bytes());
    for c in chunks {
        out.extend_from_slice(&(c.len() as u32).to_le_bytes());
    }
    for c in chunks {
        out.extend_from_slice(c);
    }
    out
}

/// Splits a joined stream into its chunks, checking that it holds `expect` of them and
/// that the lengths add up.
pub fn split_chunks(bytes: &[u8], expect: usize) -> Result<Vec<&[u8]>, String> {
    let word = |i: usize| -> Result<usize, String> {
        bytes
            .get(4 * i..4 * i + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| "mask stream header is truncated".to_string())
    };
    let n = word(0)?;
    if n != expect {
        return Err(format!("mask stream holds {n} chunks, expected {expect}"));
    }
    let mut pos = 4 + 4 * n;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let len = word(1 + i)?;
        let end = pos
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
            .ok_or("mask stream chunk runs past the end")?;
        out.push(&bytes[pos..end]);
        pos = end;
    }
    if pos != bytes.len() {
        return Err(format!(
            "mask stream has {} trailing bytes",
            bytes.len() - pos
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random_bits(n: usize, p: f64, seed: u64) -> Vec<bool> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| r.uniform_f64() < p).collect()
    }

    #[test]
    fn round_trips_bit_exactly_for_any_density() {
        for (i, p) in [0.0, 0.001, 0.1, 0.5, 0.9, 1.0].into_iter().enumerate() {
            let n = 10_007;
            let bits = random_bits(n, p, i as u64);
            let side: Vec<u8> = (0..n).map(|k| (k % 5) as u8).collect();
            for row in [0, 1, 7, 100] {
                let enc = encode_bits(&bits, &side, 5, row);
                let mut out = vec![false; n];
                decode_bits(&enc, &side, 5, row, &mut out).unwrap();
                assert_eq!(out, bits, "density {p}, row {row}");
            }
        }
    }

    #[test]
    fn skewed_masks_cost_less_than_a_bit_and_random_ones_about_a_bit() {
        let n = 200_000;
        let side = vec![0u8; n];
        let skewed = random_bits(n, 0.05, 1);
        let bytes = encode_bits(&skewed, &side, 1, 0).len() as f64;
        // Entropy of p = 0.05 is 0.286 bit; the adaptive coder stays within 10 % of it.
        assert!(bytes * 8.0 / n as f64 <= 0.286 * 1.1, "{bytes} bytes");
        let random = random_bits(n, 0.5, 2);
        let bytes = encode_bits(&random, &side, 1, 0).len() as f64;
        assert!(bytes * 8.0 / n as f64 <= 1.02, "{bytes} bytes");
    }

    #[test]
    fn the_context_is_used() {
        // Bits equal to their (known) side context: nearly free to code.
        let n = 100_000;
        let side: Vec<u8> = random_bits(n, 0.5, 3).into_iter().map(u8::from).collect();
        let bits: Vec<bool> = side.iter().map(|&s| s == 1).collect();
        let bytes = encode_bits(&bits, &side, 2, 0).len();
        assert!(bytes < n / 8 / 20, "{bytes} bytes");
        let mut out = vec![false; n];
        decode_bits(&encode_bits(&bits, &side, 2, 0), &side, 2, 0, &mut out).unwrap();
        assert_eq!(out, bits);
        // Rows repeated down a matrix: the row-above context makes them nearly free.
        let row = 300;
        let first = random_bits(row, 0.5, 9);
        let rows: Vec<bool> = (0..n).map(|k| first[k % row]).collect();
        let zeros = vec![0u8; n];
        let with_rows = encode_bits(&rows, &zeros, 1, row).len();
        let without = encode_bits(&rows, &zeros, 1, 0).len();
        assert!(with_rows * 10 < without, "{with_rows} vs {without}");
    }

    #[test]
    fn truncated_and_malformed_streams_are_errors() {
        let bits = random_bits(5000, 0.3, 4);
        let side = vec![0u8; 5000];
        let enc = encode_bits(&bits, &side, 1, 0);
        let mut out = vec![false; 5000];
        assert!(decode_bits(&enc[..enc.len() / 2], &side, 1, 0, &mut out).is_err());
        assert!(decode_bits(&[], &side, 1, 0, &mut out).is_err());
        let joined = join_chunks(&[enc.clone(), vec![1, 2, 3]]);
        let parts = split_chunks(&joined, 2).unwrap();
        assert_eq!(parts[0], &enc[..]);
        assert_eq!(parts[1], &[1, 2, 3]);
        assert!(split_chunks(&joined, 3).is_err());
        assert!(split_chunks(&joined[..joined.len() - 1], 2).is_err());
        let mut long = joined.clone();
        long.push(0);
        assert!(split_chunks(&long, 2).is_err());
        assert!(split_chunks(&[1, 0], 1).is_err());
    }

    #[test]
    fn buckets_are_octaves_of_the_mean() {
        // mean |τ| ≈ 1.29 (exponent 0): 1.0 → 8, 3 → 9, 0.5 → 7, 2^-7 → 1, 2^-9 → 0.
        let b = magnitude_buckets(&[0.0, 1.0, -3.0, 0.5, 0.0078125, 0.001953125, 4.5]);
        assert_eq!(b[..6], [0, 8, 9, 7, 1, 0]);
        assert_eq!(magnitude_buckets(&[0.0, 0.0]), vec![0, 0]);
        assert_eq!(magnitude_buckets(&[1e30, 1.0]), vec![9, 0]); // mean 5e29
        assert_eq!(magnitude_buckets(&[f32::NAN, 1.0]), vec![0, 0]);
        assert_eq!(row_len(&[3, 4, 5]), 20);
        assert_eq!(row_len(&[7]), 0);
    }
}
