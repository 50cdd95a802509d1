//! LIFT: Low-rank Informed sparse Fine-Tuning (Liu et al., arXiv 2506.00772), with its two
//! controls at the same budget. Card: shared/methods/selective_finetuning.md, "LIFT".
//!
//! From task `from-task` on, per body weight W (m × n; every weight but the output layer's):
//! K = min((m + n)·rank, m·n) entries (a rank-`rank` LoRA's parameter count) are trained by a
//! sparse AdamW whose moments have length K (`parts/sparse_adam.rs`, the run's optimizer
//! settings and learning rate); the other entries and every bias stay as they are. LIFT picks
//! the K largest |W′|, W′ the rank-`filter-rank` approximation of W, and re-picks them every
//! `interval` steps from the current W: moments of entries in both masks survive, new ones
//! start at zero, the step count goes on. The controls: `selection = "magnitude"` (largest
//! |W|, the paper's ablation, refreshed the same way) and `"random"` (K entries drawn once per
//! task). The output layer trains densely under the run's optimizer (`train-head`).
//!
//! Gradients stay dense (only the optimizer state is sparse), as in the reference.

use super::parts::body::{BodyWeight, body_weights, is_head, keep_grads, values_of, write_back};
use super::parts::sparse_adam::SparseState;
use super::{Ctx, Setup, State, Strategy, check_from_task, in_range, no_effect, parse_params};
use crate::model::Net;
use crate::model::params::grad_flat;
use crate::{Result, err};
use burn::optim::GradientsParams;
use engram_weights::rng::Rng;
use engram_weights::spectral::{self, SpectralOptions};
use std::collections::BTreeMap;

/// How the K entries of each matrix are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    /// LIFT: largest |W′| of the rank-reduced matrix.
    Principal,
    /// Largest |W| (no rank reduction).
    Magnitude,
    /// K entries drawn at random once per task (no refresh).
    Random,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// principal (LIFT) | magnitude | random.
    #[serde(default = "default_selection")]
    pub selection: Selection,
    /// Budget per matrix: K = min((m + n)·rank, m·n) (card's CPU default: 8).
    #[serde(default = "eight")]
    pub rank: usize,
    /// Rank of W′ (card's CPU default: 8).
    #[serde(default = "eight")]
    pub filter_rank: usize,
    /// Steps between refreshes of the mask, at least 1; more than a task's steps: never
    /// (card's CPU default: 100).
    #[serde(default = "default_interval")]
    pub interval: usize,
    /// Tasks before this one train every parameter (a pre-training phase).
    #[serde(default)]
    pub from_task: usize,
    /// Whether the output layer trains (densely, under the run's optimizer).
    #[serde(default = "yes")]
    pub train_head: bool,
}

fn default_selection() -> Selection {
    Selection::Principal
}
fn eight() -> usize {
    8
}
fn default_interval() -> usize {
    100
}
fn yes() -> bool {
    true
}

pub struct Lift {
    p: Params,
    /// This task's matrices and their sparse states (empty before `from-task`).
    states: Vec<(BodyWeight, SparseState)>,
    /// Weights updated in `after_backward`, written in `after_step`.
    pending: Option<BTreeMap<String, Vec<f32>>>,
    /// Steps since the last refresh.
    since: usize,
    /// A refresh that failed in `after_step`, reported by `after_task`.
    failed: Option<crate::Error>,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("lift", v)?;
    for (key, v) in [
        ("rank", p.rank),
        ("filter-rank", p.filter_rank),
        ("interval", p.interval),
    ] {
        in_range("lift", key, v, 1, usize::MAX, "")?;
    }
    let (random, principal) = (
        p.selection == Selection::Random,
        p.selection == Selection::Principal,
    );
    no_effect(
        "lift",
        "interval",
        random && p.interval != default_interval(),
        "with selection = \"random\" (drawn once per task)",
    )?;
    no_effect(
        "lift",
        "filter-rank",
        !principal && p.filter_rank != eight(),
        "unless selection = \"principal\"",
    )?;
    Ok(Box::new(Lift {
        p,
        states: Vec::new(),
        pending: None,
        since: 0,
        failed: None,
    }))
}

/// The entries (ascending) of the matrix `w` (rows × cols) that `p.selection` picks at budget
/// `p.rank` (and rank `p.filter-rank` for LIFT); `key` and `seed` fix a random draw.
pub fn select(
    p: &Params,
    w: &[f32],
    rows: usize,
    cols: usize,
    key: &str,
    seed: u64,
) -> Result<Vec<u32>> {
    let k = spectral::lift_budget(rows, cols, p.rank);
    match p.selection {
        Selection::Principal => spectral::principal_indices(
            w,
            rows,
            cols,
            p.filter_rank,
            k,
            &SpectralOptions::default(),
        )
        .map_err(|e| err!("{key}: {e}")),
        Selection::Magnitude => Ok(spectral::top_k_abs(w, k)),
        Selection::Random => {
            let all: Vec<usize> = (0..w.len()).collect();
            Ok(Rng::keyed(seed, key, 0)
                .choose_sorted(&all, k)
                .into_iter()
                .map(|i| i as u32)
                .collect())
        }
    }
}

