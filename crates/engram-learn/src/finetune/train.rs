//! The training loop shared by pre-training and every fine-tuning method: a [`Plan`] says which
//! tensors exist, which are trained and with which optimizer state (dense, or sparse over
//! selected entries), and how often a method refreshes its selection. Frozen tensors are
//! uploaded once; trained ones each step, with their updates computed on the host.

use super::adam::{AdamW, State};
use super::expand::Divergence;
use super::params::{Params, to_host};
use super::resmlp::View;
use crate::data::Dataset;
use crate::data::rng::Rng;
use crate::metrics::{ClassMask, masked_accuracy};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use std::collections::BTreeMap;

/// Re-selects the entries of sparse states (LIFT's periodic refresh) from the current
/// parameters.
pub type Refresh = Box<dyn FnMut(&Params, &mut BTreeMap<String, State>) -> Result<(), String>>;

/// What one training run changes and how.
pub struct Plan {
    pub params: Params,
    /// The trained tensors and their optimizer states; every other tensor is frozen.
    pub states: BTreeMap<String, State>,
    /// α/r of LoRA branches (unused without adapters).
    pub lora_scale: f32,
    /// Weight of the mean divergence of expanded blocks in the loss, and which divergence.
    pub divergence_weight: f32,
    pub divergence: Divergence,
    /// Called every `refresh_every` steps (not after the last one).
    pub refresh: Option<(usize, Refresh)>,
}

impl Plan {
    pub fn new(params: Params, states: BTreeMap<String, State>) -> Plan {
        Plan {
            params,
            states,
            lora_scale: 0.0,
            divergence_weight: 0.0,
            divergence: Divergence::Mse,
            refresh: None,
        }
    }

    /// Dense states for `names`.
    pub fn dense(params: &Params, names: &[String]) -> Result<BTreeMap<String, State>, String> {
        names
            .iter()
            .map(|n| {
                let h = params
                    .get(n)
                    .ok_or_else(|| format!("no parameter {n} to train"))?;
                Ok((n.clone(), State::dense(h.numel())))
            })
            .collect()
    }

    /// Values the optimizer may change, summed over trained tensors.
    pub fn trainable(&self) -> usize {
        self.states.values().map(State::len).sum()
    }

    /// Bytes of optimizer state.
    pub fn optimizer_bytes(&self) -> usize {
        self.states.values().map(State::bytes).sum()
    }
}

/// Epochs, batch size and optimizer of one run.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoopConfig {
    pub epochs: usize,
    pub batch: usize,
    pub adam: AdamW,
}

/// The labels and inputs of the examples `ids` of `d` as tensors on `device`.
fn batch(d: &Dataset, ids: &[usize], device: &Device) -> (Tensor<2>, Tensor<1, Int>) {
    let mut x = Vec::with_capacity(ids.len() * d.dim);
    for &i in ids {
        x.extend_from_slice(d.row(i));
    }
    let y: Vec<i64> = ids.iter().map(|&i| d.y[i] as i64).collect();
    (
        Tensor::<2>::from_data(TensorData::new(x, [ids.len(), d.dim]), device),
        Tensor::<1, Int>::from_data(TensorData::new(y, [ids.len()]), device),
    )
}

/// Trains `plan` on `data` through the head `head` for `cfg.epochs` epochs, examples in a
/// seeded order; `progress(step, total)` after each step. Returns the mean loss of the last
/// epoch.
pub fn train(
    plan: &mut Plan,
    head: &str,
    data: &Dataset,
    cfg: &LoopConfig,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<f64, String> {
    if data.is_empty() || cfg.batch == 0 || cfg.epochs == 0 {
        return Err("training needs examples, a positive batch size and epochs".into());
    }
    for (n, st) in &plan.states {
        let h = plan
            .params
            .get(n)
            .ok_or_else(|| format!("no parameter {n} to train"))?;
        if let State::Dense { m, .. } = st
            && m.len() != h.numel()
        {
            return Err(format!("optimizer state of {n} does not match its size"));
        }
    }
    let device = Device::flex().autodiff();
    // Frozen tensors are uploaded once; each step replaces the trained ones in the same map.
    let mut t: BTreeMap<String, Tensor<2>> = plan
        .params
        .iter()
        .filter(|(n, _)| !plan.states.contains_key(*n))
        .map(|(n, h)| (n.clone(), h.tensor(&device)))
        .collect();
    let ce = CrossEntropyLossConfig::new().init(&device);
    let steps_per_epoch = data.len().div_ceil(cfg.batch);
    let total = steps_per_epoch * cfg.epochs;
    let mut step = 0usize;
    let mut last_loss = 0.0;
    for epoch in 0..cfg.epochs {
        let mut order: Vec<usize> = (0..data.len()).collect();
        Rng::keyed(seed, "finetune-order", epoch as u64).shuffle(&mut order);
        let mut loss_sum = 0.0;
        for ids in order.chunks(cfg.batch) {
            for n in plan.states.keys() {
                t.insert(n.clone(), plan.params[n].tensor(&device).require_grad());
            }
            let (x, y) = batch(data, ids, &device);
            let view = View {
                t: &t,
                lora_scale: plan.lora_scale,
                divergence: plan.divergence,
            };
            let (logits, divs) = view.logits(head, x)?;
            let mut loss = ce.forward(logits, y);
            if plan.divergence_weight != 0.0 && !divs.is_empty() {
                let k = divs.len() as f32;
                let d = divs.into_iter().reduce(|a, b| a + b).expect("non-empty");
                loss = loss + d.mul_scalar(plan.divergence_weight / k);
            }
            loss_sum += loss.clone().into_scalar::<f32>() as f64;
            let grads = loss.backward();
            step += 1;
            for (n, st) in plan.states.iter_mut() {
                let g = t[n]
                    .grad(&grads)
                    .ok_or_else(|| format!("{n} received no gradient"))?;
                let g = to_host(g)?;
                let w = plan.params.get_mut(n).expect("checked above");
                cfg.adam.step(st, step as u64, &mut w.data, &g);
            }
            if let Some((every, f)) = plan.refresh.as_mut()
                && *every > 0
                && step.is_multiple_of(*every)
                && step < total
            {
                f(&plan.params, &mut plan.states)?;
            }
            progress(step, total);
        }
        last_loss = loss_sum / steps_per_epoch as f64;
    }
    Ok(last_loss)
}

/// Accuracy (percent) of the network `params` through the head `head` on `data`.
pub fn accuracy(
    params: &Params,
    lora_scale: f32,
    head: &str,
    data: &Dataset,
) -> Result<f64, String> {
    if data.is_empty() {
        return Err(format!("{} has no examples", data.name));
    }
    let device = Device::flex();
    let t: BTreeMap<String, Tensor<2>> = params
        .iter()
        .map(|(n, h)| (n.clone(), h.tensor(&device)))
        .collect();
    let view = View {
        t: &t,
        lora_scale,
        divergence: Divergence::Mse,
    };
    let ids: Vec<usize> = (0..data.len()).collect();
    let mut logits = Vec::new();
    let mut classes = 0;
    for chunk in ids.chunks(1000) {
        let (x, _) = batch(data, chunk, &device);
        let (l, _) = view.logits(head, x)?;
        classes = l.dims()[1];
        logits.extend(to_host(l)?);
    }
    masked_accuracy(&logits, classes, &data.y, &ClassMask::all(classes))
        .map_err(|e| format!("{head} on {}: {e}", data.name))
}
