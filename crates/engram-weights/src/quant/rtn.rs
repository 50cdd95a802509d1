//! Round-to-nearest (RTN), the baseline every quantizer must beat: symmetric (restricted
//! range) and asymmetric grids. Card: `shared/methods/quantization.md`, "RTN baselines".
//!
//! Symmetric: Q = 2^(b−1) − 1, s = max|W|/Q, q = clamp(round(W/s), −Q, Q), Ŵ = s·q; the code
//! stored is q + Q. Asymmetric: s = (hi − lo)/(2^b − 1), z = round(−lo/s),
//! q = clamp(round(W/s) + z, 0, 2^b − 1), Ŵ = s·(q − z), where [lo, hi] is the block's range
//! widened to hold 0 (lo = min(min W, 0), hi = max(max W, 0), as PyTorch's observers do), so
//! that z lies in the code range: with the card's range [min W, max W] a block of positive
//! values would get a clamped zero point and saturated codes. Rounding is half to even.
//! A zero block gets s = 1 (all codes decode to 0).

use super::{Block, Quantizer, Spec, Stats, round};

pub struct Rtn;

impl Quantizer for Rtn {
    fn name(&self) -> &'static str {
        "rtn"
    }

    fn check(&self, _spec: &Spec) -> Result<(), String> {
        Ok(())
    }

    fn block(&self, st: &Stats, spec: &Spec, _a: f32) -> Block {
        if spec.symmetric {
            let s = st.max_abs / spec.qmax() as f32;
            let s = if s > 0.0 { s } else { 1.0 };
            return Block {
                scale: spec.stored_scale(s),
                zero: 0,
            };
        }
        let top = (spec.levels() - 1) as f32;
        let (lo, hi) = (st.min.min(0.0), st.max.max(0.0));
        let s = if hi > lo { (hi - lo) / top } else { 1.0 };
        let s = spec.stored_scale(s);
        let z = round(-st.min / s).clamp(0.0, top);
        Block {
            scale: s,
            zero: z as u8,
        }
    }

    fn encode(&self, w: &[f32], b: Block, spec: &Spec, _a: f32, codes: &mut [u8]) {
        if spec.symmetric {
            let q = spec.qmax() as f32;
            for (c, &x) in codes.iter_mut().zip(w) {
                *c = (round(x / b.scale).clamp(-q, q) + q) as u8;
            }
        } else {
            let top = (spec.levels() - 1) as f32;
            let z = b.zero as f32;
            for (c, &x) in codes.iter_mut().zip(w) {
                *c = (round(x / b.scale) + z).clamp(0.0, top) as u8;
            }
        }
    }

    fn decode(&self, codes: &[u8], b: Block, spec: &Spec, _a: f32, out: &mut [f32]) {
        let off = if spec.symmetric {
            spec.qmax()
        } else {
            b.zero as i32
        };
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = b.scale * (c as i32 - off) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Scope, quantize, sq_diff, sq_norm};
    use super::*;

    fn spec(bits: u32, scope: Scope, symmetric: bool) -> Spec {
        Spec {
            symmetric,
            ..Spec::new(bits, scope)
        }
    }

    #[test]
    fn symmetric_grid_by_hand() {
        // max|W| = 1.4 at 3 bits: Q = 3, s = 1.4/3.
        let w = [1.4f32, -0.7, 0.2, 0.0];
        let s = spec(3, Scope::Tensor, true);
        let z = quantize(&Rtn, &s, &w, &[1, 4]).unwrap();
        let step = 1.4f32 / 3.0;
        assert_eq!(z.blocks[0].scale, step);
        // 0.7/step = 1.5 rounds to even: 2; 0.2/step = 0.43 rounds to 0.
        assert_eq!(z.codes, vec![6, 1, 3, 3]);
        assert_eq!(
            z.dequantize(&Rtn, &s),
            vec![3.0 * step, -2.0 * step, 0.0, 0.0]
        );
    }

    #[test]
    fn asymmetric_grid_by_hand() {
        // min −1, max 2 at 2 bits: s = 1, z = 1.
        let w = [-1.0f32, 2.0, 0.4, 1.5];
        let s = spec(2, Scope::Channel, false);
        let z = quantize(&Rtn, &s, &w, &[1, 4]).unwrap();
        assert_eq!(
            z.blocks[0],
            Block {
                scale: 1.0,
                zero: 1
            }
        );
        assert_eq!(z.codes, vec![0, 3, 1, 3]);
        assert_eq!(z.dequantize(&Rtn, &s), vec![-1.0, 2.0, 0.0, 2.0]);
    }

    /// A block of positive (or negative) values only: the range is widened to 0, so the
    /// codes do not saturate and the asymmetric grid beats the symmetric one.
    #[test]
    fn one_signed_blocks_are_not_saturated() {
        let w: Vec<f32> = (0..32).map(|i| 1.0 + i as f32 / 31.0).collect();
        let neg: Vec<f32> = w.iter().map(|x| -x).collect();
        for v in [w, neg] {
            let a = spec(4, Scope::Channel, false);
            let s = spec(4, Scope::Channel, true);
            let ea = sq_diff(
                &v,
                &quantize(&Rtn, &a, &v, &[1, 32])
                    .unwrap()
                    .dequantize(&Rtn, &a),
            );
            let es = sq_diff(
                &v,
                &quantize(&Rtn, &s, &v, &[1, 32])
                    .unwrap()
                    .dequantize(&Rtn, &s),
            );
            assert!(ea < es && ea / sq_norm(&v) < 1e-3, "{ea} vs {es}");
        }
    }

    #[test]
    fn zero_and_constant_rows() {
        for symmetric in [true, false] {
            let s = spec(4, Scope::Channel, symmetric);
            let w = [0.0f32, 0.0, 0.0, 0.0, 3.5, 3.5, -2.0, -2.0];
            let z = quantize(&Rtn, &s, &w, &[4, 2]).unwrap();
            let back = z.dequantize(&Rtn, &s);
            assert_eq!(&back[..4], &[0.0; 4], "zero rows stay zero");
            if !symmetric {
                assert_eq!(&back[4..], &w[4..], "constant rows stay exact");
            }
        }
    }

    /// Card's expectation: per-channel error ≤ per-tensor error, and 8 bits is near lossless.
    #[test]
    fn channel_beats_tensor_and_8_bits_is_close() {
        let mut w = super::super::tests::bell(32 * 40, 7);
        for x in &mut w[..40] {
            *x *= 20.0; // one row with a much larger range
        }
        for bits in [2, 3, 4, 8] {
            for symmetric in [true, false] {
                let t = spec(bits, Scope::Tensor, symmetric);
                let c = spec(bits, Scope::Channel, symmetric);
                let et = sq_diff(
                    &w,
                    &quantize(&Rtn, &t, &w, &[32, 40])
                        .unwrap()
                        .dequantize(&Rtn, &t),
                );
                let ec = sq_diff(
                    &w,
                    &quantize(&Rtn, &c, &w, &[32, 40])
                        .unwrap()
                        .dequantize(&Rtn, &c),
                );
                assert!(ec <= et, "{bits} bits: channel {ec} > tensor {et}");
                if bits == 8 {
                    assert!(ec / sq_norm(&w) < 1e-4);
                }
            }
        }
    }

    #[test]
    fn f16_scales_are_used_for_the_codes() {
        let w = super::super::tests::bell(4 * 16, 9);
        let s = Spec {
            scale_f16: true,
            ..Spec::new(4, Scope::Channel)
        };
        let z = quantize(&Rtn, &s, &w, &[4, 16]).unwrap();
        for b in &z.blocks {
            assert_eq!(half::f16::from_f32(b.scale).to_f32(), b.scale);
        }
    }
}
