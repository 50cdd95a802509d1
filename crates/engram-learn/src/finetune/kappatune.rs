//! KappaTune: unfreeze only the tensors of lowest condition number (arXiv 2506.16289), with
//! the highest-κ and random selections as controls at the same count.
//! Card: shared/methods/selective_finetuning.md, "KappaTune".
//!
//! κ = σ_max/(σ_min + 1e-8) of each body weight from a full SVD (engram-weights' spectral
//! module), sorted ascending once before training and never updated. Selected weights are
//! trained whole; biases stay frozen.

use super::params::Params;
use crate::data::rng::Rng;
use engram_weights::spectral::{self, SpectralOptions};

/// Which tensors to unfreeze.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pick {
    Lowest,
    Highest,
    Random,
}

impl Pick {
    pub fn name(self) -> &'static str {
        match self {
            Pick::Lowest => "lowest",
            Pick::Highest => "highest",
            Pick::Random => "random",
        }
    }
}

/// κ of each named weight, in the order given.
pub fn kappas(params: &Params, names: &[String]) -> Result<Vec<(String, f64)>, String> {
    names
        .iter()
        .map(|n| {
            let w = params.get(n).ok_or_else(|| format!("no parameter {n}"))?;
            let s = spectral::spectrum(&w.data, w.rows, w.cols, &SpectralOptions::default())
                .map_err(|e| format!("{n}: {e}"))?;
            let k = s.kappa.ok_or_else(|| format!("{n}: no exact spectrum"))?;
            Ok((n.clone(), k))
        })
        .collect()
}

/// Names sorted by ascending κ (ties by name, so the order is total).
pub fn ascending(k: &[(String, f64)]) -> Vec<String> {
    let mut v = k.to_vec();
    v.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter().map(|(n, _)| n).collect()
}

/// The `n` tensors `pick` unfreezes, from the κ of every candidate.
pub fn choose(pick: Pick, n: usize, k: &[(String, f64)], seed: u64) -> Vec<String> {
    let order = ascending(k);
    let n = n.min(order.len());
    match pick {
        Pick::Lowest => order[..n].to_vec(),
        Pick::Highest => order[order.len() - n..].to_vec(),
        Pick::Random => {
            let mut names: Vec<String> = k.iter().map(|(n, _)| n.clone()).collect();
            Rng::keyed(seed, "kappatune-random", 0).shuffle(&mut names);
            names.truncate(n);
            names
        }
    }
}
