//! GAIRAT: geometry-aware instance-reweighted adversarial training (the baseline of the doubly
//! robust method). Paper: Geometry-aware Instance-reweighted Adversarial Training (arXiv
//! 2010.01736); card: shared/methods/robustness_safety.md, "Doubly robust instance
//! reweighting", step 5.
//!
//! κᵢ = the number of the K PGD iterations at whose start xᵢ^adv is still classified correctly
//! (counted by the attack, in evaluation mode: [`super::attack::Perturbed::kappa`]);
//! wᵢ = (1 + tanh(λ + 5·(⌊K/2⌋ − κᵢ)/⌊K/2⌋))/2, normalised to mean 1 over the batch; the loss
//! is mean(w·CE), i.e. Σᵢ (wᵢ/n)·CEᵢ (what [`weights`] returns). Examples close to the
//! decision boundary (small κ) weigh more. Uniform weights before `begin-epoch` (the
//! reference: 60 of 120 epochs; engram's default: half the task's epochs). K ≥ 2.

/// The per-example loss weights Σ = 1 (mean-1 GAIRAT weights divided by n) from κ, K, λ.
pub fn weights(kappa: &[u32], steps: usize, lambda: f64) -> Vec<f32> {
    let half = (steps / 2).max(1) as f64;
    let raw: Vec<f64> = kappa
        .iter()
        .map(|&k| (1.0 + (lambda + 5.0 * (half - k as f64) / half).tanh()) / 2.0)
        .collect();
    let s: f64 = raw.iter().sum();
    if s <= 0.0 {
        return vec![1.0 / kappa.len().max(1) as f32; kappa.len()];
    }
    raw.iter().map(|&v| (v / s) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_follow_the_reference_formula() {
        let k = [0u32, 2, 5, 10];
        let w = weights(&k, 10, -1.0);
        let raw: Vec<f64> = k
            .iter()
            .map(|&v| (1.0 + (-1.0 + 5.0 * (5.0 - v as f64) / 5.0).tanh()) / 2.0)
            .collect();
        let s: f64 = raw.iter().sum();
        for (a, b) in w.iter().zip(&raw) {
            assert!((*a as f64 - b / s).abs() < 1e-6);
        }
        // Sum 1 (mean-1 weights over n), decreasing in κ.
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!(w.windows(2).all(|p| p[0] > p[1]));
    }
}
