//! EWC: Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks" (PNAS).
//! Card: shared/methods/regularization.md (EWC; its Online form is `online_ewc.rs`).
//!
//! Penalty convention: **half**. While training task t the loss is
//! L_t + (λ/2)·Σ_{k<t} Σ_i F_i^(k)·(θ_i − θ*_i^(k))², so its gradient is λ·F·(θ − θ*)
//! (the paper's and van de Ven's convention; λ_engram = 2·λ_avalanche = 2·λ_mammoth).
//! The penalty covers every parameter and is added to the loss on the autodiff graph.
//!
//! The diagonal Fisher is estimated after each task on `samples` training examples of that
//! task by one of the card's estimators (`parts/fisher.rs`).
//! The mean and max of F per tensor are recorded in the strategy state (`fisher_stats`).

use super::parts::fisher::{Estimator, PerExample, fisher};
use super::parts::penalty::{Host, Quadratic, Term, check_nonneg, host, json_usize};
use super::{Batch, Ctx, State, Strategy, parse_params};
use crate::model::Net;
use crate::model::params::ParamInfo;
use crate::{Result, err};
use burn::prelude::*;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    /// λ in the half convention (engram choice: 1000, PyCIL's value; sweep in decades).
    #[serde(default = "default_lambda")]
    lambda: f64,
    /// Fisher estimator (card default: exact): exact | sampled | empirical |
    /// weighted-empirical | batched. Per-example ones are one batched pass per chunk on the
    /// MLP, and one backward pass per example (per example and class for exact) on the CNN
    /// and ViT (documented fallback, see the module comment).
    #[serde(default = "default_fisher")]
    fisher: Estimator,
    /// Examples of each task used for its Fisher (card default: 1000).
    #[serde(default = "default_samples")]
    samples: usize,
    /// Rows per Fisher pass; also the minibatch of the `batched` estimator.
    #[serde(default = "default_fisher_batch")]
    fisher_batch: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct OnlineParams {
    #[serde(default = "default_lambda")]
    lambda: f64,
    /// Decay of the running Fisher, F̃ ← γ·F̃ + F^(k) (card default: 1).
    #[serde(default = "default_gamma")]
    gamma: f64,
    #[serde(default = "default_fisher")]
    fisher: Estimator,
    #[serde(default = "default_samples")]
    samples: usize,
    #[serde(default = "default_fisher_batch")]
    fisher_batch: usize,
}

fn default_lambda() -> f64 {
    1000.0
}
fn default_gamma() -> f64 {
    1.0
}
fn default_fisher() -> Estimator {
    Estimator::Exact
}
fn default_samples() -> usize {
    1000
}
fn default_fisher_batch() -> usize {
    128
}

pub struct Ewc {
    name: &'static str,
    pub lambda: f64,
    /// Some(γ): online mode (one running Fisher and one anchor); None: separate mode.
    pub gamma: Option<f64>,
    pub estimator: Estimator,
    pub samples: usize,
    pub fisher_batch: usize,
    pub per_example: PerExample,
    /// Tasks consolidated so far.
    pub tasks: usize,
    pub quad: Quadratic,
    stats: Vec<serde_json::Value>,
}

fn check(name: &str, lambda: f64, samples: usize, fb: usize) -> Result<()> {
    check_nonneg(name, "lambda", lambda)?;
    if samples == 0 {
        return Err(err!("strategy {name}: samples must be at least 1"));
    }
    if fb == 0 {
        return Err(err!("strategy {name}: fisher-batch must be at least 1"));
    }
    Ok(())
}

impl Ewc {
    pub fn new(
        name: &'static str,
        lambda: f64,
        gamma: Option<f64>,
        estimator: Estimator,
        samples: usize,
        fisher_batch: usize,
    ) -> Ewc {
        Ewc {
            name,
            lambda,
            gamma,
            estimator,
            samples,
            fisher_batch,
            per_example: PerExample::Auto,
            tasks: 0,
            quad: Quadratic::default(),
            stats: Vec::new(),
        }
    }
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("ewc", v)?;
    check("ewc", p.lambda, p.samples, p.fisher_batch)?;
    Ok(Box::new(Ewc::new(
        "ewc",
        p.lambda,
        None,
        p.fisher,
        p.samples,
        p.fisher_batch,
    )))
}

