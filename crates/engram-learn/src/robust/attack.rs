//! FGSM and PGD-k attacks (ℓ∞ and ℓ2, random start), batched and deterministic from a seed,
//! and the robust-accuracy evaluation built on them (PGD-k with restarts).
//! Paper: Towards Deep Learning Models Resistant to Adversarial Attacks (arXiv 1706.06083);
//! card: shared/methods/robustness_safety.md, "PGD adversarial training (basics)".
//!
//! One attack on a batch x₀ (values in [0, 1]):
//! 1. δ₀: ℓ∞, U(−ε, ε) per value; ℓ2, a uniform direction scaled by ε·u, u ~ U(0, 1) (engram
//!    choice); zero without random start. x = clip(x₀ + δ₀, 0, 1).
//! 2. K times: g = ∇ₓ Σᵢ CE(f(xᵢ), yᵢ) (each example's gradient is its own); ℓ∞:
//!    δ ← Π_ε(δ + η·sign(g)); ℓ2: δ ← Π_ε(δ + η·g/‖g‖) per example (no move where g = 0);
//!    x = clip(x₀ + δ, 0, 1) after every step.
//!
//! The network is attacked in evaluation mode (BatchNorm on its running statistics, the
//! card's engram choice) with its parameters out of the tape. κᵢ counts the iterations at
//! whose start xᵢ is still classified correctly (GAIRAT's geometry value). FGSM is one step
//! of η = ε without random start.
//!
//! Robust accuracy ([`robust_correct`]): an example counts as robust when it is classified
//! correctly clean, at every iterate of every restart and at each restart's final point, so
//! the attack only strengthens with more steps or restarts (with the same seed, PGD-20's first
//! iterates are PGD-10's). The gradient-masking checks compare those numbers.

use crate::model::Net;
use crate::model::batchnorm::BnMode;
use crate::{Result, err};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use engram_weights::rng::Rng;

/// The threat model's norm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    #[default]
    Linf,
    L2,
}

/// One attack's settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Attack {
    #[serde(default)]
    pub norm: Norm,
    /// Radius ε of the perturbation (in input units; inputs lie in [0, 1]).
    pub epsilon: f32,
    /// Step η.
    pub step: f32,
    /// Iterations K (1 with η = ε and no random start: FGSM).
    pub steps: usize,
    #[serde(default = "yes")]
    pub random_start: bool,
    /// Restarts from fresh random starts (evaluation; training uses one).
    #[serde(default = "one")]
    pub restarts: usize,
}

fn yes() -> bool {
    true
}
fn one() -> usize {
    1
}

/// Most attack iterations and restarts: more is a typo.
pub const MAX_STEPS: usize = 10_000;

impl Attack {
    /// FGSM at radius ε (ℓ∞).
    pub fn fgsm(epsilon: f32) -> Attack {
        Attack {
            norm: Norm::Linf,
            epsilon,
            step: epsilon,
            steps: 1,
            random_start: false,
            restarts: 1,
        }
    }

    /// PGD-`steps` (ℓ∞, random start, one restart).
    pub fn pgd(epsilon: f32, step: f32, steps: usize) -> Attack {
        Attack {
            norm: Norm::Linf,
            epsilon,
            step,
            steps,
            random_start: true,
            restarts: 1,
        }
    }

    pub fn with_restarts(mut self, restarts: usize) -> Attack {
        self.restarts = restarts;
        self
    }

    /// Checks every setting; `what` names the place (`train.adversarial`, an option).
    pub fn validate(&self, what: &str) -> Result<()> {
        for (key, v) in [("epsilon", self.epsilon), ("step", self.step)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(err!("{what}.{key} = {v} must be a positive number"));
            }
        }
        if self.norm == Norm::Linf && self.epsilon > 1.0 {
            return Err(err!(
                "{what}.epsilon = {} covers the whole input range [0, 1]",
                self.epsilon
            ));
        }
        for (key, v) in [("steps", self.steps), ("restarts", self.restarts)] {
            if !(1..=MAX_STEPS).contains(&v) {
                return Err(err!("{what}.{key} = {v} must be in [1, {MAX_STEPS}]"));
            }
        }
        Ok(())
    }
}

