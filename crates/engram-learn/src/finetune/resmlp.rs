//! The residual MLP of the selective fine-tuning testbed (selective_finetuning.md, "CPU
//! testbed"): a stem `in → width`, `blocks` residual blocks h ← h + W₂·ReLU(W₁·h), and one
//! linear head per task (`head.*` for the source, `target.*` for the target).
//!
//! The forward pass is driven by which names exist, so that one function serves every method:
//! a layer with `<layer>.lora_a`/`lora_b` adds its LoRA branch, and a block with
//! `blocks.<i>.exp.*` runs its expanded copy beside it and blends the two (Control LLM).

use super::expand::Divergence;
use super::params::{Host, Params};
use crate::data::rng::Rng;
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};
use std::collections::BTreeMap;

/// Architecture of the testbed network.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResMlpConfig {
    pub input: usize,
    pub width: usize,
    pub hidden: usize,
    pub blocks: usize,
}

impl Default for ResMlpConfig {
    fn default() -> Self {
        ResMlpConfig {
            input: 784,
            width: 256,
            hidden: 512,
            blocks: 4,
        }
    }
}

impl ResMlpConfig {
    /// The stem, the blocks and a head of `classes` outputs named `head`, drawn from `seed`.
    pub fn init(&self, head: &str, classes: usize, seed: u64) -> Params {
        let mut p = Params::new();
        let layer = |p: &mut Params, name: &str, i: usize, o: usize| {
            let mut rng = Rng::keyed(seed, name, 0);
            p.insert(format!("{name}.weight"), Host::uniform(i, o, i, &mut rng));
            p.insert(format!("{name}.bias"), Host::uniform(1, o, i, &mut rng));
        };
        layer(&mut p, "stem", self.input, self.width);
        for b in 0..self.blocks {
            layer(&mut p, &format!("blocks.{b}.fc1"), self.width, self.hidden);
            layer(&mut p, &format!("blocks.{b}.fc2"), self.hidden, self.width);
        }
        layer(&mut p, head, self.width, classes);
        p
    }

    /// Adds a freshly drawn head named `head`.
    pub fn add_head(&self, p: &mut Params, head: &str, classes: usize, seed: u64) {
        let mut rng = Rng::keyed(seed, head, 0);
        p.insert(
            format!("{head}.weight"),
            Host::uniform(self.width, classes, self.width, &mut rng),
        );
        p.insert(
            format!("{head}.bias"),
            Host::uniform(1, classes, self.width, &mut rng),
        );
    }

    /// The weight matrices a selective method may choose from: the stem's and the blocks'
    /// (heads excluded, as LIFT and the testbed prescribe), in forward order.
    pub fn body_weights(&self) -> Vec<String> {
        let mut v = vec!["stem.weight".to_string()];
        for b in 0..self.blocks {
            v.push(format!("blocks.{b}.fc1.weight"));
            v.push(format!("blocks.{b}.fc2.weight"));
        }
        v
    }

    /// Every parameter of the stem and the blocks (weights and biases).
    pub fn body_params(&self) -> Vec<String> {
        self.body_weights()
            .into_iter()
            .flat_map(|w| {
                let b = w.replace(".weight", ".bias");
                [w, b]
            })
            .collect()
    }
}

/// mean over rows of smoothL1(ReLU(1 − cos(a, b))) (β = 1: ½d² below 1, d − ½ above).
fn cosine_divergence(a: Tensor<2>, b: Tensor<2>) -> Tensor<1> {
    let dot = (a.clone() * b.clone()).sum_dim(1);
    let na = a.square().sum_dim(1).sqrt();
    let nb = b.square().sum_dim(1).sqrt();
    let cos = dot / (na * nb).add_scalar(1e-8);
    let d = relu(cos.neg().add_scalar(1.0));
    let q = d.clone().clamp_max(1.0);
    (q.clone().square().mul_scalar(0.5) + d - q).mean()
}

/// The tensors of one forward pass, by name, and how to combine them.
pub struct View<'a> {
    pub t: &'a BTreeMap<String, Tensor<2>>,
    /// α/r of the LoRA branches.
    pub lora_scale: f32,
    /// The divergence each expanded block reports.
    pub divergence: Divergence,
}

