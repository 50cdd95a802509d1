//! LSQ, learned step size quantization (Esser et al., arXiv 1902.08153): OFQ's baseline
//! (arXiv 2302.02210, nbasyl/OFQ). Card: shared/methods/quantization.md ("OFQ").
//!
//! A learned step size s **per output channel** (as the reference's weight quantizer with
//! `per_channel`), initialised as 2·mean|W|/√Qp. With Qn = −2^(b−1) and Qp = 2^(b−1) − 1 the
//! code is round(clamp(W/s, Qn, Qp)), a grid with a zero level, and the value code·s.
//! Gradients as in the LSQ paper: the rounding passes the gradient straight through, the
//! clamp stops it outside [Qn, Qp] (so W gets none there), and the step size's gradient is
//! multiplied by g = 1/√(Qp · N), N the number of weights sharing the step (a channel's
//! inputs). A step size below 1e-5 is used as 1e-5 in the forward pass, its gradient
//! passing unchanged (the reference's `clip`).

use burn::prelude::*;

/// Smallest step size used in the forward pass.
const MIN_STEP: f32 = 1e-5;

/// (Qn, Qp) = (−2^(b−1), 2^(b−1) − 1).
pub fn code_range(bits: u32) -> (f32, f32) {
    let h = (1u32 << (bits - 1)) as f32;
    (-h, h - 1.0)
}

/// The initial step sizes of a host weight `[rows, cols]` (one per output column):
/// 2·mean|W|/√Qp.
pub fn init_scales(w: &[f32], cols: usize, bits: u32) -> Vec<f32> {
    let (_, qp) = code_range(bits);
    let rows = w.len() / cols.max(1);
    let mut s = vec![0f64; cols];
    for r in 0..rows {
        for (acc, v) in s.iter_mut().zip(&w[r * cols..(r + 1) * cols]) {
            *acc += v.abs() as f64;
        }
    }
    s.into_iter()
        .map(|a| ((2.0 * a / rows.max(1) as f64) / (qp as f64).sqrt()) as f32)
        .map(|s| s.max(MIN_STEP))
        .collect()
}

/// The quantized weight `[in, out]` with step sizes `scale` `[out]`, with LSQ's gradients
/// for both.
pub fn quantize(w: Tensor<2>, scale: Tensor<1>, bits: u32) -> Tensor<2> {
    let (qn, qp) = code_range(bits);
    let rows = w.dims()[0];
    let g = 1.0 / ((qp as f64) * rows as f64).sqrt();
    let s: Tensor<2> = scale.unsqueeze_dim(0);
    // Value max(s, 1e-5), gradient of s.
    let s = s.clone() + (s.clone().clamp_min(MIN_STEP) - s).detach();
    // Value s, gradient scaled by g.
    let sg = s.clone().mul_scalar(g);
    let s = sg.clone() + (s - sg).detach();
    let v = (w / s.clone()).clamp(qn, qp);
    let r = v.clone() + (v.clone().round() - v).detach();
    r * s
}

/// Integer codes of a host weight `[rows, cols]` with step sizes `scale` (one per column).
pub fn host_codes(w: &[f32], scale: &[f32], bits: u32) -> Vec<i8> {
    let (qn, qp) = code_range(bits);
    let cols = scale.len().max(1);
    w.iter()
        .enumerate()
        .map(|(i, &v)| {
            let s = scale[i % cols].max(MIN_STEP);
            (v / s).clamp(qn, qp).round_ties_even() as i8
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default()
    }

    /// The step size gets LSQ's gradient: Σ over its channel of (round(v) − v) inside the
    /// range and Qn or Qp outside, times g; W gets the gradient inside the range only.
    #[test]
    fn scale_gets_lsq_gradient() {
        let d = Device::flex().autodiff();
        // One column (4 inputs) at 2 bits, s = 0.5: v = W/s = 0.6, −1.3, 3.0 (→ Qp = 1),
        // −5.0 (→ Qn = −2).
        let w = Tensor::<2>::from_data(TensorData::new(vec![0.3f32, -0.65, 1.5, -2.5], [4, 1]), &d)
            .require_grad();
        let s = Tensor::<1>::from_data(TensorData::new(vec![0.5f32], [1]), &d).require_grad();
        let q = quantize(w.clone(), s.clone(), 2);
        assert_eq!(host(q.clone()), [0.5, -0.5, 0.5, -1.0]);
        let grads = q.sum().backward();
        let gs = s.grad(&grads).map(host).unwrap_or_default();
        let g = 1.0 / (1.0f32 * 4.0).sqrt();
        let want = ((1.0 - 0.6) + (-1.0 + 1.3) + 1.0 + -2.0) * g;
        assert_eq!(gs.len(), 1);
        assert!((gs[0] - want).abs() < 1e-5, "{gs:?} vs {want}");
        assert!(gs[0] != 0.0);
        let gw = w.grad(&grads).map(host).unwrap_or_default();
        assert_eq!(gw, [1.0, 1.0, 0.0, 0.0]);
        assert_eq!(
            host_codes(&[0.3, -0.65, 1.5, -2.5], &[0.5], 2),
            [1, -1, 1, -2]
        );
        // 2·mean|W|/√Qp: mean|W| = 1.2375, Qp = 1.
        let init = init_scales(&[0.3, -0.65, 1.5, -2.5], 1, 2);
        assert!((init[0] - 2.475).abs() < 1e-6);
    }
}
