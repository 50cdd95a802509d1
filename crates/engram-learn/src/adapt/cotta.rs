//! CoTTA: Continual Test-Time Domain Adaptation (Wang et al., CVPR 2022, arXiv 2203.13591).
//! Card: `shared/methods/test_time.md` ("CoTTA"), which follows qinenergy/cotta.
//!
//! Set-up (`configure_model` first): every BatchNorm layer uses batch statistics and every
//! weight and bias is trainable; then the source values (for restore), the anchor f₀ and the
//! teacher f_ema are copied, so the anchor's confidence is a batch-statistics confidence. One
//! step per test batch x, in the reference's order:
//!
//! a. student logits z = f(x);
//! b. anchor confidence c = batch mean of max softmax(f₀(x));
//! c. teacher logits z_t = f_ema(x);
//! d. if c < AP (and augmentation averaging is on): z_t ← mean of the logits of N passes
//!    f_ema(aug_n(x)), one augmentation draw per pass for the whole batch (augment.rs);
//! e. loss = −(1/B)·Σ_b Σ_k softmax(z_t)_bk · log softmax(z)_bk, z_t detached; one Adam step;
//! f. teacher EMA over the weights and biases: θ_ema ← m·θ_ema + (1 − m)·θ;
//! g. stochastic restore: each element of every weight and bias (BatchNorm's included) goes
//!    back to its source value with probability p, a fresh mask each step;
//! h. the prediction is softmax(z_t), the teacher's output from before this step's update.
//!
//! Defaults are the reference's CIFAR-10 configuration (m 0.999, p 0.01, N 32, Adam 1e-3).
//! The threshold AP defaults to the rule the authors give for a new data set
//! (qinenergy/cotta#16): the 5 % quantile of the source's confidence on clean held-out data,
//! minus 0.05; without held-out data a number must be given. The ablations are switches:
//! `restore = 0` (no restore), `augment = false` (the teacher's plain output), fewer
//! `augmentations`.

use super::augment::{Draw, augment_batch};
use super::{
    Adapter, Source, adam, check_lr, default_lr, frozen, host, input, is_weight_or_bias,
    need_batchnorm, soft_cross_entropy, trainable,
};
use crate::model::Net;
use crate::model::batchnorm::BnMode;
use crate::model::params::{named_values, set_params};
use crate::strategy::parse_keys;
use crate::train::fused::Optimizer;
use crate::{Result, err};
use burn::optim::GradientsParams;
use burn::prelude::*;
use engram_weights::rng::Rng;
use std::collections::BTreeMap;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Adam's learning rate.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Teacher EMA momentum m.
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Restore probability p per element and step; 0 turns restore off.
    #[serde(default = "default_restore")]
    pub restore: f64,
    /// Augmented teacher passes N.
    #[serde(default = "default_augmentations")]
    pub augmentations: usize,
    /// Whether the teacher's output is averaged over augmentations when the anchor is unsure.
    #[serde(default = "yes")]
    pub augment: bool,
    /// Confidence threshold AP of the augmentation gate, in [0, 1]; default (null): the
    /// source's 5 % confidence quantile on clean held-out data minus 0.05.
    #[serde(default)]
    pub ap: Option<f64>,
    /// Horizontal flips among the augmentations (Fashion-MNIST: yes; digits: set false).
    #[serde(default = "yes")]
    pub flip: bool,
}

/// Most augmented teacher passes per step (the reference uses 32).
pub const MAX_AUGMENTATIONS: usize = 1024;

fn default_momentum() -> f64 {
    0.999
}
fn default_restore() -> f64 {
    0.01
}
fn default_augmentations() -> usize {
    32
}
fn yes() -> bool {
    true
}

pub struct Cotta {
    p: Params,
    state: Option<State>,
}

