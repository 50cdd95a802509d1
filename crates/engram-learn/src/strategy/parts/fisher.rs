//! The diagonal Fisher information of a network on one task's training examples, by the
//! estimators of shared/methods/regularization.md (EWC; used by `ewc` and `online-ewc`).
//!
//! The Fisher is estimated on `samples` training examples of the task (a seeded subset), in
//! the scenario's loss (Task-IL: the other tasks' logits masked):
//! - `exact`: (1/N)·Σ_n Σ_y p(y|x_n)·(∂ log p(y|x_n))², every allowed class y;
//! - `sampled`: (1/N)·Σ_n (∂ log p(ŷ_n|x_n))², ŷ_n ~ p(·|x_n) (seeded);
//! - `empirical`: the same with the true label;
//! - `weighted-empirical`: the empirical squared gradient × p(y_n|x_n) (Mammoth `ewc_on`);
//! - `batched`: (∂ of the mean loss of a minibatch of `fisher-batch` examples)², averaged
//!   over the minibatches (Avalanche; needs λ about batch-size times larger).
//!
//! Per-example gradients (all estimators but `batched`) are computed in one batched pass
//! per chunk of `fisher-batch` rows **for the MLP** (`Mlp::weighted_sq_grads`, beside its forward pass): zero "probe" leaves are added to every
//! pre-activation, one backward pass of the summed loss gives each row's output gradient δ,
//! and Σ_rows w·(a²)ᵀ(δ²) is the squared per-example weight gradient (a: the layer's input),
//! Σ_rows w·δ² the bias one. `exact` stacks each example once per allowed class (rows
//! (n, y) weighted by p(y|x_n)), so it is one pass over N·C rows.
//! **Fallback:** for the residual MLP, the CNN and the ViT, and an MLP with a feedback
//! input (only built for IDER), the per-example gradients
//! are computed one example at a time (one backward pass per row: N, or N·C for `exact`),
//! which is exact but slow; the `batched` estimator is batched for every model. Nothing
//! falls back silently: this is the documented behaviour of the `fisher` parameter.

use crate::model::Net;
use crate::model::params::{ParamInfo, flat_params, grad_flat};
use crate::scenario::{EvalMode, Part, Scenario};
use crate::{Result, err};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use engram_weights::rng::Rng;

/// The Fisher estimators of the card.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Estimator {
    Exact,
    Sampled,
    Empirical,
    WeightedEmpirical,
    Batched,
}

/// How per-example squared gradients are computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerExample {
    /// Batched probe trick where the model allows it (MLP), else one example at a time.
    Auto,
    /// One example at a time (the reference; used by the fallback and the tests).
    Loop,
}

/// Logit offsets: 0 for the classes the task's loss scores, −1e9 for the others (Task-IL).
fn class_penalty(s: &Scenario, task: usize) -> Vec<f32> {
    let c = s.num_outputs;
    if s.eval == EvalMode::TaskIl {
        let mut p = vec![-1e9f32; c];
        for &k in &s.tasks[task].classes {
            if (k as usize) < c {
                p[k as usize] = 0.0;
            }
        }
        p
    } else {
        vec![0.0; c]
    }
}

fn to_host<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| err!("tensor to host: {e:?}"))
}

fn masked_log_softmax(logits: Tensor<2>, pen: &[f32], device: &Device) -> Tensor<2> {
    let p = Tensor::<1>::from_data(TensorData::new(pen.to_vec(), [pen.len()]), device);
    log_softmax(logits + p.unsqueeze_dim(0), 1)
}

