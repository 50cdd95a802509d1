//! Block expansion in the manner of Control LLM (Wei et al., arXiv 2501.10979): chosen
//! residual blocks get a trainable parallel copy, the outputs are blended, and a divergence
//! loss keeps the copy close. Card: shared/methods/selective_finetuning.md, "Control LLM".
//!
//! At the start of task `from-task` the blocks `blocks` (default: Control LLM's placement of
//! `expansions` copies, (i + 1) mod (L/E) = 0) of a residual network (`model.kind =
//! "resmlp"`) are expanded (`model/resmlp.rs`): lerp with α = sigmoid(a) (`a`, fixed unless
//! `trainable-gate`) or dlerp (a per-example gate). Every original parameter is frozen; the
//! copies, a trainable gate and the output layer (`train-head`) train under the run's
//! optimizer, with λ·mean over expanded blocks of the divergence (mse or cosine) added to the
//! loss. `merge-back` folds each lerp pair into one block after the last task (a different
//! function unless α is 0 or 1).

use super::parts::body::{is_head, keep_grads, values_of};
use super::{
    Batch, Ctx, Setup, State, Strategy, check_from_task, in_range, no_effect, parse_params,
};
use crate::model::Net;
use crate::model::resmlp::{Divergence, placement};
use crate::{Result, err};
use burn::optim::GradientsParams;
use burn::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Gate {
    Lerp,
    Dlerp,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Blocks to expand; empty: Control LLM's placement of `expansions` copies.
    #[serde(default)]
    pub blocks: Vec<usize>,
    #[serde(default = "two")]
    pub expansions: usize,
    /// lerp (card's SFT setting) | dlerp (continued pre-training).
    #[serde(default = "default_gate")]
    pub gate: Gate,
    /// lerp's a: α = sigmoid(a) (0: α = 0.5).
    #[serde(default)]
    pub a: f32,
    /// Whether lerp's a trains (dlerp's gate always does).
    #[serde(default)]
    pub trainable_gate: bool,
    /// mse | cosine.
    #[serde(default)]
    pub divergence: Divergence,
    /// Weight λ of the divergence (card: 1).
    #[serde(default = "one")]
    pub lambda: f32,
    /// Fold lerp pairs back into single blocks after the last task.
    #[serde(default)]
    pub merge_back: bool,
    #[serde(default)]
    pub from_task: usize,
    #[serde(default = "yes")]
    pub train_head: bool,
}

fn two() -> usize {
    2
}
fn default_gate() -> Gate {
    Gate::Lerp
}
fn one() -> f32 {
    1.0
}
fn yes() -> bool {
    true
}

pub struct BlockExpansion {
    p: Params,
    /// The blocks expanded so far (empty before `from-task`, and after a merge-back).
    expanded: Vec<usize>,
    /// Values that trained in the last task, kept across a merge-back.
    trained: Option<usize>,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("block-expansion", v)?;
    if !(p.lambda.is_finite() && p.lambda >= 0.0 && p.a.is_finite()) {
        return Err("strategy block-expansion: lambda must be >= 0 and a finite".into());
    }
    if p.merge_back && p.gate == Gate::Dlerp {
        return Err("strategy block-expansion: a dlerp blend cannot be merged back".into());
    }
    let name = "block-expansion";
    in_range(name, "expansions", p.expansions, 1, usize::MAX, "")?;
    no_effect(
        name,
        "expansions",
        !p.blocks.is_empty() && p.expansions != two(),
        "when blocks are given",
    )?;
    let dlerp = p.gate == Gate::Dlerp;
    no_effect(name, "a", dlerp && p.a != 0.0, "with gate = \"dlerp\"")?;
    no_effect(
        name,
        "trainable-gate",
        dlerp && p.trainable_gate,
        "with gate = \"dlerp\" (its gate always trains)",
    )?;
    Ok(Box::new(BlockExpansion {
        p,
        expanded: Vec::new(),
        trained: None,
    }))
}

impl BlockExpansion {
    /// Whether the parameter `name` trains: the output layer (`train-head`), the copies, a
    /// dlerp gate's layer, a lerp gate's value only when `trainable-gate`.
    fn trains(&self, net: &Net, name: &str) -> bool {
        (self.p.train_head && is_head(net, name))
            || (name.starts_with("exp.") && (!is_lerp_gate(name) || self.p.trainable_gate))
    }

    fn lerp(&self) -> Option<f32> {
        match self.p.gate {
            Gate::Lerp => Some(self.p.a),
            Gate::Dlerp => None,
        }
    }
}

