//! CLASSP: Ludwig 2024, "CLASSP: ... Adjustment Suppression and Sparsity Promotion" (arXiv 2405.09637).
//! Card: shared/methods/regularization.md (CLASSP).
//!
//! An optimizer-only method with one accumulator A per weight (never reset between tasks).
//! At every step, for each weight whose gradient passes the threshold test:
//! A ← A + |g|^p, then w ← w − lr·g/(ε + A)^(1/p) (`scaling = true`) or w ← w − lr·g
//! (`scaling = false`: plain SGD while A still accumulates, as the reference code does).
//! Weights that fail the test are left exactly unchanged. The threshold test is per weight,
//! g² > threshold (the paper); `tensorwise-threshold = true` mimics the reference code, which
//! reduces the squared-gradient tensor with "any" first, so a whole tensor updates iff
//! 1 > threshold and some entry is non-zero. engram applies the exponent p in the
//! accumulator (the code sums |g| whatever p is).
//!
//! **Default threshold 0**: every weight with a non-zero gradient updates (AdaGrad-like with
//! exponent p), which is what the reference code effectively runs, its tensor-wise test
//! never firing below 1. The reference constructor's 0.5 means something only under that
//! tensor-wise test; applied per weight, g² > 0.5 almost never holds for a batch-mean loss,
//! so a run with it froze nearly every weight and stayed at chance. The default was chosen
//! on validation with the suite's tuning (`engram bench cl`, Split Fashion-MNIST
//! task-incremental, MLP 400-400, 2 epochs, batch 128, seed 0, 10 % of the training
//! examples held out; final average accuracy on the held-out split, %):
//!
//! | lr \ threshold | 0        | 1e-6  | 1e-5  | 1e-4  | 0.5 (old default) |
//! |----------------|----------|-------|-------|-------|-------------------|
//! | 0.2 (default)  | **95.2** | 94.9  | 77.1  | 83.4  | 47.1              |
//! | 0.01           | **98.2** | 97.9  | 88.9  | 88.3  |                   |
//!
//! Threshold 0 is best at both step sizes; no small positive value beats it, so the sparsity
//! rule stays opt-in (the suite tunes 1e-6..1e-4). `lr` keeps the reference's 0.2, which
//! learns; the suite's grid picks 0.01 on this setting.
//!
//! **Per-task schedule** (the paper's two-phase protocol): `schedule` is a list of per-task
//! overrides `{ threshold, scaling }`, entry k for task k (0-based), the last entry for every
//! later task; a key an entry leaves out takes the top-level value, and an empty list (the
//! default) runs the top-level values on every task. A is never reset, so a `scaling = false`
//! phase trains by plain SGD while filling A, and the next `scaling = true` phase divides by
//! what it accumulated:
//! `schedule = [{ threshold = 1e-4, scaling = false }, { threshold = 0.0, scaling = true }]`.
//!
//! CLASSP replaces the run's optimizer: its update is computed in `after_backward` from the
//! weights before the step and written over the configured optimizer's result in
//! `after_step`, so its `lr` (not the run's) is the step size and the run's optimizer and
//! schedule have no effect on the weights.

use super::parts::penalty::{Host, host, json_usize, take};
use super::{Ctx, Setup, State, Strategy, in_range, no_effect, parse_params};
use crate::model::Net;
use crate::model::params::{flat_params, grad_flat, load_params};
use crate::{Result, err};
use burn::optim::GradientsParams;
use std::collections::BTreeMap;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    #[serde(default = "default_lr")]
    lr: f64,
    #[serde(default = "default_threshold")]
    threshold: f64,
    #[serde(default = "default_eps")]
    eps: f64,
    /// Exponent p.
    #[serde(default = "default_p")]
    p: f64,
    /// Adjustment suppression (divide by (ε + A)^(1/p)).
    #[serde(default = "default_scaling")]
    scaling: bool,
    /// Mimic the reference code's tensor-wise ("any") threshold test.
    #[serde(default)]
    tensorwise_threshold: bool,
    /// Per-task overrides of `threshold` and `scaling` (task k: entry k, the last entry for
    /// later tasks; empty: the top-level values for every task).
    #[serde(default)]
    schedule: Vec<Phase>,
}

