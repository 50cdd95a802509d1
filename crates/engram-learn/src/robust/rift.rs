//! RiFT: module robust criticality (MRC) of each layer, and the interpolation between the
//! adversarially trained model and its fine-tuned copy.
//! Paper: Improving Generalization of Adversarial Training via Robust Critical Fine-Tuning
//! (arXiv 2308.02533); cards: shared/methods/robustness_safety.md ("RiFT") and patching.md
//! ("RiFT interpolation").
//!
//! MRC(W) = max over ‖Δ‖_F ≤ ε·‖W‖_F of L_adv(θ + Δ) − L_adv(θ), estimated as the reference
//! does: on a fixed adversarial set (built once, by the caller, from a held-out training split,
//! never the test set), every other parameter frozen, `epochs` epochs of gradient *ascent* on
//! the mean cross-entropy with plain SGD at `lr` (1) over minibatches; after each epoch Δ is
//! rescaled onto the ball if it left it, and the loss over the whole set is measured; MRC is
//! the largest of those losses minus the original. The module with the lowest MRC is the one
//! RiFT fine-tunes (the `rift` strategy); [`interpolate`] then gives θ(α) = α·θ_FT +
//! (1 − α)·θ_AT over every parameter.
//!
//! Modules are the weights of the convolutions and linear layers (every parameter of two or
//! more dimensions, the output layer included), perturbed without their biases as the
//! reference perturbs `module.weight`.

use crate::model::Net;
use crate::model::params::{ParamInfo, grad_flat, named_values, param_infos, set_params};
use crate::robust::attack::per_example_ce;
use crate::{Result, err};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use std::collections::BTreeMap;

/// MRC's settings (the reference's: 10 epochs, SGD lr 1, ε = 0.1).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MrcConfig {
    pub epochs: usize,
    pub lr: f64,
    /// ε: the perturbation's bound relative to ‖W‖_F.
    pub bound: f64,
    pub batch: usize,
}

impl Default for MrcConfig {
    fn default() -> Self {
        MrcConfig {
            epochs: 10,
            lr: 1.0,
            bound: 0.1,
            batch: 128,
        }
    }
}

impl MrcConfig {
    pub fn validate(&self) -> Result<()> {
        if !(1..=1000).contains(&self.epochs) || self.batch == 0 {
            return Err(err!(
                "mrc: epochs = {} must be in [1, 1000] and batch = {} at least 1",
                self.epochs,
                self.batch
            ));
        }
        for (k, v) in [("lr", self.lr), ("bound", self.bound)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(err!("mrc: {k} = {v} must be a positive number"));
            }
        }
        Ok(())
    }
}

/// One module's criticality.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mrc {
    /// The weight's parameter name.
    pub module: String,
    /// Mean cross-entropy on the adversarial set, unperturbed.
    pub loss: f64,
    /// The loss after each epoch (Δ on the ball).
    pub losses: Vec<f64>,
    /// max(losses) − loss (≥ 0: an ascent that never raised the loss gives 0).
    pub mrc: f64,
    /// ‖Δ‖_F / ‖W‖_F at the maximum.
    pub relative_norm: f64,
    /// The perturbation Δ at the maximum (empty when no epoch raised the loss).
    #[serde(skip)]
    pub delta: Vec<f32>,
}

/// The modules MRC ranks: parameters of two or more dimensions, in visiting order.
pub fn modules(net: &Net) -> Vec<ParamInfo> {
    param_infos(net)
        .into_iter()
        .filter(|p| p.shape.len() >= 2 && !p.name.starts_with("fb."))
        .collect()
}

fn check_set(x: &[f32], y: &[u32]) -> Result<usize> {
    let n = y.len();
    if n == 0 || !x.len().is_multiple_of(n) {
        return Err(err!(
            "mrc: {} values are not {n} examples of equal width (an empty set?)",
            x.len()
        ));
    }
    Ok(x.len() / n)
}

/// Mean cross-entropy of `net` (evaluation mode) on (`x`, `y`), in f64 over batches.
pub fn mean_loss(net: &Net, x: &[f32], y: &[u32], batch: usize) -> Result<f64> {
    let dim = check_set(x, y)?;
    let n = y.len();
    let valid = net
        .detached()
        .with_bn_mode(crate::model::batchnorm::BnMode::Running)
        .valid();
    let device = Device::flex();
    let mut total = 0f64;
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(n);
        let xt = Tensor::<2>::from_data(
            TensorData::new(x[start * dim..end * dim].to_vec(), [end - start, dim]),
            &device,
        );
        let l = per_example_ce(valid.forward(xt), &y[start..end], None).sum();
        total += l.into_scalar::<f32>() as f64;
    }
    Ok(total / n as f64)
}

fn frob(v: &[f32]) -> f64 {
    v.iter()
        .map(|&a| (a as f64) * (a as f64))
        .sum::<f64>()
        .sqrt()
}

