//! PowerQuant (arXiv 2301.09858), data-free power-function quantization: u = sign(W)·|W|^a,
//! symmetric RTN on u, Ŵ = sign(q)·(|q|·s_a)^(1/a). Card: `shared/methods/quantization.md`.
//!
//! One exponent a per tensor, found by golden-section search on [0.2, 1.5] minimising
//! ‖W − Ŵ(a)‖² (or on a 0.05 grid with `Spec::grid`); the search range and method are engram's
//! (the paper's code is not public). The scale is per block as for RTN: s_a = max|W|^a / Q.
//! At a = 1 this is symmetric RTN, bit for bit (a test).

use super::{Block, Quantizer, Spec, Stats, round};
use engram_ckpt::Error;

pub struct PowerQuant;

/// The search interval of the exponent.
pub const A_MIN: f32 = 0.2;
pub const A_MAX: f32 = 1.5;
/// Golden-section search stops when the interval is this narrow.
pub const A_TOL: f32 = 1e-3;
/// Step of the grid search.
pub const GRID_STEP: f32 = 0.05;

#[inline]
fn pow(x: f32, a: f32) -> f32 {
    if a == 1.0 { x } else { x.powf(a) }
}

/// The exponents of the grid search: 0.2, 0.25, …, 1.5.
pub fn grid() -> Vec<f32> {
    let n = ((A_MAX - A_MIN) / GRID_STEP).round() as usize;
    (0..=n).map(|i| A_MIN + i as f32 * GRID_STEP).collect()
}

/// Golden-section search of a unimodal `f` on [lo, hi]; returns the best point evaluated.
pub fn golden_section(
    lo: f32,
    hi: f32,
    tol: f32,
    f: &mut dyn FnMut(f32) -> Result<f64, Error>,
) -> Result<f32, Error> {
    let r = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (lo as f64, hi as f64);
    let mut c = b - r * (b - a);
    let mut d = a + r * (b - a);
    let (mut fc, mut fd) = (f(c as f32)?, f(d as f32)?);
    let mut best = if fc <= fd { (c, fc) } else { (d, fd) };
    while b - a > tol as f64 {
        if fc <= fd {
            b = d;
            d = c;
            fd = fc;
            c = b - r * (b - a);
            fc = f(c as f32)?;
            if fc < best.1 {
                best = (c, fc);
            }
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + r * (b - a);
            fd = f(d as f32)?;
            if fd < best.1 {
                best = (d, fd);
            }
        }
    }
    Ok(best.0 as f32)
}