/// One task's overrides; a key left out takes the top-level value.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Phase {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<bool>,
}

fn default_lr() -> f64 {
    0.2
}
fn default_threshold() -> f64 {
    0.0
}
fn default_eps() -> f64 {
    1e-5
}
fn default_p() -> f64 {
    1.0
}
fn default_scaling() -> bool {
    true
}

pub struct Classp {
    pub lr: f64,
    /// Top-level threshold and scaling (for the tasks and keys `schedule` leaves out).
    pub threshold: f64,
    pub eps: f64,
    pub p: f64,
    pub scaling: bool,
    pub tensorwise: bool,
    pub schedule: Vec<Phase>,
    /// Accumulators, per parameter (visiting order).
    pub acc: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Weights after this step's update (written in `after_step`).
    pending: Option<BTreeMap<String, Vec<f32>>>,
    /// Weights updated at least once (for the "fraction of weights ever updated" figure).
    pub touched: Vec<Vec<bool>>,
}

fn checked(p: Params) -> Result<Classp> {
    if !(p.lr.is_finite() && p.lr > 0.0) {
        return Err(err!("strategy classp: lr must be > 0, got {}", p.lr));
    }
    if !(p.threshold.is_finite() && p.threshold >= 0.0) {
        return Err(err!(
            "strategy classp: threshold must be >= 0, got {}",
            p.threshold
        ));
    }
    for (k, ph) in p.schedule.iter().enumerate() {
        if let Some(t) = ph.threshold
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(err!(
                "strategy classp: schedule[{k}].threshold must be >= 0, got {t}"
            ));
        }
    }
    if !(p.eps.is_finite() && p.eps > 0.0) {
        return Err(err!("strategy classp: eps must be > 0, got {}", p.eps));
    }
    if !(p.p.is_finite() && p.p > 0.0) {
        return Err(err!("strategy classp: p must be > 0, got {}", p.p));
    }
    // Top-level keys that every schedule entry overrides have no effect.
    let all = |f: fn(&Phase) -> bool| !p.schedule.is_empty() && p.schedule.iter().all(f);
    let why = "when every schedule entry sets it";
    let thr_set = p.threshold != default_threshold();
    no_effect(
        "classp",
        "threshold",
        thr_set && all(|e| e.threshold.is_some()),
        why,
    )?;
    let sc_set = p.scaling != default_scaling();
    no_effect(
        "classp",
        "scaling",
        sc_set && all(|e| e.scaling.is_some()),
        why,
    )?;
    for (k, e) in p.schedule.iter().enumerate() {
        if e.threshold.is_none() && e.scaling.is_none() {
            return Err(err!(
                "strategy classp: schedule[{k}] sets nothing (give threshold, scaling or both)"
            ));
        }
    }
    if p.tensorwise_threshold {
        // The code's test is 1 > threshold whenever a gradient is non-zero: at 0 it is the
        // per-weight test's result, at 1 or above nothing ever updates.
        let thresholds: Vec<f64> = match p.schedule.is_empty() {
            true => vec![p.threshold],
            false => p
                .schedule
                .iter()
                .map(|e| e.threshold.unwrap_or(p.threshold))
                .collect(),
        };
        if thresholds.iter().all(|&t| t == 0.0) {
            return Err(err!(
                "strategy classp: tensorwise-threshold = true has no effect at threshold 0 \
                 (the tensor-wise test then passes exactly when the per-weight one does)"
            ));
        }
        if let Some(t) = thresholds.iter().find(|&&t| t >= 1.0) {
            return Err(err!(
                "strategy classp: tensorwise-threshold = true with a threshold of {t} (>= 1) \
                 freezes every weight: the reference code's test compares 1 with the threshold"
            ));
        }
    }
    let ever_scaled = match p.schedule.is_empty() {
        true => p.scaling,
        false => p.schedule.iter().any(|e| e.scaling.unwrap_or(p.scaling)),
    };
    let off = "with scaling = false in every task";
    no_effect("classp", "eps", !ever_scaled && p.eps != default_eps(), off)?;
    no_effect("classp", "p", !ever_scaled && p.p != default_p(), off)?;
    Ok(Classp {
        lr: p.lr,
        threshold: p.threshold,
        eps: p.eps,
        p: p.p,
        scaling: p.scaling,
        tensorwise: p.tensorwise_threshold,
        schedule: p.schedule,
        acc: Vec::new(),
        pending: None,
        touched: Vec::new(),
    })
}

