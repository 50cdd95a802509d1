//! Q8_0 and Q4_0, llama.cpp's two simplest block formats: 32 values per block, an f16 scale
//! `d` then the codes. The encoders reproduce bit for bit the reference numpy quantizer of the
//! `gguf` Python package (`gguf/quants.py`, classes `Q8_0` and `Q4_0`, version 0.19.0; Q8_0
//! there is itself bit-exact with `quantize_row_q8_0_ref` of ggml-quants.c):
//!
//! - Q8_0 (34 bytes): `d = max|x| / 127` and `id = 1/d` (0 where d is 0), both in f32; the
//!   codes are `x·id` rounded half away from zero (their `np_roundf`, not `np.round`), from the
//!   f32 `id`; `d` is then stored as f16. Decoding: `code · f32(d)`.
//! - Q4_0 (18 bytes): `m` is the signed value of largest magnitude (the first such), `d = m /
//!   -8`, `id = 1/d` (0 where d is 0), the codes `min(trunc(x·id + 8.5), 15)` from the f32 `id`;
//!   byte j holds code j in its low nibble and code j + 16 in its high one. Decoding:
//!   `(code - 8) · f32(d)`. An all-zero block stores d = -0.0 (0 / -8) and codes 8.
//!
//! Every operation is the same single f32 operation numpy performs (no fused multiply-add), so
//! the bytes agree. Where numpy would store an infinite scale or code a NaN (non-finite input,
//! or a block whose scale exceeds f16's range: |x| beyond about 8.3e6 for Q8_0, 5.2e5 for
//! Q4_0), engram refuses instead of writing a block that decodes to infinities.

use half::f16;

/// Values per block of both formats.
pub const QK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale and 32 signed 8-bit codes.
pub const Q8_0_BYTES: usize = 2 + QK;
/// Bytes per Q4_0 block: an f16 scale and 32 4-bit codes.
pub const Q4_0_BYTES: usize = 2 + QK / 2;

/// Why a block cannot be encoded: the index (within the values given) of the value at fault,
/// a non-finite value or the block's largest magnitude when its scale overflows f16.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Unrepresentable {
    pub index: usize,
    pub value: f32,
}

fn check_lengths(vals: usize, out: usize, block_bytes: usize) {
    assert!(
        vals.is_multiple_of(QK) && out == vals / QK * block_bytes,
        "block quantizer: {vals} values into {out} bytes"
    );
}

/// A non-finite value of `block` (first), if any.
fn non_finite(block: &[f32], base: usize) -> Result<(), Unrepresentable> {
    match block.iter().position(|x| !x.is_finite()) {
        Some(i) => Err(Unrepresentable {
            index: base + i,
            value: block[i],
        }),
        None => Ok(()),
    }
}

/// The scale `d` as stored (f16), or an error naming the value whose magnitude makes it
/// overflow.
fn stored_scale(d: f32, at: usize, value: f32) -> Result<f16, Unrepresentable> {
    let h = f16::from_f32(d);
    if h.is_finite() {
        Ok(h)
    } else {
        Err(Unrepresentable { index: at, value })
    }
}

/// Encodes `vals` (a multiple of 32 values) into Q8_0 blocks in `out`
/// (`vals.len() / 32 * 34` bytes). Panics only on mismatched lengths (a programming error).
pub fn quantize_q8_0(vals: &[f32], out: &mut [u8]) -> Result<(), Unrepresentable> {
    check_lengths(vals.len(), out.len(), Q8_0_BYTES);
    for (b, (x, o)) in vals
        .chunks_exact(QK)
        .zip(out.chunks_exact_mut(Q8_0_BYTES))
        .enumerate()
    {
        non_finite(x, b * QK)?;
        let (mut at, mut amax) = (0, 0f32);
        for (i, v) in x.iter().enumerate() {
            if v.abs() > amax {
                (at, amax) = (i, v.abs());
            }
        }
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let h = stored_scale(d, b * QK + at, x[at])?;
        o[..2].copy_from_slice(&h.to_bits().to_le_bytes());
        for (c, v) in o[2..].iter_mut().zip(x) {
            // f32::round rounds half away from zero, as np_roundf does.
            *c = ((v * id).round() as i8) as u8;
        }
    }
    Ok(())
}