impl Strategy for BlockExpansion {
    fn name(&self) -> &'static str {
        "block-expansion"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn check(&self, s: &Setup) -> Result<()> {
        let name = "block-expansion";
        check_from_task(name, self.p.from_task, s)?;
        let Net::ResMlp(m) = s.net else {
            return Err(
                "strategy block-expansion needs residual blocks: set model.kind = \"resmlp\""
                    .into(),
            );
        };
        let n = m.blocks.len();
        let what = format!("the model has {n} residual blocks");
        if self.p.blocks.is_empty() {
            return in_range(name, "expansions", self.p.expansions, 1, n, &what);
        }
        for (i, &b) in self.p.blocks.iter().enumerate() {
            in_range(
                name,
                "blocks",
                b,
                0,
                n - 1,
                &format!("{what}, counted from 0"),
            )?;
            if self.p.blocks[..i].contains(&b) {
                return Err(err!("strategy {name}: blocks lists block {b} twice"));
            }
        }
        Ok(())
    }

    fn before_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        if cx.task < self.p.from_task {
            return Ok(net);
        }
        let Net::ResMlp(m) = net else {
            return Err(
                "strategy block-expansion needs residual blocks: set model.kind = \"resmlp\""
                    .into(),
            );
        };
        if m.is_expanded() {
            return Ok(Net::ResMlp(m));
        }
        let blocks = if self.p.blocks.is_empty() {
            placement(m.blocks.len(), self.p.expansions)
        } else {
            self.p.blocks.clone()
        };
        let m = m.expand(&blocks, self.lerp(), cx.seed, cx.device)?;
        self.expanded = blocks;
        Ok(Net::ResMlp(m))
    }

    fn loss(
        &mut self,
        cx: &Ctx,
        net: &Net,
        batch: &Batch,
        _logits: Tensor<2>,
        loss: Tensor<1>,
    ) -> Tensor<1> {
        if cx.task < self.p.from_task || self.p.lambda == 0.0 {
            return loss;
        }
        let Net::ResMlp(m) = net else { return loss };
        let (_, divs) = m.features_div(batch.x.clone(), self.p.divergence);
        if divs.is_empty() {
            return loss;
        }
        let k = divs.len() as f32;
        let d = divs.into_iter().reduce(|a, b| a + b).expect("non-empty");
        loss + d.mul_scalar(self.p.lambda / k)
    }

    fn after_backward(&mut self, cx: &Ctx, net: &Net, grads: &mut GradientsParams) {
        if cx.task < self.p.from_task {
            return;
        }
        keep_grads(net, grads, |n| self.trains(net, n));
    }

    fn after_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        if self.p.merge_back
            && cx.task + 1 == cx.scenario.tasks.len()
            && let Net::ResMlp(m) = net
        {
            self.expanded.clear();
            return Ok(Net::ResMlp(m.merge_back()?));
        }
        Ok(net)
    }

    fn state(&self) -> State {
        State {
            tensors: Vec::new(),
            json: serde_json::json!({"expanded": self.expanded}),
        }
    }

    fn load_state(&mut self, st: State) -> Result<()> {
        self.expanded = match st.json.get("expanded") {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| err!("strategy block-expansion: state: {e}"))?,
            None => Vec::new(),
        };
        Ok(())
    }

    fn reshape(&mut self, net: Net, device: &Device) -> Result<Net> {
        match net {
            // The checkpoint's values replace the new copies and gate: any seed will do.
            Net::ResMlp(m) if !self.expanded.is_empty() && !m.is_expanded() => Ok(Net::ResMlp(
                m.expand(&self.expanded, self.lerp(), 0, device)?,
            )),
            other => Ok(other),
        }
    }

    fn trainable(&self, net: &Net) -> Option<usize> {
        if self.expanded.is_empty() {
            return self.trained;
        }
        Some(values_of(net, |n| self.trains(net, n)))
    }
}

/// Whether a parameter name is a lerp gate's single value.
fn is_lerp_gate(name: &str) -> bool {
    !name.ends_with(".weight") && !name.ends_with(".bias") && name.contains(".blend.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lerp_gate_is_one_value_and_a_dlerp_gate_a_layer() {
        let _g = crate::backend::rng_guard();
        let d = burn::prelude::Device::flex();
        let net = crate::model::resmlp::ResMlp::new(6, 8, 12, 4, 3, &d);
        let names = |n: &crate::model::resmlp::ResMlp| -> Vec<String> {
            crate::model::params::param_infos(&Net::ResMlp(n.clone()))
                .into_iter()
                .map(|p| p.name)
                .collect()
        };
        let lerp = names(&net.clone().expand(&[1, 3], Some(0.0), 1, &d).unwrap());
        let gates: Vec<&String> = lerp.iter().filter(|n| is_lerp_gate(n)).collect();
        assert_eq!(gates.len(), 2, "{lerp:?}");
        assert!(
            lerp.iter().any(|n| n == "exp.1.block.fc1.weight"),
            "{lerp:?}"
        );
        let dlerp = names(&net.expand(&[1], None, 1, &d).unwrap());
        assert!(dlerp.iter().all(|n| !is_lerp_gate(n)), "{dlerp:?}");
        assert!(
            dlerp
                .iter()
                .any(|n| n.starts_with("exp.1.blend.") && n.ends_with(".weight"))
        );
    }
}
