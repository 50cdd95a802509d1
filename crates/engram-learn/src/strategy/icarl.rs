//! iCaRL: Incremental Classifier and Representation Learning (Rebuffi et al., CVPR 2017, arXiv 1611.07725).
//! Card: shared/methods/replay_distillation.md (replay family; herding and the fixed memory as in "KD + Weight Aligning").
//!
//! Training set of task t: its own examples plus the exemplars of every earlier class.
//! Loss (paper, Alg. 3): sigmoid binary cross-entropy over the outputs of the classes seen so
//! far (outputs of classes not yet seen are left out), with one-hot targets on the task's own
//! classes and, on the older classes, the sigmoid outputs of the network as it was before the
//! task (distillation). engram's normalisation: summed over those classes, averaged over the
//! batch's examples. It replaces the trainer's cross-entropy (and `train.masking`).
//!
//! Memory: K = `memory` exemplars in all (paper: 2000; default 200, the suite's equal-memory
//! setting), m = ⌊K / classes seen⌋ per class. After each task the older classes are cut to
//! their first m (Alg. 5) and each new class gets m exemplars chosen by herding (Alg. 4) on the
//! L2-normalised features of all its training examples of the task, under the network at the
//! end of the task (ties: the lowest index; no repeats).
//!
//! Classification: nearest mean of exemplars. μ_y is the mean of the L2-normalised features of
//! class y's exemplars, normalised again (paper; without its horizontal-flip augmentation,
//! which engram's flat inputs do not have), recomputed for every class with the current
//! network at the end of every task. `scores` are −‖φ(x)/‖φ(x)‖ − μ_y‖² (not logits; in
//! [−4, 0]) for classes with a mean and −1e4 for the others, so an unseen class is never
//! predicted (forward transfer in Class-IL reads 0). Before the first task ends there are no
//! means: the scores are then the network's logits, which is what the baseline row (the
//! untrained network's measurement) records.
//!
//! `state_bytes` counts the exemplars as the inputs they stand for (input width·4 + 4 bytes
//! each, as the replay buffer does) plus the class means (classes·features·4).
//!
//! engram choices: "new classes" are the task's classes not yet in the memory; a class that
//! recurs (Domain-IL) keeps its exemplars from the task that first had it. The targets are
//! one-hot on all of the task's classes and distilled on the older classes that are not the
//! task's (as `kd-wa` counts C_new), which is the paper's split in Class-IL. The old network
//! is the one the trainer hands to `before_task` (evaluation mode, never updated); on a
//! resumed run that is the checkpointed network, so, as in `lwf`, it is not saved again.

use super::kd_wa::herding;
use super::lwf::{columns, old_classes, teacher_logits};
use super::parts::buffer::host2;
use super::{
    Batch, Ctx, Setup, State, Strategy, check_per_class, in_range, parse_params, task_examples,
};
use crate::model::Net;
use crate::scenario::Part;
use crate::{Result, err};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softplus};
use std::collections::BTreeMap;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Exemplars in all, over every class seen (paper: 2000; engram's equal-memory 200).
    #[serde(default = "default_memory")]
    pub memory: usize,
}

fn default_memory() -> usize {
    200
}

/// The score of a class without a mean: below any −‖a − b‖² of unit vectors.
pub const NO_MEAN: f32 = -1e4;

pub struct Icarl {
    p: Params,
    /// The network before the current task (no autodiff); `None` in the first task.
    teacher: Option<Net>,
    /// Exemplars per class, in herding order.
    memory: BTreeMap<u32, Vec<(usize, usize)>>,
    /// Normalised class means of the exemplars' normalised features.
    means: BTreeMap<u32, Vec<f32>>,
    /// Input width (for `state_bytes`) and the network's outputs (for `scores`).
    dim: usize,
    outputs: usize,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(Icarl::new(parse_params("icarl", v)?)?))
}