/// Encodes `vals` (a multiple of 32 values) into Q4_0 blocks in `out`
/// (`vals.len() / 32 * 18` bytes). Panics only on mismatched lengths (a programming error).
pub fn quantize_q4_0(vals: &[f32], out: &mut [u8]) -> Result<(), Unrepresentable> {
    check_lengths(vals.len(), out.len(), Q4_0_BYTES);
    for (b, (x, o)) in vals
        .chunks_exact(QK)
        .zip(out.chunks_exact_mut(Q4_0_BYTES))
        .enumerate()
    {
        non_finite(x, b * QK)?;
        // The first value of largest magnitude, with its sign (numpy's argmax of |x|).
        let (mut at, mut amax) = (0, 0f32);
        for (i, v) in x.iter().enumerate() {
            if v.abs() > amax {
                (at, amax) = (i, v.abs());
            }
        }
        let m = x[at];
        let d = m / -8.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        let h = stored_scale(d, b * QK + at, m)?;
        o[..2].copy_from_slice(&h.to_bits().to_le_bytes());
        let code = |v: f32| ((v * id + 8.5).trunc() as u8).min(15);
        for j in 0..QK / 2 {
            o[2 + j] = code(x[j]) | (code(x[j + QK / 2]) << 4);
        }
    }
    Ok(())
}

/// Decodes Q8_0 blocks (`out.len() / 32 * 34` bytes) into `out`.
pub fn dequantize_q8_0(bytes: &[u8], out: &mut [f32]) {
    check_lengths(out.len(), bytes.len(), Q8_0_BYTES);
    for (blk, o) in bytes.chunks_exact(Q8_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
        for (v, &c) in o.iter_mut().zip(&blk[2..]) {
            *v = (c as i8) as f32 * d;
        }
    }
}

