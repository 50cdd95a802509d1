//! LoRA (Hu et al., arXiv 2106.09685) as a strategy of the one trainer, with O-LoRA's
//! orthogonal subspaces per task as an option (Wang et al., arXiv 2310.14152).
//! Card: shared/methods/selective_finetuning.md, "LoRA (baseline)".
//!
//! Each targeted weight W (a body weight seen as `rows × cols`, `rows = shape[0]`) is
//! reparametrized as W = W₀ + (α/r)·A·B with W₀ frozen, A (`rows × r`) Kaiming-uniform and B
//! (`r × cols`) zero, so training starts from the same function. The network always holds
//! the materialized W (it is the merged adapter: exporting needs no merge step), and the
//! trainer's gradient G of W gives the factors' exact gradients, ∂A = (α/r)·G·Bᵀ and
//! ∂B = (α/r)·Aᵀ·G; A and B are updated with the run's Adam settings (the one
//! [`crate::optim::AdamStep`]). Every other parameter stays as it is, except the output layer
//! when `train-head`. From task `from-task` on.
//!
//! `orthogonal = true` (O-LoRA): at each later task the previous adapter is folded into W₀
//! and kept, a new (A, B) starts, and λ·Σ_old ‖A_oldᵀ·A‖² pushes the new subspace away from
//! the old ones (its gradient 2λ·Σ_old A_old·A_oldᵀ·A is added to ∂A; the term is not part of
//! the loss the trainer reports).

use super::parts::body::{BodyWeight, body_weights, is_head, keep_grads, values_of, write_back};
use super::parts::penalty::take;
use super::{Ctx, Setup, State, Strategy, check_from_task, no_effect, parse_params};
use crate::model::Net;
use crate::model::params::grad_flat;
use crate::optim::OptimKind;
use crate::{Result, err};
use burn::optim::GradientsParams;
use burn::prelude::*;
use engram_weights::rng::Rng;
use std::collections::BTreeMap;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Rank r (card: 8).
    #[serde(default = "default_r")]
    pub r: usize,
    /// α; the update is scaled by α/r (card: 16).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Weights to adapt, by name; empty: every body weight.
    #[serde(default)]
    pub targets: Vec<String>,
    /// O-LoRA: a new adapter per task, orthogonal to the earlier ones.
    #[serde(default)]
    pub orthogonal: bool,
    /// λ of the orthogonality term (O-LoRA: 0.5).
    #[serde(default = "default_orth")]
    pub orth_lambda: f64,
    #[serde(default)]
    pub from_task: usize,
    #[serde(default = "yes")]
    pub train_head: bool,
}

fn default_r() -> usize {
    8
}
fn default_alpha() -> f64 {
    16.0
}
fn default_orth() -> f64 {
    0.5
}
fn yes() -> bool {
    true
}

/// One adapted weight.
struct Adapter {
    name: String,
    shape: Vec<usize>,
    rows: usize,
    cols: usize,
    w0: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
    /// Adam moments of A and B, and the step count.
    ma: Vec<f32>,
    va: Vec<f32>,
    mb: Vec<f32>,
    vb: Vec<f32>,
    t: u64,
    /// Earlier tasks' A (O-LoRA).
    old: Vec<Vec<f32>>,
}

pub struct Lora {
    p: Params,
    adapters: Vec<Adapter>,
    /// Task of the current adapters.
    task: Option<usize>,
    pending: Option<BTreeMap<String, Vec<f32>>>,
    /// A write of the factors' weights that failed in `after_step`, reported by `after_task`.
    failed: Option<crate::Error>,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("lora", v)?;
    if p.r == 0 {
        return Err("strategy lora: r must be at least 1".into());
    }
    if !(p.alpha.is_finite() && p.alpha > 0.0) {
        return Err(err!(
            "strategy lora: alpha must be positive, got {}",
            p.alpha
        ));
    }
    if !(p.orth_lambda.is_finite() && p.orth_lambda >= 0.0) {
        return Err("strategy lora: orth-lambda must be >= 0".into());
    }
    let set = !p.orthogonal && p.orth_lambda != default_orth();
    no_effect("lora", "orth-lambda", set, "unless orthogonal = true")?;
    Ok(Box::new(Lora {
        p,
        adapters: Vec::new(),
        task: None,
        pending: None,
        failed: None,
    }))
}