/// Refuses a value of the wrong type with an error naming its key (serde's own message does
/// not say which key), `schedule[k].threshold` inside the schedule.
fn check_types(v: &serde_json::Value) -> Result<()> {
    use serde_json::Value as V;
    let kind = |key: &str, v: &V, want: &str| -> Result<()> {
        let ok = match want {
            "a number" => v.is_number(),
            "true or false" => v.is_boolean(),
            _ => v.is_array(),
        };
        match ok {
            true => Ok(()),
            false => Err(err!("strategy classp: {key} must be {want}, got {v}")),
        }
    };
    let Some(m) = v.as_object() else {
        return Ok(());
    };
    for (k, x) in m {
        match k.as_str() {
            "lr" | "threshold" | "eps" | "p" => kind(k, x, "a number")?,
            "scaling" | "tensorwise-threshold" => kind(k, x, "true or false")?,
            "schedule" => {
                let want = "a list of tables { threshold, scaling }";
                kind(k, x, want)?;
                for (i, e) in x.as_array().into_iter().flatten().enumerate() {
                    let Some(e) = e.as_object() else {
                        return Err(err!(
                            "strategy classp: schedule[{i}] must be a table {{ threshold, scaling }}, got {e}"
                        ));
                    };
                    for (ek, ex) in e {
                        let key = format!("schedule[{i}].{ek}");
                        match ek.as_str() {
                            "threshold" => kind(&key, ex, "a number")?,
                            "scaling" => kind(&key, ex, "true or false")?,
                            _ => {
                                return Err(err!(
                                    "strategy classp: unknown key {key}; an entry takes threshold and scaling"
                                ));
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(())
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    check_types(v)?;
    Ok(Box::new(checked(parse_params("classp", v)?)?))
}

impl Classp {
    /// Threshold and scaling of task `task` (0-based): its schedule entry (the last one past
    /// the list's end), with the top-level values for the keys it leaves out.
    pub fn phase(&self, task: usize) -> (f64, bool) {
        let e = match self.schedule.last() {
            None => None,
            Some(last) => Some(self.schedule.get(task).unwrap_or(last)),
        };
        (
            e.and_then(|e| e.threshold).unwrap_or(self.threshold),
            e.and_then(|e| e.scaling).unwrap_or(self.scaling),
        )
    }

    /// The update of one tensor in task `task`: new weights from weights `w`, gradient `g`,
    /// accumulator `a`.
    pub fn update(
        &self,
        task: usize,
        w: &mut [f32],
        g: &[f32],
        a: &mut [f32],
        touched: &mut [bool],
    ) {
        let (threshold, scaling) = self.phase(task);
        let tensor_pass = if self.tensorwise {
            let any = g.iter().any(|&x| x * x != 0.0);
            (if any { 1.0 } else { 0.0 }) > threshold
        } else {
            true
        };
        let inv_p = 1.0 / self.p;
        for i in 0..w.len() {
            let gi = g[i] as f64;
            let pass = if self.tensorwise {
                tensor_pass
            } else {
                gi * gi > threshold
            };
            if !pass {
                continue;
            }
            let ai = a[i] as f64 + gi.abs().powf(self.p);
            a[i] = ai as f32;
            let step = if scaling {
                self.lr * gi / (self.eps + ai).powf(inv_p)
            } else {
                self.lr * gi
            };
            w[i] = (w[i] as f64 - step) as f32;
            touched[i] = true;
        }
    }

    /// Fraction of weights updated at least once.
    pub fn fraction_updated(&self) -> f64 {
        let (n, t) = self
            .touched
            .iter()
            .flatten()
            .fold((0usize, 0usize), |(n, t), &b| (n + 1, t + usize::from(b)));
        if n == 0 { 0.0 } else { t as f64 / n as f64 }
    }

    fn ensure(&mut self, h: &Host) {
        if self.acc.len() != h.len() {
            self.acc = h
                .iter()
                .map(|(n, s, v)| (n.clone(), s.clone(), vec![0.0; v.len()]))
                .collect();
        }
        if self.touched.len() != h.len() {
            self.touched = h.iter().map(|(_, _, v)| vec![false; v.len()]).collect();
        }
    }
}

impl Strategy for Classp {
    fn name(&self) -> &'static str {
        "classp"
    }

    fn params(&self) -> serde_json::Value {
        let (lr, threshold, eps, p) = (self.lr, self.threshold, self.eps, self.p);
        let (scaling, tensorwise_threshold) = (self.scaling, self.tensorwise);
        let p = Params {
            lr,
            threshold,
            eps,
            p,
            scaling,
            tensorwise_threshold,
            schedule: self.schedule.clone(),
        };
        serde_json::to_value(p).unwrap_or_default()
    }

    fn check(&self, s: &Setup) -> Result<()> {
        // CLASSP is the optimizer: the run's own optimizer never steps a weight.
        if let Some(c) = s.optim.clip_grad_norm {
            return Err(err!(
                "strategy classp: train.optimizer.clip-grad-norm = {c} has no effect: CLASSP \
                 updates the weights itself"
            ));
        }
        if !s.reset_optimizer {
            return Err(
                "strategy classp: train.reset-optimizer = false has no effect: CLASSP updates \
                 the weights itself, and its accumulator is never reset"
                    .into(),
            );
        }
        let (n, t) = (self.schedule.len(), s.scenario.tasks.len());
        in_range(
            "classp",
            "schedule's length",
            n,
            0,
            t,
            &format!("one entry per task at most, {t} tasks"),
        )
    }

    fn after_backward(&mut self, cx: &Ctx, net: &Net, grads: &mut GradientsParams) {
        let mut h = host(net);
        self.ensure(&h);
        let infos = flat_params(net);
        let mut acc = std::mem::take(&mut self.acc);
        let mut touched = std::mem::take(&mut self.touched);
        for (k, (info, _)) in infos.iter().enumerate() {
            let Some(g) = grad_flat(grads, info)
                .and_then(|t| t.into_data().convert::<f32>().try_into_vec::<f32>().ok())
            else {
                continue;
            };
            if g.len() != h[k].2.len() || acc[k].2.len() != g.len() {
                continue;
            }
            self.update(cx.task, &mut h[k].2, &g, &mut acc[k].2, &mut touched[k]);
        }
        self.acc = acc;
        self.touched = touched;
        self.pending = Some(h.into_iter().map(|(n, _, v)| (n, v)).collect());
    }

    fn after_step(&mut self, _cx: &Ctx, net: Net) -> Net {
        match self.pending.take() {
            // The names come from this same network, so loading cannot miss; keep the
            // optimizer's result only if it somehow does.
            Some(w) => {
                let fallback = net.clone();
                load_params(net, &w).unwrap_or(fallback)
            }
            None => net,
        }
    }

    fn state_bytes(&self) -> u64 {
        // f32 accumulators plus one flag per weight ("ever updated").
        5 * self.acc.iter().map(|(_, _, v)| v.len() as u64).sum::<u64>()
    }

    fn state(&self) -> State {
        let mut tensors: Vec<_> = self
            .acc
            .iter()
            .map(|(n, s, v)| (format!("classp.acc.{n}"), s.clone(), v.clone()))
            .collect();
        tensors.extend(self.acc.iter().zip(&self.touched).map(|((n, s, _), t)| {
            (
                format!("classp.touched.{n}"),
                s.clone(),
                t.iter().map(|&b| if b { 1.0 } else { 0.0 }).collect(),
            )
        }));
        State {
            tensors,
            json: serde_json::json!({"params": self.acc.len(), "fraction_updated": self.fraction_updated()}),
        }
    }

    fn load_state(&mut self, st: State) -> Result<()> {
        let n = json_usize(&st, "params")?;
        let mut acc = Vec::with_capacity(n);
        let mut touched = Vec::with_capacity(n);
        for (name, shape, _) in st.tensors.iter().filter(|t| t.0.starts_with("classp.acc.")) {
            let p = name.trim_start_matches("classp.acc.").to_string();
            let numel = shape.iter().product();
            let a = take(&st, name, Some(numel))?;
            let t = take(&st, &format!("classp.touched.{p}"), Some(numel))?;
            acc.push((p, shape.clone(), a));
            touched.push(t.into_iter().map(|v| v != 0.0).collect());
        }
        if acc.len() != n {
            return Err(err!(
                "strategy classp: state has {} accumulators, expected {n}",
                acc.len()
            ));
        }
        self.acc = acc;
        self.touched = touched;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::parts::testutil::{batch, blobs, ctx, device, grads_host, mlp};
    use burn::nn::loss::CrossEntropyLossConfig;
    use serde_json::json;

    fn make(v: serde_json::Value) -> Classp {
        checked(parse_params("classp", &v).expect("params")).expect("classp")
    }

    #[test]
    fn per_weight_threshold_and_suppression() {
        let c = make(json!({"lr": 0.5, "threshold": 0.1, "p": 2.0}));
        let mut w = vec![1.0f32, 1.0, 1.0];
        let g = [0.1f32, -0.4, 2.0];
        let mut a = vec![0.0f32, 0.0, 3.0];
        let mut t = vec![false; 3];
        c.update(0, &mut w, &g, &mut a, &mut t);
        assert_eq!(w[0], 1.0, "sub-threshold weight moved");
        assert_eq!(a[0], 0.0);
        let a1 = 0.16f64;
        assert!((w[1] as f64 - (1.0 + 0.5 * 0.4 / (1e-5 + a1).sqrt())).abs() < 1e-5);
        let a2 = 3.0 + 4.0;
        assert!((w[2] as f64 - (1.0 - 0.5 * 2.0 / (1e-5f64 + a2).sqrt())).abs() < 1e-5);
        assert_eq!(t, [false, true, true]);
        // Without scaling: plain step.
        let c = make(json!({"lr": 0.5, "threshold": 0.0, "scaling": false}));
        let mut w = vec![1.0f32];
        c.update(0, &mut w, &[0.2], &mut [0.0], &mut [false]);
        assert!((w[0] - 0.9).abs() < 1e-6);
    }

    #[test]
    fn tensorwise_threshold_mimics_the_reference_code() {
        let c = make(json!({"threshold": 0.5, "tensorwise-threshold": true}));
        let mut w = vec![1.0f32, 1.0];
        c.update(0, &mut w, &[0.01, 0.0], &mut [0.0, 0.0], &mut [false; 2]);
        assert_ne!(w[0], 1.0, "any non-zero entry passes 1 > 0.5");
        // At 1 or above nothing would ever update, so a run file asking for it is refused;
        // the mechanism itself is the code's.
        let mut c = make(json!({"threshold": 0.5, "tensorwise-threshold": true}));
        c.threshold = 1.0;
        let mut w = vec![1.0f32];
        c.update(0, &mut w, &[5.0], &mut [0.0], &mut [false]);
        assert_eq!(w[0], 1.0, "nothing updates at threshold >= 1");
        let v = json!({"threshold": 1.0, "tensorwise-threshold": true});
        assert!(checked(parse_params("classp", &v).expect("params")).is_err());
    }

    #[test]
    fn a_step_leaves_sub_threshold_weights_unchanged() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let net = mlp(&s, 4, &dev);
        let b = batch(&s, 0, 16, &dev);
        let loss = CrossEntropyLossConfig::new()
            .init(&dev)
            .forward(net.forward(b.x.clone()), b.y.clone());
        let g = grads_host(&net, loss);
        let loss = CrossEntropyLossConfig::new()
            .init(&dev)
            .forward(net.forward(b.x.clone()), b.y.clone());
        // A threshold in the middle of the squared gradients.
        let mut g2: Vec<f32> = g.iter().flatten().map(|x| x * x).collect();
        g2.sort_by(f32::total_cmp);
        let thr = g2[g2.len() / 2] as f64;
        let mut c = make(json!({"threshold": thr, "lr": 0.1}));
        let before = host(&net);
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        let cx = ctx(&s, 0, &dev);
        c.after_backward(&cx, &net, &mut grads);
        // Whatever the run's optimizer did, CLASSP's update is what stays.
        let net = c.after_step(&cx, net);
        let after = host(&net);
        let (mut kept, mut moved) = (0, 0);
        for (k, ((_, _, w0), (_, _, w1))) in before.iter().zip(&after).enumerate() {
            for i in 0..w0.len() {
                let gi = g[k][i] as f64;
                if gi * gi > thr {
                    assert_ne!(w0[i], w1[i]);
                    moved += 1;
                } else {
                    assert_eq!(w0[i], w1[i], "sub-threshold weight changed");
                    kept += 1;
                }
            }
        }
        assert!(kept > 0 && moved > 0);
        assert!((c.fraction_updated() - moved as f64 / (kept + moved) as f64).abs() < 1e-12);
        // State round trip.
        let st = c.state();
        let mut back = make(json!({"threshold": thr, "lr": 0.1}));
        back.load_state(st.clone()).expect("load");
        assert_eq!(back.state().tensors, st.tensors);
        assert_eq!(back.acc, c.acc);
        let mut trunc = st;
        trunc.tensors.pop();
        assert!(make(json!({})).load_state(trunc).is_err());
    }

    /// A whole run through the trainer on Task-IL blobs: (mean Task-IL accuracy of each task
    /// just after training on it, the random-init baseline, fraction of weights ever updated).
    fn blobs_run(params: serde_json::Value) -> (f64, f64, f64) {
        use crate::optim::{OptimConfig, OptimKind};
        use crate::train::{TrainConfig, Trainer};
        let s = blobs("task-incremental", 2);
        let model = crate::model::ModelConfig::Mlp { hidden: vec![32] };
        let train = TrainConfig {
            epochs: 2,
            batch_size: 32,
            optimizer: OptimConfig::new(OptimKind::Sgd, 0.01),
            ..Default::default()
        };
        let strategy = build(&params).expect("classp");
        let mut t = Trainer::new(&s, model, train, 3, strategy);
        let out = t.run(&mut |_| {}).expect("run");
        // Each task's accuracy right after training on it (learning, not retention).
        let a = &out.task_il_accuracy;
        let acc = (0..a.len()).map(|k| a[k][k]).sum::<f64>() / a.len() as f64;
        let base = out.baseline_task_il.iter().sum::<f64>() / out.baseline_task_il.len() as f64;
        let st = t.strategy.state();
        let frac = st.json["fraction_updated"].as_f64().expect("fraction");
        (acc, base, frac)
    }

    /// The defect of the 0.5 default: per weight, g² > 0.5 almost never holds for a batch-mean
    /// loss, so a run with it froze nearly every weight and stayed at its random-init
    /// accuracy. A default run must update every weight and learn.
    #[test]
    fn a_default_run_learns_and_a_per_weight_half_freezes_nearly_all() {
        let (acc, base, frac) = blobs_run(json!(null));
        // (Weights of units whose ReLU never fires get no gradient under any threshold.)
        assert!(frac > 0.5, "default run updated only {frac} of the weights");
        assert!(acc > base + 25.0, "default run: {acc}% (baseline {base}%)");
        let (acc5, base5, frac5) = blobs_run(json!({"threshold": 0.5}));
        assert!(frac5 < 0.01, "threshold 0.5 updated {frac5} of the weights");
        assert!(
            acc5 < base5 + 5.0,
            "threshold 0.5: {acc5}% (baseline {base5}%)"
        );
    }

    /// The paper's two-phase protocol: a `scaling = false` task is plain SGD while A still
    /// accumulates; the next `scaling = true` task divides by the A the first one left.
    #[test]
    fn two_phase_schedule_sgd_then_scaled_by_the_kept_accumulator() {
        let sched = json!([{"threshold": 0.0, "scaling": false}, {"scaling": true}]);
        let c = make(json!({"lr": 0.1, "p": 1.0, "schedule": sched}));
        assert_eq!(c.phase(0), (0.0, false));
        assert_eq!(c.phase(1), (0.0, true));
        assert_eq!(
            c.phase(7),
            (0.0, true),
            "the last entry holds for later tasks"
        );
        let mut c = c;
        let s = blobs("task-incremental", 2);
        let (dev, _rng) = device();
        let mut net = mlp(&s, 4, &dev);
        let loss_grads = |net: &Net, task: usize| {
            let b = batch(&s, task, 16, &dev);
            let loss = |n: &Net| {
                CrossEntropyLossConfig::new()
                    .init(&dev)
                    .forward(n.forward(b.x.clone()), b.y.clone())
            };
            let g = grads_host(net, loss(net));
            (g, GradientsParams::from_grads(loss(net).backward(), net))
        };
        // Task 0 (scaling off): w − α·g exactly, A = Σ|g|.
        let mut a_after_0: Vec<Vec<f32>> = Vec::new();
        for step in 0..2 {
            let (g, mut grads) = loss_grads(&net, 0);
            let w0 = host(&net);
            let cx = ctx(&s, 0, &dev);
            c.after_backward(&cx, &net, &mut grads);
            net = c.after_step(&cx, net);
            let w1 = host(&net);
            for (k, ((_, _, w0), (_, _, w1))) in w0.iter().zip(&w1).enumerate() {
                for i in 0..w0.len() {
                    let want = (w0[i] as f64 - 0.1 * g[k][i] as f64) as f32;
                    assert_eq!(w1[i], want, "task 0 step {step}: not plain SGD");
                }
            }
            if step == 0 {
                a_after_0 = g
                    .iter()
                    .map(|v| v.iter().map(|x| x.abs()).collect())
                    .collect();
            } else {
                for (k, gk) in g.iter().enumerate() {
                    for (a, x) in a_after_0[k].iter_mut().zip(gk) {
                        *a = (*a as f64 + x.abs() as f64) as f32;
                    }
                }
            }
            let acc: Vec<Vec<f32>> = c.acc.iter().map(|(_, _, v)| v.clone()).collect();
            assert_eq!(acc, a_after_0, "A does not accumulate while scaling is off");
        }
        // Task 1 (scaling on): the step divides by ε + A, A carried over from task 0.
        let (g, mut grads) = loss_grads(&net, 1);
        let w0 = host(&net);
        let cx = ctx(&s, 1, &dev);
        c.after_backward(&cx, &net, &mut grads);
        net = c.after_step(&cx, net);
        let w1 = host(&net);
        let mut scaled = 0;
        for (k, ((_, _, w0), (_, _, w1))) in w0.iter().zip(&w1).enumerate() {
            for i in 0..w0.len() {
                let gi = g[k][i] as f64;
                if gi == 0.0 {
                    continue;
                }
                let a = (a_after_0[k][i] as f64 + gi.abs()) as f32 as f64;
                let want = (w0[i] as f64 - 0.1 * gi / (1e-5 + a)) as f32;
                assert!(
                    (w1[i] - want).abs() <= 1e-6 * want.abs().max(1.0),
                    "task 1: {} vs {want}",
                    w1[i]
                );
                assert_eq!(c.acc[k].2[i], a as f32, "A was reset");
                scaled += usize::from(a_after_0[k][i] > 0.0);
            }
        }
        assert!(scaled > 0, "no weight carried A into task 1");
    }

    #[test]
    fn bad_params_are_errors() {
        let p = build(&json!(null)).expect("defaults").params();
        assert_eq!(p["lr"], 0.2);
        assert_eq!(p["threshold"], 0.0);
        assert_eq!(p["p"], 1.0);
        assert_eq!(p["schedule"], json!([]));
        for (bad, key) in [
            (json!({"lr": 0.0}), "lr"),
            (json!({"threshold": -1.0}), "threshold"),
            (json!({"eps": 0.0}), "eps"),
            (json!({"p": 0.0}), "p"),
            (json!({"treshold": 0.1}), "treshold"),
            (
                json!({"schedule": [{"threshold": -1e-4}]}),
                "schedule[0].threshold",
            ),
            (
                json!({"schedule": [{}, {"threshold": 1e-4, "scale": true}]}),
                "scale",
            ),
            (
                json!({"schedule": [{"scaling": "yes"}]}),
                "schedule[0].scaling",
            ),
            (json!({"schedule": [{}, 0.5]}), "schedule[1]"),
            (
                json!({"schedule": {"threshold": 0.0}}),
                "schedule must be a list",
            ),
            (json!({"threshold": "small"}), "threshold must be a number"),
            (json!({"scaling": 1}), "scaling must be true or false"),
            // A top-level key that every entry overrides, or eps/p where nothing scales.
            (
                json!({"threshold": 1e-4, "schedule": [{"threshold": 0.0}]}),
                "threshold has no effect",
            ),
            (
                json!({"scaling": false, "schedule": [{"scaling": true}]}),
                "scaling has no effect",
            ),
            (
                json!({"p": 2.0, "schedule": [{"scaling": false}]}),
                "p has no effect",
            ),
            (
                json!({"eps": 1e-3, "scaling": false, "schedule": [{"threshold": 0.0}]}),
                "eps has no effect",
            ),
            (json!({"schedule": [{}]}), "schedule[0] sets nothing"),
            (
                json!({"tensorwise-threshold": true}),
                "tensorwise-threshold = true has no effect",
            ),
            (
                json!({"tensorwise-threshold": true, "threshold": 1.0}),
                "freezes every weight",
            ),
            (
                json!({"tensorwise-threshold": true, "threshold": 0.5,
                    "schedule": [{"threshold": 2.0}, {"scaling": true}]}),
                "freezes every weight",
            ),
        ] {
            let e = build(&bad)
                .err()
                .unwrap_or_else(|| panic!("{bad} accepted"))
                .to_string();
            assert!(e.contains(key), "{bad}: {e}");
        }
        // eps and p count when some task scales.
        let ok = json!({"p": 2.0, "schedule": [{"scaling": false}, {"scaling": true}]});
        assert!(build(&ok).is_ok());
    }

    /// The schedule written in a run file reaches the strategy, and `params()` (stored in
    /// checkpoints, compared on resume) round-trips it unchanged.
    #[test]
    fn schedule_from_a_run_file_round_trips_and_fits_the_task_count() {
        let toml = "[scenario]\nkind = \"task-incremental\"\ndataset = \"blobs\"\ntasks = 2\n\
                    [model]\nkind = \"mlp\"\nhidden = [4]\n[strategy]\nname = \"classp\"\n\
                    threshold = 1e-4\n\
                    schedule = [{ scaling = false }, { threshold = 0.0, scaling = true }]\n\
                    [train.optimizer]\nlr = 0.01\n";
        let cfg = crate::config::RunConfig::parse_toml(toml).expect("run file");
        let v = serde_json::Value::Object(cfg.strategy.params.clone());
        let st = build(&v).expect("classp");
        let p = st.params();
        assert_eq!(
            p["schedule"],
            json!([{"scaling": false}, {"threshold": 0.0, "scaling": true}])
        );
        assert_eq!(p["threshold"], 1e-4);
        assert_eq!(build(&p).expect("again").params(), p);
        let c = make(p);
        assert_eq!(c.phase(0), (1e-4, false));
        assert_eq!(c.phase(1), (0.0, true));
        // More entries than tasks: refused before training.
        let s = blobs("task-incremental", 2);
        let (dev, _rng) = device();
        let net = mlp(&s, 4, &dev);
        let setup_with = |st: &dyn Strategy, optim: &crate::optim::OptimConfig, reset: bool| {
            st.check(&Setup {
                scenario: &s,
                net: &net,
                optim,
                reset_optimizer: reset,
            })
        };
        let setup = |st: &dyn Strategy| setup_with(st, &crate::optim::OptimConfig::DEFAULT, true);
        assert!(setup(&c).is_ok());
        let one = json!({"threshold": 0.0});
        let three = make(json!({"schedule": [one, one, one]}));
        let e = setup(&three).expect_err("3 entries, 2 tasks").to_string();
        assert!(e.contains("schedule"), "{e}");
        // The run's optimizer never steps a weight: its clipping and carried state are refused.
        let clip = crate::optim::OptimConfig {
            clip_grad_norm: Some(1.0),
            ..crate::optim::OptimConfig::DEFAULT
        };
        let e = setup_with(&c, &clip, true).expect_err("clip").to_string();
        assert!(e.contains("clip-grad-norm"), "{e}");
        let e = setup_with(&c, &crate::optim::OptimConfig::DEFAULT, false)
            .expect_err("carried state")
            .to_string();
        assert!(e.contains("reset-optimizer"), "{e}");
    }
}