/// Decodes Q4_0 blocks (`out.len() / 32 * 18` bytes) into `out`.
pub fn dequantize_q4_0(bytes: &[u8], out: &mut [f32]) {
    check_lengths(out.len(), bytes.len(), Q4_0_BYTES);
    for (blk, o) in bytes.chunks_exact(Q4_0_BYTES).zip(out.chunks_exact_mut(QK)) {
        let d = f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
        let (lo, hi) = o.split_at_mut(QK / 2);
        for j in 0..QK / 2 {
            let c = blk[2 + j];
            lo[j] = d * ((c & 0x0f) as i32 - 8) as f32;
            hi[j] = d * ((c >> 4) as i32 - 8) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of values (splitmix64), scaled by `scale`.
    fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
                let mut z = s;
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                z ^= z >> 31;
                ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    #[test]
    fn q8_0_error_is_within_half_a_step() {
        for scale in [1e-3f32, 1.0, 300.0] {
            let v = values(32 * 64, 7, scale);
            let mut q = vec![0u8; v.len() / QK * Q8_0_BYTES];
            quantize_q8_0(&v, &mut q).unwrap();
            let mut back = vec![0f32; v.len()];
            dequantize_q8_0(&q, &mut back);
            for (x, blk) in v.chunks(QK).zip(back.chunks(QK)) {
                let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
                // Half a step of d, plus 127 times the f16 rounding of d (subnormal for the
                // small scale).
                let d = amax / 127.0;
                let bound = d * 0.5 * (1.0 + 1e-5) + 127.0 * (d - f16::from_f32(d).to_f32()).abs();
                for (a, b) in x.iter().zip(blk) {
                    assert!((a - b).abs() <= bound, "{a} vs {b} (bound {bound})");
                }
            }
        }
    }

    #[test]
    fn q4_0_error_is_within_one_step() {
        let v = values(32 * 64, 11, 5.0);
        let mut q = vec![0u8; v.len() / QK * Q4_0_BYTES];
        quantize_q4_0(&v, &mut q).unwrap();
        let mut back = vec![0f32; v.len()];
        dequantize_q4_0(&q, &mut back);
        for (x, blk) in v.chunks(QK).zip(back.chunks(QK)) {
            let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Truncation of x·id + 8.5 is rounding to nearest: half a step, but the positive
            // end clips at code 15 (7 steps) while |x| may reach 8 steps: one step; plus 8
            // times the f16 rounding of d.
            let d = amax / 8.0;
            let bound = d * (1.0 + 1e-5) + 8.0 * (d - f16::from_f32(d).to_f32()).abs();
            for (a, b) in x.iter().zip(blk) {
                assert!((a - b).abs() <= bound, "{a} vs {b} (bound {bound})");
            }
        }
    }

    #[test]
    fn hand_computed_blocks() {
        // Q8_0: max 127 gives d = 1 exactly; 2.5 rounds away from zero to 3, -0.5 to -1.
        let mut x = [0f32; QK];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -0.5;
        x[3] = -127.0;
        let mut q = [0u8; Q8_0_BYTES];
        quantize_q8_0(&x, &mut q).unwrap();
        assert_eq!(&q[..2], &f16::from_f32(1.0).to_bits().to_le_bytes());
        assert_eq!(&q[2..6], &[127, 3, 0xff, 0x81]);
        // Q4_0: the signed extreme is -8, so d = 1 and id = 1; x + 8.5 truncated, clipped.
        let mut x = [0f32; QK];
        x[0] = -8.0;
        x[1] = 7.9;
        x[16] = 1.0;
        x[17] = -0.6;
        let mut q = [0u8; Q4_0_BYTES];
        quantize_q4_0(&x, &mut q).unwrap();
        assert_eq!(&q[..2], &f16::from_f32(1.0).to_bits().to_le_bytes());
        // code 0 (x0) | code 9 (x16) << 4; code 15 (x1: 16.4 clipped) | code 7 (x17) << 4.
        assert_eq!(q[2], 9 << 4);
        assert_eq!(q[3], 15 | (7 << 4));
        assert_eq!(q[4], 8 | (8 << 4));
    }

    #[test]
    fn zero_blocks() {
        let x = [0f32; QK];
        let mut q = [0xaau8; Q8_0_BYTES];
        quantize_q8_0(&x, &mut q).unwrap();
        assert!(q.iter().all(|&b| b == 0));
        let mut q4 = [0u8; Q4_0_BYTES];
        quantize_q4_0(&x, &mut q4).unwrap();
        // d = 0 / -8 = -0.0 (f16 0x8000), every code 8.
        assert_eq!(&q4[..2], &[0x00, 0x80]);
        assert!(q4[2..].iter().all(|&b| b == 0x88));
        let mut back = [1f32; QK];
        dequantize_q4_0(&q4, &mut back);
        assert!(back.iter().all(|&v| v == 0.0));
        dequantize_q8_0(&q, &mut back);
        assert!(back.iter().all(|&v| v == 0.0));
    }

    #[test]
    fn refuses_non_finite_values_and_overflowing_scales() {
        let mut x = [1f32; 2 * QK];
        x[40] = f32::NAN;
        let mut q = [0u8; 2 * Q8_0_BYTES];
        assert_eq!(quantize_q8_0(&x, &mut q).unwrap_err().index, 40);
        x[40] = 8e6;
        assert!(quantize_q8_0(&x, &mut q).is_ok());
        x[40] = 9e6;
        assert_eq!(quantize_q8_0(&x, &mut q).unwrap_err().index, 40);
        let mut q4 = [0u8; 2 * Q4_0_BYTES];
        x[40] = -6e5;
        assert_eq!(quantize_q4_0(&x, &mut q4).unwrap_err().value, -6e5);
        x[40] = -5e5;
        assert!(quantize_q4_0(&x, &mut q4).is_ok());
    }
}