/// `x` (`n × k`) times `y` (`k × m`), row-major, on the CPU backend.
fn mm(x: &[f32], n: usize, k: usize, y: &[f32], m: usize) -> Vec<f32> {
    let d = Device::flex();
    let a = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [n, k]), &d);
    let b = Tensor::<2>::from_data(TensorData::new(y.to_vec(), [k, m]), &d);
    a.matmul(b)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

/// The transpose of `x` (`n × m`).
fn tr(x: &[f32], n: usize, m: usize) -> Vec<f32> {
    let mut t = vec![0.0; x.len()];
    for i in 0..n {
        for j in 0..m {
            t[j * n + i] = x[i * m + j];
        }
    }
    t
}

impl Adapter {
    /// A fresh (A, B) for `task`: A Kaiming-uniform (bound 1/√rows, PyTorch's
    /// `kaiming_uniform_(a=√5)`), B zero.
    fn reset(&mut self, r: usize, seed: u64, task: usize) {
        let bound = 1.0 / (self.rows as f64).sqrt();
        let mut rng = Rng::keyed(seed, &format!("lora.{}", self.name), task as u64);
        self.a = (0..self.rows * r)
            .map(|_| ((rng.uniform_f64() * 2.0 - 1.0) * bound) as f32)
            .collect();
        self.b = vec![0.0; r * self.cols];
        self.ma = vec![0.0; self.a.len()];
        self.va = vec![0.0; self.a.len()];
        self.mb = vec![0.0; self.b.len()];
        self.vb = vec![0.0; self.b.len()];
        self.t = 0;
    }

    /// W₀ + s·A·B.
    fn materialize(&self, r: usize, s: f32) -> Vec<f32> {
        let ab = mm(&self.a, self.rows, r, &self.b, self.cols);
        self.w0.iter().zip(&ab).map(|(w, d)| w + s * d).collect()
    }
}

impl Lora {
    fn scale(&self) -> f32 {
        (self.p.alpha / self.p.r as f64) as f32
    }

