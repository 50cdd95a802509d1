//! Doubly robust instance reweighting, the simplified variant `dro_softmax` (engram design).
//! Paper: Doubly Robust Instance-Reweighted Adversarial Training (arXiv 2308.00311); card:
//! shared/methods/robustness_safety.md, "Doubly robust instance reweighting".
//!
//! The KL-regularised inner problem max_{w ∈ Δ} Σᵢ wᵢ·ℓᵢ − r·KL(w ‖ uniform) has the closed
//! form wᵢ = exp(ℓᵢ/r) / Σⱼ exp(ℓⱼ/r): a softmax of the adversarial losses at temperature r,
//! computed here in log space (the largest ℓ/r subtracted first, in f64) so that exp never
//! overflows. The weights are detached: the training loss is Σᵢ wᵢ·ℓᵢ. Small r concentrates
//! the weight on the most vulnerable examples; large r gives plain adversarial training.
//!
//! Option (card step 4): a running normaliser u ← (1 − ρ)·u + ρ·mean(exp(ℓ/r)) across
//! minibatches, against the bias of a per-batch normaliser; then wᵢ = exp(ℓᵢ/r)/(n·u), which
//! sums to 1 only on average. u is kept as log u. This is not the paper's solver (log-barrier
//! inner problem, SCGD estimates, implicit hypergradients): results are labelled "simplified
//! variant".

/// log Σ exp(zᵢ), stable.
fn log_sum_exp(z: &[f64]) -> f64 {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !m.is_finite() {
        return m;
    }
    m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// The closed-form DRO weights softmax(ℓ/r) (they sum to 1).
pub fn dro_softmax(losses: &[f32], r: f64) -> Vec<f32> {
    let z: Vec<f64> = losses.iter().map(|&l| l as f64 / r).collect();
    let lse = log_sum_exp(&z);
    z.iter().map(|v| (v - lse).exp() as f32).collect()
}

/// The running normaliser of the card's option (one per task in a run).
#[derive(Clone, Debug)]
pub struct Normaliser {
    rho: f64,
    log_u: Option<f64>,
}

impl Normaliser {
    pub fn new(rho: f64) -> Normaliser {
        Normaliser { rho, log_u: None }
    }

    /// Updates u with this batch's mean exp(ℓ/r) and returns exp(ℓᵢ/r)/(n·u). The first batch
    /// sets u to its own mean (then the weights are the plain softmax).
    pub fn weights(&mut self, losses: &[f32], r: f64) -> Vec<f32> {
        let n = losses.len().max(1) as f64;
        let z: Vec<f64> = losses.iter().map(|&l| l as f64 / r).collect();
        let log_mean = log_sum_exp(&z) - n.ln();
        let log_u = match self.log_u {
            None => log_mean,
            Some(prev) => log_sum_exp(&[(1.0 - self.rho).ln() + prev, self.rho.ln() + log_mean]),
        };
        self.log_u = Some(log_u);
        z.iter()
            .map(|v| (v - log_u - n.ln()).exp() as f32)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The weights sum to 1 and equal the closed form exp(ℓ/r)/Σ exp(ℓ/r), also where the
    /// naive form overflows.
    #[test]
    fn weights_are_the_closed_form() {
        let l = [0.1f32, 2.0, 0.7, 3.5];
        for r in [0.5, 1.0, 2.0] {
            let w = dro_softmax(&l, r);
            let e: Vec<f64> = l.iter().map(|&v| (v as f64 / r).exp()).collect();
            let s: f64 = e.iter().sum();
            for (wi, ei) in w.iter().zip(&e) {
                assert!((*wi as f64 - ei / s).abs() < 1e-6, "r {r}");
            }
            assert!((w.iter().map(|&v| v as f64).sum::<f64>() - 1.0).abs() < 1e-6);
            // The most vulnerable example gets the most weight, more so at small r.
            assert!(w[3] > w[1] && w[1] > w[2] && w[2] > w[0]);
        }
        assert!(dro_softmax(&l, 0.5)[3] > dro_softmax(&l, 2.0)[3]);
        // exp(1000/0.5) overflows f64; the log-space form does not.
        let w = dro_softmax(&[1000.0, 999.0], 0.5);
        assert!(w.iter().all(|v| v.is_finite()));
        assert!((w[0] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-6);
        // Large r: uniform (plain adversarial training).
        let w = dro_softmax(&l, 1e9);
        assert!(w.iter().all(|&v| (v - 0.25).abs() < 1e-6));
    }

    /// The running normaliser starts at the softmax and follows u ← (1 − ρ)u + ρ·mean.
    #[test]
    fn running_normaliser_follows_its_recursion() {
        let mut nz = Normaliser::new(0.1);
        let a = [0.5f32, 1.0];
        let w = nz.weights(&a, 1.0);
        assert_eq!(w, dro_softmax(&a, 1.0));
        let b = [2.0f32, 3.0];
        let u0 = (0.5f64.exp() + 1.0f64.exp()) / 2.0;
        let u1 = 0.9 * u0 + 0.1 * (2.0f64.exp() + 3.0f64.exp()) / 2.0;
        let w = nz.weights(&b, 1.0);
        assert!((w[1] as f64 - 3.0f64.exp() / (2.0 * u1)).abs() < 1e-5);
        // Harder batch than the running mean: the weights sum to more than 1.
        assert!(w.iter().sum::<f32>() > 1.0);
    }
}
