//! Block expansion in the manner of Control LLM (arXiv 2501.10979): chosen residual blocks get
//! a trainable parallel copy, the two outputs are blended, and a divergence loss keeps the
//! copy close. Card: shared/methods/selective_finetuning.md, "Control LLM".
//!
//! Both branches see the same input; every original parameter is frozen. lerp blends with
//! α = sigmoid(a) (a = 0: α = 0.5), dlerp with a per-example α = sigmoid(Linear_{2d→1}([h_pre;
//! h_exp])), bias 0. The divergence is the mean squared difference of the branches (mse) or
//! smoothL1(ReLU(1 − cos(h_pre, h_exp))) per example (cosine), averaged over expanded blocks
//! and weighted by λ. Because the copy equals the original at
//! the start, so does the network. [`merge_back`] folds a lerp pair into one block by
//! interpolating the weights, which changes the function unless α is 0 or 1 (the ReLU sits
//! between the two layers), so accuracy is reported after it too.

use super::params::{Host, Params};
use crate::data::rng::Rng;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    /// α = sigmoid(a), `trainable` or fixed.
    Lerp { a: f32, trainable: bool },
    /// Per-example α from both outputs.
    Dlerp,
}

/// How far the expanded branch is from the original (Control LLM's divergence losses).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Divergence {
    /// mean (h_exp − h_pre)².
    #[default]
    Mse,
    /// mean over examples of smoothL1(ReLU(1 − cos(h_pre, h_exp))).
    Cosine,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExpandConfig {
    pub blocks: Vec<usize>,
    /// Divergence weight λ.
    pub lambda: f32,
    pub gate: Gate,
    #[serde(default)]
    pub divergence: Divergence,
}

impl ExpandConfig {
    /// The card's SFT setting: lerp a = 0 (α = 0.5) frozen, mse, on `blocks`.
    pub fn new(blocks: Vec<usize>, lambda: f32) -> ExpandConfig {
        ExpandConfig {
            blocks,
            lambda,
            gate: Gate::Lerp {
                a: 0.0,
                trainable: false,
            },
            divergence: Divergence::Mse,
        }
    }

    pub fn label(&self) -> String {
        let b: Vec<String> = self.blocks.iter().map(|b| b.to_string()).collect();
        let g = match self.gate {
            Gate::Lerp { .. } => "lerp",
            Gate::Dlerp => "dlerp",
        };
        let d = match self.divergence {
            Divergence::Mse => "",
            Divergence::Cosine => " cosine",
        };
        format!("expand {} {g}{d} λ={}", b.join("+"), self.lambda)
    }
}

/// Control LLM's placement: with `layers` blocks and `expansions` copies, every
/// (layers/expansions)-th block, i.e. indices with (i + 1) mod (layers/expansions) = 0.
pub fn placement(layers: usize, expansions: usize) -> Vec<usize> {
    if expansions == 0 || layers == 0 {
        return Vec::new();
    }
    let every = (layers / expansions).max(1);
    (0..layers).filter(|i| (i + 1) % every == 0).collect()
}

/// Adds the expanded copies and gates; returns the names to train.
pub fn attach(c: &ExpandConfig, params: &mut Params, seed: u64) -> Result<Vec<String>, String> {
    let mut train = Vec::new();
    for &b in &c.blocks {
        let p = format!("blocks.{b}");
        if !params.contains_key(&format!("{p}.fc1.weight")) {
            return Err(format!("the network has no block {b} to expand"));
        }
        let get = |params: &Params, t: &str| {
            params
                .get(&format!("{p}.{t}"))
                .cloned()
                .ok_or_else(|| format!("block {b} has no {t}"))
        };
        let width = get(params, "fc2.weight")?.cols;
        for t in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"] {
            let copy = get(params, t)?;
            params.insert(format!("{p}.exp.{t}"), copy);
            train.push(format!("{p}.exp.{t}"));
        }
        match c.gate {
            Gate::Lerp { a, trainable } => {
                params.insert(
                    format!("{p}.exp.gate"),
                    Host {
                        rows: 1,
                        cols: 1,
                        data: vec![a],
                    },
                );
                if trainable {
                    train.push(format!("{p}.exp.gate"));
                }
            }
            Gate::Dlerp => {
                let mut rng = Rng::keyed(seed, &format!("{p}.exp.dgate"), 0);
                params.insert(
                    format!("{p}.exp.dgate.weight"),
                    Host::uniform(2 * width, 1, 2 * width, &mut rng),
                );
                params.insert(format!("{p}.exp.dgate.bias"), Host::zeros(1, 1));
                train.push(format!("{p}.exp.dgate.weight"));
                train.push(format!("{p}.exp.dgate.bias"));
            }
        }
    }
    Ok(train)
}

/// Folds each lerp pair into its block: W ← (1 − α)·W_pre + α·W_exp, α = sigmoid(a); removes
/// the copies. dlerp blends per example and cannot be folded: an error.
pub fn merge_back(params: &mut Params) -> Result<(), String> {
    let blocks: Vec<String> = params
        .keys()
        .filter_map(|n| n.strip_suffix(".exp.fc1.weight").map(str::to_string))
        .collect();
    for p in blocks {
        let gate = params
            .remove(&format!("{p}.exp.gate"))
            .ok_or_else(|| format!("{p}: only a lerp blend can be merged back"))?;
        let alpha = 1.0 / (1.0 + (-gate.data[0]).exp());
        for t in ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"] {
            let e = params
                .remove(&format!("{p}.exp.{t}"))
                .ok_or_else(|| format!("{p}: expanded {t} missing"))?;
            let w = params
                .get_mut(&format!("{p}.{t}"))
                .ok_or_else(|| format!("{p}: {t} missing"))?;
            for (x, y) in w.data.iter_mut().zip(&e.data) {
                *x = (1.0 - alpha) * *x + alpha * y;
            }
        }
    }
    Ok(())
}