    /// The weights that get adapters (`targets`; empty: every body weight), each of rank
    /// at least `r`.
    fn targets(&self, net: &Net) -> Result<Vec<BodyWeight>> {
        let body = body_weights(net);
        let chosen: Vec<BodyWeight> = if self.p.targets.is_empty() {
            body
        } else {
            for t in &self.p.targets {
                if !body.iter().any(|b| &b.info.name == t) {
                    return Err(err!(
                        "strategy lora: no body weight named {t}; available: {}",
                        body.iter()
                            .map(|b| b.info.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            }
            body.into_iter()
                .filter(|b| self.p.targets.contains(&b.info.name))
                .collect()
        };
        let r = self.p.r;
        if let Some(b) = chosen.iter().find(|b| r > b.rows.min(b.cols)) {
            return Err(err!(
                "strategy lora: r = {r} exceeds the rank of {} ({} × {})",
                b.info.name,
                b.rows,
                b.cols
            ));
        }
        Ok(chosen)
    }

    fn start(&mut self, cx: &Ctx, net: &Net) -> Result<()> {
        let values = crate::model::params::named_values(net);
        let chosen = self.targets(net)?;
        let r = self.p.r;
        self.adapters = chosen
            .into_iter()
            .map(|b| {
                let mut a = Adapter {
                    w0: values[&b.info.name].clone(),
                    name: b.info.name,
                    shape: b.info.shape,
                    rows: b.rows,
                    cols: b.cols,
                    a: Vec::new(),
                    b: Vec::new(),
                    ma: Vec::new(),
                    va: Vec::new(),
                    mb: Vec::new(),
                    vb: Vec::new(),
                    t: 0,
                    old: Vec::new(),
                };
                a.reset(r, cx.seed, cx.task);
                a
            })
            .collect();
        Ok(())
    }

    /// Values the adapters train.
    pub fn adapter_values(&self) -> usize {
        self.adapters.iter().map(|a| a.a.len() + a.b.len()).sum()
    }
}

impl Strategy for Lora {
    fn name(&self) -> &'static str {
        "lora"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn check(&self, s: &Setup) -> Result<()> {
        check_from_task("lora", self.p.from_task, s)?;
        if s.optim.kind == OptimKind::Sgd {
            return Err("strategy lora trains its factors with Adam: set the run's optimizer to adam or adamw".into());
        }
        self.targets(s.net).map(drop)
    }

    fn before_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        if cx.task < self.p.from_task {
            return Ok(net);
        }
        let (r, s) = (self.p.r, self.scale());
        if self.adapters.is_empty() {
            self.start(cx, &net)?;
        } else if self.task != Some(cx.task) {
            for a in &mut self.adapters {
                if self.p.orthogonal {
                    // Fold the finished adapter into W₀, keep its subspace, start a new one.
                    a.w0 = a.materialize(r, s);
                    a.old.push(a.a.clone());
                    a.reset(r, cx.seed, cx.task);
                } else {
                    // The same adapter goes on; its optimizer state starts afresh, like the
                    // run's.
                    a.ma.fill(0.0);
                    a.va.fill(0.0);
                    a.mb.fill(0.0);
                    a.vb.fill(0.0);
                    a.t = 0;
                }
            }
        }
        self.task = Some(cx.task);
        Ok(net)
    }

    fn after_backward(&mut self, cx: &Ctx, net: &Net, grads: &mut GradientsParams) {
        if cx.task < self.p.from_task {
            return;
        }
        let (r, s) = (self.p.r, self.scale());
        let infos = crate::model::params::param_infos(net);
        let mut pending = BTreeMap::new();
        for ad in &mut self.adapters {
            let Some(g) = infos
                .iter()
                .find(|i| i.name == ad.name)
                .and_then(|i| grad_flat(grads, i))
                .and_then(|t| t.into_data().convert::<f32>().try_into_vec::<f32>().ok())
            else {
                continue;
            };
            let (n, m) = (ad.rows, ad.cols);
            let mut ga: Vec<f32> = mm(&g, n, m, &tr(&ad.b, r, m), r)
                .into_iter()
                .map(|v| v * s)
                .collect();
            let gb: Vec<f32> = mm(&tr(&ad.a, n, r), r, n, &g, m)
                .into_iter()
                .map(|v| v * s)
                .collect();
            let lam = self.p.orth_lambda as f32;
            for old in &ad.old {
                // 2λ·A_old·(A_oldᵀ·A)
                let o = mm(&tr(old, n, r), r, n, &ad.a, r);
                let d = mm(old, n, r, &o, r);
                for (x, y) in ga.iter_mut().zip(&d) {
                    *x += 2.0 * lam * y;
                }
            }
            ad.t += 1;
            let k = cx.optim.adam_step(cx.lr, ad.t);
            for (((w, &g), m), v) in ad.a.iter_mut().zip(&ga).zip(&mut ad.ma).zip(&mut ad.va) {
                k.apply(w, g, m, v);
            }
            for (((w, &g), m), v) in ad.b.iter_mut().zip(&gb).zip(&mut ad.mb).zip(&mut ad.vb) {
                k.apply(w, g, m, v);
            }
            pending.insert(ad.name.clone(), ad.materialize(r, s));
        }
        let head = self.p.train_head;
        keep_grads(net, grads, |n| head && is_head(net, n));
        self.pending = Some(pending);
    }

    fn after_step(&mut self, _cx: &Ctx, net: Net) -> Net {
        write_back(net, self.pending.take(), &mut self.failed)
    }

    fn after_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        match self.failed.take() {
            Some(e) => Err(err!("strategy lora, task {}: {e}", cx.task)),
            None => Ok(net),
        }
    }

    fn state_bytes(&self) -> u64 {
        // Factors, their two moments, the frozen W₀ and the earlier subspaces.
        self.adapters
            .iter()
            .map(|a| {
                4 * (3 * (a.a.len() + a.b.len())
                    + a.w0.len()
                    + a.old.iter().map(Vec::len).sum::<usize>()) as u64
            })
            .sum()
    }

    fn optimizer_bytes(&self) -> u64 {
        8 * self.adapter_values() as u64
    }

    fn trainable(&self, net: &Net) -> Option<usize> {
        if self.adapters.is_empty() {
            return None;
        }
        let head = values_of(net, |n| self.p.train_head && is_head(net, n));
        Some(self.adapter_values() + head)
    }

    fn state(&self) -> State {
        let mut tensors = Vec::new();
        for a in &self.adapters {
            tensors.push((format!("lora.w0.{}", a.name), a.shape.clone(), a.w0.clone()));
            tensors.push((
                format!("lora.a.{}", a.name),
                vec![a.rows, self.p.r],
                a.a.clone(),
            ));
            tensors.push((
                format!("lora.b.{}", a.name),
                vec![self.p.r, a.cols],
                a.b.clone(),
            ));
            for (k, o) in a.old.iter().enumerate() {
                tensors.push((
                    format!("lora.old{k}.{}", a.name),
                    vec![a.rows, self.p.r],
                    o.clone(),
                ));
            }
        }
        State {
            tensors,
            json: serde_json::json!({
                "task": self.task,
                "adapters": self.adapters.iter().map(|a| serde_json::json!({
                    "name": a.name, "shape": a.shape, "rows": a.rows, "cols": a.cols, "old": a.old.len(),
                })).collect::<Vec<_>>(),
            }),
        }
    }

    fn load_state(&mut self, st: State) -> Result<()> {
        let Some(list) = st.json.get("adapters").and_then(|v| v.as_array()) else {
            return Ok(());
        };
        let r = self.p.r;
        let mut adapters = Vec::new();
        for e in list {
            let field = |k: &str| {
                e.get(k)
                    .cloned()
                    .ok_or_else(|| err!("strategy lora: state lacks {k}"))
            };
            let name: String = serde_json::from_value(field("name")?).map_err(|e| err!("{e}"))?;
            let shape: Vec<usize> =
                serde_json::from_value(field("shape")?).map_err(|e| err!("{e}"))?;
            let rows: usize = serde_json::from_value(field("rows")?).map_err(|e| err!("{e}"))?;
            let cols: usize = serde_json::from_value(field("cols")?).map_err(|e| err!("{e}"))?;
            let old: usize = serde_json::from_value(field("old")?).map_err(|e| err!("{e}"))?;
            let a = take(&st, &format!("lora.a.{name}"), Some(rows * r))?;
            let b = take(&st, &format!("lora.b.{name}"), Some(r * cols))?;
            let w0 = take(&st, &format!("lora.w0.{name}"), Some(rows * cols))?;
            let old = (0..old)
                .map(|k| take(&st, &format!("lora.old{k}.{name}"), Some(rows * r)))
                .collect::<Result<Vec<_>, _>>()?;
            adapters.push(Adapter {
                ma: vec![0.0; a.len()],
                va: vec![0.0; a.len()],
                mb: vec![0.0; b.len()],
                vb: vec![0.0; b.len()],
                t: 0,
                name,
                shape,
                rows,
                cols,
                w0,
                a,
                b,
                old,
            });
        }
        self.adapters = adapters;
        self.task = st
            .json
            .get("task")
            .and_then(|t| t.as_u64())
            .map(|t| t as usize);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_gradients_match_a_finite_difference() {
        // L = Σ G ⊙ W with W = W₀ + s·A·B: ∂L/∂A = s·G·Bᵀ, ∂L/∂B = s·Aᵀ·G.
        let (n, m, r, s) = (3, 4, 2, 0.5f32);
        let g: Vec<f32> = (0..n * m).map(|i| (i as f32 * 0.37).sin()).collect();
        let a: Vec<f32> = (0..n * r).map(|i| (i as f32 * 0.11).cos()).collect();
        let b: Vec<f32> = (0..r * m).map(|i| (i as f32 * 0.23).sin()).collect();
        let loss = |a: &[f32], b: &[f32]| -> f32 {
            let ab = mm(a, n, r, b, m);
            ab.iter().zip(&g).map(|(x, y)| s * x * y).sum()
        };
        let ga: Vec<f32> = mm(&g, n, m, &tr(&b, r, m), r)
            .iter()
            .map(|v| v * s)
            .collect();
        let gb: Vec<f32> = mm(&tr(&a, n, r), r, n, &g, m)
            .iter()
            .map(|v| v * s)
            .collect();
        let h = 1e-2;
        for i in 0..a.len() {
            let (mut p, mut q) = (a.clone(), a.clone());
            p[i] += h;
            q[i] -= h;
            let fd = (loss(&p, &b) - loss(&q, &b)) / (2.0 * h);
            assert!((fd - ga[i]).abs() < 1e-3, "A[{i}]: {fd} vs {}", ga[i]);
        }
        for i in 0..b.len() {
            let (mut p, mut q) = (b.clone(), b.clone());
            p[i] += h;
            q[i] -= h;
            let fd = (loss(&a, &p) - loss(&a, &q)) / (2.0 * h);
            assert!((fd - gb[i]).abs() < 1e-3, "B[{i}]: {fd} vs {}", gb[i]);
        }
    }
}
