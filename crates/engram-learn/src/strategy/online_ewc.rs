//! Online EWC: Schwarz et al. 2018, "Progress & Compress" (running Fisher with decay γ).
//! Card: shared/methods/regularization.md (Online EWC).
//!
//! After task k: F̃ ← γ·F̃ + F^(k) and θ* ← θ; penalty (λ/2)·Σ_i F̃_i·(θ_i − θ*_i)² (half
//! convention, F̃ not normalised). Two vectors of memory, whatever the number of tasks.
//! The estimators, the batched per-example Fisher and its fallback are those of `ewc.rs`;
//! parameters: `lambda` (1000), `gamma` (1), `fisher` (exact), `samples` (1000),
//! `fisher-batch` (128).

use super::Strategy;
use crate::Result;

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    super::ewc::build_online(v)
}