/// An attacked batch.
#[derive(Clone, Debug)]
pub struct Perturbed {
    /// x₀ + δ, clipped to [0, 1] (`n` × dim).
    pub x: Vec<f32>,
    /// Iterations at whose start each example was classified correctly.
    pub kappa: Vec<u32>,
    /// Whether each example was classified correctly at every iterate and at the final point.
    pub survived: Vec<bool>,
}

/// The network as attacks see it: evaluation mode, parameters out of the tape (only the
/// input's gradient is computed).
pub fn attack_view(net: &Net) -> Net {
    net.detached().with_bn_mode(BnMode::Running).no_grad()
}

/// Per-example cross-entropy of `logits` (`n` × c), plus an additive logit penalty (−1e9 on
/// masked classes: Task-IL heads), against `y`.
pub fn per_example_ce(logits: Tensor<2>, y: &[u32], penalty: Option<&[f32]>) -> Tensor<1> {
    let [n, c] = logits.dims();
    let device = logits.device();
    let logits = match penalty {
        Some(p) => logits + Tensor::<2>::from_data(TensorData::new(p.to_vec(), [n, c]), &device),
        None => logits,
    };
    let idx = Tensor::<2, Int>::from_data(
        TensorData::new(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), [n, 1]),
        &device,
    );
    log_softmax(logits, 1).gather(1, idx).reshape([n]).neg()
}

/// The index of the largest of `row` plus its penalty (first on ties).
fn argmax(row: &[f32], pen: Option<&[f32]>) -> u32 {
    let mut best = 0;
    let mut bv = f32::NEG_INFINITY;
    for (k, &v) in row.iter().enumerate() {
        let v = v + pen.map_or(0.0, |p| p[k]);
        if v > bv {
            bv = v;
            best = k;
        }
    }
    best as u32
}

use crate::backend::host;

/// Whether each example of `logits` (`n` × c) is classified as its label.
fn correct(logits: &[f32], c: usize, y: &[u32], penalty: Option<&[f32]>) -> Vec<bool> {
    logits
        .chunks(c)
        .zip(y)
        .enumerate()
        .map(|(i, (row, &t))| argmax(row, penalty.map(|p| &p[i * c..(i + 1) * c])) == t)
        .collect()
}

/// One attack of `a` (one start; `a.restarts` is the caller's) on the batch `x` (`n` rows of
/// the network's input width, values in [0, 1]) with labels `y`, against `net` (on an
/// autodiff device; see [`attack_view`], which this applies). `penalty`: an additive logit
/// penalty per example (`n` × c), as the training loss applies it.
pub fn perturb(
    net: &Net,
    x: &[f32],
    y: &[u32],
    penalty: Option<&[f32]>,
    a: &Attack,
    rng: &mut Rng,
) -> Result<Perturbed> {
    let view = attack_view(net);
    perturb_view(&view, x, y, penalty, a, rng)
}

/// The width of the examples of `x` (`n` of them), or an error naming `what`.
fn width(x: &[f32], n: usize, what: &str) -> Result<usize> {
    match x.len().checked_div(n) {
        Some(d) if d > 0 && d * n == x.len() => Ok(d),
        _ => Err(err!(
            "{what}: {} values are not {n} examples of equal width",
            x.len()
        )),
    }
}