struct State {
    student: Net,
    teacher: Net,
    anchor: Net,
    /// Source values of every weight and bias, for restore.
    source: BTreeMap<String, Vec<f32>>,
    opt: Optimizer,
    ap: f64,
    dim: usize,
    hw: (usize, usize),
    device: Device,
    inner: Device,
    seed: u64,
    steps: u64,
    /// Steps whose gate opened (augmentation averaging used).
    gated: u64,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Adapter>> {
    let p: Params = parse_keys("adapter", "cotta", v)?;
    check_lr("cotta", p.lr)?;
    if !(0.0..=1.0).contains(&p.momentum) {
        return Err(err!(
            "adapter cotta: momentum = {} must be in [0, 1]",
            p.momentum
        ));
    }
    if !(0.0..=1.0).contains(&p.restore) {
        return Err(err!(
            "adapter cotta: restore = {} must be a probability in [0, 1]",
            p.restore
        ));
    }
    if !(1..=MAX_AUGMENTATIONS).contains(&p.augmentations) {
        return Err(err!(
            "adapter cotta: augmentations = {} must be 1 to {MAX_AUGMENTATIONS}",
            p.augmentations
        ));
    }
    if !p.augment && p.augmentations != default_augmentations() {
        return Err(err!(
            "adapter cotta: augmentations has no effect with augment = false"
        ));
    }
    if let Some(ap) = p.ap.filter(|a| !(0.0..=1.0).contains(a)) {
        return Err(err!(
            "adapter cotta: ap = {ap} must be in [0, 1] (a confidence)"
        ));
    }
    Ok(Box::new(Cotta { p, state: None }))
}

impl Cotta {
    /// Steps so far and how many of them averaged over augmentations.
    pub fn gate_count(&self) -> (u64, u64) {
        self.state.as_ref().map_or((0, 0), |s| (s.steps, s.gated))
    }
}

/// `b`'s values of `a`'s tensor `k`, checked to be as long.
fn partner<'a>(b: &'a BTreeMap<String, Vec<f32>>, k: &str, n: usize) -> Result<&'a [f32]> {
    match b.get(k) {
        Some(v) if v.len() == n => Ok(v),
        Some(v) => Err(err!("tensor {k}: {} values against {n}", v.len())),
        None => Err(err!("tensor {k} is missing")),
    }
}

/// The EMA of `teacher` towards `student` over the weights and biases.
pub fn ema(
    teacher: &BTreeMap<String, Vec<f32>>,
    student: &BTreeMap<String, Vec<f32>>,
    m: f64,
) -> Result<BTreeMap<String, Vec<f32>>> {
    teacher
        .iter()
        .filter(|(k, _)| is_weight_or_bias(k))
        .map(|(k, t)| {
            let s = partner(student, k, t.len())?;
            let v = t
                .iter()
                .zip(s)
                .map(|(&a, &b)| (m * a as f64 + (1.0 - m) * b as f64) as f32)
                .collect();
            Ok((k.clone(), v))
        })
        .collect()
}

/// Stochastic restore: each element of `current`'s weights and biases is replaced by its
/// `source` value with probability `p`, drawn from `rng` in name then element order.
pub fn restore(
    current: &BTreeMap<String, Vec<f32>>,
    source: &BTreeMap<String, Vec<f32>>,
    p: f64,
    rng: &mut Rng,
) -> Result<BTreeMap<String, Vec<f32>>> {
    current
        .iter()
        .filter(|(k, _)| is_weight_or_bias(k))
        .map(|(k, c)| {
            let s = partner(source, k, c.len())?;
            let v = c
                .iter()
                .zip(s)
                .map(|(&a, &b)| if rng.uniform_f64() < p { b } else { a })
                .collect();
            Ok((k.clone(), v))
        })
        .collect()
}

fn confidence(logits: Tensor<2>) -> f64 {
    let p = burn::tensor::activation::softmax(logits, 1);
    p.max_dim(1).mean().into_scalar::<f32>() as f64
}