impl Icarl {
    fn new(p: Params) -> Result<Icarl> {
        in_range("icarl", "memory", p.memory, 1, usize::MAX, "")?;
        Ok(Icarl {
            p,
            teacher: None,
            memory: BTreeMap::new(),
            means: BTreeMap::new(),
            dim: 0,
            outputs: 0,
        })
    }

    fn exemplar_ids(&self) -> Vec<(usize, usize)> {
        self.memory.values().flatten().copied().collect()
    }

    /// Cuts the older classes to their share and herds the task's new classes (Alg. 4, 5).
    fn update_memory(&mut self, cx: &Ctx, valid: &Net) {
        let s = cx.scenario;
        let new: Vec<u32> = s.tasks[cx.task]
            .classes
            .iter()
            .copied()
            .filter(|c| !self.memory.contains_key(c))
            .collect();
        let m = self.p.memory / (self.memory.len() + new.len()).max(1);
        for v in self.memory.values_mut() {
            v.truncate(m);
        }
        for c in new {
            let ids: Vec<(usize, usize)> = s.tasks[cx.task]
                .train
                .iter()
                .filter(|&&i| s.train.y.get(i) == Some(&c))
                .map(|&i| (cx.task, i))
                .collect();
            let (feats, d) = features(cx, valid, &ids);
            let chosen = herding(&feats, d, m).into_iter().map(|i| ids[i]).collect();
            self.memory.insert(c, chosen);
        }
    }

    /// Every class's mean under `valid`, from its exemplars.
    fn update_means(&mut self, cx: &Ctx, valid: &Net) {
        self.means = self
            .memory
            .iter()
            .filter(|(_, ids)| !ids.is_empty())
            .map(|(&c, ids)| {
                let (feats, d) = features(cx, valid, ids);
                (c, class_mean(&feats, d))
            })
            .collect();
    }
}

/// The features φ(x) of the training examples `ids` under `valid` (a network in evaluation
/// mode, [`Module::valid`]), row-major, with their width.
fn features(cx: &Ctx, valid: &Net, ids: &[(usize, usize)]) -> (Vec<f32>, usize) {
    let base = cx.device.clone().inner();
    let (mut out, mut d) = (Vec::new(), 0);
    for chunk in ids.chunks(1000) {
        let (x, _) = cx.scenario.gather(Part::Train, chunk);
        let x = Tensor::<2>::from_data(
            TensorData::new(x, [chunk.len(), cx.scenario.train.dim]),
            &base,
        );
        let f = valid.features(x);
        d = f.dims()[1];
        out.extend(host2(f));
    }
    (out, d)
}

/// A vector divided by its L2 norm (left as it is when the norm is 0).
fn unit(v: impl Iterator<Item = f64> + Clone) -> Vec<f64> {
    let norm = v.clone().map(|a| a * a).sum::<f64>().sqrt();
    v.map(|a| if norm > 0.0 { a / norm } else { a }).collect()
}

/// μ = normalise(mean of the normalised rows) of `feats` (rows of width `d`).
pub fn class_mean(feats: &[f32], d: usize) -> Vec<f32> {
    let mut sum = vec![0f64; d];
    for row in feats.chunks_exact(d.max(1)) {
        for (s, v) in sum.iter_mut().zip(unit(row.iter().map(|&a| a as f64))) {
            *s += v;
        }
    }
    unit(sum.into_iter())
        .into_iter()
        .map(|v| v as f32)
        .collect()
}

