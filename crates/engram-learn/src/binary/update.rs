// Binary-weight variational CL, Phys. Rev. E 108, 014309 (2023); metaplastic BNN: Laborieux
// et al., Nature Communications 12, 2549 (2021). Card: shared/methods/theory.md, "Binary-weight".

//! The element-wise parameter updates of the deep arms ([`super::deep`]), each one pass over a
//! layer's values that reads the gradient of the forward pass's leaves and writes the
//! parameter, its Adam moments and the leaves of the next forward pass, split across rayon's
//! threads. The Adam step is the crate's one ([`AdamStep`], PyTorch's formulas).
//!
//! - **Fields** (h; leaves m = tanh(βh), σ = 1 − m²): the gradient is chained through the
//!   leaves, dL/dh = βσ·(dL/dm − 2m·dL/dσ), plus the arm's consolidation:
//!   - per-step (card variant (b)): + K, with K = β²σ ⊙ Δh stored after every step, σ at the
//!     fields after the step (where the next gradient is taken, as the KL anchor's gradient
//!     β²σ(h − h_prev) takes σ at the current fields);
//!   - anchor (card variant (a)): + c·β²σ ⊙ (h − h_prev), the gradient of c·KL(q ‖ q_prev).
//! - **Latent weights** (W; leaf sign(W)): the straight-through gradient dL/dW = dL/d sign(W),
//!   zeroed where |W| > 1 for the straight-through arm, whose weights are then clipped to
//!   [−1, 1]; the metaplastic arm scales each update component that moves W towards zero by
//!   1 − tanh²(m·W) ([`meta_factor`]) and does not clip.
//!
//! σ is computed as 1/cosh²(βh) = 4e/(1 + e)², e = exp(−2|βh|), rather than 1 − m²: the same
//! number where it matters, but never exactly 0, so that a saturated field is slow, not dead.

use crate::optim::AdamStep;
use crate::{Result, err};
use rayon::prelude::*;

/// Elements per parallel piece.
const PIECE: usize = 1 << 14;

/// e^x for x ≤ 0 in f32 (range reduction by ln 2 and a degree-6 polynomial; relative error
/// about 1e-7), plain arithmetic so that loops over it vectorise. Inputs below −87 give
/// e^−87.
#[inline(always)]
fn exp_neg(x: f32) -> f32 {
    let x = x.clamp(-87.0, 0.0);
    // n = round(x / ln 2) by the 1.5·2^23 trick.
    let n = (x * std::f32::consts::LOG2_E + 12_582_912.0) - 12_582_912.0;
    // ln 2 in two parts (Cody and Waite): the first is 0.693359375 exactly (355/512 in f32),
    // so that n times it is exact and r keeps its low bits.
    let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r / 720.0)))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// (tanh x, 1 − tanh² x) in f32, the second as 4e/(1 + e)² with e = exp(−2|x|).
#[inline(always)]
pub fn tanh_sigma(x: f32) -> (f32, f32) {
    let e = exp_neg(-2.0 * x.abs());
    let d = 1.0 / (1.0 + e);
    (((1.0 - e) * d).copysign(x), 4.0 * e * d * d)
}

/// The metaplastic factor of Laborieux et al. for an update `u` of a hidden weight `w`:
/// 1 − tanh²(m·w) when the update moves `w` towards zero (u·w < 0), 1 otherwise (away from
/// zero, or w = 0).
#[inline(always)]
pub fn meta_factor(w: f32, u: f32, m: f32) -> f32 {
    if u * w < 0.0 {
        let t = (m * w).tanh();
        1.0 - t * t
    } else {
        1.0
    }
}

/// A field layer's consolidation term.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Consolidation {
    /// `aux` holds K = β²σ ⊙ Δh of the last step; it is added to the gradient and replaced.
    PerStep,
    /// `aux` holds the anchor fields h_prev; the gradient gets scale·β²σ ⊙ (h − h_prev).
    Anchor { scale: f32 },
}

/// One field layer's values for [`field_step`]: the fields, their Adam moments, the
/// consolidation's vector, the leaves m and σ (read as the forward pass used them, written
/// for the next one) and the gradients of the loss with respect to the leaves.
pub struct FieldSlices<'a> {
    pub h: &'a mut [f32],
    pub adam_m: &'a mut [f32],
    pub adam_v: &'a mut [f32],
    pub aux: &'a mut [f32],
    pub m: &'a mut [f32],
    pub s: &'a mut [f32],
    pub grad_m: &'a [f32],
    pub grad_s: &'a [f32],
}

/// An error unless every length in `lens` equals the first.
fn same_lengths(what: &str, lens: &[usize]) -> Result<()> {
    if lens.iter().all(|&l| l == lens[0]) {
        Ok(())
    } else {
        Err(err!("{what}: slices of different lengths {lens:?}"))
    }
}