impl Lift {
    fn active(&self, cx: &Ctx) -> bool {
        cx.task >= self.p.from_task
    }

    /// Chooses every matrix's entries from the network's current weights.
    fn choose(&mut self, cx: &Ctx, net: &Net, fresh: bool) -> Result<()> {
        let values = crate::model::params::named_values(net);
        let seed = cx.seed ^ (cx.task as u64).wrapping_mul(0x9e37_79b9);
        if fresh {
            self.states = body_weights(net)
                .into_iter()
                .map(|b| (b, SparseState::new(Vec::new())))
                .collect();
        }
        for (b, st) in &mut self.states {
            let w = &values[&b.info.name];
            let idx = select(&self.p, w, b.rows, b.cols, &b.info.name, seed)?;
            st.remask(idx);
        }
        Ok(())
    }

    /// Values the optimizer may change this task: K per matrix (plus the head, trained by the
    /// run's optimizer).
    pub fn sparse_values(&self) -> usize {
        self.states.iter().map(|(_, s)| s.len()).sum()
    }
}

impl Strategy for Lift {
    fn name(&self) -> &'static str {
        "lift"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn check(&self, s: &Setup) -> Result<()> {
        check_from_task("lift", self.p.from_task, s)?;
        if s.optim.kind == crate::optim::OptimKind::Sgd {
            return Err("strategy lift trains with a sparse AdamW: set the run's optimizer to adam or adamw".into());
        }
        // Past these, every matrix is trained whole (rank) or filtered at full rank.
        let w = body_weights(s.net);
        let full = w
            .iter()
            .map(|b| (b.rows * b.cols).div_ceil(b.rows + b.cols))
            .max();
        let what = "beyond it every weight matrix trains whole";
        in_range("lift", "rank", self.p.rank, 1, full.unwrap_or(0), what)?;
        let top = w.iter().map(|b| b.rows.min(b.cols)).max().unwrap_or(0);
        let what = "the largest rank of the model's weight matrices";
        in_range("lift", "filter-rank", self.p.filter_rank, 1, top, what)
    }

    fn has_masks(&self) -> bool {
        true
    }

    fn before_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        self.states.clear();
        self.since = 0;
        if self.active(cx) {
            self.choose(cx, &net, true)?;
        }
        Ok(net)
    }

    fn after_backward(&mut self, cx: &Ctx, net: &Net, grads: &mut GradientsParams) {
        if !self.active(cx) {
            return;
        }
        let values = crate::model::params::named_values(net);
        let mut pending = BTreeMap::new();
        for (b, st) in &mut self.states {
            let Some(g) = grad_flat(grads, &b.info)
                .and_then(|t| t.into_data().convert::<f32>().try_into_vec::<f32>().ok())
            else {
                continue;
            };
            let mut w = values[&b.info.name].clone();
            // An SGD run was refused in `before_task` and sizes come from this network; should
            // a step fail anyway, the task ends with the error (`after_task`).
            match st.step(cx.optim, cx.lr, &mut w, &g) {
                Ok(()) => {
                    pending.insert(b.info.name.clone(), w);
                }
                Err(e) => {
                    self.failed.get_or_insert(e);
                }
            }
        }
        let train_head = self.p.train_head;
        keep_grads(net, grads, |n| train_head && is_head(net, n));
        self.pending = Some(pending);
    }

    fn after_step(&mut self, cx: &Ctx, net: Net) -> Net {
        let net = write_back(net, self.pending.take(), &mut self.failed);
        if self.active(cx) && self.p.selection != Selection::Random && self.p.interval > 0 {
            self.since += 1;
            if self.since == self.p.interval {
                self.since = 0;
                // `after_step` cannot fail: a refresh that fails is reported at the end of
                // the task (the mask in use stays until then).
                if let Err(e) = self.choose(cx, &net, false) {
                    self.failed.get_or_insert(err!("mask refresh: {e}"));
                }
            }
        }
        net
    }

    fn after_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        match self.failed.take() {
            Some(e) => Err(err!("strategy lift, task {}: {e}", cx.task)),
            None => Ok(net),
        }
    }

    fn state_bytes(&self) -> u64 {
        self.states.iter().map(|(_, s)| s.bytes() as u64).sum()
    }

    fn optimizer_bytes(&self) -> u64 {
        self.state_bytes()
    }

    fn trainable(&self, net: &Net) -> Option<usize> {
        if self.states.is_empty() {
            return None;
        }
        let head = values_of(net, |n| self.p.train_head && is_head(net, n));
        Some(self.sparse_values() + head)
    }

    fn masks(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.states
            .iter()
            .map(|(b, s)| {
                let mut m = vec![0.0; b.info.numel()];
                for &i in &s.idx {
                    m[i as usize] = 1.0;
                }
                (b.info.name.clone(), b.info.shape.clone(), m)
            })
            .collect()
    }

    fn state(&self) -> State {
        State {
            tensors: Vec::new(),
            json: serde_json::json!({"sparse_values": self.sparse_values()}),
        }
    }
}
