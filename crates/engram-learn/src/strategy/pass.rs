//! PASS-style baseline: Prototype Augmentation and Self-Supervision (Zhu et al., CVPR 2021).
//! Card: shared/methods/replay_distillation.md ("NAPA-VQ": the baseline it claims its gain over).
//!
//! Exemplar-free class-incremental learning, as NAPA-VQ's reference code inherits it:
//! - **Rotations are classes**: every batch is expanded ×4 by rot90 with label 4y + k, and a
//!   linear head of 4·classes outputs (held by the strategy, over the network's features) is
//!   trained with CE(logits/T) over the outputs of the classes seen so far.
//! - **Prototype augmentation** (from the second task): `pa-samples` pseudo-features
//!   p_c + r·ε, ε ~ N(0, I), for uniformly drawn old classes c, labelled 4c, trained with
//!   `pa-weight`·CE(head/T). p_c is the mean feature of class c's unrotated training images,
//!   stored at the end of its task and never refreshed; the radius r = √(mean_c tr(Σ_c)/d) is
//!   measured once, on the first task's classes, as PASS does.
//! - **Feature KD**: `kd-weight`·‖z − z_old‖_F over the rotated batch, not squared, not
//!   averaged, as NAPA-VQ's.
//! - **Optimisation**: the network with the run's optimizer and the head with Adam at the same
//!   settings (moments reset at each task), both at the run's rate ×`later-lr-factor` after
//!   the first task.
//! - **Prediction**: the head's rotation-0 outputs (column 4c for class c); `scores` are those
//!   logits, −1e4 for classes not seen.
//!
//! The scores of classes not yet seen are −1e4, so forward transfer reads 0 (the baseline row
//! is the untrained network's logits).
//!
//! Memory (`state_bytes`): the prototypes of the classes seen (f32) and the radius; the
//! rotation head is part of the model, and the frozen previous network (feature KD) is not
//! counted, as LwF's.

use super::parts::protos::{
    Owned, class_stats, feature_width, frobenius, rotate_batch, square_image,
};
use super::{Batch, Ctx, State, Strategy, parse_params};
use crate::model::Net;
use crate::{Result, err};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::Gradients;
use engram_weights::rng::Rng;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Temperature of the head's cross-entropy (PASS: 0.1).
    #[serde(default = "default_temperature")]
    pub temperature: f64,
    /// Factor on the learning rate after the first task (PASS: 0.1).
    #[serde(default = "default_factor")]
    pub later_lr_factor: f64,
    /// Weight of the feature distillation (PASS: 10).
    #[serde(default = "ten")]
    pub kd_weight: f64,
    /// Weight of the augmented prototypes' cross-entropy (PASS: 10).
    #[serde(default = "ten")]
    pub pa_weight: f64,
    /// Pseudo-features per step (PASS: the batch size, 64).
    #[serde(default = "default_pa_samples")]
    pub pa_samples: usize,
}

fn default_temperature() -> f64 {
    0.1
}
fn default_factor() -> f64 {
    0.1
}
fn ten() -> f64 {
    10.0
}
fn default_pa_samples() -> usize {
    64
}

impl Params {
    fn validate(&self) -> Result<()> {
        let bad = |key: &str, why: &str| Err(err!("strategy pass: {key} {why}"));
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return bad("temperature", "must be finite and > 0");
        }
        if !(self.later_lr_factor > 0.0 && self.later_lr_factor <= 1.0) {
            return bad("later-lr-factor", "must be in (0, 1]");
        }
        if !(self.kd_weight.is_finite() && self.kd_weight >= 0.0) {
            return bad("kd-weight", "must be finite and ≥ 0");
        }
        if !(self.pa_weight.is_finite() && self.pa_weight >= 0.0) {
            return bad("pa-weight", "must be finite and ≥ 0");
        }
        if self.pa_samples == 0 {
            return bad("pa-samples", "must be at least 1");
        }
        Ok(())
    }
}