/// One Adam step of a field layer at inverse temperature `beta` (see the module comment); an
/// error if the slices differ in length.
pub fn field_step(
    v: FieldSlices<'_>,
    beta: f32,
    adam: AdamStep,
    cons: Consolidation,
) -> Result<()> {
    same_lengths(
        "field step",
        &[
            v.h.len(),
            v.adam_m.len(),
            v.adam_v.len(),
            v.aux.len(),
            v.m.len(),
            v.s.len(),
            v.grad_m.len(),
            v.grad_s.len(),
        ],
    )?;
    let b2 = beta * beta;
    let piece = |h: &mut [f32],
                 am: &mut [f32],
                 av: &mut [f32],
                 aux: &mut [f32],
                 m: &mut [f32],
                 s: &mut [f32],
                 gm: &[f32],
                 gs: &[f32]| {
        // One length for all, so that the loop runs without bounds checks.
        let n = h.len();
        let (am, av, aux, m, s) = (
            &mut am[..n],
            &mut av[..n],
            &mut aux[..n],
            &mut m[..n],
            &mut s[..n],
        );
        let (gm, gs) = (&gm[..n], &gs[..n]);
        for i in 0..n {
            let (mi, si) = (m[i], s[i]);
            let mut g = beta * si * (gm[i] - 2.0 * mi * gs[i]);
            let old = h[i];
            g += match cons {
                Consolidation::PerStep => aux[i],
                Consolidation::Anchor { scale } => scale * b2 * si * (old - aux[i]),
            };
            adam.apply(&mut h[i], g, &mut am[i], &mut av[i]);
            let (mn, sn) = tanh_sigma(beta * h[i]);
            m[i] = mn;
            s[i] = sn;
            if cons == Consolidation::PerStep {
                aux[i] = b2 * sn * (h[i] - old);
            }
        }
    };
    if v.h.len() <= PIECE {
        piece(v.h, v.adam_m, v.adam_v, v.aux, v.m, v.s, v.grad_m, v.grad_s);
        return Ok(());
    }
    v.h.par_chunks_mut(PIECE)
        .zip(v.adam_m.par_chunks_mut(PIECE))
        .zip(v.adam_v.par_chunks_mut(PIECE))
        .zip(v.aux.par_chunks_mut(PIECE))
        .zip(v.m.par_chunks_mut(PIECE))
        .zip(v.s.par_chunks_mut(PIECE))
        .zip(v.grad_m.par_chunks(PIECE))
        .zip(v.grad_s.par_chunks(PIECE))
        .for_each(|(((((((h, am), av), aux), m), s), gm), gs)| piece(h, am, av, aux, m, s, gm, gs));
    Ok(())
}

/// m = tanh(βh) and σ = 1 − m² of `h` at `beta` (a new β, or new fields); an error if the
/// slices differ in length.
pub fn field_leaves(h: &[f32], beta: f32, m: &mut [f32], s: &mut [f32]) -> Result<()> {
    same_lengths("field leaves", &[h.len(), m.len(), s.len()])?;
    let piece = |h: &[f32], m: &mut [f32], s: &mut [f32]| {
        for ((&hv, m), s) in h.iter().zip(m).zip(s) {
            (*m, *s) = tanh_sigma(beta * hv);
        }
    };
    if h.len() <= PIECE {
        piece(h, m, s);
        return Ok(());
    }
    h.par_chunks(PIECE)
        .zip(m.par_chunks_mut(PIECE))
        .zip(s.par_chunks_mut(PIECE))
        .for_each(|((h, m), s)| piece(h, m, s));
    Ok(())
}

/// How a latent-weight layer treats its weights.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Latent {
    /// Straight-through: gradient zeroed where |W| > 1, weights clipped to [−1, 1].
    Ste,
    /// Metaplastic with strength `m`: updates towards zero scaled by 1 − tanh²(m·W).
    Meta { m: f32 },
}