/// The diagonal Fisher of `net` on task `task`'s training data, per parameter (visiting
/// order), with the given estimator.
#[allow(clippy::too_many_arguments)]
pub fn fisher(
    net: &Net,
    s: &Scenario,
    task: usize,
    device: &Device,
    seed: u64,
    est: Estimator,
    samples: usize,
    chunk: usize,
    how: PerExample,
) -> Result<Vec<(ParamInfo, Vec<f32>)>> {
    let infos: Vec<ParamInfo> = flat_params(net).into_iter().map(|(i, _)| i).collect();
    let mut acc: Vec<Vec<f64>> = infos.iter().map(|i| vec![0.0; i.numel()]).collect();
    let train = &s.tasks[task].train;
    if train.is_empty() {
        return Err(err!("fisher: task {task} has no training examples"));
    }
    let mut rng = Rng::keyed(seed, "ewc-fisher", task as u64);
    let idx = rng.choose_sorted(train, samples);
    let ids: Vec<(usize, usize)> = idx.iter().map(|&i| (task, i)).collect();
    let (xh, yh) = s.gather(Part::Train, &ids);
    let (n, dim, c) = (ids.len(), s.train.dim, s.num_outputs);
    let pen = class_penalty(s, task);
    let xs = |rows: &[usize]| -> Tensor<2> {
        let mut v = Vec::with_capacity(rows.len() * dim);
        for &r in rows {
            v.extend_from_slice(&xh[r * dim..(r + 1) * dim]);
        }
        Tensor::<2>::from_data(TensorData::new(v, [rows.len(), dim]), device)
    };
    let onehot = |ys: &[usize]| -> Tensor<2> {
        let mut v = vec![0f32; ys.len() * c];
        for (r, &y) in ys.iter().enumerate() {
            v[r * c + y] = 1.0;
        }
        Tensor::<2>::from_data(TensorData::new(v, [ys.len(), c]), device)
    };
    if est == Estimator::Batched {
        let all: Vec<usize> = (0..n).collect();
        let mut batches = 0usize;
        for b in all.chunks(chunk) {
            let ys: Vec<usize> = b.iter().map(|&r| yh[r] as usize).collect();
            let lp = masked_log_softmax(net.forward(xs(b)), &pen, device);
            let loss = (lp * onehot(&ys)).sum().neg().div_scalar(b.len() as f32);
            let g = GradientsParams::from_grads(loss.backward(), net);
            for (k, info) in infos.iter().enumerate() {
                if let Some(t) = grad_flat(&g, info) {
                    for (a, v) in acc[k].iter_mut().zip(to_host(t)?) {
                        *a += (v as f64) * (v as f64);
                    }
                }
            }
            batches += 1;
        }
        return Ok(finish(infos, acc, batches.max(1)));
    }
    // Rows (example, label, weight).
    let mut rows: Vec<(usize, usize, f32)> = Vec::new();
    let probs = if est == Estimator::Empirical {
        Vec::new()
    } else {
        let all: Vec<usize> = (0..n).collect();
        let mut p = Vec::with_capacity(n * c);
        for b in all.chunks(chunk) {
            let lp = masked_log_softmax(net.forward(xs(b)).detach(), &pen, device);
            p.extend(to_host(lp.exp())?);
        }
        p
    };
    for r in 0..n {
        let y = yh[r] as usize;
        match est {
            Estimator::Exact => {
                for k in 0..c {
                    if pen[k] == 0.0 {
                        rows.push((r, k, probs[r * c + k]));
                    }
                }
            }
            Estimator::Sampled => {
                let w: Vec<f64> = probs[r * c..(r + 1) * c]
                    .iter()
                    .zip(&pen)
                    .map(|(&p, &m)| if m == 0.0 { p as f64 } else { 0.0 })
                    .collect();
                rows.push((r, rng.weighted(&w), 1.0));
            }
            Estimator::Empirical => rows.push((r, y, 1.0)),
            Estimator::WeightedEmpirical => rows.push((r, y, probs[r * c + y])),
            Estimator::Batched => {}
        }
    }
    match (how, net) {
        // The probe pass mirrors `Mlp::forward` with a linear head; an MLP with IDER's
        // feedback input or a weight-normalised head takes the loop.
        (PerExample::Auto, Net::Mlp(m)) if m.fb.is_none() && !m.norm_head => {
            for b in rows.chunks(chunk) {
                let ex: Vec<usize> = b.iter().map(|r| r.0).collect();
                let ys: Vec<usize> = b.iter().map(|r| r.1).collect();
                let w: Vec<f32> = b.iter().map(|r| r.2).collect();
                let target = onehot(&ys);
                let sq = m.weighted_sq_grads(xs(&ex), &w, |logits| {
                    (masked_log_softmax(logits, &pen, device) * target)
                        .sum()
                        .neg()
                })?;
                for (name, src) in sq {
                    let k = infos
                        .iter()
                        .position(|i| i.name == name)
                        .ok_or_else(|| err!("fisher: no parameter {name}"))?;
                    if src.len() != acc[k].len() {
                        return Err(err!("fisher: size mismatch for {name}"));
                    }
                    for (a, &v) in acc[k].iter_mut().zip(&src) {
                        *a += v as f64;
                    }
                }
            }
        }
        _ => {
            for &(r, y, w) in &rows {
                let lp = masked_log_softmax(net.forward(xs(&[r])), &pen, device);
                let loss = (lp * onehot(&[y])).sum().neg();
                let g = GradientsParams::from_grads(loss.backward(), net);
                for (k, info) in infos.iter().enumerate() {
                    if let Some(t) = grad_flat(&g, info) {
                        for (a, v) in acc[k].iter_mut().zip(to_host(t)?) {
                            *a += (w as f64) * (v as f64) * (v as f64);
                        }
                    }
                }
            }
        }
    }
    Ok(finish(infos, acc, n))
}

fn finish(infos: Vec<ParamInfo>, acc: Vec<Vec<f64>>, n: usize) -> Vec<(ParamInfo, Vec<f32>)> {
    infos
        .into_iter()
        .zip(acc)
        .map(|(i, a)| (i, a.into_iter().map(|v| (v / n as f64) as f32).collect()))
        .collect()
}