/// The MRC of the weight `module` of `net` (an autodiff network; left unchanged) on the
/// adversarial set (`x`, `y`).
pub fn mrc(net: &Net, x: &[f32], y: &[u32], module: &str, cfg: &MrcConfig) -> Result<Mrc> {
    cfg.validate()?;
    let dim = check_set(x, y)?;
    let info = modules(net)
        .into_iter()
        .find(|p| p.name == module)
        .ok_or_else(|| {
            err!(
                "mrc: the network has no weight named {module}; its modules: {}",
                modules(net)
                    .iter()
                    .map(|p| p.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })?;
    let w0 = named_values(net)
        .remove(module)
        .ok_or_else(|| err!("mrc: {module} has no values"))?;
    // Every parameter but this one out of the tape; evaluation mode.
    let base = net
        .detached()
        .with_bn_mode(crate::model::batchnorm::BnMode::Running)
        .no_grad();
    let loss0 = mean_loss(&base, x, y, cfg.batch)?;
    let limit = cfg.bound * frob(&w0);
    let device = net
        .devices()
        .first()
        .cloned()
        .unwrap_or_else(|| Device::flex().autodiff());
    let n = y.len();
    let mut w = w0.clone();
    let mut losses = Vec::with_capacity(cfg.epochs);
    let (mut best, mut best_delta, mut best_rel) = (loss0, Vec::new(), 0.0);
    for _ in 0..cfg.epochs {
        for start in (0..n).step_by(cfg.batch) {
            let end = (start + cfg.batch).min(n);
            let one = BTreeMap::from([(module.to_string(), w.clone())]);
            let m = set_params(base.clone(), &one)?;
            // Only this weight requires a gradient.
            let m = m.map(&mut Unfreeze { id: info.id });
            let xt = Tensor::<2>::from_data(
                TensorData::new(x[start * dim..end * dim].to_vec(), [end - start, dim]),
                &device,
            );
            let loss = per_example_ce(m.forward(xt), &y[start..end], None).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            let g = grad_flat(&grads, &info)
                .ok_or_else(|| err!("mrc: no gradient reached {module}"))?
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .map_err(|e| err!("mrc: {module}: {e:?}"))?;
            for (wv, gv) in w.iter_mut().zip(&g) {
                *wv += (cfg.lr as f32) * gv;
            }
        }
        let mut delta: Vec<f32> = w.iter().zip(&w0).map(|(a, b)| a - b).collect();
        let dn = frob(&delta);
        if dn > limit && dn > 0.0 {
            let s = (limit / dn) as f32;
            delta.iter_mut().for_each(|d| *d *= s);
            w = w0.iter().zip(&delta).map(|(a, d)| a + d).collect();
        }
        let one = BTreeMap::from([(module.to_string(), w.clone())]);
        let l = mean_loss(&set_params(base.clone(), &one)?, x, y, cfg.batch)?;
        losses.push(l);
        if l > best {
            best = l;
            best_rel = frob(&delta) / frob(&w0).max(f64::MIN_POSITIVE);
            best_delta = delta;
        }
    }
    Ok(Mrc {
        module: module.to_string(),
        loss: loss0,
        losses,
        mrc: best - loss0,
        relative_norm: best_rel,
        delta: best_delta,
    })
}

/// Sets `require_grad` on one parameter (by id).
struct Unfreeze {
    id: burn::module::ParamId,
}

impl burn::module::ModuleMapper for Unfreeze {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<D>>,
    ) -> burn::module::Param<Tensor<D>> {
        if param.id == self.id {
            let (id, t, mapper) = param.consume();
            burn::module::Param::from_mapped_value(id, t.require_grad(), mapper)
        } else {
            param
        }
    }
}

/// The MRC of every module, in visiting order.
pub fn mrc_all(net: &Net, x: &[f32], y: &[u32], cfg: &MrcConfig) -> Result<Vec<Mrc>> {
    modules(net)
        .iter()
        .map(|p| mrc(net, x, y, &p.name, cfg))
        .collect()
}

/// θ(α) = α·θ_FT + (1 − α)·θ_AT for every parameter (names and sizes must agree). At α = 0
/// and 1 the endpoints come back exactly.
pub fn interpolate(
    at: &BTreeMap<String, Vec<f32>>,
    ft: &BTreeMap<String, Vec<f32>>,
    alpha: f32,
) -> Result<BTreeMap<String, Vec<f32>>> {
    if !(alpha.is_finite()) {
        return Err(err!("interpolation: α = {alpha} is not a finite number"));
    }
    if at.len() != ft.len() {
        return Err(err!(
            "interpolation: {} parameters against {}",
            at.len(),
            ft.len()
        ));
    }
    let mut pairs = Vec::with_capacity(at.len());
    for (k, a) in at {
        let b = ft
            .get(k)
            .ok_or_else(|| err!("interpolation: the fine-tuned model has no {k}"))?;
        if a.len() != b.len() {
            return Err(err!(
                "interpolation: {k} has {} values against {}",
                a.len(),
                b.len()
            ));
        }
        pairs.push((k, a, b));
    }
    // The endpoints as given (also non-finite values), once names and sizes agree.
    if alpha == 0.0 {
        return Ok(at.clone());
    }
    if alpha == 1.0 {
        return Ok(ft.clone());
    }
    Ok(pairs
        .into_iter()
        .map(|(k, a, b)| {
            let v = a
                .iter()
                .zip(b)
                .map(|(&a, &b)| alpha * b + (1.0 - alpha) * a)
                .collect();
            (k.clone(), v)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use burn::nn::loss::CrossEntropyLossConfig;
    use engram_weights::rng::Rng;

    fn setup() -> (Net, Vec<f32>, Vec<u32>) {
        let d = Device::flex();
        let _g = crate::backend::seeded(&d, 5);
        let net = ModelConfig::Cnn {
            channels: [2, 3],
            hidden: 8,
        }
        .build(144, Some((1, 12, 12)), 3, &d.autodiff())
        .unwrap();
        let mut r = Rng::new(2);
        let x: Vec<f32> = (0..30 * 144).map(|_| r.uniform()).collect();
        let y: Vec<u32> = (0..30).map(|i| (i % 3) as u32).collect();
        (net, x, y)
    }

    /// Burn's own mean cross-entropy: a second path to the loss.
    fn burn_loss(net: &Net, x: &[f32], y: &[u32]) -> f64 {
        let d = Device::flex();
        let v = net.valid();
        let n = y.len();
        let logits = v.forward(Tensor::<2>::from_data(
            TensorData::new(x.to_vec(), [n, x.len() / n]),
            &d,
        ));
        let t = Tensor::<1, Int>::from_data(
            TensorData::new(y.iter().map(|&a| a as i64).collect::<Vec<_>>(), [n]),
            &d,
        );
        CrossEntropyLossConfig::new()
            .init(&d)
            .forward(logits, t)
            .into_scalar::<f32>() as f64
    }

    /// MRC equals the loss increase under the projected perturbation it reports, the
    /// perturbation stays on the ball, and the network is left unchanged.
    #[test]
    fn mrc_is_the_loss_increase_of_its_perturbation() {
        let (net, x, y) = setup();
        let before = named_values(&net);
        let cfg = MrcConfig {
            epochs: 4,
            batch: 8,
            ..Default::default()
        };
        let all = mrc_all(&net, &x, &y, &cfg).unwrap();
        assert_eq!(all.len(), 4, "conv1, conv2, fc1, fc2");
        assert_eq!(named_values(&net), before);
        let l0 = burn_loss(&net, &x, &y);
        for m in &all {
            assert!(
                (m.loss - l0).abs() < 1e-4,
                "{}: {} vs {l0}",
                m.module,
                m.loss
            );
            assert!(m.mrc > 0.0, "{}: ascent raises the loss", m.module);
            assert!(m.relative_norm <= 0.1 + 1e-6, "{}", m.module);
            let mut w = before.clone();
            let wm = w.get_mut(&m.module).unwrap();
            wm.iter_mut().zip(&m.delta).for_each(|(a, d)| *a += d);
            let moved = crate::model::params::load_params(net.clone(), &w).unwrap();
            let l = burn_loss(&moved, &x, &y);
            assert!(
                (l - l0 - m.mrc).abs() < 1e-4,
                "{}: loss rise {} against MRC {}",
                m.module,
                l - l0,
                m.mrc
            );
        }
        assert!(mrc(&net, &x, &y, "nope.weight", &cfg).is_err());
    }

    #[test]
    fn interpolation_ends_are_exact() {
        let mut r = Rng::new(3);
        let a: BTreeMap<String, Vec<f32>> = [("w".into(), (0..50).map(|_| r.normal()).collect())]
            .into_iter()
            .collect();
        let b: BTreeMap<String, Vec<f32>> = [("w".into(), (0..50).map(|_| r.normal()).collect())]
            .into_iter()
            .collect();
        assert_eq!(interpolate(&a, &b, 0.0).unwrap(), a);
        assert_eq!(interpolate(&a, &b, 1.0).unwrap(), b);
        let mid = interpolate(&a, &b, 0.5).unwrap();
        assert!((mid["w"][7] - (a["w"][7] + b["w"][7]) / 2.0).abs() < 1e-6);
        let short: BTreeMap<String, Vec<f32>> = [("w".into(), vec![0.0])].into_iter().collect();
        assert!(interpolate(&a, &short, 0.5).is_err());
        assert!(interpolate(&a, &b, f32::NAN).is_err());
    }
}