fn perturb_view(
    net: &Net,
    x0: &[f32],
    y: &[u32],
    penalty: Option<&[f32]>,
    a: &Attack,
    rng: &mut Rng,
) -> Result<Perturbed> {
    let n = y.len();
    if n == 0 {
        return Ok(Perturbed {
            x: Vec::new(),
            kappa: Vec::new(),
            survived: Vec::new(),
        });
    }
    let dim = width(x0, n, "attack")?;
    if x0.iter().any(|v| !(0.0..=1.0).contains(v)) {
        return Err(err!(
            "attack: inputs must lie in [0, 1] (the attack clips to that range)"
        ));
    }
    let eps = a.epsilon;
    let mut delta = vec![0f32; x0.len()];
    if a.random_start {
        match a.norm {
            Norm::Linf => delta
                .iter_mut()
                .for_each(|d| *d = (2.0 * rng.uniform() - 1.0) * eps),
            Norm::L2 => {
                for row in delta.chunks_mut(dim.max(1)) {
                    row.iter_mut().for_each(|d| *d = rng.normal());
                    let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                    let r = eps * rng.uniform();
                    if norm > 0.0 {
                        row.iter_mut().for_each(|d| *d *= r / norm);
                    }
                }
            }
        }
    }
    let mut x: Vec<f32> = x0
        .iter()
        .zip(&delta)
        .map(|(a, d)| (a + d).clamp(0.0, 1.0))
        .collect();
    // δ is what the clipped start actually moved (the reference steps from the clipped point).
    for ((d, xv), x0v) in delta.iter_mut().zip(&x).zip(x0) {
        *d = xv - x0v;
    }
    let mut kappa = vec![0u32; n];
    let mut survived = vec![true; n];
    let device = match net.devices().first() {
        Some(d) => d.clone(),
        None => Device::flex().autodiff(),
    };
    for _ in 0..a.steps {
        let xt =
            Tensor::<2>::from_data(TensorData::new(x.clone(), [n, dim]), &device).require_grad();
        let logits = net.forward(xt.clone());
        let c = logits.dims()[1];
        let ok = correct(&host(logits.clone()), c, y, penalty);
        for i in 0..n {
            if ok[i] {
                kappa[i] += 1;
            } else {
                survived[i] = false;
            }
        }
        let loss = per_example_ce(logits, y, penalty).sum();
        let grads = loss.backward();
        let g = xt
            .grad(&grads)
            .map(host)
            .filter(|g| g.len() == x.len())
            .ok_or_else(|| err!("attack: no gradient reached the input"))?;
        for (i, ((xr, gr), x0r)) in x
            .chunks_mut(dim.max(1))
            .zip(g.chunks(dim.max(1)))
            .zip(x0.chunks(dim.max(1)))
            .enumerate()
        {
            let dr = &mut delta[i * dim..(i + 1) * dim];
            match a.norm {
                Norm::Linf => {
                    for ((d, &gv), (xv, &x0v)) in dr.iter_mut().zip(gr).zip(xr.iter_mut().zip(x0r))
                    {
                        let s = if gv > 0.0 {
                            1.0
                        } else if gv < 0.0 {
                            -1.0
                        } else {
                            0.0
                        };
                        let nd = (*d + a.step * s).clamp(-eps, eps);
                        *xv = (x0v + nd).clamp(0.0, 1.0);
                        *d = *xv - x0v;
                    }
                }
                Norm::L2 => {
                    let gn = gr.iter().map(|v| v * v).sum::<f32>().sqrt();
                    if gn > 0.0 {
                        dr.iter_mut()
                            .zip(gr)
                            .for_each(|(d, &gv)| *d += a.step * gv / gn);
                    }
                    let dn = dr.iter().map(|v| v * v).sum::<f32>().sqrt();
                    if dn > eps {
                        dr.iter_mut().for_each(|d| *d *= eps / dn);
                    }
                    for ((d, xv), &x0v) in dr.iter_mut().zip(xr.iter_mut()).zip(x0r) {
                        *xv = (x0v + *d).clamp(0.0, 1.0);
                        *d = *xv - x0v;
                    }
                }
            }
        }
    }
    let xt = Tensor::<2>::from_data(TensorData::new(x.clone(), [n, dim]), &device);
    let logits = net.forward(xt);
    let c = logits.dims()[1];
    for (s, ok) in survived
        .iter_mut()
        .zip(correct(&host(logits), c, y, penalty))
    {
        *s &= ok;
    }
    Ok(Perturbed { x, kappa, survived })
}

/// Whether each example of (`x`, `y`) (rows of the network's input width) is classified
/// correctly clean and survives every restart of `a` ([`perturb`]'s `survived`: correct at
/// every iterate and at the final point), in batches of `batch`; deterministic in `seed`
/// (restart r of batch b draws from `(seed, r, b)`). The strict count: more steps or restarts
/// can only lower it, by construction.
pub fn robust_correct(
    net: &Net,
    x: &[f32],
    y: &[u32],
    a: &Attack,
    seed: u64,
    batch: usize,
) -> Result<Vec<bool>> {
    attacked(net, x, y, a, seed, batch, true)
}

