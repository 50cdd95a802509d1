//! StatsQ, OFQ's statistics-based weight quantizer (arXiv 2302.02210, nbasyl/OFQ).
//! Card: shared/methods/quantization.md ("OFQ", step 1).
//!
//! Per output channel the scale is s = 2·mean|W|, detached (no gradient reaches it, by design);
//! w̃ = clamp(W/s, −1, 1 − 1e-6); with n = 2^(b−1) the integer code is round(n·w̃ − 0.5), in
//! −n..n−1, and Q(W) = s·(code + 0.5)/n: a mid-rise grid with no zero level (±0.25s, ±0.75s at
//! 2 bits). The straight-through estimator is the identity on every entry,
//! `Q.detach() − W.detach() + W`: no clip mask.
//!
//! Weights are laid out `[in, out]` (burn's `Linear`): the mean runs over the inputs of each
//! output column. Rounding is half-to-even (PyTorch's `torch.round`, burn's `round`), and the
//! code is clamped to −n..n−1 so that no rounding rule can leave the grid. An all-zero channel
//! gets a tiny scale instead of a division by zero (its weights then sit on ±0.5s/n ≈ 0).

use burn::prelude::*;

/// Upper clip of w̃, just below 1 so that w̃ = 1 keeps the top code.
pub const CLIP_TOP: f32 = 1.0 - 1e-6;

/// Smallest scale used, for all-zero channels.
const MIN_SCALE: f32 = 1e-12;

/// n = 2^(bits−1): half the number of levels.
pub fn half_levels(bits: u32) -> f32 {
    (1u32 << (bits - 1)) as f32
}

/// The per-output-channel scales `[.., 1, out]` of a weight `[.., in, out]` (detached).
pub fn scales<const D: usize>(w: Tensor<D>) -> Tensor<D> {
    w.detach()
        .abs()
        .mean_dim(D - 2)
        .mul_scalar(2.0)
        .clamp_min(MIN_SCALE)
}

/// The quantized weight Q(W), with no gradient path (the grid values themselves).
pub fn quantize_values<const D: usize>(w: Tensor<D>, bits: u32) -> Tensor<D> {
    let n = half_levels(bits);
    let w = w.detach();
    let s = scales(w.clone());
    let wt = (w / s.clone()).clamp(-1.0, CLIP_TOP);
    let code = wt.mul_scalar(n).sub_scalar(0.5).round().clamp(-n, n - 1.0);
    code.add_scalar(0.5).div_scalar(n) * s
}

/// Q(W) in the forward pass with the identity straight-through estimator: the gradient with
/// respect to W is the incoming gradient, on every entry (clipped ones included).
pub fn quantize<const D: usize>(w: Tensor<D>, bits: u32) -> Tensor<D> {
    let wd = w.clone().detach();
    let q = quantize_values(wd.clone(), bits);
    w + (q - wd)
}

/// Per-output-channel scales of a host weight `[rows, cols]` (row-major, `cols` outputs).
pub fn host_scales(w: &[f32], cols: usize) -> Vec<f32> {
    let rows = w.len() / cols.max(1);
    let mut s = vec![0f64; cols];
    for r in 0..rows {
        for (acc, v) in s.iter_mut().zip(&w[r * cols..(r + 1) * cols]) {
            *acc += v.abs() as f64;
        }
    }
    s.into_iter()
        .map(|a| ((2.0 * a / rows.max(1) as f64) as f32).max(MIN_SCALE))
        .collect()
}

/// b = n·w̃ − 0.5 for every entry of a host weight `[rows, cols]`: the value that is rounded
/// to the code (confidence-guided annealing looks at its distance to a rounding boundary).
pub fn host_pre_round(w: &[f32], cols: usize, bits: u32) -> Vec<f32> {
    let n = half_levels(bits);
    let s = host_scales(w, cols);
    w.iter()
        .enumerate()
        .map(|(i, &v)| (v / s[i % cols]).clamp(-1.0, CLIP_TOP) * n - 0.5)
        .collect()
}

/// Integer codes (−n..n−1) of a host weight `[rows, cols]`.
pub fn host_codes(w: &[f32], cols: usize, bits: u32) -> Vec<i8> {
    let n = half_levels(bits);
    host_pre_round(w, cols, bits)
        .into_iter()
        .map(|b| b.round_ties_even().clamp(-n, n - 1.0) as i8)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default()
    }

    /// At 2 bits the levels are exactly ±0.25s and ±0.75s, and each value is the hand
    /// computation of the card's formula.
    #[test]
    fn two_bit_levels_and_hand_computation() {
        let d = Device::flex();
        // One output column of 4 inputs: mean|W| = (0.125 + 0.5 + 1 + 0.375)/4 = 0.5, s = 1.
        // w̃ = W: b = 2·w̃ − 0.5 = −0.75, 0.5, 1.5 − 2e-6 (clipped), −1.25;
        // round half-to-even: −1, 0, 1, −1 → levels −0.25, 0.25, 0.75, −0.25.
        let w = [-0.125f32, 0.5, 1.0, -0.375];
        let t = Tensor::<2>::from_data(TensorData::new(w.to_vec(), [4, 1]), &d);
        assert_eq!(
            host(quantize_values(t.clone(), 2)),
            [-0.25, 0.25, 0.75, -0.25]
        );
        assert_eq!(host_codes(&w, 1, 2), [-1, 0, 1, -1]);
        // Two columns with different scales: every value is s·{±0.25, ±0.75}, exactly.
        let w: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 29) as f32 - 14.0) * 0.013)
            .collect();
        let t = Tensor::<2>::from_data(TensorData::new(w.clone(), [32, 2]), &d);
        let q = host(quantize_values(t.clone(), 2));
        let s = host(scales(t.clone()));
        for (a, b) in s.iter().zip(host_scales(&w, 2)) {
            assert!((a - b).abs() <= 1e-6 * b, "{a} vs {b}");
        }
        let codes = host_codes(&w, 2, 2);
        for (i, (&v, &c)) in q.iter().zip(&codes).enumerate() {
            let s = s[i % 2];
            let levels = [-0.75 * s, -0.25 * s, 0.25 * s, 0.75 * s];
            assert!(levels.contains(&v), "{v} not a level of scale {s}");
            assert_eq!(v, (c as f32 + 0.5) / 2.0 * s, "entry {i}");
        }
        // The STE forward gives the same values (up to the rounding of W + (Q − W)).
        let f = host(quantize(t, 2));
        for (a, b) in f.iter().zip(&q) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        // 3 bits: codes −4..3, levels (c + 0.5)/4·s.
        let codes = host_codes(&w, 2, 3);
        assert!(codes.iter().all(|c| (-4..=3).contains(c)));
        assert!(codes.contains(&-4) && codes.contains(&3));
    }

    /// The straight-through estimator is the identity on every entry, clipped ones included.
    #[test]
    fn ste_gradient_is_identity() {
        let d = Device::flex().autodiff();
        let w: Vec<f32> = vec![-3.0, -0.2, 0.05, 0.3, 2.5, -0.7];
        let t = Tensor::<2>::from_data(TensorData::new(w, [3, 2]), &d).require_grad();
        let up = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, -2.0, 3.0, 0.5, -1.5, 4.0], [3, 2]),
            &d,
        );
        let loss = (quantize(t.clone(), 2) * up.clone()).sum();
        let g = loss.backward();
        let grad = t.grad(&g).map(host).unwrap_or_default();
        assert_eq!(grad, host(up));
    }
}