/// What the forward pass gives: the features before a head, and the divergence of each
/// expanded block (as [`View::divergence`] says: mse or cosine).
pub struct Forward {
    pub features: Tensor<2>,
    pub divergences: Vec<Tensor<1>>,
}

impl View<'_> {
    fn get(&self, name: &str) -> Result<Tensor<2>, String> {
        self.t
            .get(name)
            .cloned()
            .ok_or_else(|| format!("the network has no tensor {name}"))
    }

    /// x·W + b, plus (α/r)·(x·A)·B when the layer has a LoRA adapter.
    pub fn linear(&self, layer: &str, x: Tensor<2>) -> Result<Tensor<2>, String> {
        let w = self.get(&format!("{layer}.weight"))?;
        let b = self.get(&format!("{layer}.bias"))?;
        let mut y = x.clone().matmul(w) + b;
        if let (Some(a), Some(bb)) = (
            self.t.get(&format!("{layer}.lora_a")),
            self.t.get(&format!("{layer}.lora_b")),
        ) {
            y = y + x
                .matmul(a.clone())
                .matmul(bb.clone())
                .mul_scalar(self.lora_scale);
        }
        Ok(y)
    }

    /// The residual branch W₂·ReLU(W₁·h) of the block under `prefix`.
    fn branch(&self, prefix: &str, h: Tensor<2>) -> Result<Tensor<2>, String> {
        let z = relu(self.linear(&format!("{prefix}.fc1"), h)?);
        self.linear(&format!("{prefix}.fc2"), z)
    }

    pub fn features(&self, x: Tensor<2>) -> Result<Forward, String> {
        let mut h = relu(self.linear("stem", x)?);
        let mut divergences = Vec::new();
        let mut b = 0;
        while self.t.contains_key(&format!("blocks.{b}.fc1.weight")) {
            let p = format!("blocks.{b}");
            let pre = self.branch(&p, h.clone())?;
            let e = format!("{p}.exp");
            let f = if self.t.contains_key(&format!("{e}.fc1.weight")) {
                let exp = self.branch(&e, h.clone())?;
                let diff = exp.clone() - pre.clone();
                divergences.push(match self.divergence {
                    Divergence::Mse => diff.clone().square().mean(),
                    Divergence::Cosine => {
                        cosine_divergence(h.clone() + pre.clone(), h.clone() + exp.clone())
                    }
                });
                // Blend: pre + α·(exp − pre), i.e. (1 − α)·pre + α·exp.
                let alpha = if let Some(a) = self.t.get(&format!("{e}.gate")) {
                    sigmoid(a.clone())
                } else {
                    // dlerp: a per-example α from both outputs (with the residual).
                    let both = Tensor::cat(vec![h.clone() + pre.clone(), h.clone() + exp], 1);
                    sigmoid(self.linear(&format!("{e}.dgate"), both)?)
                };
                pre + diff * alpha
            } else {
                pre
            };
            h = h + f;
            b += 1;
        }
        Ok(Forward {
            features: h,
            divergences,
        })
    }

    /// Logits of the head `head`.
    pub fn logits(&self, head: &str, x: Tensor<2>) -> Result<(Tensor<2>, Vec<Tensor<1>>), String> {
        let f = self.features(x)?;
        Ok((self.linear(head, f.features)?, f.divergences))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_divergence_is_zero_for_parallel_rows_and_half_for_orthogonal_ones() {
        let d = Device::flex();
        let t = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [2, 2]), &d);
        let same = cosine_divergence(t(vec![1.0, 2.0, -3.0, 1.0]), t(vec![2.0, 4.0, -1.5, 0.5]));
        assert!(same.into_scalar::<f32>().abs() < 1e-6);
        // Row 0 orthogonal (d = 1: ½), row 1 opposite (d = 2: 2 − ½).
        let v = cosine_divergence(t(vec![1.0, 0.0, 1.0, 1.0]), t(vec![0.0, 3.0, -1.0, -1.0]));
        assert!((v.into_scalar::<f32>() - 1.0).abs() < 1e-5);
    }
}