/// The `online-ewc` registry entry (see `online_ewc.rs`).
pub fn build_online(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: OnlineParams = parse_params("online-ewc", v)?;
    check("online-ewc", p.lambda, p.samples, p.fisher_batch)?;
    if !(p.gamma.is_finite() && (0.0..=1.0).contains(&p.gamma)) {
        return Err(err!(
            "strategy online-ewc: gamma must be in [0, 1], got {}",
            p.gamma
        ));
    }
    Ok(Box::new(Ewc::new(
        "online-ewc",
        p.lambda,
        Some(p.gamma),
        p.fisher,
        p.samples,
        p.fisher_batch,
    )))
}

impl Ewc {
    /// Consolidates a task: F^(k) and θ* (separate mode), or F̃ ← γ·F̃ + F^(k), θ* ← θ (online).
    pub fn consolidate(&mut self, f: Vec<(ParamInfo, Vec<f32>)>, theta: &Host) {
        let names: Vec<String> = theta.iter().map(|(n, _, _)| n.clone()).collect();
        if self.quad.names != names {
            let shapes = theta.iter().map(|(_, s, _)| s.clone()).collect();
            self.quad.set_slots(names, shapes);
        }
        for (i, v) in &f {
            let (mean, max) = if v.is_empty() {
                (0.0, 0.0)
            } else {
                (
                    v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64,
                    v.iter().fold(0f32, |m, &x| m.max(x)) as f64,
                )
            };
            self.stats.push(
                serde_json::json!({"task": self.tasks, "tensor": i.name, "mean": mean, "max": max}),
            );
        }
        let fw: Vec<Vec<f32>> = f.into_iter().map(|(_, v)| v).collect();
        let anchor: Vec<Vec<f32>> = theta.iter().map(|(_, _, v)| v.clone()).collect();
        match self.gamma {
            Some(g) if !self.quad.terms.is_empty() => {
                let t = &mut self.quad.terms[0];
                if let Some(old) = &mut t.weight {
                    for (o, n) in old.iter_mut().zip(&fw) {
                        for (a, b) in o.iter_mut().zip(n) {
                            *a = (g as f32) * *a + b;
                        }
                    }
                }
                t.anchor = anchor;
            }
            _ => self.quad.terms.push(Term {
                weight: Some(fw),
                anchor,
            }),
        }
        self.quad.invalidate();
        self.tasks += 1;
    }
}