impl Quantizer for PowerQuant {
    fn name(&self) -> &'static str {
        "power"
    }

    fn check(&self, spec: &Spec) -> Result<(), String> {
        if !spec.symmetric {
            return Err("power quantization is symmetric only (drop --asym)".into());
        }
        Ok(())
    }

    fn exponent(
        &self,
        spec: &Spec,
        error: &mut dyn FnMut(f32) -> Result<f64, Error>,
    ) -> Result<f32, Error> {
        if !spec.grid {
            return golden_section(A_MIN, A_MAX, A_TOL, error);
        }
        let mut best = (1.0, f64::INFINITY);
        for a in grid() {
            let e = error(a)?;
            if e < best.1 {
                best = (a, e);
            }
        }
        Ok(best.0)
    }

    fn block(&self, st: &Stats, spec: &Spec, a: f32) -> Block {
        let s = pow(st.max_abs, a) / spec.qmax() as f32;
        let s = if s > 0.0 && s.is_finite() { s } else { 1.0 };
        Block {
            scale: spec.stored_scale(s),
            zero: 0,
        }
    }

    fn encode(&self, w: &[f32], b: Block, spec: &Spec, a: f32, codes: &mut [u8]) {
        let q = spec.qmax() as f32;
        for (c, &x) in codes.iter_mut().zip(w) {
            let u = pow(x.abs(), a).copysign(x);
            *c = (round(u / b.scale).clamp(-q, q) + q) as u8;
        }
    }

    fn decode(&self, codes: &[u8], b: Block, spec: &Spec, a: f32, out: &mut [f32]) {
        let q = spec.qmax();
        let inv = 1.0 / a;
        for (o, &c) in out.iter_mut().zip(codes) {
            let k = c as i32 - q;
            let m = pow(k.unsigned_abs() as f32 * b.scale, inv);
            *o = if k < 0 { -m } else { m };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::rtn::Rtn;
    use super::super::{Scope, error_at, quantize, quantize_at, sq_diff, tests::bell};
    use super::*;

    /// The card's unit test: at a = 1 PowerQuant is symmetric RTN, bit for bit.
    #[test]
    fn a_one_is_symmetric_rtn_bit_for_bit() {
        let w = bell(24 * 33, 1);
        for bits in 2..=8 {
            for scope in [Scope::Tensor, Scope::Channel, Scope::Group(11)] {
                let spec = Spec::new(bits, scope);
                let p = quantize_at(&PowerQuant, &spec, &w, &[24, 33], 1.0).unwrap();
                let r = quantize_at(&Rtn, &spec, &w, &[24, 33], 1.0).unwrap();
                assert_eq!(p.codes, r.codes);
                assert_eq!(p.blocks, r.blocks);
                let (pv, rv) = (p.dequantize(&PowerQuant, &spec), r.dequantize(&Rtn, &spec));
                assert!(pv.iter().zip(&rv).all(|(x, y)| x.to_bits() == y.to_bits()));
            }
        }
    }

    #[test]
    fn golden_section_finds_a_parabola_minimum() {
        let a = golden_section(0.2, 1.5, 1e-4, &mut |a| Ok(((a - 0.63) as f64).powi(2))).unwrap();
        assert!((a - 0.63).abs() < 1e-3, "{a}");
    }

    /// Bell-shaped weights: the searched exponent is below 1 and beats RTN at 3 and 4 bits
    /// (the card's "reproduced if", on synthetic weights).
    #[test]
    fn bell_weights_get_a_below_one_and_beat_rtn() {
        let w = bell(64 * 64, 5);
        for bits in [3, 4] {
            let spec = Spec::new(bits, Scope::Tensor);
            let z = quantize(&PowerQuant, &spec, &w, &[64, 64]).unwrap();
            assert!(z.a < 1.0, "{bits} bits: a = {}", z.a);
            let ep = sq_diff(&w, &z.dequantize(&PowerQuant, &spec));
            let er = error_at(&Rtn, &spec, &w, &[64, 64], 1.0).unwrap();
            assert!(ep < er, "{bits} bits: power {ep} ≥ rtn {er}");
            // The grid agrees with the golden section to within one step.
            let g = Spec { grid: true, ..spec };
            let zg = quantize(&PowerQuant, &g, &w, &[64, 64]).unwrap();
            assert!((zg.a - z.a).abs() <= GRID_STEP, "{} vs {}", zg.a, z.a);
        }
    }

    #[test]
    fn decode_inverts_encode_on_levels() {
        let spec = Spec::new(4, Scope::Tensor);
        let a = 0.6;
        let b = PowerQuant.block(&Stats::of(&[2.0, -1.0]), &spec, a);
        let codes: Vec<u8> = (0..15).collect();
        let mut vals = vec![0f32; 15];
        PowerQuant.decode(&codes, b, &spec, a, &mut vals);
        let mut again = vec![0u8; 15];
        PowerQuant.encode(&vals, b, &spec, a, &mut again);
        assert_eq!(again, codes);
        assert!((vals[14] - 2.0).abs() < 1e-5 && vals[7] == 0.0);
    }

    #[test]
    fn asymmetric_is_refused() {
        let spec = Spec {
            symmetric: false,
            ..Spec::new(4, Scope::Channel)
        };
        assert!(quantize(&PowerQuant, &spec, &[1.0], &[1, 1]).is_err());
    }
}