/// Whether each example is classified correctly at the final point of every restart of `a`
/// (the usual robust accuracy, which more steps need not lower). Each attack setting draws
/// its own random starts (the key holds ε, η, K and the number of restarts), so that the
/// gradient-masking checks compare independent attacks.
pub fn final_correct(
    net: &Net,
    x: &[f32],
    y: &[u32],
    a: &Attack,
    seed: u64,
    batch: usize,
) -> Result<Vec<bool>> {
    attacked(net, x, y, a, seed, batch, false)
}

fn attacked(
    net: &Net,
    x: &[f32],
    y: &[u32],
    a: &Attack,
    seed: u64,
    batch: usize,
    strict: bool,
) -> Result<Vec<bool>> {
    a.validate("attack")?;
    let n = y.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let dim = width(x, n, "attack")?;
    let view = attack_view(net);
    let batch = batch.max(1);
    let mut out = match strict {
        true => clean_correct(net, x, y, batch)?,
        false => vec![true; n],
    };
    // The strict count keys restarts by (seed, r, b) only, so that PGD-K's iterates are the
    // first iterates of PGD-K' > K; the final-point count keys by the attack's settings too.
    let salt = match strict {
        true => 0,
        false => engram_weights::rng::hash_str(&format!(
            "{:?} {} {} {} {}",
            a.norm, a.epsilon, a.step, a.steps, a.restarts
        )),
    };
    for (b, start) in (0..n).step_by(batch).enumerate() {
        let end = (start + batch).min(n);
        for r in 0..a.restarts {
            let mut rng = Rng::keyed(seed ^ salt, "robust-eval", ((r as u64) << 32) | b as u64);
            let p = perturb_view(
                &view,
                &x[start * dim..end * dim],
                &y[start..end],
                None,
                a,
                &mut rng,
            )?;
            let ok = match strict {
                true => p.survived,
                false => clean_correct(net, &p.x, &y[start..end], batch)?,
            };
            for (o, s) in out[start..end].iter_mut().zip(ok) {
                *o &= s;
            }
        }
    }
    Ok(out)
}

/// Whether each example is classified correctly (no attack), in evaluation mode.
pub fn clean_correct(net: &Net, x: &[f32], y: &[u32], batch: usize) -> Result<Vec<bool>> {
    let n = y.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let dim = width(x, n, "evaluation")?;
    let valid = net.valid();
    let device = Device::flex();
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(batch.max(1)) {
        let end = (start + batch.max(1)).min(n);
        let xt = Tensor::<2>::from_data(
            TensorData::new(x[start * dim..end * dim].to_vec(), [end - start, dim]),
            &device,
        );
        let logits = valid.forward(xt);
        let c = logits.dims()[1];
        out.extend(correct(&host(logits), c, &y[start..end], None));
    }
    Ok(out)
}

/// Percent of `true`.
pub fn percent(ok: &[bool]) -> f64 {
    if ok.is_empty() {
        return 0.0;
    }
    100.0 * ok.iter().filter(|&&b| b).count() as f64 / ok.len() as f64
}

/// Accuracy (percent) of each class `0..classes` from per-example outcomes; `None` for a class
/// without examples.
pub fn per_class(ok: &[bool], y: &[u32], classes: usize) -> Vec<Option<f64>> {
    let mut hit = vec![0usize; classes];
    let mut all = vec![0usize; classes];
    for (&o, &t) in ok.iter().zip(y) {
        if let Some(a) = all.get_mut(t as usize) {
            *a += 1;
            hit[t as usize] += usize::from(o);
        }
    }
    hit.iter()
        .zip(&all)
        .map(|(&h, &a)| (a > 0).then(|| 100.0 * h as f64 / a as f64))
        .collect()
}

