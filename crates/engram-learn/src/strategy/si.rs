//! SI: Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic Intelligence" (ICML).
//! Card: shared/methods/regularization.md (SI).
//!
//! Per task: ω ← 0 and θ_start ← θ; after every optimizer step ω_i += −g_i·Δθ_i, with g the
//! gradient of the **unregularised** task loss (the total gradient minus the analytic
//! penalty gradient 2c·Ω·(θ − θ̃)) and Δθ the actual change measured after the step (so it
//! includes momentum and Adam); at the end of the task Ω_i ← max(0, Ω_i + ω_i/(D_i² + ξ)),
//! D = θ − θ_start (the clamp at 0 is engram's choice), and θ̃ ← θ.
//! Loss: L_t + c·Σ_i Ω_i·(θ_i − θ̃_i)² (no ½: the card's form). Defaults c = 1
//! (continual-learning-baselines), ξ = 0.1 (van de Ven; continual-learning-baselines).

use super::parts::penalty::{Host, Quadratic, Term, check_nonneg, host, json_usize};
use super::{Batch, Ctx, State, Strategy, parse_params};
use crate::model::Net;
use crate::model::params::{flat_params, grad_flat};
use crate::{Result, err};
use burn::optim::GradientsParams;
use burn::prelude::*;

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    /// Strength c of the surrogate loss.
    #[serde(default = "default_c")]
    c: f64,
    /// Damping ξ.
    #[serde(default = "default_xi")]
    xi: f64,
}

fn default_c() -> f64 {
    1.0
}
fn default_xi() -> f64 {
    0.1
}

pub struct Si {
    pub c: f64,
    pub xi: f64,
    /// Tasks consolidated so far.
    pub tasks: usize,
    /// One term: weight Ω, anchor θ̃.
    pub quad: Quadratic,
    /// Per task (transient, reset in `before_task`).
    pub omega: Vec<Vec<f32>>,
    start: Host,
    prev: Host,
    g: Vec<Vec<f32>>,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("si", v)?;
    check_nonneg("si", "c", p.c)?;
    if !(p.xi.is_finite() && p.xi > 0.0) {
        return Err(err!(
            "strategy si: xi must be a finite number > 0, got {}",
            p.xi
        ));
    }
    Ok(Box::new(Si::new(p.c, p.xi)))
}

impl Si {
    pub fn new(c: f64, xi: f64) -> Si {
        Si {
            c,
            xi,
            tasks: 0,
            quad: Quadratic::default(),
            omega: Vec::new(),
            start: Vec::new(),
            prev: Vec::new(),
            g: Vec::new(),
        }
    }

    /// Ω per parameter (visiting order); empty before the first task ends.
    pub fn importance(&self) -> Vec<Vec<f32>> {
        self.quad
            .terms
            .first()
            .and_then(|t| t.weight.clone())
            .unwrap_or_default()
    }
}

