//! StatsQ (OFQ, arXiv 2302.02210; nbasyl/OFQ `statsq.py`): a statistics-based scale
//! s = 2·mean|W| per output row and a mid-rise grid with no zero level. Card:
//! `shared/methods/quantization.md`, "OFQ".
//!
//! With n = 2^(b−1) and w̃ = clamp(W/s, −1, 1 − 1e-6): k = round(n·w̃ − 0.5) ∈ [−n, n − 1],
//! Ŵ = s·(k + 0.5)/n (±0.25s and ±0.75s at 2 bits); the code stored is k + n. The card's scope
//! is one row; engram also allows a tensor or a group. A zero block stores s = 0 and decodes
//! to zeros (the grid itself cannot represent zero, a documented property of the method).

use super::{Block, Quantizer, Spec, Stats, round};

pub struct StatsQ;

impl Quantizer for StatsQ {
    fn name(&self) -> &'static str {
        "statsq"
    }

    fn check(&self, spec: &Spec) -> Result<(), String> {
        if !spec.symmetric {
            return Err("statsq has its own symmetric mid-rise grid (drop --asym)".into());
        }
        Ok(())
    }

    fn block(&self, st: &Stats, spec: &Spec, _a: f32) -> Block {
        let mean = if st.n == 0 {
            0.0
        } else {
            (st.sum_abs / st.n as f64) as f32
        };
        Block {
            scale: spec.stored_scale(2.0 * mean),
            zero: 0,
        }
    }

    fn encode(&self, w: &[f32], b: Block, spec: &Spec, _a: f32, codes: &mut [u8]) {
        let n = (spec.levels() / 2) as f32;
        if b.scale == 0.0 {
            codes.fill(n as u8);
            return;
        }
        let hi = 1.0 - 1e-6;
        for (c, &x) in codes.iter_mut().zip(w) {
            let t = (x / b.scale).clamp(-1.0, hi);
            let k = round(n * t - 0.5).clamp(-n, n - 1.0);
            *c = (k + n) as u8;
        }
    }

    fn decode(&self, codes: &[u8], b: Block, spec: &Spec, _a: f32, out: &mut [f32]) {
        let n = (spec.levels() / 2) as f32;
        for (o, &c) in out.iter_mut().zip(codes) {
            *o = b.scale * ((c as f32 - n) + 0.5) / n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Scope, quantize};
    use super::*;

    /// The card's 2-bit levels: ±0.25s and ±0.75s, with s = 2·mean|W|.
    #[test]
    fn two_bit_levels_by_hand() {
        let w = [1.0f32, -0.2, 0.3, -1.0]; // mean |W| = 0.625, s = 1.25
        let spec = Spec::new(2, Scope::Channel);
        let z = quantize(&StatsQ, &spec, &w, &[1, 4]).unwrap();
        assert_eq!(z.blocks[0].scale, 1.25);
        // w̃ = 0.8, −0.16, 0.24, −0.8 → 2w̃ − 0.5 = 1.1, −0.82, −0.02, −2.1 → k = 1, −1, 0, −2.
        assert_eq!(z.codes, vec![3, 1, 2, 0]);
        let back = z.dequantize(&StatsQ, &spec);
        assert_eq!(back, vec![0.9375, -0.3125, 0.3125, -0.9375]);
    }

    #[test]
    fn zero_rows_decode_to_zero_and_extremes_clamp() {
        let spec = Spec::new(3, Scope::Channel);
        // Rows 2 and 3: |W|/s = 1.5 clamps to the top and bottom levels.
        let w = [0.0f32, 0.0, 0.0, 10.0, 0.0, 0.0, -10.0, 0.0, 0.0];
        let z = quantize(&StatsQ, &spec, &w, &[3, 3]).unwrap();
        let back = z.dequantize(&StatsQ, &spec);
        assert_eq!(&back[..3], &[0.0; 3]);
        assert_eq!((z.codes[3], z.codes[6]), (7, 0));
    }
}