/// Nearest-mean scores `[n, outputs]` of the features `f` `[n, d]`: −‖f/‖f‖ − μ_y‖² for the
/// classes in `means`, [`NO_MEAN`] for the others.
pub fn nme_scores(f: Tensor<2>, means: &BTreeMap<u32, Vec<f32>>, outputs: usize) -> Tensor<2> {
    let device = f.device();
    let d = f.dims()[1];
    let norm = f.clone().powi_scalar(2).sum_dim(1).sqrt().clamp_min(1e-12);
    let f = f.div(norm);
    let mut mu = vec![0f32; outputs * d];
    let mut has = vec![0f32; outputs];
    let mut pen = vec![NO_MEAN; outputs];
    for (&c, m) in means
        .iter()
        .filter(|(c, m)| (**c as usize) < outputs && m.len() == d)
    {
        let c = c as usize;
        mu[c * d..(c + 1) * d].copy_from_slice(m);
        has[c] = 1.0;
        pen[c] = 0.0;
    }
    let row = |v: Vec<f32>| Tensor::<2>::from_data(TensorData::new(v, [1, outputs]), &device);
    let mu = Tensor::<2>::from_data(TensorData::new(mu, [outputs, d]), &device);
    let mu_sq = mu.clone().powi_scalar(2).sum_dim(1).reshape([1, outputs]);
    let dist =
        f.clone().powi_scalar(2).sum_dim(1) - f.matmul(mu.transpose()).mul_scalar(2.0) + mu_sq;
    dist.neg().mul(row(has)) + row(pen)
}

/// iCaRL's loss: Σ over the listed classes of the binary cross-entropy of σ(z), averaged over
/// the examples; targets one-hot (of `labels`) on `new`, σ(teacher) on `old`. `teacher` holds
/// the old network's logits of the batch (all outputs); `None` or no `old` classes: only the
/// classification term.
pub fn icarl_loss(
    logits: Tensor<2>,
    labels: &[u32],
    teacher: Option<Tensor<2>>,
    new: &[u32],
    old: &[u32],
    device: &Device,
) -> Tensor<1> {
    let n = labels.len();
    let onehot: Vec<f32> = labels
        .iter()
        .flat_map(|&y| new.iter().map(move |&c| if c == y { 1.0 } else { 0.0 }))
        .collect();
    let mut target = Tensor::<2>::from_data(TensorData::new(onehot, [n, new.len()]), device);
    let mut classes = new.to_vec();
    if let Some(t) = teacher.filter(|_| !old.is_empty()) {
        let q = sigmoid(columns(t.detach(), old, device)).detach();
        target = Tensor::cat(vec![target, q], 1);
        classes.extend_from_slice(old);
    }
    let z = columns(logits, &classes, device);
    // −t·log σ(z) − (1 − t)·log(1 − σ(z)) = softplus(z) − t·z.
    (softplus(z.clone(), 1.0) - target.mul(z)).sum_dim(1).mean()
}

impl Strategy for Icarl {
    fn name(&self) -> &'static str {
        "icarl"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn check(&self, s: &Setup) -> Result<()> {
        check_per_class("icarl", "memory", self.p.memory, s, "exemplar ")
    }