/// One Adam step of a latent-weight layer: weights `w`, Adam moments, the leaf `b` = sign(W)
/// (written for the next forward pass, sign(0) = +1) and the gradient `grad_b` with respect
/// to it; an error if the slices differ in length.
pub fn latent_step(
    w: &mut [f32],
    adam_m: &mut [f32],
    adam_v: &mut [f32],
    b: &mut [f32],
    grad_b: &[f32],
    adam: AdamStep,
    kind: Latent,
) -> Result<()> {
    same_lengths(
        "latent step",
        &[w.len(), adam_m.len(), adam_v.len(), b.len(), grad_b.len()],
    )?;
    let piece = |w: &mut [f32], am: &mut [f32], av: &mut [f32], b: &mut [f32], g: &[f32]| {
        let n = w.len();
        let (am, av, b, g) = (&mut am[..n], &mut av[..n], &mut b[..n], &g[..n]);
        for i in 0..n {
            let old = w[i];
            let gi = match kind {
                Latent::Ste if old.abs() > 1.0 => 0.0,
                _ => g[i],
            };
            adam.apply(&mut w[i], gi, &mut am[i], &mut av[i]);
            match kind {
                Latent::Ste => w[i] = w[i].clamp(-1.0, 1.0),
                Latent::Meta { m } => {
                    let u = w[i] - old;
                    w[i] = old + u * meta_factor(old, u, m);
                }
            }
            b[i] = if w[i] < 0.0 { -1.0 } else { 1.0 };
        }
    };
    if w.len() <= PIECE {
        piece(w, adam_m, adam_v, b, grad_b);
        return Ok(());
    }
    w.par_chunks_mut(PIECE)
        .zip(adam_m.par_chunks_mut(PIECE))
        .zip(adam_v.par_chunks_mut(PIECE))
        .zip(b.par_chunks_mut(PIECE))
        .zip(grad_b.par_chunks(PIECE))
        .for_each(|((((w, am), av), b), g)| piece(w, am, av, b, g));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn adam(lr: f64) -> AdamStep {
        AdamStep::new(lr, 1, [0.9, 0.99], 1e-8, 0.0, false)
    }

    #[test]
    fn tanh_and_sigma_are_accurate() {
        for i in -4000..=4000 {
            let x = i as f32 * 0.01;
            let (t, s) = tanh_sigma(x);
            let xt = (x as f64).tanh();
            let xs = 1.0 / (x as f64).cosh().powi(2);
            assert!((t as f64 - xt).abs() < 2e-7, "tanh({x})");
            assert!((s as f64 - xs).abs() < 1e-6 * xs, "sigma({x}): {s} vs {xs}");
        }
        let (t, s) = tanh_sigma(1e6);
        assert_eq!(t, 1.0);
        assert!(s > 0.0 && s.is_finite());
        assert_eq!(tanh_sigma(-1e6).0, -1.0);
        assert_eq!(tanh_sigma(0.0), (0.0, 1.0));
    }

    #[test]
    fn metaplastic_factor_scales_only_updates_towards_zero() {
        let m = 1.3f32;
        for w in [0.2f32, 1.0, 2.5, -0.7, -3.0] {
            let f = 1.0 - (m * w).tanh().powi(2);
            // Towards zero: scaled.
            assert_eq!(meta_factor(w, -w.signum() * 0.01, m), f);
            // Away from zero: untouched.
            assert_eq!(meta_factor(w, w.signum() * 0.01, m), 1.0);
        }
        assert_eq!(meta_factor(0.0, 0.01, m), 1.0);
        assert_eq!(meta_factor(0.0, -0.01, m), 1.0);
        // Through a whole step: Adam's first step moves every weight by lr against the
        // gradient's sign; a weight at 2 pushed towards 0 moves by lr·(1 − tanh²(2m)), one
        // pushed away by lr, and the straight-through arm clips instead.
        let lr = 0.01;
        let mut w = vec![2.0f32, 2.0, -0.5, -0.5];
        let g = [1.0f32, -1.0, -1.0, 1.0]; // steps: −lr, +lr, +lr, −lr
        let (mut am, mut av, mut b) = (vec![0.0; 4], vec![0.0; 4], vec![0.0; 4]);
        latent_step(
            &mut w,
            &mut am,
            &mut av,
            &mut b,
            &g,
            adam(lr),
            Latent::Meta { m },
        )
        .unwrap();
        let f = |w: f32| 1.0 - (m * w).tanh().powi(2);
        let want = [
            2.0 - lr as f32 * f(2.0),
            2.0 + lr as f32,
            -0.5 + lr as f32 * f(-0.5),
            -0.5 - lr as f32,
        ];
        for i in 0..4 {
            assert!(
                (w[i] - want[i]).abs() < 1e-6,
                "{i}: {} vs {}",
                w[i],
                want[i]
            );
        }
        assert_eq!(b, vec![1.0, 1.0, -1.0, -1.0]);
        let mut w = vec![2.0f32, 0.995, -0.5];
        let g = [1.0f32, -1.0, 1.0];
        let (mut am, mut av, mut b) = (vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]);
        latent_step(&mut w, &mut am, &mut av, &mut b, &g, adam(lr), Latent::Ste).unwrap();
        // |W| > 1: no gradient (Adam's step is 0), then clipped to 1.
        assert_eq!(w[0], 1.0);
        assert_eq!(w[1], 1.0);
        assert!((w[2] + 0.51).abs() < 1e-6);
    }

    #[test]
    fn per_step_term_is_beta_squared_sigma_times_the_step() {
        let beta = 2.0f32;
        let n = 3;
        let mut h = vec![0.3f32, -1.2, 0.05];
        let h0 = h.clone();
        let (mut m, mut s) = (vec![0.0; n], vec![0.0; n]);
        field_leaves(&h, beta, &mut m, &mut s).unwrap();
        let (mut am, mut av) = (vec![0.0; n], vec![0.0; n]);
        let mut k = vec![0.0; n];
        let gm = [0.5f32, -0.2, 0.1];
        let gs = [0.1f32, 0.3, -0.4];
        // The gradient the step should take: chained through m and σ, K = 0 at first.
        let g: Vec<f32> = (0..n)
            .map(|i| beta * s[i] * (gm[i] - 2.0 * m[i] * gs[i]))
            .collect();
        let step = adam(0.01);
        let slices = FieldSlices {
            h: &mut h,
            adam_m: &mut am,
            adam_v: &mut av,
            aux: &mut k,
            m: &mut m,
            s: &mut s,
            grad_m: &gm,
            grad_s: &gs,
        };
        field_step(slices, beta, step, Consolidation::PerStep).unwrap();
        for i in 0..n {
            let (mut w, mut a, mut b) = (h0[i], 0.0, 0.0);
            step.apply(&mut w, g[i], &mut a, &mut b);
            assert_eq!(h[i], w);
            let sig = 1.0 / ((beta * h[i]) as f64).cosh().powi(2);
            let want = (beta * beta) as f64 * sig * (h[i] - h0[i]) as f64;
            assert!((k[i] as f64 - want).abs() < 1e-6 * want.abs() + 1e-9, "{i}");
            assert!((m[i] as f64 - ((beta * h[i]) as f64).tanh()).abs() < 1e-6);
        }
    }

    #[test]
    fn anchor_gradient_pulls_towards_the_previous_fields() {
        let beta = 1.5f32;
        let mut h = vec![0.8f32, -0.4];
        let prev = vec![0.0f32, 0.0];
        let mut aux = prev.clone();
        let (mut m, mut s) = (vec![0.0; 2], vec![0.0; 2]);
        field_leaves(&h, beta, &mut m, &mut s).unwrap();
        let (mut am, mut av) = (vec![0.0; 2], vec![0.0; 2]);
        let zero = [0.0f32; 2];
        let slices = FieldSlices {
            h: &mut h,
            adam_m: &mut am,
            adam_v: &mut av,
            aux: &mut aux,
            m: &mut m,
            s: &mut s,
            grad_m: &zero,
            grad_s: &zero,
        };
        field_step(
            slices,
            beta,
            adam(0.01),
            Consolidation::Anchor { scale: 0.1 },
        )
        .unwrap();
        assert!((h[0] - 0.79).abs() < 1e-6 && (h[1] + 0.39).abs() < 1e-6);
        assert_eq!(aux, prev, "the anchor is not changed by a step");
    }

    #[test]
    fn parallel_pieces_match_one_piece() {
        let n = 3 * PIECE + 17;
        let h0: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.37).sin()).collect();
        let gm: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.11).cos()).collect();
        let gs: Vec<f32> = (0..n).map(|i| ((i as f32) * 0.05).sin()).collect();
        let run = |split: bool| {
            let mut h = h0.clone();
            let (mut m, mut s) = (vec![0.0; n], vec![0.0; n]);
            field_leaves(&h, 3.0, &mut m, &mut s).unwrap();
            let (mut am, mut av, mut k) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            if split {
                field_step(
                    FieldSlices {
                        h: &mut h,
                        adam_m: &mut am,
                        adam_v: &mut av,
                        aux: &mut k,
                        m: &mut m,
                        s: &mut s,
                        grad_m: &gm,
                        grad_s: &gs,
                    },
                    3.0,
                    adam(0.01),
                    Consolidation::PerStep,
                )
                .unwrap();
            } else {
                for c in 0..n.div_ceil(PIECE) {
                    let r = c * PIECE..((c + 1) * PIECE).min(n);
                    field_step(
                        FieldSlices {
                            h: &mut h[r.clone()],
                            adam_m: &mut am[r.clone()],
                            adam_v: &mut av[r.clone()],
                            aux: &mut k[r.clone()],
                            m: &mut m[r.clone()],
                            s: &mut s[r.clone()],
                            grad_m: &gm[r.clone()],
                            grad_s: &gs[r],
                        },
                        3.0,
                        adam(0.01),
                        Consolidation::PerStep,
                    )
                    .unwrap();
                }
            }
            (h, k, m)
        };
        assert_eq!(run(true), run(false));
    }
}
