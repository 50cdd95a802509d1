//! KD + WA: distillation and Weight Aligning (Zhao et al., CVPR 2020, arXiv 1911.07053).
//! Card: shared/methods/replay_distillation.md ("KD + Weight Aligning").
//!
//! Training set of task t: its own examples plus the exemplar memory.
//! Loss: (1 − λ)·CE + λ·KD_T on the old-class logits, λ = C_old/(C_old + C_new) with C_new the
//! task's classes (also when they recur, as in Domain-IL), KD as in `lwf` (KL form, no T²).
//! After each task with old classes, γ = mean old-row norm / mean new-row norm of the output
//! layer (bias excluded), and the new-class rows and biases are multiplied by γ; every γ is
//! kept in the state (`gammas`). Exemplars: a fixed memory of `exemplars` examples split evenly
//! over the classes seen (PyCIL's fixed memory); a new class's examples are ranked by herding
//! on the L2-normalised features of the model at the end of its task (iCaRL, as PyCIL), or in a
//! seeded random order (`selection = "random"`), and every class is cut to its share.

use super::lwf::{old_classes, old_head_kd, teacher_logits};
use super::parts::buffer::{ce_by_task, host2};
use super::{
    Batch, Ctx, Setup, State, Strategy, check_per_class, in_range, no_effect, parse_params,
    task_examples,
};
use crate::model::Net;
use crate::model::params::load_params;
use crate::scenario::Part;
use crate::{Result, err};
use burn::module::Module;
use burn::prelude::*;
use engram_weights::rng::Rng;
use std::collections::BTreeMap;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Exemplar memory in examples, over all classes, at least one per class (PyCIL: 2000).
    #[serde(default = "default_exemplars")]
    pub exemplars: usize,
    /// Temperature T of the distillation (2).
    #[serde(default = "default_t")]
    pub temperature: f64,
    /// Distil the old-class logits (the card's ablation turns it off).
    #[serde(default = "yes")]
    pub kd: bool,
    /// Align the new-class rows after each task (the card's ablation turns it off).
    #[serde(default = "yes")]
    pub wa: bool,
    /// How exemplars are chosen: `herding` (PyCIL) or `random`.
    #[serde(default = "default_selection")]
    pub selection: Selection,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Selection {
    Herding,
    Random,
}

fn default_selection() -> Selection {
    Selection::Herding
}

fn default_exemplars() -> usize {
    2000
}
fn default_t() -> f64 {
    2.0
}
fn yes() -> bool {
    true
}

pub struct KdWa {
    p: Params,
    teacher: Option<Net>,
    /// Exemplars per class, in priority order.
    memory: BTreeMap<u32, Vec<(usize, usize)>>,
    /// (task, γ) of every alignment.
    gammas: Vec<(usize, f64)>,
    dim: usize,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("kd-wa", v)?;
    if !(p.temperature.is_finite() && p.temperature > 0.0) {
        return Err(err!(
            "strategy kd-wa: temperature must be finite and > 0, got {}",
            p.temperature
        ));
    }
    in_range("kd-wa", "exemplars", p.exemplars, 1, usize::MAX, "")?;
    no_effect(
        "kd-wa",
        "temperature",
        !p.kd && p.temperature != default_t(),
        "with kd = false",
    )?;
    Ok(Box::new(KdWa {
        p,
        teacher: None,
        memory: BTreeMap::new(),
        gammas: Vec::new(),
        dim: 0,
    }))
}