impl Strategy for Si {
    fn name(&self) -> &'static str {
        "si"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(Params {
            c: self.c,
            xi: self.xi,
        })
        .unwrap_or_default()
    }

    fn before_task(&mut self, _cx: &Ctx, net: Net) -> Result<Net> {
        self.start = host(&net);
        self.omega = self
            .start
            .iter()
            .map(|(_, _, v)| vec![0.0; v.len()])
            .collect();
        if !self.quad.names.is_empty() {
            let names: Vec<&String> = self.start.iter().map(|(n, _, _)| n).collect();
            if self.quad.names.iter().collect::<Vec<_>>() != names {
                return Err(
                    "strategy si: the saved importance does not match the model's parameters"
                        .into(),
                );
            }
        }
        Ok(net)
    }

    fn loss(
        &mut self,
        cx: &Ctx,
        net: &Net,
        _batch: &Batch,
        _logits: Tensor<2>,
        loss: Tensor<1>,
    ) -> Tensor<1> {
        self.quad.add_to(loss, net, cx.device, self.c)
    }

    fn after_backward(&mut self, _cx: &Ctx, net: &Net, grads: &mut GradientsParams) {
        self.prev = host(net);
        let pen = if self.quad.terms.is_empty() {
            Vec::new()
        } else {
            self.quad.grad_host(&self.prev)
        };
        self.g = flat_params(net)
            .into_iter()
            .enumerate()
            .map(|(k, (info, _))| {
                let mut g: Vec<f32> = grad_flat(grads, &info)
                    .and_then(|t| t.into_data().convert::<f32>().try_into_vec::<f32>().ok())
                    .unwrap_or_else(|| vec![0.0; info.numel()]);
                if let Some(p) = pen.get(k) {
                    for (a, b) in g.iter_mut().zip(p) {
                        *a -= (self.c as f32) * b;
                    }
                }
                g
            })
            .collect();
    }

    fn after_step(&mut self, _cx: &Ctx, net: Net) -> Net {
        let now = host(&net);
        for (k, (_, _, th)) in now.iter().enumerate() {
            let (Some(om), Some(g), Some((_, _, before))) =
                (self.omega.get_mut(k), self.g.get(k), self.prev.get(k))
            else {
                continue;
            };
            for i in 0..th.len().min(om.len()).min(g.len()).min(before.len()) {
                om[i] += -g[i] * (th[i] - before[i]);
            }
        }
        net
    }

    fn after_task(&mut self, _cx: &Ctx, net: Net) -> Result<Net> {
        let now = host(&net);
        if self.quad.terms.is_empty() {
            self.quad.set_slots(
                now.iter().map(|(n, _, _)| n.clone()).collect(),
                now.iter().map(|(_, s, _)| s.clone()).collect(),
            );
            self.quad.terms.push(Term {
                weight: Some(now.iter().map(|(_, _, v)| vec![0.0; v.len()]).collect()),
                anchor: Vec::new(),
            });
        }
        let xi = self.xi as f32;
        let t = &mut self.quad.terms[0];
        if let Some(w) = &mut t.weight {
            for (k, (_, _, th)) in now.iter().enumerate() {
                let (Some(big), Some(om), Some((_, _, st))) =
                    (w.get_mut(k), self.omega.get(k), self.start.get(k))
                else {
                    continue;
                };
                for i in 0..big.len() {
                    let d = th[i] - st[i];
                    big[i] = (big[i] + om[i] / (d * d + xi)).max(0.0);
                }
            }
        }
        t.anchor = now.into_iter().map(|(_, _, v)| v).collect();
        self.quad.invalidate();
        self.tasks += 1;
        Ok(net)
    }

    fn state_bytes(&self) -> u64 {
        4 * self.quad.floats() as u64
    }

    fn state(&self) -> State {
        let mut st = State {
            tensors: Vec::new(),
            json: serde_json::json!({"tasks": self.tasks, "terms": self.quad.terms.len()}),
        };
        self.quad.save("si.", &mut st);
        st
    }

    fn load_state(&mut self, st: State) -> Result<()> {
        let terms = json_usize(&st, "terms")?;
        if terms > 1 {
            return Err(err!(
                "strategy si: state has {terms} terms, expected at most 1"
            ));
        }
        self.quad.load("si.", terms, true, &st)?;
        self.tasks = json_usize(&st, "tasks")?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::load_params;
    use crate::strategy::parts::testutil::{
        assert_close, batch, blobs, ctx, device, grads_host, mlp,
    };
    use burn::nn::loss::CrossEntropyLossConfig;
    use serde_json::json;

    fn ce(net: &Net, b: &Batch, dev: &Device) -> Tensor<1> {
        CrossEntropyLossConfig::new()
            .init(dev)
            .forward(net.forward(b.x.clone()), b.y.clone())
    }

    /// One hand step: only `fc.0.weight` moves, by −0.1·g.
    fn one_task(
        si: &mut Si,
        s: &crate::scenario::Scenario,
        task: usize,
        net: Net,
        dev: &Device,
    ) -> (Net, Vec<Vec<f32>>) {
        let cx = ctx(s, task, dev);
        let net = si.before_task(&cx, net).expect("before");
        let b = batch(s, task, 8, dev);
        let logits = net.forward(b.x.clone());
        let task_loss = ce(&net, &b, dev);
        let g_task = grads_host(&net, ce(&net, &b, dev));
        let loss = si.loss(&cx, &net, &b, logits, task_loss);
        let total = grads_host(&net, loss);
        let loss = si.loss(&cx, &net, &b, net.forward(b.x.clone()), ce(&net, &b, dev));
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        si.after_backward(&cx, &net, &mut grads);
        let moved_away = total
            .iter()
            .flatten()
            .zip(g_task.iter().flatten())
            .any(|(a, b)| (a - b).abs() > 1e-3);
        assert_eq!(
            moved_away,
            task > 0,
            "the penalty acts from the second task on"
        );
        for (k, g) in si.g.iter().enumerate() {
            assert_close(g, &g_task[k], 1e-4, "unregularised gradient");
        }
        let h = host(&net);
        let m = h
            .iter()
            .enumerate()
            .map(|(k, (n, _, v))| {
                let v = if n == "fc.0.weight" {
                    v.iter().zip(&g_task[k]).map(|(w, g)| w - 0.1 * g).collect()
                } else {
                    v.clone()
                };
                (n.clone(), v)
            })
            .collect();
        let net = load_params(net, &m).expect("load");
        let net = si.after_step(&cx, net);
        let net = si.after_task(&cx, net).expect("after");
        (net, g_task)
    }

    #[test]
    fn importance_is_zero_for_unmoved_weights_and_positive_for_moved_ones() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let mut si = Si::new(1.0, 0.1);
        let (net, g) = one_task(&mut si, &s, 0, mlp(&s, 4, &dev), &dev);
        let names: Vec<String> = host(&net).into_iter().map(|(n, _, _)| n).collect();
        let om = si.importance();
        for (k, n) in names.iter().enumerate() {
            if n == "fc.0.weight" {
                // ω = 0.1·g², D = 0.1·g: Ω = 0.1·g²/(0.01·g² + ξ).
                let want: Vec<f32> = g[k]
                    .iter()
                    .map(|g| 0.1 * g * g / (0.01 * g * g + 0.1))
                    .collect();
                assert_close(&om[k], &want, 1e-4, n);
                assert!(om[k].iter().any(|&v| v > 0.0));
            } else {
                assert!(om[k].iter().all(|&v| v == 0.0), "{n} never moved");
            }
        }
        // The second task sees a penalty; the recorded gradient is still the task's own.
        let before = si.importance();
        // Move away from θ̃ so the penalty's gradient is not zero on the second task.
        let m = host(&net)
            .into_iter()
            .map(|(n, _, v)| (n, v.iter().map(|x| x + 0.3).collect()))
            .collect();
        let net = load_params(net, &m).expect("load");
        let (_, _) = one_task(&mut si, &s, 1, net, &dev);
        let after = si.importance();
        for (a, b) in after.iter().flatten().zip(before.iter().flatten()) {
            assert!(*a >= *b - 1e-6 && *a >= 0.0);
        }
        // State round trip.
        let st = si.state();
        let mut back = Si::new(1.0, 0.1);
        back.load_state(st.clone()).expect("load");
        assert_eq!(back.state().tensors, st.tensors);
        assert_eq!(back.tasks, 2);
        assert_eq!(back.importance(), si.importance());
        let mut trunc = st;
        trunc.tensors.truncate(1);
        assert!(Si::new(1.0, 0.1).load_state(trunc).is_err());
    }

    #[test]
    fn bad_params_are_errors() {
        assert!(build(&json!(null)).is_ok());
        assert!(build(&json!({"c": -1.0})).is_err());
        assert!(build(&json!({"xi": 0.0})).is_err());
        assert!(build(&json!({"epsilon": 0.1})).is_err());
        let p = build(&json!({})).expect("defaults").params();
        assert_eq!((p["c"].as_f64(), p["xi"].as_f64()), (Some(1.0), Some(0.1)));
    }
}