    fn before_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        self.outputs = cx.scenario.num_outputs;
        self.teacher = (cx.task > 0).then(|| net.valid());
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
        let new = cx.scenario.tasks[cx.task].classes.clone();
        let old: Vec<u32> = old_classes(cx)
            .into_iter()
            .filter(|c| !new.contains(c))
            .collect();
        let teacher = self
            .teacher
            .as_ref()
            .map(|t| teacher_logits(t, &batch.x, cx.device));
        icarl_loss(logits, &batch.y_host, teacher, &new, &old, cx.device)
    }

    fn scores(&self, net: &Net, x: Tensor<2>) -> Tensor<2> {
        if self.means.is_empty() {
            return net.forward(x);
        }
        nme_scores(net.features(x), &self.means, self.outputs)
    }

    fn after_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        self.dim = cx.scenario.train.dim;
        self.outputs = cx.scenario.num_outputs;
        let valid = net.valid();
        self.update_memory(cx, &valid);
        self.update_means(cx, &valid);
        Ok(net)
    }

    fn state_bytes(&self) -> u64 {
        let means: usize = self.means.values().map(Vec::len).sum();
        (self.exemplar_ids().len() * (self.dim * 4 + 4) + means * 4) as u64
    }

    fn state(&self) -> State {
        let d = self.means.values().next().map_or(0, Vec::len);
        let flat: Vec<f32> = self.means.values().flatten().copied().collect();
        let tensors = match self.means.is_empty() {
            true => Vec::new(),
            false => vec![("means".into(), vec![self.means.len(), d], flat)],
        };
        State {
            tensors,
            json: serde_json::json!({
                "memory": self.memory.iter().map(|(c, v)| (*c, v.clone())).collect::<Vec<_>>(),
                "mean-classes": self.means.keys().collect::<Vec<_>>(),
                "dim": self.dim,
                "outputs": self.outputs,
            }),
        }
    }

    fn load_state(&mut self, state: State) -> Result<()> {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "kebab-case")]
        struct Saved {
            memory: Vec<(u32, Vec<(usize, usize)>)>,
            mean_classes: Vec<u32>,
            dim: usize,
            outputs: usize,
        }
        let s: Saved = serde_json::from_value(state.json)
            .map_err(|e| err!("strategy icarl: bad saved state: {e}"))?;
        let none = (String::new(), vec![0, 0], Vec::new());
        let (_, shape, flat) = match state.tensors.iter().find(|(n, _, _)| n == "means") {
            Some(t) => t,
            None if s.mean_classes.is_empty() => &none,
            None => return Err(err!("strategy icarl: saved state has no tensor 'means'")),
        };
        let d = shape.get(1).copied().unwrap_or(0);
        if shape.len() != 2 || shape[0] != s.mean_classes.len() || flat.len() != shape[0] * d {
            return Err(err!(
                "strategy icarl: saved 'means' of shape {shape:?} ({} values) for {} classes",
                flat.len(),
                s.mean_classes.len()
            ));
        }
        let kept: usize = s.memory.iter().map(|(_, v)| v.len()).sum();
        if kept > self.p.memory {
            return Err(err!(
                "strategy icarl: saved state holds {kept} exemplars, memory is {}",
                self.p.memory
            ));
        }
        self.memory = s.memory.into_iter().collect();
        self.means = s
            .mean_classes
            .into_iter()
            .zip(flat.chunks_exact(d.max(1)).map(<[f32]>::to_vec))
            .collect();
        self.dim = s.dim;
        self.outputs = s.outputs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::parts::testutil::{batch_at, blobs, ctx, device, mlp};

    fn icarl(memory: usize) -> Icarl {
        Icarl::new(Params { memory }).expect("icarl")
    }

    fn unit_rows(f: &[f32], d: usize) -> Vec<Vec<f64>> {
        f.chunks_exact(d)
            .map(|r| unit(r.iter().map(|&a| a as f64)))
            .collect()
    }

    fn sq_dist(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum()
    }

    /// Through three Class-IL tasks with K = 30: m = ⌊30/2⌋, ⌊30/4⌋, ⌊30/6⌋ per class; every
    /// older class keeps a prefix of its list; every list is without repeats.
    #[test]
    fn memory_is_k_over_classes_and_reduction_keeps_a_prefix() {
        let s = blobs("class-incremental", 3);
        let (dev, _g) = device();
        let net = mlp(&s, 8, &dev);
        let mut st = icarl(30);
        let mut before: BTreeMap<u32, Vec<(usize, usize)>> = BTreeMap::new();
        for (task, m) in [(0, 15), (1, 7), (2, 5)] {
            let cx = ctx(&s, task, &dev);
            let net = st.before_task(&cx, net.clone()).expect("before");
            st.after_task(&cx, net).expect("after");
            assert_eq!(st.memory.len(), 2 * (task + 1));
            for (c, v) in &st.memory {
                assert_eq!(v.len(), m, "task {task} class {c}");
                let mut u = v.clone();
                u.sort_unstable();
                u.dedup();
                assert_eq!(u.len(), m, "no repeats");
                assert!(v.iter().all(|&(_, i)| s.train.y[i] == *c), "class {c}");
                if let Some(old) = before.get(c) {
                    assert_eq!(&old[..m], &v[..], "class {c} is cut to a prefix");
                }
            }
            before = st.memory.clone();
        }
        assert_eq!(
            st.train_examples(&ctx(&s, 2, &dev)).len(),
            s.tasks[2].train.len() + 30
        );
    }

    /// Herding's first pick is the example nearest the class mean of the normalised features,
    /// and the whole list is `herding`'s order on the class's examples.
    #[test]
    fn herding_starts_at_the_example_nearest_the_class_mean() {
        let s = blobs("class-incremental", 2);
        let (dev, _g) = device();
        let net = mlp(&s, 8, &dev);
        let cx = ctx(&s, 0, &dev);
        let mut st = icarl(20);
        st.after_task(&cx, net.clone()).expect("after");
        for &c in &s.tasks[0].classes {
            let ids: Vec<(usize, usize)> = s.tasks[0]
                .train
                .iter()
                .filter(|&&i| s.train.y[i] == c)
                .map(|&i| (0, i))
                .collect();
            let (f, d) = features(&cx, &net.valid(), &ids);
            let rows = unit_rows(&f, d);
            let mu: Vec<f64> = (0..d)
                .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / rows.len() as f64)
                .collect();
            let nearest = (0..rows.len())
                .min_by(|&a, &b| sq_dist(&rows[a], &mu).total_cmp(&sq_dist(&rows[b], &mu)))
                .expect("rows");
            let got = &st.memory[&c];
            assert_eq!(got[0], ids[nearest], "class {c}");
            let want: Vec<(usize, usize)> =
                herding(&f, d, 10).into_iter().map(|i| ids[i]).collect();
            assert_eq!(got, &want);
        }
    }

    /// μ_y = normalise(mean of the normalised exemplar features), under the final network.
    #[test]
    fn class_means_are_normalised_means_of_normalised_exemplar_features() {
        let s = blobs("class-incremental", 2);
        let (dev, _g) = device();
        let net = mlp(&s, 8, &dev);
        let mut st = icarl(12);
        st.after_task(&ctx(&s, 0, &dev), mlp(&s, 8, &dev))
            .expect("t0");
        // Task 1 with another network: every class's mean is recomputed with it.
        let cx = ctx(&s, 1, &dev);
        st.after_task(&cx, net.clone()).expect("t1");
        assert_eq!(st.means.len(), 4);
        for (c, ids) in &st.memory {
            let (f, d) = features(&cx, &net.valid(), ids);
            let rows = unit_rows(&f, d);
            let mean: Vec<f64> = (0..d)
                .map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / rows.len() as f64)
                .collect();
            let want = unit(mean.into_iter());
            let got = &st.means[c];
            let norm: f64 = got.iter().map(|&v| (v as f64).powi(2)).sum();
            assert!((norm - 1.0).abs() < 1e-5, "class {c}: ‖μ‖² = {norm}");
            for (g, w) in got.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "class {c}: {g} vs {w}");
            }
        }
        assert_eq!(
            st.state_bytes(),
            (12 * (s.train.dim * 4 + 4) + 4 * 8 * 4) as u64
        );
    }

    /// The scores are −‖f̂ − μ_y‖² and their argmax is the brute-force nearest mean; classes
    /// without a mean score −1e4; with no means at all the scores are the logits.
    #[test]
    fn nearest_mean_prediction_is_the_brute_force_nearest_mean() {
        let s = blobs("class-incremental", 3);
        let (dev, _g) = device();
        let net = mlp(&s, 8, &dev);
        let mut st = icarl(20);
        let b = batch_at(&s, 1, 0..20, &dev);
        let logits = host2(net.forward(b.x.clone()));
        assert_eq!(host2(st.scores(&net, b.x.clone())), logits);
        st.outputs = s.num_outputs;
        for task in 0..2 {
            st.after_task(&ctx(&s, task, &dev), net.clone())
                .expect("after");
        }
        let c = s.num_outputs;
        let got = host2(st.scores(&net, b.x.clone()));
        let f = host2(net.features(b.x.clone()));
        let d = f.len() / 20;
        for (r, row) in unit_rows(&f, d).iter().enumerate() {
            let dists: Vec<(u32, f64)> = st
                .means
                .iter()
                .map(|(&k, m)| {
                    let m: Vec<f64> = m.iter().map(|&v| v as f64).collect();
                    (k, sq_dist(row, &m))
                })
                .collect();
            let best = dists
                .iter()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("means")
                .0;
            let scores = &got[r * c..(r + 1) * c];
            let argmax = (0..c)
                .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
                .expect("c");
            assert_eq!(argmax as u32, best, "row {r}");
            for &(k, dist) in &dists {
                assert!((scores[k as usize] as f64 + dist).abs() < 1e-5, "row {r}");
            }
            assert!(scores[4..].iter().all(|&v| v == NO_MEAN), "row {r}");
        }
    }

    fn t2(v: Vec<f32>, r: usize, c: usize, d: &Device) -> Tensor<2> {
        Tensor::<2>::from_data(TensorData::new(v, [r, c]), d)
    }

    /// The loss of two examples over 5 outputs, new classes {2, 3}, old {0, 1} (output 4 not
    /// seen): Σ_c BCE(σ(z_c), t_c), mean over the examples, by hand.
    #[test]
    fn loss_is_the_hand_binary_cross_entropy_with_distillation() {
        let d = Device::flex();
        let z = vec![0.5f32, -1.0, 2.0, 0.1, 9.0, -0.3, 0.7, -2.0, 1.5, -9.0];
        let zt = vec![1.0f32, -0.5, 3.0, 3.0, 3.0, 0.2, 2.0, -3.0, -3.0, -3.0];
        let labels = [2u32, 3];
        let sig = |v: f32| 1.0 / (1.0 + (-(v as f64)).exp());
        let bce = |z: f32, t: f64| -(t * sig(z).ln() + (1.0 - t) * (1.0 - sig(z)).ln());
        let mut want = 0.0;
        let mut want_cls = 0.0;
        for r in 0..2 {
            for c in [2usize, 3] {
                let t = if labels[r] as usize == c { 1.0 } else { 0.0 };
                want += bce(z[r * 5 + c], t) / 2.0;
                want_cls += bce(z[r * 5 + c], t) / 2.0;
            }
            for c in [0usize, 1] {
                want += bce(z[r * 5 + c], sig(zt[r * 5 + c])) / 2.0;
            }
        }
        let got = icarl_loss(
            t2(z.clone(), 2, 5, &d),
            &labels,
            Some(t2(zt, 2, 5, &d)),
            &[2, 3],
            &[0, 1],
            &d,
        )
        .into_scalar::<f32>() as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        let first = icarl_loss(t2(z, 2, 5, &d), &labels, None, &[2, 3], &[0, 1], &d)
            .into_scalar::<f32>() as f64;
        assert!((first - want_cls).abs() < 1e-5, "{first} vs {want_cls}");
    }

    /// Through the hook at task 1: the teacher is the network handed to `before_task`, the
    /// task's classes are labelled, the older ones distilled, the trainer's CE ignored.
    #[test]
    fn the_loss_hook_distils_from_the_network_before_the_task() {
        let s = blobs("class-incremental", 3);
        let (dev, _g) = device();
        let net = mlp(&s, 8, &dev);
        let mut st = icarl(20);
        let cx = ctx(&s, 1, &dev);
        let teacher = mlp(&s, 8, &dev);
        let _ = st.before_task(&cx, teacher.clone()).expect("before");
        let b = batch_at(&s, 1, 0..6, &dev);
        let logits = net.forward(b.x.clone());
        let got = st
            .loss(&cx, &net, &b, logits.clone(), Tensor::<1>::ones([1], &dev))
            .into_scalar::<f32>();
        let want = icarl_loss(
            logits,
            &b.y_host,
            Some(teacher.forward(b.x.clone())),
            &[2, 3],
            &[0, 1],
            &dev,
        )
        .into_scalar::<f32>();
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }

    #[test]
    fn state_round_trips_exemplars_and_means() {
        let s = blobs("class-incremental", 3);
        let (dev, _g) = device();
        let net = mlp(&s, 8, &dev);
        let mut st = icarl(20);
        for task in 0..2 {
            let cx = ctx(&s, task, &dev);
            let n = st.before_task(&cx, net.clone()).expect("before");
            st.after_task(&cx, n).expect("after");
        }
        let mut back = icarl(20);
        back.load_state(st.state()).expect("load");
        assert_eq!(back.memory, st.memory);
        assert_eq!(back.means, st.means);
        assert_eq!(back.state_bytes(), st.state_bytes());
        let b = batch_at(&s, 2, 0..10, &dev);
        assert_eq!(
            host2(back.scores(&net, b.x.clone())),
            host2(st.scores(&net, b.x.clone()))
        );
        let cx = ctx(&s, 2, &dev);
        assert_eq!(back.train_examples(&cx), st.train_examples(&cx));
        // Another memory refuses it; so does a broken state.
        assert!(icarl(10).load_state(st.state()).is_err());
        let mut broken = st.state();
        broken.tensors[0].2.pop();
        assert!(icarl(20).load_state(broken).is_err());
        assert!(
            icarl(20)
                .load_state(State {
                    tensors: vec![],
                    json: serde_json::json!({"memory": 3})
                })
                .is_err()
        );
    }

    /// Through the trainer: a run stopped after the first task and resumed ends with exactly
    /// the numbers of an uninterrupted one, and the exemplars beat fine-tuning.
    #[test]
    fn a_run_resumes_exactly_and_beats_naive() {
        use crate::optim::{OptimConfig, OptimKind};
        use crate::train::{RunOutput, TrainConfig, Trainer};
        let s = blobs("class-incremental", 3);
        let run = |name: &str, dir: Option<&std::path::Path>, stop| -> RunOutput {
            let strategy = crate::strategy::build(name, &serde_json::json!({})).expect("strategy");
            let train = TrainConfig {
                epochs: 4,
                batch_size: 16,
                optimizer: OptimConfig::new(OptimKind::Adam, 0.01),
                ..Default::default()
            };
            let model = crate::model::ModelConfig::Mlp { hidden: vec![32] };
            let mut t = Trainer {
                checkpoint_dir: dir.map(std::path::Path::to_path_buf),
                stop_after: stop,
                ..Trainer::new(&s, model, train, 3, strategy)
            };
            t.run(&mut |_| {}).expect("run")
        };
        let whole = run("icarl", None, None);
        let dir = tempfile::tempdir().expect("tmp");
        let part = run("icarl", Some(dir.path()), Some(1));
        assert_eq!(part.accuracy.len(), 1);
        let resumed = run("icarl", Some(dir.path()), None);
        assert_eq!(resumed.accuracy, whole.accuracy);
        assert_eq!(resumed.ece, whole.ece);
        let last = |o: &RunOutput| o.accuracy[2].iter().sum::<f64>() / 3.0;
        let naive = run("naive", None, None);
        eprintln!("icarl {:?}\nnaive {:?}", whole.accuracy, naive.accuracy);
        assert!(
            last(&whole) > last(&naive) + 10.0,
            "icarl {:?} naive {:?}",
            whole.accuracy,
            naive.accuracy
        );
        assert!(whole.strategy_state_bytes > 0);
    }

    #[test]
    fn invalid_icarl_params_are_errors() {
        let e = build(&serde_json::json!({"memory": 0}))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("memory"), "{e}");
        for v in [
            serde_json::json!({"memory": -1}),
            serde_json::json!({"exemplars": 20}),
        ] {
            assert!(build(&v).is_err(), "{v}");
        }
        assert_eq!(
            build(&serde_json::Value::Null).expect("defaults").params(),
            serde_json::json!({"memory": 200})
        );
    }
}