impl Strategy for Ewc {
    fn name(&self) -> &'static str {
        self.name
    }

    fn params(&self) -> serde_json::Value {
        let (lambda, fisher, samples, fisher_batch) =
            (self.lambda, self.estimator, self.samples, self.fisher_batch);
        let v = match self.gamma {
            None => serde_json::to_value(Params {
                lambda,
                fisher,
                samples,
                fisher_batch,
            }),
            Some(gamma) => serde_json::to_value(OnlineParams {
                lambda,
                gamma,
                fisher,
                samples,
                fisher_batch,
            }),
        };
        v.unwrap_or_default()
    }

    fn loss(
        &mut self,
        cx: &Ctx,
        net: &Net,
        _batch: &Batch,
        _logits: Tensor<2>,
        loss: Tensor<1>,
    ) -> Tensor<1> {
        self.quad.add_to(loss, net, cx.device, self.lambda / 2.0)
    }

    fn after_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        let f = fisher(
            &net,
            cx.scenario,
            cx.task,
            cx.device,
            cx.seed,
            self.estimator,
            self.samples,
            self.fisher_batch,
            self.per_example,
        )?;
        let theta = host(&net);
        self.consolidate(f, &theta);
        Ok(net)
    }

    fn state_bytes(&self) -> u64 {
        4 * self.quad.floats() as u64
    }

    fn has_masks(&self) -> bool {
        true
    }

    fn masks_kind(&self) -> &'static str {
        "fisher"
    }

    /// The diagonal Fisher by parameter name: Σ_k F_k over the tasks' terms (EWC's penalty
    /// is (λ/2)·Σ_k F_k·(θ − θ*_k)²; after the last task θ*_k of that task is the run's
    /// model), or the running F̃ of online EWC (one term).
    fn masks(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        let mut out: Vec<(String, Vec<usize>, Vec<f32>)> = self
            .quad
            .names
            .iter()
            .zip(&self.quad.shapes)
            .map(|(n, s)| (n.clone(), s.clone(), vec![0.0; s.iter().product()]))
            .collect();
        for t in &self.quad.terms {
            for (o, w) in out.iter_mut().zip(t.weight.iter().flatten()) {
                for (a, b) in o.2.iter_mut().zip(w) {
                    *a += b;
                }
            }
        }
        out
    }

    fn state(&self) -> State {
        let mut st = State {
            tensors: Vec::new(),
            json: serde_json::json!({
                "tasks": self.tasks,
                "terms": self.quad.terms.len(),
                "fisher_stats": self.stats,
                "penalty_convention": "half",
            }),
        };
        self.quad.save("ewc.", &mut st);
        st
    }

    fn load_state(&mut self, st: State) -> Result<()> {
        let tasks = json_usize(&st, "tasks")?;
        let terms = json_usize(&st, "terms")?;
        self.quad.load("ewc.", terms, true, &st)?;
        self.tasks = tasks;
        self.stats = st
            .json
            .get("fisher_stats")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::flat_params;
    use crate::strategy::parts::penalty::Term;
    use crate::strategy::parts::testutil::{
        assert_close, batch, blobs, ctx, device, grads_host, mlp,
    };
    use engram_weights::rng::Rng;

    fn hand_ewc(lambda: f64, gamma: Option<f64>) -> Ewc {
        Ewc::new("ewc", lambda, gamma, Estimator::Exact, 10, 8)
    }

    /// Deterministic pseudo-random values in [lo, lo + 1).
    fn vals(n: usize, k: u64, lo: f32) -> Vec<f32> {
        let mut r = Rng::new(k);
        (0..n).map(|_| lo + r.uniform_f64() as f32).collect()
    }

    #[test]
    fn penalty_gradient_is_lambda_f_delta() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let net = mlp(&s, 5, &dev);
        let theta = host(&net);
        let mut e = hand_ewc(3.0, None);
        let f: Vec<(ParamInfo, Vec<f32>)> = flat_params(&net)
            .into_iter()
            .enumerate()
            .map(|(k, (i, _))| {
                let n = i.numel();
                (i, vals(n, k as u64, 0.1))
            })
            .collect();
        // Anchor away from θ so the penalty is non-zero.
        let shifted: Host = theta
            .iter()
            .enumerate()
            .map(|(k, (n, s, v))| {
                let d = vals(v.len(), 100 + k as u64, -0.5);
                (
                    n.clone(),
                    s.clone(),
                    v.iter().zip(d).map(|(a, b)| a + b).collect(),
                )
            })
            .collect();
        e.consolidate(f.clone(), &shifted);
        let b = batch(&s, 1, 4, &dev);
        let zero = Tensor::<1>::zeros([1], &dev);
        let logits = net.forward(b.x.clone());
        let loss = e.loss(&ctx(&s, 1, &dev), &net, &b, logits, zero);
        let g = grads_host(&net, loss);
        for (k, ((_, _, th), (_, _, anc))) in theta.iter().zip(&shifted).enumerate() {
            let want: Vec<f32> = (0..th.len())
                .map(|i| 3.0 * f[k].1[i] * (th[i] - anc[i]))
                .collect();
            assert_close(&g[k], &want, 1e-5, &f[k].0.name);
        }
    }

    #[test]
    fn batched_per_example_fisher_equals_one_example_at_a_time() {
        for kind in ["class-incremental", "task-incremental"] {
            let s = blobs(kind, 2);
            let (dev, _rng) = device();
            let net = mlp(&s, 6, &dev);
            for est in [
                Estimator::Exact,
                Estimator::Sampled,
                Estimator::Empirical,
                Estimator::WeightedEmpirical,
            ] {
                let go = |how| fisher(&net, &s, 1, &dev, 5, est, 37, 16, how).expect("fisher");
                let fast = go(PerExample::Auto);
                let slow = go(PerExample::Loop);
                for ((i, a), (_, b)) in fast.iter().zip(&slow) {
                    assert!(
                        b.iter().any(|&v| v > 0.0),
                        "{kind} {est:?} {}: all zero",
                        i.name
                    );
                    assert_close(a, b, 1e-5, &format!("{kind} {est:?} {}", i.name));
                }
            }
        }
    }

    #[test]
    fn the_vit_falls_back_to_the_per_example_loop() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let net = crate::model::ModelConfig::Vit {
            patch: 4,
            d_model: 8,
            layers: 1,
            heads: 2,
        }
        .build(s.train.dim, s.train.image, s.num_outputs, &dev)
        .expect("vit");
        let go = |est, how| fisher(&net, &s, 0, &dev, 5, est, 5, 4, how).expect("fisher");
        let auto = go(Estimator::Exact, PerExample::Auto);
        let slow = go(Estimator::Exact, PerExample::Loop);
        for ((i, a), (_, b)) in auto.iter().zip(&slow) {
            assert_eq!(a, b, "{}", i.name);
        }
        assert!(auto.iter().any(|(_, v)| v.iter().any(|&x| x > 0.0)));
        let batched = go(Estimator::Batched, PerExample::Auto);
        assert!(batched.iter().all(|(_, v)| v.iter().all(|x| x.is_finite())));
    }

    #[test]
    fn exact_fisher_differs_from_empirical_and_batched_is_smaller() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let net = mlp(&s, 6, &dev);
        let total = |est| -> f64 {
            fisher(&net, &s, 0, &dev, 5, est, 64, 32, PerExample::Auto)
                .expect("fisher")
                .iter()
                .flat_map(|(_, v)| v.iter().map(|&x| x as f64))
                .sum()
        };
        let (ex, em, ba) = (
            total(Estimator::Exact),
            total(Estimator::Empirical),
            total(Estimator::Batched),
        );
        assert!((ex - em).abs() > 1e-6 * ex.max(em), "{ex} {em}");
        // (mean g)² ≪ mean(g²).
        assert!(ba < em, "batched {ba} empirical {em}");
    }

    #[test]
    fn online_fisher_decays_and_accumulates() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let net = mlp(&s, 3, &dev);
        let theta = host(&net);
        let infos: Vec<ParamInfo> = flat_params(&net).into_iter().map(|(i, _)| i).collect();
        let f = |k: u64| -> Vec<(ParamInfo, Vec<f32>)> {
            infos
                .iter()
                .enumerate()
                .map(|(j, i)| (i.clone(), vals(i.numel(), k * 10 + j as u64, 0.0)))
                .collect()
        };
        let th2: Host = theta
            .iter()
            .map(|(n, s, v)| (n.clone(), s.clone(), v.iter().map(|x| x + 1.0).collect()))
            .collect();
        let mut on = hand_ewc(1.0, Some(0.5));
        on.consolidate(f(1), &theta);
        on.consolidate(f(2), &th2);
        assert_eq!(on.quad.terms.len(), 1);
        let t = &on.quad.terms[0];
        for (j, (f1, f2)) in f(1).iter().zip(f(2)).enumerate() {
            let want: Vec<f32> = f1.1.iter().zip(&f2.1).map(|(a, b)| 0.5 * a + b).collect();
            assert_close(&t.weight.as_ref().expect("weight")[j], &want, 1e-6, "F̃");
            assert_eq!(t.anchor[j], th2[j].2);
        }
        let mut sep = hand_ewc(1.0, None);
        sep.consolidate(f(1), &theta);
        sep.consolidate(f(2), &th2);
        assert_eq!(sep.quad.terms.len(), 2);
        assert_eq!(sep.state_bytes(), 2 * on.state_bytes());
    }

    #[test]
    fn state_round_trips() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let net = mlp(&s, 4, &dev);
        let mut e = hand_ewc(2.0, None);
        let f = fisher(
            &net,
            &s,
            0,
            &dev,
            1,
            Estimator::Sampled,
            20,
            8,
            PerExample::Auto,
        )
        .expect("fisher");
        e.consolidate(f.clone(), &host(&net));
        e.consolidate(f, &host(&net));
        let st = e.state();
        let mut back = hand_ewc(2.0, None);
        back.load_state(st.clone()).expect("load");
        assert_eq!(back.tasks, 2);
        assert_eq!(back.quad.names, e.quad.names);
        assert_eq!(back.quad.terms.len(), 2);
        for (a, b) in back.quad.terms.iter().zip(&e.quad.terms) {
            assert_eq!(a.anchor, b.anchor);
            assert_eq!(a.weight, b.weight);
        }
        assert_eq!(back.state().tensors, st.tensors);
        // A truncated state is an error, not a panic.
        let mut bad = st.clone();
        bad.tensors.pop();
        assert!(hand_ewc(2.0, None).load_state(bad).is_err());
        assert!(hand_ewc(2.0, None).load_state(State::default()).is_err());
        let _unused = Term::default();
    }

    #[test]
    fn bad_params_are_errors() {
        use serde_json::json;
        assert!(build(&json!(null)).is_ok());
        let p = build(&json!({})).expect("defaults").params();
        assert_eq!(p["fisher"], "exact");
        assert_eq!(p["samples"], 1000);
        for bad in [
            json!({"lamda": 1.0}),
            json!({"lambda": -1.0}),
            json!({"fisher": "diagonal"}),
            json!({"samples": 0}),
            json!({"fisher-batch": 0}),
            json!({"gamma": 0.5}),
        ] {
            assert!(build(&bad).is_err(), "{bad}");
        }
        assert!(build_online(&json!({"gamma": 0.9})).is_ok());
        assert!(build_online(&json!({"gamma": 1.5})).is_err());
        assert!(build_online(&json!({"decay": 0.5})).is_err());
    }
}