/// Weight Aligning: scales the output-layer rows (and biases) of `new` classes so that their
/// mean L2 norm equals that of the `old` rows; returns the network and γ (`None` when either
/// set is empty or the new rows are all zero).
pub fn align(net: Net, old: &[u32], new: &[u32]) -> Result<(Net, Option<f64>)> {
    if old.is_empty() || new.is_empty() {
        return Ok((net, None));
    }
    let (wn, bn) = net.head_names();
    let mut values = crate::model::params::named_values(&net);
    let c = {
        let w = values
            .get(&wn)
            .ok_or_else(|| err!("weight aligning: no parameter {wn}"))?;
        values.get(&bn).map_or(0, |b| b.len()).max(1).min(w.len())
    };
    let w = values
        .get_mut(&wn)
        .ok_or_else(|| err!("weight aligning: no parameter {wn}"))?;
    // burn's Linear weight is [inputs, classes]: class j's row is column j.
    let inputs = w.len() / c;
    let norm = |w: &[f32], j: usize| {
        (0..inputs)
            .map(|i| (w[i * c + j] as f64).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let mean = |w: &[f32], set: &[u32]| {
        set.iter().map(|&j| norm(w, j as usize)).sum::<f64>() / set.len() as f64
    };
    if old.iter().chain(new).any(|&j| j as usize >= c) {
        return Err(err!("weight aligning: a class is beyond the {c} outputs"));
    }
    let (mo, mn) = (mean(w, old), mean(w, new));
    if mn <= 0.0 {
        return Ok((net, None));
    }
    let gamma = mo / mn;
    for &j in new {
        for i in 0..inputs {
            w[i * c + j as usize] = (w[i * c + j as usize] as f64 * gamma) as f32;
        }
    }
    if let Some(b) = values.get_mut(&bn) {
        for &j in new {
            b[j as usize] = (b[j as usize] as f64 * gamma) as f32;
        }
    }
    Ok((load_params(net, &values)?, Some(gamma)))
}

/// Herding (iCaRL): `n` feature rows of width `d`, L2-normalised, ranked greedily so that the
/// running mean of the first k stays closest to the class mean; the first `m` indices (ties:
/// the lowest index).
pub fn herding(feats: &[f32], d: usize, m: usize) -> Vec<usize> {
    let n = feats.len().checked_div(d).unwrap_or(0);
    let rows: Vec<Vec<f64>> = (0..n)
        .map(|i| {
            let r = &feats[i * d..(i + 1) * d];
            let norm = r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
            r.iter().map(|&v| v as f64 / norm.max(1e-12)).collect()
        })
        .collect();
    let mut mu = vec![0f64; d];
    for r in &rows {
        for (a, b) in mu.iter_mut().zip(r) {
            *a += b / n.max(1) as f64;
        }
    }
    let sq: Vec<f64> = rows.iter().map(|r| r.iter().map(|v| v * v).sum()).collect();
    let mut sum = vec![0f64; d];
    let mut used = vec![false; n];
    let mut order = Vec::with_capacity(m.min(n));
    for k in 1..=m.min(n) {
        // ‖μ − (S + φ)/k‖² = const − (2/k)·(μ − S/k)·φ + ‖φ‖²/k².
        let k = k as f64;
        let g: Vec<f64> = (0..d).map(|j| mu[j] - sum[j] / k).collect();
        let mut best = (f64::INFINITY, usize::MAX);
        for (i, r) in rows.iter().enumerate() {
            if used[i] {
                continue;
            }
            let dot: f64 = g.iter().zip(r).map(|(a, b)| a * b).sum();
            let dist = -2.0 / k * dot + sq[i] / (k * k);
            if dist < best.0 {
                best = (dist, i);
            }
        }
        let i = best.1;
        if i == usize::MAX {
            break;
        }
        used[i] = true;
        for (a, b) in sum.iter_mut().zip(&rows[i]) {
            *a += b;
        }
        order.push(i);
    }
    order
}

impl KdWa {
    fn exemplar_ids(&self) -> Vec<(usize, usize)> {
        self.memory.values().flatten().copied().collect()
    }

    /// Adds the current task's classes to the memory, then cuts every class to its share.
    fn update_memory(&mut self, cx: &Ctx, net: &Net) {
        let s = cx.scenario;
        self.dim = s.train.dim;
        let classes = {
            let mut all: Vec<u32> = self.memory.keys().copied().collect();
            all.extend(s.tasks[cx.task].classes.iter().copied());
            all.sort_unstable();
            all.dedup();
            all.len()
        };
        let share = self.p.exemplars / classes.max(1);
        let valid = net.valid();
        let base = cx.device.clone().inner();
        for &c in &s.tasks[cx.task].classes {
            if self.memory.contains_key(&c) {
                continue;
            }
            let mut ids: Vec<(usize, usize)> = s.tasks[cx.task]
                .train
                .iter()
                .filter(|&&i| s.train.y.get(i) == Some(&c))
                .map(|&i| (cx.task, i))
                .collect();
            match self.p.selection {
                Selection::Random => {
                    Rng::keyed(cx.seed, "kd-wa-exemplars", c as u64).shuffle(&mut ids)
                }
                Selection::Herding => {
                    let mut feats = Vec::new();
                    let mut d = 0;
                    for chunk in ids.chunks(1000) {
                        let (x, _) = s.gather(Part::Train, chunk);
                        let x = Tensor::<2>::from_data(
                            TensorData::new(x, [chunk.len(), s.train.dim]),
                            &base,
                        );
                        let f = valid.features(x);
                        d = f.dims()[1];
                        feats.extend(host2(f));
                    }
                    let order = herding(&feats, d, share);
                    ids = order.into_iter().map(|i| ids[i]).collect();
                }
            }
            self.memory.insert(c, ids);
        }
        for v in self.memory.values_mut() {
            v.truncate(share);
        }
    }
}

impl Strategy for KdWa {
    fn name(&self) -> &'static str {
        "kd-wa"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn check(&self, s: &Setup) -> Result<()> {
        if self.p.wa && s.net.head() == crate::model::Head::WeightNorm {
            return Err(
                "strategy kd-wa: wa = true has no effect with model.head = \"weightnorm\" (its \
                 rows are normalised, so aligning their norms changes nothing); set wa = false"
                    .into(),
            );
        }
        check_per_class("kd-wa", "exemplars", self.p.exemplars, s, "")
    }

    fn before_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        self.teacher = (cx.task > 0 && self.p.kd).then(|| net.valid());
        Ok(net)
    }

    fn train_examples(&mut self, cx: &Ctx) -> Vec<(usize, usize)> {
        let mut v = task_examples(cx);
        v.extend(self.exemplar_ids());
        v
    }

    fn loss(
        &mut self,
        cx: &Ctx,
        _net: &Net,
        batch: &Batch,
        logits: Tensor<2>,
        _loss: Tensor<1>,
    ) -> Tensor<1> {
        // The batch mixes tasks: each example's CE is over its own task's classes in Task-IL.
        let ce = ce_by_task(cx, &batch.ids, logits.clone(), batch.y.clone());
        let Some(teacher) = &self.teacher else {
            return ce;
        };
        // C_new = the task's classes: the new ones in Class-IL; in Domain-IL, where every
        // class recurs, counting none would leave no CE at all (λ = 1).
        let old = old_classes(cx).len();
        let new = cx.scenario.tasks[cx.task].classes.len();
        let lambda = old as f64 / (old + new).max(1) as f64;
        let z_old = teacher_logits(teacher, &batch.x, cx.device);
        match old_head_kd(cx, logits, z_old, self.p.temperature) {
            Some(k) => ce.mul_scalar(1.0 - lambda) + k.mul_scalar(lambda),
            None => ce,
        }
    }

    fn after_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        let mut net = net;
        if self.p.wa {
            let old = old_classes(cx);
            let new: Vec<u32> = cx.scenario.tasks[cx.task]
                .classes
                .iter()
                .copied()
                .filter(|c| !old.contains(c))
                .collect();
            let (n, gamma) = align(net, &old, &new)?;
            net = n;
            if let Some(g) = gamma {
                self.gammas.push((cx.task, g));
            }
        }
        if self.p.exemplars > 0 {
            self.update_memory(cx, &net);
        }
        Ok(net)
    }

    fn state_bytes(&self) -> u64 {
        (self.exemplar_ids().len() * (self.dim * 4 + 4)) as u64
    }

    fn state(&self) -> State {
        State {
            tensors: Vec::new(),
            json: serde_json::json!({
                "memory": self.memory.iter().map(|(c, v)| (*c, v.clone())).collect::<Vec<_>>(),
                "gammas": self.gammas,
                "dim": self.dim,
            }),
        }
    }

    fn load_state(&mut self, state: State) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Saved {
            memory: Vec<(u32, Vec<(usize, usize)>)>,
            gammas: Vec<(usize, f64)>,
            dim: usize,
        }
        let s: Saved = serde_json::from_value(state.json)
            .map_err(|e| err!("strategy kd-wa: bad saved state: {e}"))?;
        self.memory = s.memory.into_iter().collect();
        self.gammas = s.gammas;
        self.dim = s.dim;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::host_params;
    use crate::strategy::lwf::tests::blobs_ci;

    fn row_norms(net: &Net, classes: &[u32]) -> (f64, Vec<f32>) {
        let (wn, bn) = net.head_names();
        let hp = host_params(net);
        let w = &hp.iter().find(|(i, _)| i.name == wn).expect("w").1;
        let b = hp.iter().find(|(i, _)| i.name == bn).expect("b").1.clone();
        let c = b.len();
        let m = classes
            .iter()
            .map(|&j| {
                (0..w.len() / c)
                    .map(|i| (w[i * c + j as usize] as f64).powi(2))
                    .sum::<f64>()
                    .sqrt()
            })
            .sum::<f64>()
            / classes.len() as f64;
        (m, b)
    }

    #[test]
    fn weight_aligning_equalises_old_and_new_mean_row_norms() {
        let s = blobs_ci();
        let d = Device::flex().autodiff();
        for model in [
            crate::model::ModelConfig::Mlp { hidden: vec![8] },
            crate::model::ModelConfig::Vit {
                patch: 4,
                d_model: 8,
                layers: 1,
                heads: 2,
            },
        ] {
            let net = model
                .build(s.train.dim, s.train.image, s.num_outputs, &d)
                .expect("net");
            // Make the new classes' rows three times larger, as after training on them.
            let (wn, bn) = net.head_names();
            let mut vals = crate::model::params::named_values(&net);
            let c = s.num_outputs;
            for (k, x) in vals.get_mut(&wn).expect("w").iter_mut().enumerate() {
                if (2..4).contains(&(k % c)) {
                    *x *= 3.0;
                }
            }
            let net = load_params(net, &vals).expect("load");
            let (old, new) = ([0u32, 1], [2u32, 3]);
            let (o0, b0) = row_norms(&net, &old);
            let (n0, _) = row_norms(&net, &new);
            assert!((n0 / o0 - 1.0).abs() > 0.5);
            let mut st = build(&serde_json::json!({"exemplars": 4})).expect("kd-wa");
            let cx = Ctx {
                scenario: &s,
                task: 1,
                device: &d,
                seed: 2,
                step: 0,
                optim: &crate::optim::OptimConfig::DEFAULT,
                lr: 1e-3,
                steps: 100,
            };
            let net = st.after_task(&cx, net).expect("align");
            let (o1, b1) = row_norms(&net, &old);
            let (n1, _) = row_norms(&net, &new);
            assert!((o1 - n1).abs() < 1e-5 * o1, "old {o1} new {n1}");
            assert!((o1 - o0).abs() < 1e-7, "old rows unchanged");
            let gamma = o0 / n0;
            for j in 0..c {
                let want = if (2..4).contains(&j) {
                    b0[j] as f64 * gamma
                } else {
                    b0[j] as f64
                };
                assert!((b1[j] as f64 - want).abs() < 1e-6, "bias {j}");
            }
            let g = st.state().json["gammas"][0][1].as_f64().expect("gamma");
            assert!((g - gamma).abs() < 1e-9);
            let _ = bn;
        }
    }

    #[test]
    fn exemplars_are_split_evenly_and_round_trip() {
        for sel in ["herding", "random"] {
            exemplars_split_evenly(sel);
        }
    }

    fn exemplars_split_evenly(sel: &str) {
        let s = blobs_ci();
        let d = Device::flex().autodiff();
        let net = crate::model::ModelConfig::Mlp { hidden: vec![8] }
            .build(s.train.dim, s.train.image, s.num_outputs, &d)
            .expect("net");
        let mut st = build(&serde_json::json!({"exemplars": 30, "wa": false, "selection": sel}))
            .expect("kd-wa");
        let cx = |task| Ctx {
            scenario: &s,
            task,
            device: &d,
            seed: 2,
            step: 0,
            optim: &crate::optim::OptimConfig::DEFAULT,
            lr: 1e-3,
            steps: 100,
        };
        let net = st.after_task(&cx(0), net).expect("t0");
        let ex0 = st.train_examples(&cx(1));
        assert_eq!(ex0.len(), s.tasks[1].train.len() + 30);
        let net = st.after_task(&cx(1), net).expect("t1");
        let _ = net;
        let ex = st.train_examples(&cx(2));
        let mem = &ex[s.tasks[2].train.len()..];
        assert_eq!(mem.len(), 28);
        let mut per = BTreeMap::new();
        for &(_, i) in mem {
            *per.entry(s.train.y[i]).or_insert(0) += 1;
        }
        assert_eq!(per.values().copied().collect::<Vec<_>>(), vec![7, 7, 7, 7]);
        let mut st2 = build(&serde_json::json!({"exemplars": 30, "wa": false, "selection": sel}))
            .expect("kd-wa");
        st2.load_state(st.state()).expect("load");
        assert_eq!(st2.train_examples(&cx(2)), ex);
        assert_eq!(st2.state_bytes(), st.state_bytes());
        assert!(
            st2.load_state(State {
                tensors: vec![],
                json: serde_json::json!({"memory": 3})
            })
            .is_err()
        );
    }

    #[test]
    fn herding_follows_the_class_mean() {
        let s = std::f32::consts::FRAC_1_SQRT_2;
        // Rows (1,0), (0,1), (s,s), (2,0); normalised, their mean is ((2+s)/4, (1+s)/4):
        // (s,s) is closest, then (1,0) (tie with the last, lowest index), then (0,1).
        let f = [1.0, 0.0, 0.0, 1.0, s, s, 2.0, 0.0];
        assert_eq!(herding(&f, 2, 4), vec![2, 0, 1, 3]);
        assert_eq!(herding(&f, 2, 2), vec![2, 0]);
        assert_eq!(herding(&f, 2, 9).len(), 4);
        assert!(herding(&[], 2, 3).is_empty());
    }

    #[test]
    fn invalid_kd_wa_params_are_errors() {
        for v in [
            serde_json::json!({"temperature": -2.0}),
            serde_json::json!({"exemplars": -1}),
            serde_json::json!({"herding": true}),
            serde_json::json!({"selection": "closest"}),
        ] {
            assert!(build(&v).is_err(), "{v}");
        }
        assert_eq!(
            build(&serde_json::Value::Null).expect("defaults").params(),
            serde_json::json!({"exemplars": 2000, "temperature": 2.0, "kd": true, "wa": true,
                "selection": "herding"})
        );
    }
}