pub struct Pass {
    p: Params,
    /// Feature width (0 until the first task).
    dim: usize,
    /// The rotation head: weight `[dim, 4·classes]`, bias `[1, 4·classes]`.
    w: Owned,
    b: Owned,
    /// Prototypes `[classes, dim]` (unrotated).
    protos: Vec<f32>,
    /// Classes seen (the current task's included) and learned in earlier tasks.
    active: Vec<bool>,
    old: Vec<bool>,
    radius: f64,
    draws: u64,
    image: (usize, usize, usize),
    teacher: Option<Net>,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("pass", v)?;
    p.validate()?;
    Ok(Box::new(Pass::new(p)))
}

impl Pass {
    fn new(p: Params) -> Pass {
        Pass {
            p,
            dim: 0,
            w: Owned::default(),
            b: Owned::default(),
            protos: Vec::new(),
            active: Vec::new(),
            old: Vec::new(),
            radius: 0.0,
            draws: 0,
            image: (0, 0, 0),
            teacher: None,
        }
    }

    /// `[1, 4·classes]`: 0 on the outputs of seen classes, −1e9 elsewhere.
    fn mask(&self, device: &Device) -> Tensor<2> {
        let m: Vec<f32> = (0..4 * self.active.len())
            .map(|j| if self.active[j / 4] { 0.0 } else { -1e9 })
            .collect();
        Tensor::<2>::from_data(TensorData::new(m, [1, 4 * self.active.len()]), device)
    }

    fn ce(&self, logits: Tensor<2>, labels: &[u32], device: &Device) -> Tensor<1> {
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(
                labels.iter().map(|&v| v as i64).collect::<Vec<_>>(),
                [labels.len()],
            ),
            device,
        );
        let logits = logits.div_scalar(self.p.temperature) + self.mask(device);
        CrossEntropyLossConfig::new()
            .init(device)
            .forward(logits, y)
    }

    /// The step's augmented prototypes and their labels (4c).
    fn augment(&mut self, seed: u64) -> (Vec<f32>, Vec<u32>) {
        let d = self.dim;
        let old: Vec<usize> = (0..self.old.len()).filter(|&c| self.old[c]).collect();
        let mut rng = Rng::keyed(seed, "pass-pa", self.draws);
        self.draws += 1;
        let mut out = Vec::with_capacity(self.p.pa_samples * d);
        let mut labels = Vec::with_capacity(self.p.pa_samples);
        for _ in 0..self.p.pa_samples {
            let c = old[rng.below(old.len())];
            for &v in &self.protos[c * d..(c + 1) * d] {
                out.push((v as f64 + self.radius * rng.normal_f64()) as f32);
            }
            labels.push(4 * c as u32);
        }
        (out, labels)
    }
}

impl Strategy for Pass {
    fn name(&self) -> &'static str {
        "pass"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn check(&self, s: &super::Setup) -> Result<()> {
        square_image("pass", s.scenario).map(drop)
    }

    fn lr_factor(&self, task: usize) -> f64 {
        if task > 0 {
            self.p.later_lr_factor
        } else {
            1.0
        }
    }

