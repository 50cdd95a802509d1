//! LoRA, the parameter-efficient baseline (arXiv 2106.09685): W′ = W + (α/r)·A·B on frozen W.
//! Card: shared/methods/selective_finetuning.md, "LoRA (baseline)".
//!
//! With weights stored `[in, out]` (inputs multiply from the left) the adapter is A `[in, r]`,
//! Kaiming-uniform, and B `[r, out]`, zero, so the network is unchanged at the start. Only A
//! and B train. [`merge`] folds the adapters into the weights for export.

use super::params::{Host, Params};
use crate::data::rng::Rng;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f32,
    /// The weights that get an adapter: those whose name contains one of these strings
    /// (`fc1`, `blocks.3.`); empty: every eligible weight (all linears, as for MLPs).
    #[serde(default)]
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    /// r = 8, α = 16 on every linear (common practice; the card).
    fn default() -> Self {
        LoraConfig {
            r: 8,
            alpha: 16.0,
            targets: Vec::new(),
        }
    }
}

impl LoraConfig {
    /// α/r, the scale stored with the adapter.
    pub fn scale(&self) -> f32 {
        self.alpha / self.r.max(1) as f32
    }

    /// The weights of `eligible` that get an adapter; an error when none does.
    pub fn targeted(&self, eligible: &[String]) -> Result<Vec<String>, String> {
        let t: Vec<String> = eligible
            .iter()
            .filter(|n| {
                self.targets.is_empty() || self.targets.iter().any(|t| n.contains(t.as_str()))
            })
            .cloned()
            .collect();
        if t.is_empty() {
            return Err(format!(
                "LoRA targets {:?} match none of the weights ({})",
                self.targets,
                eligible.join(", ")
            ));
        }
        Ok(t)
    }
}

/// Adds an adapter to each weight in `weights`; returns the adapter tensors' names.
pub fn attach(
    c: &LoraConfig,
    params: &mut Params,
    weights: &[String],
    seed: u64,
) -> Result<Vec<String>, String> {
    if c.r == 0 {
        return Err("LoRA rank must be at least 1".into());
    }
    let mut names = Vec::new();
    for n in weights {
        let w = params.get(n).ok_or_else(|| format!("no parameter {n}"))?;
        let (i, o) = (w.rows, w.cols);
        let layer = n.trim_end_matches(".weight");
        let mut rng = Rng::keyed(seed, &format!("{layer}.lora_a"), 0);
        let a = Host::uniform(i, c.r, i, &mut rng);
        params.insert(format!("{layer}.lora_a"), a);
        params.insert(format!("{layer}.lora_b"), Host::zeros(c.r, o));
        names.push(format!("{layer}.lora_a"));
        names.push(format!("{layer}.lora_b"));
    }
    Ok(names)
}

/// Folds every adapter into its weight, W ← W + scale·A·B, and removes the adapters.
pub fn merge(params: &mut Params, scale: f32) -> Result<(), String> {
    let layers: Vec<String> = params
        .keys()
        .filter_map(|n| n.strip_suffix(".lora_a").map(str::to_string))
        .collect();
    for l in layers {
        let a = params
            .remove(&format!("{l}.lora_a"))
            .ok_or_else(|| format!("{l}: adapter A missing"))?;
        let b = params
            .remove(&format!("{l}.lora_b"))
            .ok_or_else(|| format!("{l}: adapter B missing"))?;
        let w = params
            .get_mut(&format!("{l}.weight"))
            .ok_or_else(|| format!("{l}: no weight under the adapter"))?;
        if a.rows != w.rows || b.cols != w.cols || a.cols != b.rows {
            return Err(format!("{l}: adapter shapes do not match the weight"));
        }
        let r = a.cols;
        for i in 0..w.rows {
            for k in 0..r {
                let aik = a.data[i * r + k] * scale;
                if aik == 0.0 {
                    continue;
                }
                let row = &mut w.data[i * w.cols..(i + 1) * w.cols];
                for (x, &bkj) in row.iter_mut().zip(&b.data[k * b.cols..(k + 1) * b.cols]) {
                    *x += aik * bkj;
                }
            }
        }
    }
    Ok(())
}