/// The tail accuracy (RA-Tail-30 for robust outcomes and `share` = 0.3): the mean accuracy
/// of the ⌈share · C⌉ worst classes among those with examples (the card: the worst 3 of 10).
pub fn tail(ok: &[bool], y: &[u32], classes: usize, share: f64) -> f64 {
    let mut acc: Vec<f64> = per_class(ok, y, classes).into_iter().flatten().collect();
    if acc.is_empty() {
        return 0.0;
    }
    acc.sort_by(f64::total_cmp);
    let k = ((share * acc.len() as f64).ceil() as usize).clamp(1, acc.len());
    acc[..k].iter().sum::<f64>() / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;

    fn net(seed: u64) -> Net {
        let d = Device::flex();
        let _g = crate::backend::seeded(&d, seed);
        ModelConfig::Mlp { hidden: vec![16] }
            .build(12, None, 3, &d.autodiff())
            .unwrap()
    }

    fn data(n: usize) -> (Vec<f32>, Vec<u32>) {
        let mut r = Rng::new(4);
        let x = (0..n * 12).map(|_| r.uniform()).collect();
        let y = (0..n).map(|i| (i % 3) as u32).collect();
        (x, y)
    }

    fn mean_loss(net: &Net, x: &[f32], y: &[u32]) -> f32 {
        let v = attack_view(net);
        let xt = Tensor::<2>::from_data(
            TensorData::new(x.to_vec(), [y.len(), 12]),
            &Device::flex().autodiff(),
        );
        per_example_ce(v.forward(xt), y, None)
            .mean()
            .into_scalar::<f32>()
    }

    /// PGD stays within ε (both norms) and inside [0, 1], and raises the loss.
    #[test]
    fn pgd_stays_within_epsilon_and_raises_the_loss() {
        let net = net(1);
        let (x, y) = data(40);
        let before = mean_loss(&net, &x, &y);
        for norm in [Norm::Linf, Norm::L2] {
            let a = Attack {
                norm,
                epsilon: if norm == Norm::Linf { 0.1 } else { 0.5 },
                step: if norm == Norm::Linf { 0.03 } else { 0.15 },
                steps: 10,
                random_start: true,
                restarts: 1,
            };
            let p = perturb(&net, &x, &y, None, &a, &mut Rng::new(9)).unwrap();
            for (xr, x0r) in p.x.chunks(12).zip(x.chunks(12)) {
                assert!(xr.iter().all(|v| (0.0..=1.0).contains(v)));
                let d: Vec<f32> = xr.iter().zip(x0r).map(|(a, b)| a - b).collect();
                match norm {
                    Norm::Linf => assert!(d.iter().all(|v| v.abs() <= 0.1 + 1e-6)),
                    Norm::L2 => {
                        assert!(d.iter().map(|v| v * v).sum::<f32>().sqrt() <= 0.5 + 1e-5)
                    }
                }
            }
            let after = mean_loss(&net, &p.x, &y);
            assert!(after > before + 1e-3, "{norm:?}: {before} → {after}");
            // Same seed, same bytes.
            let q = perturb(&net, &x, &y, None, &a, &mut Rng::new(9)).unwrap();
            assert_eq!(p.x, q.x);
        }
    }

    /// FGSM moves every value by exactly ε (unless clipped) in the sign of the gradient.
    #[test]
    fn fgsm_is_one_signed_step() {
        let net = net(2);
        let x = vec![0.5f32; 12 * 3];
        let y = vec![0u32, 1, 2];
        let p = perturb(&net, &x, &y, None, &Attack::fgsm(0.05), &mut Rng::new(1)).unwrap();
        let moved =
            p.x.iter()
                .filter(|v| ((*v - 0.5).abs() - 0.05).abs() < 1e-6)
                .count();
        assert!(moved >= 34, "{moved} of 36 values moved by ε");
        assert!(mean_loss(&net, &p.x, &y) > mean_loss(&net, &x, &y));
    }

    /// The strict count never exceeds clean accuracy, the final-point count is deterministic
    /// in its seed, and the attack at a large radius breaks more examples than at a small one.
    #[test]
    fn strict_robust_accuracy_bounds_the_final_point_one() {
        let net = net(3);
        let (x, y) = data(60);
        let clean = percent(&clean_correct(&net, &x, &y, 25).unwrap());
        for (steps, restarts) in [(1, 1), (5, 1), (20, 3)] {
            let a = Attack::pgd(0.5, 0.1, steps).with_restarts(restarts);
            let strict = robust_correct(&net, &x, &y, &a, 7, 25).unwrap();
            assert!(percent(&strict) <= clean);
            let fin = final_correct(&net, &x, &y, &a, 7, 25).unwrap();
            assert_eq!(fin, final_correct(&net, &x, &y, &a, 7, 25).unwrap());
        }
        let small =
            percent(&final_correct(&net, &x, &y, &Attack::pgd(0.01, 0.005, 10), 7, 25).unwrap());
        let large =
            percent(&final_correct(&net, &x, &y, &Attack::pgd(0.5, 0.1, 10), 7, 25).unwrap());
        assert!(large < small, "ε 0.5: {large}, ε 0.01: {small}");
        // Inputs outside [0, 1] and ragged batches are errors, not panics.
        assert!(robust_correct(&net, &[2.0; 12], &[0], &Attack::fgsm(0.1), 0, 8).is_err());
        assert!(robust_correct(&net, &[0.5; 13], &[0, 1], &Attack::fgsm(0.1), 0, 8).is_err());
    }

    /// The first step starts from the clipped random start (as the reference steps from the
    /// clipped x_adv): one PGD step equals clip(x₀ + Π_ε((x_start − x₀) + η·sign(g(x_start)))).
    #[test]
    fn the_first_step_starts_from_the_clipped_point() {
        let net = net(5);
        let mut r = Rng::new(8);
        // Half the values at 0, where a negative random start is clipped away.
        let x0: Vec<f32> = (0..12 * 4)
            .map(|i| if i % 2 == 0 { 0.0 } else { r.uniform() })
            .collect();
        let y = vec![0u32, 1, 2, 0];
        let a = Attack::pgd(0.2, 0.05, 1);
        let p = perturb(&net, &x0, &y, None, &a, &mut Rng::new(3)).unwrap();
        let mut rng = Rng::new(3);
        let start: Vec<f32> = x0
            .iter()
            .map(|&v| (v + (2.0 * rng.uniform() - 1.0) * 0.2).clamp(0.0, 1.0))
            .collect();
        let xt = Tensor::<2>::from_data(
            TensorData::new(start.clone(), [4, 12]),
            &Device::flex().autodiff(),
        )
        .require_grad();
        let loss = per_example_ce(attack_view(&net).forward(xt.clone()), &y, None).sum();
        let g = host(xt.grad(&loss.backward()).unwrap());
        let want: Vec<f32> = x0
            .iter()
            .zip(&start)
            .zip(&g)
            .map(|((&x0v, &st), &gv)| {
                let s = if gv > 0.0 {
                    1.0
                } else if gv < 0.0 {
                    -1.0
                } else {
                    0.0
                };
                (x0v + ((st - x0v) + 0.05 * s).clamp(-0.2, 0.2)).clamp(0.0, 1.0)
            })
            .collect();
        assert_eq!(p.x, want);
    }

    #[test]
    fn tail_is_the_worst_classes_mean() {
        let y = [0u32, 0, 1, 1, 2, 2, 3, 3, 4, 4];
        let ok = [
            true, true, true, false, false, false, true, true, true, false,
        ];
        assert_eq!(per_class(&ok, &y, 6)[5], None);
        // Classes: 100, 50, 0, 100, 50 → the worst ⌈0.3·5⌉ = 2: (0 + 50)/2.
        assert_eq!(tail(&ok, &y, 6, 0.3), 25.0);
        assert_eq!(percent(&ok), 60.0);
    }

    #[test]
    fn settings_are_validated() {
        for bad in [
            Attack::pgd(0.0, 0.01, 5),
            Attack::pgd(0.1, f32::NAN, 5),
            Attack::pgd(0.1, 0.01, 0),
            Attack::pgd(1.5, 0.01, 5),
            Attack::pgd(0.1, 0.01, 5).with_restarts(0),
        ] {
            assert!(bad.validate("x").is_err(), "{bad:?}");
        }
        Attack::pgd(0.1, 0.025, 5).validate("x").unwrap();
    }
}