    fn before_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        let s = cx.scenario;
        self.image = square_image("pass", s)?;
        if self.dim == 0 && cx.task > 0 {
            return Err(err!(
                "strategy pass: starting at task {} needs the prototypes and head of the \
                 earlier tasks, which a run started from given weights does not have",
                cx.task
            ));
        }
        let valid = net.valid();
        if self.dim == 0 {
            let d = feature_width(&valid, s.train.dim);
            let o = 4 * s.num_outputs;
            // PyTorch's Linear initialisation: U(−1/√d, 1/√d) for weight and bias.
            let bound = 1.0 / (d as f32).sqrt();
            let mut rng = Rng::keyed(cx.seed, "pass-head", 0);
            let mut draw = |n: usize| -> Vec<f32> {
                (0..n)
                    .map(|_| (2.0 * rng.uniform() - 1.0) * bound)
                    .collect()
            };
            self.w = Owned::new(d, o, draw(d * o));
            self.b = Owned::new(1, o, draw(o));
            self.dim = d;
            self.protos = vec![0.0; s.num_outputs * d];
            self.active = vec![false; s.num_outputs];
            self.old = vec![false; s.num_outputs];
        }
        for t in &s.tasks[..cx.task] {
            for &c in &t.classes {
                self.old[c as usize] = true;
            }
        }
        for &c in &s.tasks[cx.task].classes {
            self.active[c as usize] = true;
        }
        self.w.reset_moments();
        self.b.reset_moments();
        self.teacher = (cx.task > 0).then_some(valid);
        Ok(net)
    }

    fn loss(
        &mut self,
        cx: &Ctx,
        net: &Net,
        batch: &Batch,
        _logits: Tensor<2>,
        _loss: Tensor<1>,
    ) -> Tensor<1> {
        let dev = cx.device;
        let (rx, ry) = rotate_batch(&batch.x_host, &batch.y_host, self.image);
        let n = ry.len();
        let x = Tensor::<2>::from_data(TensorData::new(rx, [n, cx.scenario.train.dim]), dev);
        let z = net.features(x.clone());
        let (w, b) = (self.w.leaf(dev), self.b.leaf(dev));
        let head = |f: Tensor<2>| f.matmul(w.clone()) + b.clone();
        let mut loss = self.ce(head(z.clone()), &ry, dev);
        if let Some(teacher) = &self.teacher {
            let old = teacher.features(x.inner());
            let old = Tensor::<2>::from_data(old.into_data(), dev);
            loss = loss + frobenius(z, old).mul_scalar(self.p.kd_weight);
            let (a, la) = self.augment(cx.seed);
            let a = Tensor::<2>::from_data(TensorData::new(a, [la.len(), self.dim]), dev);
            loss = loss + self.ce(head(a), &la, dev).mul_scalar(self.p.pa_weight);
        }
        loss
    }

    fn take_grads(&mut self, cx: &Ctx, grads: &mut Gradients) {
        let (gw, gb) = (self.w.take_grad(grads), self.b.take_grad(grads));
        let step = |t| cx.optim.adam_step(cx.lr, t);
        // Columns of classes not seen yet stay as initialised (Adam's weight decay would
        // shrink them before their task; PASS grows its head with fresh columns).
        let (w0, b0) = (self.w.values.clone(), self.b.values.clone());
        self.w.adam(step, &gw);
        self.b.adam(step, &gb);
        let o = self.w.cols;
        for j in (0..o).filter(|&j| !self.active[j / 4]) {
            for r in 0..self.w.rows {
                self.w.values[r * o + j] = w0[r * o + j];
            }
            self.b.values[j] = b0[j];
        }
    }

    fn optimizer_bytes(&self) -> u64 {
        (self.w.bytes(true) - self.w.bytes(false)) + (self.b.bytes(true) - self.b.bytes(false))
    }

    fn after_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        let classes = cx.scenario.tasks[cx.task].classes.clone();
        let stats = class_stats(&net.valid(), cx.scenario, cx.task, &classes, None);
        let d = self.dim;
        for (&c, st) in &stats {
            let c = c as usize;
            self.protos[c * d..(c + 1) * d].copy_from_slice(&st.mean());
        }
        if cx.task == 0 && !stats.is_empty() {
            let mean = stats
                .values()
                .map(|s| s.trace_cov() / d as f64)
                .sum::<f64>()
                / stats.len() as f64;
            self.radius = mean.sqrt();
        }
        Ok(net)
    }

    /// The head's rotation-0 logits; −1e4 for classes not seen. Before the first task (no
    /// head yet) the network's logits.
    fn scores(&self, net: &Net, x: Tensor<2>) -> Tensor<2> {
        if self.dim == 0 {
            return net.forward(x);
        }
        let dev = x.device();
        let (c, d, o) = (self.active.len(), self.dim, self.w.cols);
        let mut w = vec![0f32; d * c];
        for r in 0..d {
            for k in 0..c {
                w[r * c + k] = self.w.values[r * o + 4 * k];
            }
        }
        let b: Vec<f32> = (0..c)
            .map(|k| match self.active[k] {
                true => self.b.values[4 * k],
                false => -1e4,
            })
            .collect();
        let w = Tensor::<2>::from_data(TensorData::new(w, [d, c]), &dev);
        let b = Tensor::<2>::from_data(TensorData::new(b, [1, c]), &dev);
        let mask: Vec<f32> = self
            .active
            .iter()
            .map(|&a| if a { 1.0 } else { 0.0 })
            .collect();
        let mask = Tensor::<2>::from_data(TensorData::new(mask, [1, c]), &dev);
        net.features(x).matmul(w) * mask + b
    }

    fn state_bytes(&self) -> u64 {
        let seen = self.active.iter().filter(|&&o| o).count();
        (4 * seen * self.dim + 8) as u64
    }

    fn state(&self) -> State {
        let mut tensors = Vec::new();
        self.w.save("head.weight", &mut tensors);
        self.b.save("head.bias", &mut tensors);
        let c = self.active.len();
        tensors.push(("prototypes".into(), vec![c, self.dim], self.protos.clone()));
        State {
            tensors,
            json: serde_json::json!({
                "dim": self.dim,
                "active": self.active,
                "old": self.old,
                "radius": self.radius,
                "draws": self.draws,
                "head-steps": self.w.steps(),
            }),
        }
    }

    fn load_state(&mut self, state: State) -> Result<()> {
        let j = &state.json;
        let bad = || err!("pass: the saved strategy state is damaged");
        let flags = |k: &str| -> Result<Vec<bool>> {
            serde_json::from_value(j.get(k).cloned().ok_or_else(bad)?).map_err(|_| bad())
        };
        let num = |k: &str| j.get(k).and_then(|v| v.as_u64()).ok_or_else(bad);
        let (active, old) = (flags("active")?, flags("old")?);
        let dim = num("dim")? as usize;
        let radius = j.get("radius").and_then(|v| v.as_f64()).ok_or_else(bad)?;
        let t = super::parts::protos::tensor_map(&state.tensors);
        let steps = num("head-steps")?;
        let w = Owned::load("head.weight", steps, &t)?;
        let b = Owned::load("head.bias", steps, &t)?;
        let c = active.len();
        let protos = match t.get("prototypes") {
            Some((_, v)) if v.len() == c * dim => v.clone(),
            _ => return Err(bad()),
        };
        if old.len() != c || w.rows != dim || w.cols != 4 * c || b.cols != 4 * c {
            return Err(bad());
        }
        (self.w, self.b, self.protos) = (w, b, protos);
        (self.dim, self.active, self.old) = (dim, active, old);
        (self.radius, self.draws) = (radius, num("draws")?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::parts::buffer::host2;
    use crate::strategy::parts::testutil::{batch_at, ctx, device, mlp, tiny_images};

    #[test]
    fn invalid_parameters_are_errors_naming_the_key() {
        for (v, key) in [
            (serde_json::json!({"temperature": 0.0}), "temperature"),
            (
                serde_json::json!({"later-lr-factor": 0.0}),
                "later-lr-factor",
            ),
            (serde_json::json!({"kd-weight": -1.0}), "kd-weight"),
            (serde_json::json!({"pa-samples": 0}), "pa-samples"),
        ] {
            let e = build(&v).err().expect("an error").to_string();
            assert!(e.contains(key), "{e}");
        }
    }

    /// Hooks by hand on tiny images: the prototypes are the class means of the unrotated
    /// features, the radius is measured on the first task only, augmented prototypes are
    /// drawn around old classes' prototypes at that radius, scores are the head's rotation-0
    /// columns, and the state round-trips.
    #[test]
    fn prototypes_radius_augmentation_and_state() {
        let s = tiny_images(2);
        let (dev, _g) = device();
        let mut net = mlp(&s, 16, &dev);
        let mut st =
            Pass::new(serde_json::from_value(serde_json::json!({"pa-samples": 500})).unwrap());
        let cx0 = ctx(&s, 0, &dev);
        net = st.before_task(&cx0, net).unwrap();
        let b = batch_at(&s, 0, 0..8, &dev);
        let logits = net.forward(b.x.clone());
        let loss = st.loss(&cx0, &net, &b, logits.clone(), logits.sum());
        let w0 = st.w.values.clone();
        let mut raw = loss.backward();
        st.take_grads(&cx0, &mut raw);
        assert_ne!(st.w.values, w0);
        net = st.after_task(&cx0, net).unwrap();
        // Class 0's prototype is the mean feature of its training images.
        let ids: Vec<(usize, usize)> = s.tasks[0].train.iter().map(|&i| (0, i)).collect();
        let (x, y) = s.gather(crate::scenario::Part::Train, &ids);
        let valid = net.valid();
        let f = host2(valid.features(Tensor::<2>::from_data(
            TensorData::new(x, [y.len(), s.train.dim]),
            &Device::flex(),
        )));
        let d = st.dim;
        let (mut sum, mut n) = (vec![0f64; d], 0);
        for (row, &l) in f.chunks(d).zip(&y) {
            if l == 0 {
                n += 1;
                for (a, &v) in sum.iter_mut().zip(row) {
                    *a += v as f64;
                }
            }
        }
        for (a, &p) in sum.iter().zip(&st.protos[..d]) {
            assert!((a / n as f64 - p as f64).abs() < 1e-4);
        }
        let r0 = st.radius;
        assert!(r0 > 0.0);
        net = st.before_task(&ctx(&s, 1, &dev), net).unwrap();
        let (a, la) = st.augment(5);
        assert!(la.iter().all(|&l| l == 0 || l == 4));
        // The spread around the prototype is the radius.
        let mut sq = 0f64;
        for (row, &l) in a.chunks(d).zip(&la) {
            let c = (l / 4) as usize;
            for (v, p) in row.iter().zip(&st.protos[c * d..(c + 1) * d]) {
                sq += ((v - p) as f64).powi(2);
            }
        }
        let spread = (sq / (la.len() * d) as f64).sqrt();
        assert!((spread / r0 - 1.0).abs() < 0.05, "{spread} vs {r0}");
        net = st.after_task(&ctx(&s, 1, &dev), net).unwrap();
        assert_eq!(st.radius, r0);
        // Scores: the rotation-0 columns of the head.
        let x = batch_at(&s, 1, 0..4, &dev).x.inner();
        let sc = host2(st.scores(&net.valid(), x.clone()));
        let z = host2(net.valid().features(x));
        let o = st.w.cols;
        for (k, &got) in sc.iter().enumerate().take(4) {
            let want: f32 = (0..d)
                .map(|r| z[r] * st.w.values[r * o + 4 * k])
                .sum::<f32>()
                + st.b.values[4 * k];
            assert!((got - want).abs() < 1e-4);
        }
        let mut again = Pass::new(st.p.clone());
        again.load_state(st.state()).unwrap();
        assert_eq!(again.state().tensors, st.state().tensors);
        assert_eq!(again.state().json, st.state().json);
        assert_eq!(st.state_bytes(), (4 * 4 * d + 8) as u64);
    }

    #[test]
    fn a_run_learns_and_keeps_the_first_task() {
        use crate::model::ModelConfig;
        use crate::train::{TrainConfig, Trainer};
        let s = tiny_images(2);
        let train = TrainConfig {
            epochs: 4,
            batch_size: 8,
            ..Default::default()
        };
        let st = build(&serde_json::Value::Null).unwrap();
        let mut t = Trainer::new(&s, ModelConfig::Mlp { hidden: vec![32] }, train, 3, st);
        let out = t.run(&mut |_| {}).expect("run");
        assert!(out.accuracy[0][0] >= 90.0, "{:?}", out.accuracy);
        assert!(out.accuracy[1][0] >= 50.0, "{:?}", out.accuracy);
    }
}
