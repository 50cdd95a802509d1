//! LIFT: Low-rank Informed sparse Fine-Tuning (arXiv 2506.00772), with its two controls at
//! the same budget (top-|W| without the rank reduction, and random entries).
//! Card: shared/methods/selective_finetuning.md, "LIFT".
//!
//! Per eligible matrix W (every body weight; the source head and biases frozen, the new head
//! trained densely): K = min((m + n)·r_lora, m·n) entries
//! (a rank-r_lora LoRA's parameter count) are trained by a sparse AdamW whose moments have
//! length K. LIFT picks the K largest entries of |W′|, W′ the rank-`filter_rank` approximation
//! of W, and re-picks them every `interval` steps from the current W: moments of entries kept
//! in both masks survive, new ones start at zero, the step count goes on.

use super::adam::State;
use super::params::{Host, Params};
use super::train::{Plan, Refresh};
use crate::data::rng::Rng;
use engram_weights::spectral::{self, SpectralOptions};
use std::collections::BTreeMap;

/// How the K entries of each matrix are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// LIFT: largest |W′| of the rank-reduced matrix.
    Principal,
    /// Largest |W| (no rank reduction): the paper's ablation.
    Magnitude,
    /// K entries drawn at random once (no refresh).
    Random,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SparseConfig {
    pub selection: Selection,
    /// Budget per matrix: K = min((m + n)·r_lora, m·n).
    pub r_lora: usize,
    /// Rank of W′ (LIFT only).
    pub filter_rank: usize,
    /// Steps between refreshes (LIFT and top-|W|); 0 = never.
    pub interval: usize,
}

impl SparseConfig {
    /// The card's engram CPU defaults: r_lora = filter_rank = 8, interval 100.
    pub fn new(selection: Selection) -> SparseConfig {
        SparseConfig {
            selection,
            r_lora: 8,
            filter_rank: 8,
            interval: 100,
        }
    }

    pub fn label(&self) -> String {
        match self.selection {
            Selection::Principal => format!("lift r{}", self.r_lora),
            Selection::Magnitude => format!("top-|W| r{}", self.r_lora),
            Selection::Random => format!("random-K r{}", self.r_lora),
        }
    }
}

/// The entries (ascending) of `w` that `c` selects; `key` and `seed` fix a random draw.
pub fn select(c: &SparseConfig, w: &Host, key: &str, seed: u64) -> Result<Vec<u32>, String> {
    let k = spectral::lift_budget(w.rows, w.cols, c.r_lora);
    match c.selection {
        Selection::Principal => spectral::principal_indices(
            &w.data,
            w.rows,
            w.cols,
            c.filter_rank,
            k,
            &SpectralOptions::default(),
        )
        .map_err(|e| format!("{key}: {e}")),
        Selection::Magnitude => Ok(spectral::top_k_abs(&w.data, k)),
        Selection::Random => {
            let all: Vec<usize> = (0..w.numel()).collect();
            let mut rng = Rng::keyed(seed, key, 0);
            Ok(rng
                .choose_sorted(&all, k)
                .into_iter()
                .map(|i| i as u32)
                .collect())
        }
    }
}

/// Sparse states for `weights`, dense ones for `dense` (the new head), and the refresh.
pub fn plan(
    c: &SparseConfig,
    params: Params,
    weights: &[String],
    dense: &[String],
    seed: u64,
) -> Result<Plan, String> {
    let mut states = Plan::dense(&params, dense)?;
    for n in weights {
        let w = params
            .get(n)
            .ok_or_else(|| format!("no parameter {n} to select from"))?;
        states.insert(n.clone(), State::sparse(select(c, w, n, seed)?));
    }
    let mut plan = Plan::new(params, states);
    if c.selection != Selection::Random && c.interval > 0 {
        let c2 = c.clone();
        let names = weights.to_vec();
        let f: Refresh = Box::new(move |p: &Params, st: &mut BTreeMap<String, State>| {
            for n in &names {
                let idx = select(&c2, &p[n], n, seed)?;
                if let Some(s) = st.get_mut(n) {
                    s.remask(idx);
                }
            }
            Ok(())
        });
        plan.refresh = Some((c.interval, f));
    }
    Ok(plan)
}
