//! QKR, OFQ's query-key reparametrization (arXiv 2302.02210, nbasyl/OFQ
//! `QAttention_qkreparam`). Card: shared/methods/quantization.md ("OFQ", step 4).
//!
//! Per head h the attention logits (x·W_q,h)(x·W_k,h)ᵀ are written x·M_h·xᵀ with
//! M_h = W_q,hᵀ·W_k,h (PyTorch's `[out, in]` layout; `in × in`), and M_h, not W_q and W_k, is
//! quantized (StatsQ, per row of M_h): the product of two separately quantized matrices, each
//! oscillating, becomes one quantized matrix. W_q and W_k remain the trained parameters; M is
//! computed from them in every forward pass and the identity straight-through estimator
//! carries its gradient back to them. V is quantized separately, as any block linear.
//!
//! engram keeps the activations in float: the reference also quantizes x and M_h·xᵀ with
//! LSQ activation quantizers, which engram's weight-only QAT leaves out.
//!
//! Layout: with burn's `[in, out]` weights, M_h's rows are stored as the columns of
//! N = `[in, heads·in]`, N[b, h·in + a] = M_h[a, b] = Σ_j W_q[a, h·d_h + j]·W_k[b, h·d_h + j],
//! so that N is an ordinary `[in, out]` weight whose output channels are M's rows and the
//! per-output-channel quantizers apply to it unchanged. Then x·N gives M_h·x_jᵀ for every
//! token j and head h, and the logits are x_i·(M_h·x_jᵀ).
//!
//! Under confidence-guided annealing the reference freezes M's entries with a `detach` on the
//! pre-rounding value b; under the identity STE that detach blocks no gradient to W_q and W_k,
//! so they keep training. engram therefore leaves W_q and W_k out of CGA's freeze in the QKR
//! arm (`cga::frozen_layers`), which is the same thing.
//!
//! Size: M holds heads·in² values against 2·in·d for W_q and W_k; QKR grows the deployed
//! model whenever in > 2·d_head (here d = 64, 4 heads: 16 384 against 8 192 per block).

use super::statsq;
use burn::prelude::*;

/// N = `[in, heads·in]` from W_q and W_k (`[in, d]` each; see the module comment).
pub fn qk_matrix(wq: Tensor<2>, wk: Tensor<2>, heads: usize) -> Tensor<2> {
    let [din, d] = wq.dims();
    let dh = d / heads;
    let q = wq.reshape([din, heads, dh]).swap_dims(0, 1); // [H, in, dh]
    let k = wk.reshape([din, heads, dh]).swap_dims(0, 1); // [H, in, dh]
    // n[h, b, a] = Σ_j k[h, b, j]·q[h, a, j]
    let n = k.matmul(q.swap_dims(1, 2)); // [H, in_b, in_a]
    n.swap_dims(0, 1).reshape([din, heads * din])
}

/// Logits x_i·M_h·x_jᵀ (`[batch, heads, tokens, tokens]`, unscaled) for the block input `x`
/// (`[batch, tokens, in]`) and N (quantized or not).
pub fn logits(x: &Tensor<3>, n: Tensor<2>, heads: usize) -> Tensor<4> {
    let [b, t, din] = x.dims();
    // kx[b, h·t + j, a] = (M_h·x_jᵀ)[a]
    let kx = burn::tensor::module::linear(x.clone(), n, None)
        .reshape([b, t, heads, din])
        .swap_dims(1, 2)
        .reshape([b, heads * t, din]);
    // One product per example for all heads: [b, t, in]·[b, in, heads·t].
    x.clone()
        .matmul(kx.swap_dims(1, 2))
        .reshape([b, t, heads, t])
        .swap_dims(1, 2)
}

/// QKR's logits with N quantized by StatsQ at `bits` (identity STE), or in float (`None`).
pub fn quantized_logits(
    x: &Tensor<3>,
    wq: Tensor<2>,
    wk: Tensor<2>,
    heads: usize,
    bits: Option<u32>,
) -> Tensor<4> {
    let n = qk_matrix(wq, wk, heads);
    let n = match bits {
        Some(b) => statsq::quantize(n, b),
        None => n,
    };
    logits(x, n, heads)
}

/// N on the host (row-major `[in, heads·in]`) from W_q and W_k, detached: for oscillation
/// tracking of the reparametrized product's integer codes.
pub fn host_qk_matrix(wq: Tensor<2>, wk: Tensor<2>, heads: usize) -> Vec<f32> {
    qk_matrix(wq.detach(), wk.detach(), heads)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .unwrap_or_default()
    }

    /// In float, the reparametrized logits are the usual per-head (x·W_q)(x·W_k)ᵀ.
    #[test]
    fn float_logits_equal_query_key_product() {
        let d = Device::flex();
        let _rng = crate::backend::seeded(&d, 5);
        let (b, t, din, dm, heads) = (3, 5, 8, 12, 3);
        let dh = dm / heads;
        let x = Tensor::<3>::random([b, t, din], Distribution::Normal(0.0, 1.0), &d);
        let wq = Tensor::<2>::random([din, dm], Distribution::Normal(0.0, 0.3), &d);
        let wk = Tensor::<2>::random([din, dm], Distribution::Normal(0.0, 0.3), &d);
        let got = quantized_logits(&x, wq.clone(), wk.clone(), heads, None);
        let q = x.clone().matmul(wq.unsqueeze_dim(0));
        let k = x.matmul(wk.unsqueeze_dim(0));
        let split = |y: Tensor<3>| y.reshape([b, t, heads, dh]).swap_dims(1, 2);
        let want = split(q).matmul(split(k).swap_dims(2, 3));
        assert_eq!(got.dims(), [b, heads, t, t]);
        let (g, w) = (host(got), host(want));
        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, c) in g.iter().zip(&w) {
            assert!((a - c).abs() <= 1e-5 * scale.max(1.0), "{a} vs {c}");
        }
        // N's columns are M_h's rows: N[b, h·in + a] = Σ_j W_q[a, h·dh + j]·W_k[b, h·dh + j].
        let wq = Tensor::<2>::random([din, dm], Distribution::Normal(0.0, 1.0), &d);
        let wk = Tensor::<2>::random([din, dm], Distribution::Normal(0.0, 1.0), &d);
        let n = host_qk_matrix(wq.clone(), wk.clone(), heads);
        let (q, k) = (host(wq), host(wk));
        let (h, a, bb) = (2, 3, 6);
        let m: f32 = (0..dh)
            .map(|j| q[a * dm + h * dh + j] * k[bb * dm + h * dh + j])
            .sum();
        assert!((n[bb * heads * din + h * din + a] - m).abs() < 1e-5);
    }
}
