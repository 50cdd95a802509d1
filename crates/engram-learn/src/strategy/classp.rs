//! CLASSP: Ludwig 2024, "CLASSP: ... Adjustment Suppression and Sparsity Promotion" (arXiv 2405.09637).
//! Card: shared/methods/regularization.md (CLASSP).
//!
//! An optimizer-only method with one accumulator A per weight (never reset between tasks).
//! At every step, for each weight whose gradient passes the threshold test:
//! A ← A + |g|^p, then w ← w − lr·g/(ε + A)^(1/p) (`scaling = true`) or w ← w − lr·g
//! (`scaling = false`, engram's reading of the README pseudo-code). Weights that fail the
//! test are left exactly unchanged. The threshold test is per weight, g² > threshold (the
//! paper); `tensorwise-threshold = true` mimics the reference code, which reduces the
//! squared-gradient tensor with "any" first, so a whole tensor updates iff
//! 1 > threshold and some entry is non-zero. engram applies the exponent p in the
//! accumulator (the code sums |g| whatever p is).
//!
//! CLASSP replaces the run's optimizer: its update is computed in `after_backward` from the
//! weights before the step and written over the configured optimizer's result in
//! `after_step`, so its `lr` (not the run's) is the step size and the run's optimizer and
//! schedule have no effect on the weights.

use super::parts::penalty::{Host, host, json_usize, take};
use super::{Ctx, State, Strategy, no_effect, parse_params};
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
}

fn default_lr() -> f64 {
    0.2
}
fn default_threshold() -> f64 {
    0.5
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
    pub threshold: f64,
    pub eps: f64,
    pub p: f64,
    pub scaling: bool,
    pub tensorwise: bool,
    /// Accumulators, per parameter (visiting order).
    pub acc: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Weights after this step's update (written in `after_step`).
    pending: Option<BTreeMap<String, Vec<f32>>>,
    /// Weights updated at least once (for the "fraction of weights ever updated" figure).
    pub touched: Vec<Vec<bool>>,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("classp", v)?;
    if !(p.lr.is_finite() && p.lr > 0.0) {
        return Err(err!("strategy classp: lr must be > 0, got {}", p.lr));
    }
    if !(p.threshold.is_finite() && p.threshold >= 0.0) {
        return Err(err!(
            "strategy classp: threshold must be >= 0, got {}",
            p.threshold
        ));
    }
    if !(p.eps.is_finite() && p.eps > 0.0) {
        return Err(err!("strategy classp: eps must be > 0, got {}", p.eps));
    }
    if !(p.p.is_finite() && p.p > 0.0) {
        return Err(err!("strategy classp: p must be > 0, got {}", p.p));
    }
    let off = "with scaling = false";
    no_effect("classp", "eps", !p.scaling && p.eps != default_eps(), off)?;
    no_effect("classp", "p", !p.scaling && p.p != default_p(), off)?;
    Ok(Box::new(Classp {
        lr: p.lr,
        threshold: p.threshold,
        eps: p.eps,
        p: p.p,
        scaling: p.scaling,
        tensorwise: p.tensorwise_threshold,
        acc: Vec::new(),
        pending: None,
        touched: Vec::new(),
    }))
}

impl Classp {
    /// The update of one tensor: new weights from weights `w`, gradient `g`, accumulator `a`.
    pub fn update(&self, w: &mut [f32], g: &[f32], a: &mut [f32], touched: &mut [bool]) {
        let tensor_pass = if self.tensorwise {
            let any = g.iter().any(|&x| x * x != 0.0);
            (if any { 1.0 } else { 0.0 }) > self.threshold
        } else {
            true
        };
        let inv_p = 1.0 / self.p;
        for i in 0..w.len() {
            let gi = g[i] as f64;
            let pass = if self.tensorwise {
                tensor_pass
            } else {
                gi * gi > self.threshold
            };
            if !pass {
                continue;
            }
            let ai = a[i] as f64 + gi.abs().powf(self.p);
            a[i] = ai as f32;
            let step = if self.scaling {
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
        };
        serde_json::to_value(p).unwrap_or_default()
    }

    fn after_backward(&mut self, _cx: &Ctx, net: &Net, grads: &mut GradientsParams) {
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
            self.update(&mut h[k].2, &g, &mut acc[k].2, &mut touched[k]);
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
        let p: Params = parse_params("classp", &v).expect("params");
        Classp {
            lr: p.lr,
            threshold: p.threshold,
            eps: p.eps,
            p: p.p,
            scaling: p.scaling,
            tensorwise: p.tensorwise_threshold,
            acc: Vec::new(),
            pending: None,
            touched: Vec::new(),
        }
    }

    #[test]
    fn per_weight_threshold_and_suppression() {
        let c = make(json!({"lr": 0.5, "threshold": 0.1, "p": 2.0}));
        let mut w = vec![1.0f32, 1.0, 1.0];
        let g = [0.1f32, -0.4, 2.0];
        let mut a = vec![0.0f32, 0.0, 3.0];
        let mut t = vec![false; 3];
        c.update(&mut w, &g, &mut a, &mut t);
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
        c.update(&mut w, &[0.2], &mut [0.0], &mut [false]);
        assert!((w[0] - 0.9).abs() < 1e-6);
    }

    #[test]
    fn tensorwise_threshold_mimics_the_reference_code() {
        let c = make(json!({"threshold": 0.5, "tensorwise-threshold": true}));
        let mut w = vec![1.0f32, 1.0];
        c.update(&mut w, &[0.01, 0.0], &mut [0.0, 0.0], &mut [false; 2]);
        assert_ne!(w[0], 1.0, "any non-zero entry passes 1 > 0.5");
        let c = make(json!({"threshold": 1.0, "tensorwise-threshold": true}));
        let mut w = vec![1.0f32];
        c.update(&mut w, &[5.0], &mut [0.0], &mut [false]);
        assert_eq!(w[0], 1.0, "nothing updates at threshold >= 1");
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

    #[test]
    fn bad_params_are_errors() {
        let p = build(&json!(null)).expect("defaults").params();
        assert_eq!(p["lr"], 0.2);
        assert_eq!(p["threshold"], 0.5);
        assert_eq!(p["p"], 1.0);
        for bad in [
            json!({"lr": 0.0}),
            json!({"threshold": -1.0}),
            json!({"eps": 0.0}),
            json!({"p": 0.0}),
            json!({"treshold": 0.1}),
        ] {
            assert!(build(&bad).is_err(), "{bad}");
        }
    }
}