impl Adapter for Cotta {
    fn name(&self) -> &'static str {
        "cotta"
    }

    fn needs_batchnorm(&self) -> bool {
        true
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn reset(&mut self, src: &Source) -> Result<()> {
        need_batchnorm("cotta", src)?;
        let Some((1, h, w)) = src.image else {
            return Err(err!(
                "adapter cotta: its augmentations need grayscale images; the data are {:?}",
                src.image
            ));
        };
        let ap = match (self.p.ap, src.confidence_q05) {
            (Some(a), _) => a,
            (None, Some(q)) => q - 0.05,
            (None, None) => {
                return Err(err!(
                    "adapter cotta: ap is not set and there are no held-out source data to \
                     calibrate it on; give ap (the reference: 0.92 on CIFAR-10)"
                ));
            }
        };
        let (student, device) = trainable("cotta", src)?;
        let values = named_values(&student);
        self.state = Some(State {
            device,
            inner: Device::flex(),
            teacher: frozen(src, BnMode::Batch),
            anchor: frozen(src, BnMode::Batch),
            source: values
                .into_iter()
                .filter(|(k, _)| is_weight_or_bias(k))
                .collect(),
            student,
            opt: Optimizer::new(&adam(self.p.lr)),
            ap,
            dim: src.dim,
            hw: (h, w),
            seed: src.seed,
            steps: 0,
            gated: 0,
        });
        Ok(())
    }

    fn step(&mut self, xh: &[f32], n: usize) -> Result<Vec<f32>> {
        let p = &self.p;
        let Some(st) = self.state.as_mut() else {
            return Err(err!("adapter cotta: step before reset"));
        };
        let x = input(xh, n, st.dim, &st.device)?;
        let xi = input(xh, n, st.dim, &st.inner)?;
        // a–d.
        let z = st.student.forward(x);
        let c = confidence(st.anchor.forward(xi.clone()));
        let mut zt = st.teacher.forward(xi);
        if p.augment && c < st.ap {
            st.gated += 1;
            let (h, w) = st.hw;
            let mut draws = Rng::keyed(st.seed, "cotta-augment", st.steps);
            let mut sum: Option<Tensor<2>> = None;
            for _ in 0..p.augmentations {
                let d = Draw::sample(&mut draws, h, w, p.flip);
                let xa = augment_batch(xh, h, w, &d, &mut draws);
                let za = st.teacher.forward(input(&xa, n, st.dim, &st.inner)?);
                sum = Some(match sum {
                    Some(s) => s + za,
                    None => za,
                });
            }
            if let Some(s) = sum {
                zt = s.div_scalar(p.augmentations as f32);
            }
        }
        let prediction = host(zt.clone());
        // e.
        let target = burn::tensor::activation::softmax(
            Tensor::<2>::from_data(zt.into_data(), &st.device),
            1,
        );
        let loss = soft_cross_entropy(target, z);
        let grads = GradientsParams::from_grads(loss.backward(), &st.student);
        st.student = st.opt.step(p.lr, st.student.clone(), grads);
        // f.
        let student = named_values(&st.student);
        let teacher = ema(&named_values(&st.teacher), &student, p.momentum)?;
        st.teacher = set_params(st.teacher.clone(), &teacher)?;
        // g.
        if p.restore > 0.0 {
            let mut rng = Rng::keyed(st.seed, "cotta-restore", st.steps);
            let back = restore(&student, &st.source, p.restore, &mut rng)?;
            st.student = set_params(st.student.clone(), &back)?;
        }
        st.steps += 1;
        // h.
        Ok(prediction)
    }

    fn stats(&self) -> serde_json::Value {
        let (steps, gated) = self.gate_count();
        let ap = self.state.as_ref().map(|s| s.ap);
        serde_json::json!({"steps": steps, "gated": gated, "ap": ap})
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil;
    use super::*;

    fn cotta(extra: serde_json::Value) -> Cotta {
        let mut v = serde_json::json!({"augmentations": 2});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        let p: Params = parse_keys("adapter", "cotta", &v).unwrap_or_else(|e| panic!("{e}"));
        Cotta { p, state: None }
    }

    fn map(v: &[(&str, Vec<f32>)]) -> BTreeMap<String, Vec<f32>> {
        v.iter().map(|(k, x)| (k.to_string(), x.clone())).collect()
    }

    #[test]
    fn ema_is_its_formula_and_skips_running_statistics() {
        let t = map(&[("a.weight", vec![1.0, 2.0]), ("a.running_mean", vec![5.0])]);
        let s = map(&[("a.weight", vec![3.0, -2.0]), ("a.running_mean", vec![7.0])]);
        let e = ema(&t, &s, 0.75).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.len(), 1);
        assert_eq!(
            e["a.weight"],
            vec![0.75 * 1.0 + 0.25 * 3.0, 0.75 * 2.0 - 0.25 * 2.0]
        );
    }

    #[test]
    fn restore_resets_the_expected_fraction() {
        let n = 20_000;
        let cur = map(&[("w.weight", vec![1.0; n]), ("b.bias", vec![1.0; n])]);
        let src = map(&[("w.weight", vec![0.0; n]), ("b.bias", vec![0.0; n])]);
        for p in [0.01, 0.1, 0.5] {
            let out = restore(&cur, &src, p, &mut Rng::new(3)).unwrap_or_else(|e| panic!("{e}"));
            let reset = out.values().flatten().filter(|&&v| v == 0.0).count() as f64;
            let frac = reset / (2 * n) as f64;
            // Binomial standard error at 40 000 draws is at most 0.0025.
            assert!((frac - p).abs() < 0.01, "p {p}: {frac}");
        }
        let none = restore(&cur, &src, 0.0, &mut Rng::new(3)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(none, cur);
        let short = map(&[("w.weight", vec![0.0; 3])]);
        assert!(restore(&cur, &short, 0.5, &mut Rng::new(3)).is_err());
        assert!(ema(&cur, &short, 0.5).is_err());
    }

    #[test]
    fn the_gate_opens_on_the_anchor_confidence() {
        let src = testutil::source(2);
        let x = testutil::batch(8, 1);
        // 3 classes: confidence is in [1/3, 1]; AP 1 opens the gate (an untrained network is
        // far from certain), below 1/3 it never opens.
        for (ap, open) in [(1.0, true), (0.2, false)] {
            let mut a = cotta(serde_json::json!({ "ap": ap }));
            a.reset(&src).unwrap_or_else(|e| panic!("{e}"));
            for _ in 0..3 {
                a.step(&x, 8).unwrap_or_else(|e| panic!("{e}"));
            }
            assert_eq!(a.gate_count(), (3, if open { 3 } else { 0 }), "ap {ap}");
        }
        // With averaging off the gate never opens.
        let mut a = cotta(serde_json::json!({ "ap": 1.0, "augment": false, "augmentations": 32 }));
        a.reset(&src).unwrap_or_else(|e| panic!("{e}"));
        a.step(&x, 8).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.gate_count(), (1, 0));
    }

    #[test]
    fn step_updates_student_teacher_by_ema_and_restores() {
        let src = testutil::source(4);
        let x = testutil::batch(8, 3);
        let mut a =
            cotta(serde_json::json!({"ap": 0.0, "momentum": 0.9, "restore": 0.0, "lr": 0.01}));
        a.reset(&src).unwrap_or_else(|e| panic!("{e}"));
        let t0 = {
            let Some(st) = &a.state else { panic!() };
            named_values(&st.teacher)
        };
        let pred0 = a.step(&x, 8).unwrap_or_else(|e| panic!("{e}"));
        let Some(st) = &a.state else { panic!() };
        let (s1, t1) = (named_values(&st.student), named_values(&st.teacher));
        // The student moved; the teacher is exactly the EMA of its old values and the student.
        assert!(s1["fc2.weight"] != t0["fc2.weight"]);
        let want = ema(&t0, &s1, 0.9).unwrap_or_else(|e| panic!("{e}"));
        for (k, v) in &want {
            assert_eq!(&t1[k], v, "{k}");
        }
        // The prediction is the teacher's output from before the update.
        let Some(st) = &a.state else { panic!() };
        let teacher_before = frozen(&src, BnMode::Batch);
        let z = host(
            teacher_before.forward(input(&x, 8, 144, &st.inner).unwrap_or_else(|e| panic!("{e}"))),
        );
        for (p, q) in pred0.iter().zip(&z) {
            assert!((p - q).abs() < 1e-5);
        }
        // Restore with p = 1 brings every weight and bias back to the source.
        let mut a = cotta(serde_json::json!({"ap": 0.0, "restore": 1.0, "lr": 0.01}));
        a.reset(&src).unwrap_or_else(|e| panic!("{e}"));
        a.step(&x, 8).unwrap_or_else(|e| panic!("{e}"));
        let Some(st) = &a.state else { panic!() };
        let s = named_values(&st.student);
        for (k, v) in &st.source {
            assert_eq!(&s[k], v, "{k}");
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        for v in [
            serde_json::json!({"restore": 1.5}),
            serde_json::json!({"momentum": -0.1}),
            serde_json::json!({"augmentations": 0}),
            serde_json::json!({"augmentations": 100_000}),
            serde_json::json!({"augment": false, "augmentations": 8}),
            serde_json::json!({"ap": 1.5}),
            serde_json::json!({"lr": -1}),
            serde_json::json!({"gate": 1}),
        ] {
            assert!(build(&v).is_err(), "{v}");
        }
        let mut a = cotta(serde_json::json!({}));
        let mut src = testutil::source(1);
        src.confidence_q05 = None;
        let e = a
            .reset(&src)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("ap"), "{e}");
    }
}
