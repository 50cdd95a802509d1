// Binary-weight variational continual learning, Phys. Rev. E 108, 014309 (2023): the
// teacher–student perceptron. Card: shared/methods/theory.md, "Binary-weight ... (field space)".

//! A binary perceptron learnt in field space, on two teacher–student tasks in a row.
//!
//! **Model.** Weights w_i = ±1 with the factorised posterior q(w_i) ∝ exp(β·h_i·w_i): the
//! trained parameters are the fields h, with m = tanh(βh) and σ = 1 − m². For an input
//! ξ ∈ {±1}^N with label y the likelihood is H(−y·μ/√v), μ = Σ m_i ξ_i/√N and
//! v = Σ σ_i ξ_i²/N (= Σσ/N for ±1 inputs, one number per step), H the Gaussian tail
//! ([`super::gauss`]). The loss of a batch of b examples is the card's: the negative
//! log-likelihood **summed** over the batch plus (b/P)·KL(q ‖ q_prev), P the task's number of
//! examples, so that the KL counts once per epoch; KL between factorised binary posteriors is
//! Σ_i [β(h_i − h_i^prev)·m_i − log cosh(βh_i) + log cosh(βh_i^prev)], its gradient
//! β²σ_i(h_i − h_i^prev), stiff for uncertain weights and vanishing for confident ones. Task 1
//! anchors to the zero-field prior (h^prev = 0). Gradients are analytic (dm/dh = βσ,
//! dσ/dh = −2βmσ).
//!
//! **Teachers and data.** A teacher w¹ ∈ {±1}^N, P₁ = round(α₁N) random ±1 inputs labelled
//! y = sign(w·ξ), with a tie w·ξ = 0 (possible only for even N) labelled +1. The card's
//! N = 1000 (the default) is even: a tie comes with probability C(N, N/2)/2^N ≈ √(2/(πN)),
//! about 2.5 % of the patterns at N = 1000, all labelled +1, a bias both teachers' data share
//! (an odd N has no ties; engram keeps the card's N). Task 2's teacher w² flips exactly
//! round(N(1 − r₀)/2) signs of w¹, so that their overlap w¹·w²/N is r₀ up to that rounding.
//!
//! **Training.** Task 1: Adam (the crate's [`AdamStep`] in f64: PyTorch's formulas, L2
//! weight decay in the gradient as PyTorch's `weight_decay`) from fields ~ N(0, init_std²) (near 0, not 0: at h = 0 every
//! gradient is symmetric). Task 2 starts from the task-1 fields with a fresh optimizer, in one
//! of three variants ([`Task2`]), and stops after the first epoch at which the binary student
//! sign(h) classifies every task-2 training example correctly (the card's "error on teacher 2
//! is 0", read as the training error). Batches are drawn without replacement in a seeded order
//! each epoch, the last one smaller when the batch does not divide P.
//!
//! **Metric.** ε = arccos(Σ_i sign(h_i)·w_i / N)/π against each teacher (the overlap with
//! sign(h), not with m, as the card says), with sign(0) = +1.
//!
//! Random streams (engram's [`Rng`], keyed by the seed given): `teacher`, `patterns` (the
//! public helpers), `task1-patterns`, `task1-init`, `task1-order` (one per epoch),
//! `overlap`, `task2-patterns`, `task2-order`.

use super::gauss::{dlog_h, log_h};
use crate::optim::AdamStep;
use crate::{Result, err};
use engram_weights::rng::Rng;

/// The perceptron experiment's settings. Defaults are the card's (task 1: N = 1000, α₁ = 2,
/// Adam lr 5e-3, wd 5e-4, batch 32, 1000 epochs; task 2: wd 1e-3, up to 3000 epochs; β = 1,
/// engram's choice).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerceptronConfig {
    /// Number of weights N.
    pub n: usize,
    /// Task-1 examples per weight: P₁ = round(α₁·N).
    pub alpha1: f64,
    /// Inverse temperature of the posterior.
    pub beta: f64,
    pub epochs1: usize,
    /// Most epochs of task 2 (it stops earlier at zero training error).
    pub epochs2: usize,
    pub lr1: f64,
    pub lr2: f64,
    /// L2 weight decay on the fields (in the gradient, as PyTorch's Adam `weight_decay`).
    pub wd1: f64,
    pub wd2: f64,
    /// Task-1 batch size.
    pub batch: usize,
    /// Task-2 batch size (the card tunes it per (α₂, r₀), 16 to 64).
    pub batch2: usize,
    /// Standard deviation of the initial fields.
    pub init_std: f64,
    /// Adam's ε (PyTorch's default 1e-8; the reference code is PyTorch).
    pub adam_eps: f64,
    /// Task 2's curve gets a point every this many epochs (and at its last epoch).
    pub curve_every: usize,
}

impl Default for PerceptronConfig {
    fn default() -> Self {
        PerceptronConfig {
            n: 1000,
            alpha1: 2.0,
            beta: 1.0,
            epochs1: 1000,
            epochs2: 3000,
            lr1: 5e-3,
            lr2: 5e-3,
            wd1: 5e-4,
            wd2: 1e-3,
            batch: 32,
            batch2: 32,
            init_std: 0.01,
            adam_eps: 1e-8,
            curve_every: 10,
        }
    }
}

impl PerceptronConfig {
    /// A small, fast setting for tests and quick runs: N = 201, 200 epochs of task 1, at
    /// most 300 of task 2, otherwise the card's.
    pub fn quick() -> Self {
        PerceptronConfig {
            n: 201,
            epochs1: 200,
            epochs2: 300,
            curve_every: 5,
            ..PerceptronConfig::default()
        }
    }

    /// P₁ = round(α₁·N).
    pub fn p1(&self) -> usize {
        (self.alpha1 * self.n as f64).round() as usize
    }

    pub fn validate(&self) -> Result<()> {
        let pos = |v: f64, key: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(err!(
                    "perceptron.{key} must be finite and positive, got {v}"
                ))
            }
        };
        let nonneg = |v: f64, key: &str| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                Err(err!("perceptron.{key} must be finite and >= 0, got {v}"))
            }
        };
        let count = |v: usize, key: &str| {
            if v >= 1 {
                Ok(())
            } else {
                Err(err!("perceptron.{key} must be at least 1, got {v}"))
            }
        };
        count(self.n, "n")?;
        if self.n > 1 << 24 {
            return Err(err!("perceptron.n must be at most 2^24, got {}", self.n));
        }
        pos(self.alpha1, "alpha1")?;
        if self.alpha1 > 1e4 || self.p1() == 0 {
            return Err(err!(
                "perceptron.alpha1 = {} gives P1 = round(alpha1 * n) = {} examples; it must \
                 give at least 1 and alpha1 must be at most 1e4",
                self.alpha1,
                self.p1()
            ));
        }
        pattern_values(self.p1(), self.n, "perceptron.alpha1", self.alpha1, 1)?;
        pos(self.beta, "beta")?;
        count(self.epochs1, "epochs1")?;
        count(self.epochs2, "epochs2")?;
        pos(self.lr1, "lr1")?;
        pos(self.lr2, "lr2")?;
        nonneg(self.wd1, "wd1")?;
        nonneg(self.wd2, "wd2")?;
        count(self.batch, "batch")?;
        count(self.batch2, "batch2")?;
        pos(self.init_std, "init_std")?;
        pos(self.adam_eps, "adam_eps")?;
        count(self.curve_every, "curve_every")?;
        Ok(())
    }
}

/// The most ±1 pattern values a task may hold (one byte each): P·N ≤ 2³² (4 GiB). n ≤ 2²⁴
/// and α ≤ 1e4 alone would allow about 10¹⁸.
const MAX_PATTERN_VALUES: usize = 1 << 32;

/// Refuses task `task`'s P·N pattern values above [`MAX_PATTERN_VALUES`], naming `key` (its
/// α) and perceptron.n.
fn pattern_values(p: usize, n: usize, key: &str, alpha: f64, task: u8) -> Result<()> {
    match p.checked_mul(n) {
        Some(v) if v <= MAX_PATTERN_VALUES => Ok(()),
        _ => Err(err!(
            "{key} = {alpha} and perceptron.n = {n} give P{task}·N = {p}·{n} pattern values; \
             at most 2^32 are allowed (lower {key} or perceptron.n)"
        )),
    }
}

/// How task 2 is learnt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task2 {
    /// Adam with the KL anchor to the task-1 posterior (card variant (a)).
    Kl,
    /// Adam on the likelihood alone.
    NoKl,
    /// Plain SGD on the fields (lr2, wd2), no KL.
    Sgd,
}

impl Task2 {
    pub const ALL: [Task2; 3] = [Task2::Kl, Task2::NoKl, Task2::Sgd];

    pub fn name(&self) -> &'static str {
        match self {
            Task2::Kl => "kl",
            Task2::NoKl => "no-kl",
            Task2::Sgd => "sgd",
        }
    }
}

/// The outcome of task 1.
#[derive(Clone, Debug, PartialEq)]
pub struct Task1Out {
    /// The teacher w¹ (±1).
    pub w1: Vec<i8>,
    /// The learnt fields.
    pub h1: Vec<f64>,
    /// ε against w¹.
    pub eps1: f64,
    /// Training error of the binary student sign(h) on the task-1 examples.
    pub train_error1: f64,
}

/// The outcome of task 2.
#[derive(Clone, Debug, PartialEq)]
pub struct Task2Out {
    /// ε against w¹ and w² at the end.
    pub eps1: f64,
    pub eps2: f64,
    /// Epochs trained (fewer than `epochs2` when the training error reached 0).
    pub epochs_run: usize,
    /// Training error of sign(h) on the task-2 examples at the end.
    pub train_error2: f64,
    /// (epochs done, ε against w¹, ε against w²): at 0, every `curve_every` epochs and at the
    /// last epoch.
    pub curve: Vec<(usize, f64, f64)>,
}

/// A teacher of `n` random ±1 weights (stream `teacher`).
pub fn teacher(n: usize, seed: u64) -> Vec<i8> {
    signs(&mut Rng::keyed(seed, "teacher", 0), n)
}

/// A copy of `w1` with exactly round(n(1 − r0)/2) signs flipped, chosen at random (stream
/// `overlap`): overlap w1·w2/n = r0 up to that rounding. `r0` must lie in [−1, 1].
pub fn with_overlap(w1: &[i8], r0: f64, seed: u64) -> Result<Vec<i8>> {
    if !(r0.is_finite() && (-1.0..=1.0).contains(&r0)) {
        return Err(err!("perceptron overlap r0 must lie in [-1, 1], got {r0}"));
    }
    let n = w1.len();
    let flips = (n as f64 * (1.0 - r0) / 2.0).round() as usize;
    let idx: Vec<usize> = (0..n).collect();
    let mut w2 = w1.to_vec();
    for i in Rng::keyed(seed, "overlap", 0).choose_sorted(&idx, flips.min(n)) {
        w2[i] = -w2[i];
    }
    Ok(w2)
}

/// `p` random ±1 inputs of `n` values, row-major (stream `patterns`).
pub fn patterns(p: usize, n: usize, seed: u64) -> Vec<i8> {
    signs(&mut Rng::keyed(seed, "patterns", 0), p * n)
}

/// Labels y = sign(w·ξ) of the row-major inputs `x` (+1 on a tie, possible for even n).
pub fn labels(w: &[i8], x: &[i8]) -> Vec<i8> {
    if w.is_empty() {
        return Vec::new();
    }
    x.chunks_exact(w.len())
        .map(|row| if dot_signs(w, row) >= 0 { 1 } else { -1 })
        .collect()
}

/// The binary weights the fields stand for: sign(h), with sign(0) = +1.
pub fn export_sign(h: &[f64]) -> Vec<i8> {
    h.iter().map(|&v| if v < 0.0 { -1 } else { 1 }).collect()
}

/// ε = arccos(Σ sign(h_i)·w_i / N)/π (sign(0) = +1); 0.5 for empty inputs.
pub fn generalization_error(h: &[f64], w: &[i8]) -> f64 {
    if h.is_empty() || h.len() != w.len() {
        return 0.5;
    }
    let s: i64 = h
        .iter()
        .zip(w)
        .map(|(&hv, &wv)| if hv < 0.0 { -(wv as i64) } else { wv as i64 })
        .sum();
    let r = (s as f64 / h.len() as f64).clamp(-1.0, 1.0);
    r.acos() / std::f64::consts::PI
}

/// Learns task 1: teacher w¹ (stream `teacher` of `seed`), P₁ inputs, Adam with the KL to the
/// zero-field prior.
pub fn train_task1(cfg: &PerceptronConfig, seed: u64) -> Result<Task1Out> {
    cfg.validate()?;
    let n = cfg.n;
    let w1 = teacher(n, seed);
    let data = Data::new(
        signs(&mut Rng::keyed(seed, "task1-patterns", 0), cfg.p1() * n),
        &w1,
    );
    let mut init = Rng::keyed(seed, "task1-init", 0);
    let h0: Vec<f64> = (0..n).map(|_| cfg.init_std * init.normal_f64()).collect();
    let mut st = Student::new(h0, cfg.beta);
    let mut opt = Opt::adam(n, cfg.lr1, cfg.wd1, cfg.adam_eps);
    let prior = vec![0.0; n];
    for epoch in 0..cfg.epochs1 {
        let mut order = Rng::keyed(seed, "task1-order", epoch as u64);
        st.epoch(&data, cfg.batch, Some(&prior), &mut opt, &mut order);
    }
    Ok(Task1Out {
        eps1: generalization_error(&st.h, &w1),
        train_error1: data.binary_error(&export_sign(&st.h)),
        w1,
        h1: st.h,
    })
}

/// Learns task 2 from the task-1 fields: teacher w² at overlap `r0` with w¹, P₂ =
/// round(α₂·N) inputs, in `variant`, until the training error is 0 or `epochs2` epochs.
pub fn train_task2(
    cfg: &PerceptronConfig,
    t1: &Task1Out,
    r0: f64,
    alpha2: f64,
    variant: Task2,
    seed: u64,
) -> Result<Task2Out> {
    cfg.validate()?;
    let n = cfg.n;
    if t1.w1.len() != n || t1.h1.len() != n {
        return Err(err!(
            "task-1 outcome has {} teacher weights and {} fields for perceptron.n = {n}",
            t1.w1.len(),
            t1.h1.len()
        ));
    }
    if t1.h1.iter().any(|v| !v.is_finite()) {
        return Err("task-1 fields are not all finite".into());
    }
    if !(alpha2.is_finite() && alpha2 > 0.0 && alpha2 <= 1e4) {
        return Err(err!("perceptron alpha2 must be in (0, 1e4], got {alpha2}"));
    }
    let p2 = (alpha2 * n as f64).round() as usize;
    if p2 == 0 {
        return Err(err!(
            "perceptron alpha2 = {alpha2} gives P2 = round(alpha2 * n) = 0 examples"
        ));
    }
    pattern_values(p2, n, "perceptron alpha2", alpha2, 2)?;
    let w2 = with_overlap(&t1.w1, r0, seed)?;
    let data = Data::new(
        signs(&mut Rng::keyed(seed, "task2-patterns", 0), p2 * n),
        &w2,
    );
    let mut st = Student::new(t1.h1.clone(), cfg.beta);
    let mut opt = match variant {
        Task2::Kl | Task2::NoKl => Opt::adam(n, cfg.lr2, cfg.wd2, cfg.adam_eps),
        Task2::Sgd => Opt::Sgd {
            lr: cfg.lr2,
            wd: cfg.wd2,
        },
    };
    let anchor = (variant == Task2::Kl).then_some(t1.h1.as_slice());
    let point = |e: usize, h: &[f64]| {
        (
            e,
            generalization_error(h, &t1.w1),
            generalization_error(h, &w2),
        )
    };
    let mut curve = vec![point(0, &st.h)];
    // The training error of sign(h) changes only when a sign does: recount only then.
    let mut signs_now = export_sign(&st.h);
    let mut error = data.binary_error(&signs_now);
    let mut epochs_run = 0;
    while epochs_run < cfg.epochs2 && error > 0.0 {
        let mut order = Rng::keyed(seed, "task2-order", epochs_run as u64);
        st.epoch(&data, cfg.batch2, anchor, &mut opt, &mut order);
        epochs_run += 1;
        let s = export_sign(&st.h);
        if s != signs_now {
            error = data.binary_error(&s);
            signs_now = s;
        }
        if epochs_run % cfg.curve_every == 0 {
            curve.push(point(epochs_run, &st.h));
        }
    }
    if curve.last().map(|c| c.0) != Some(epochs_run) {
        curve.push(point(epochs_run, &st.h));
    }
    Ok(Task2Out {
        eps1: generalization_error(&st.h, &t1.w1),
        eps2: generalization_error(&st.h, &w2),
        epochs_run,
        train_error2: error,
        curve,
    })
}

/// KL(q ‖ q_prev) between the factorised binary posteriors of fields `h` and `prev` at
/// inverse temperature `beta`: Σ_i [β(h_i − prev_i)·tanh(βh_i) − log cosh(βh_i) +
/// log cosh(β·prev_i)] (entries beyond the shorter of the two are ignored).
pub fn kl_fields(h: &[f64], prev: &[f64], beta: f64) -> f64 {
    h.iter()
        .zip(prev)
        .map(|(&hv, &pv)| {
            beta * (hv - pv) * (beta * hv).tanh() - log_cosh(beta * hv) + log_cosh(beta * pv)
        })
        .sum()
}

/// `count` random ±1 values.
fn signs(rng: &mut Rng, count: usize) -> Vec<i8> {
    let mut out = Vec::with_capacity(count);
    while out.len() < count {
        let mut bits = rng.next_u64();
        for _ in 0..64.min(count - out.len()) {
            out.push(if bits & 1 == 1 { 1 } else { -1 });
            bits >>= 1;
        }
    }
    out
}

/// Σ a_i·b_i of two ±1 vectors.
fn dot_signs(a: &[i8], b: &[i8]) -> i64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as i32 * y as i32) as i64)
        .sum()
}

/// Σ m_i·x_i, in eight lanes so that it vectorises; the same order every call.
fn dot(m: &[f64], x: &[i8]) -> f64 {
    let mut acc = [0.0f64; 8];
    let (mc, xc) = (m.chunks_exact(8), x.chunks_exact(8));
    let (mr, xr) = (mc.remainder(), xc.remainder());
    for (a, b) in mc.zip(xc) {
        for k in 0..8 {
            acc[k] += a[k] * b[k] as f64;
        }
    }
    let mut s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (a, &b) in mr.iter().zip(xr) {
        s += a * b as f64;
    }
    s
}

/// log cosh(x), stable for large |x|.
fn log_cosh(x: f64) -> f64 {
    let a = x.abs();
    a + (-2.0 * a).exp().ln_1p() - std::f64::consts::LN_2
}

/// A task's examples: ±1 inputs (row-major, n per row) and ±1 labels.
struct Data {
    x: Vec<i8>,
    y: Vec<i8>,
    n: usize,
}

impl Data {
    fn new(x: Vec<i8>, teacher: &[i8]) -> Data {
        let y = labels(teacher, &x);
        Data {
            x,
            y,
            n: teacher.len(),
        }
    }

    fn len(&self) -> usize {
        self.y.len()
    }

    fn row(&self, i: usize) -> &[i8] {
        &self.x[i * self.n..(i + 1) * self.n]
    }

    /// Fraction of examples the binary perceptron `w` gets wrong (prediction +1 on a tie).
    fn binary_error(&self, w: &[i8]) -> f64 {
        let wrong = (0..self.len())
            .filter(|&i| {
                let pred = if dot_signs(w, self.row(i)) >= 0 {
                    1
                } else {
                    -1
                };
                pred != self.y[i]
            })
            .count();
        wrong as f64 / self.len().max(1) as f64
    }
}

/// The optimizer of the fields.
enum Opt {
    /// Adam (betas 0.9, 0.999), L2 decay `wd` added to the gradient: the crate's
    /// [`AdamStep`], in f64 as the fields are.
    Adam {
        lr: f64,
        wd: f64,
        eps: f64,
        t: u64,
        m: Vec<f64>,
        v: Vec<f64>,
    },
    /// w ← w − lr·(g + wd·w).
    Sgd { lr: f64, wd: f64 },
}

impl Opt {
    fn adam(n: usize, lr: f64, wd: f64, eps: f64) -> Opt {
        Opt::Adam {
            lr,
            wd,
            eps,
            t: 0,
            m: vec![0.0; n],
            v: vec![0.0; n],
        }
    }

    fn step(&mut self, w: &mut [f64], g: &[f64]) {
        match self {
            Opt::Adam {
                lr,
                wd,
                eps,
                t,
                m,
                v,
            } => {
                *t = t.saturating_add(1);
                let k = AdamStep::<f64>::new(*lr, *t, [0.9, 0.999], *eps, *wd, false);
                for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    k.apply(w, g, m, v);
                }
            }
            Opt::Sgd { lr, wd } => {
                for (w, &g) in w.iter_mut().zip(g) {
                    *w -= *lr * (g + *wd * *w);
                }
            }
        }
    }
}

/// The fields and everything a step needs, allocated once.
struct Student {
    beta: f64,
    h: Vec<f64>,
    /// m = tanh(βh) and σ = 1 − m², kept current with `h`.
    m: Vec<f64>,
    s: Vec<f64>,
    /// dL/dh of the last batch, and dL/dm's accumulator.
    grad: Vec<f64>,
    gm: Vec<f64>,
    /// Per example of the batch: dL/dμ.
    gmu: Vec<f64>,
    /// The epoch's order of the examples.
    order: Vec<usize>,
}

/// Floor of v = Σσ/N: with every field saturated v would be 0 and μ/√v undefined.
const V_FLOOR: f64 = 1e-12;

impl Student {
    fn new(h: Vec<f64>, beta: f64) -> Student {
        let n = h.len();
        let mut st = Student {
            beta,
            h,
            m: vec![0.0; n],
            s: vec![0.0; n],
            grad: vec![0.0; n],
            gm: vec![0.0; n],
            gmu: Vec::new(),
            order: Vec::new(),
        };
        st.refresh();
        st
    }

    /// m = tanh(βh) and σ = 1 − m² = 4e/(1 + e)² from one e = exp(−2β|h|) per field
    /// (cheaper than tanh, and σ keeps its relative precision where m saturates).
    fn refresh(&mut self) {
        for ((m, s), &h) in self.m.iter_mut().zip(self.s.iter_mut()).zip(&self.h) {
            let x = self.beta * h;
            let e = (-2.0 * x.abs()).exp();
            let d = 1.0 / (1.0 + e);
            *m = ((1.0 - e) * d).copysign(x);
            *s = 4.0 * e * d * d;
        }
    }

    #[cfg(test)]
    fn kl(&self, prev: &[f64]) -> f64 {
        kl_fields(&self.h, prev, self.beta)
    }

    /// The gradient with respect to h, in `self.grad`, of the loss of examples `rows` of
    /// `data`: −Σ log H(−yμ/√v) plus `kl_scale`·KL(q ‖ q_prev) when `anchor` is given.
    /// Returns the first part only: the KL's value ([`Student::kl`]) costs as much as the
    /// rest of the step and training does not need it.
    fn loss_grad(
        &mut self,
        data: &Data,
        rows: &[usize],
        anchor: Option<&[f64]>,
        kl_scale: f64,
    ) -> f64 {
        let n = self.h.len() as f64;
        let beta = self.beta;
        let v = (self.s.iter().sum::<f64>() / n).max(V_FLOOR);
        let sv = v.sqrt();
        let rn = n.sqrt();
        self.gmu.clear();
        let mut loss = 0.0;
        // dL/dv = Σ_b r_b·(−u_b)/(2v), r_b = dL/du_b = −(log H)'(u_b).
        let mut gv = 0.0;
        for &i in rows {
            let y = data.y[i] as f64;
            let mu = dot(&self.m, data.row(i)) / rn;
            let u = -y * mu / sv;
            loss -= log_h(u);
            let r = -dlog_h(u);
            gv -= r * u / (2.0 * v);
            self.gmu.push(-r * y / sv);
        }
        self.gm.fill(0.0);
        for (k, &i) in rows.iter().enumerate() {
            let c = self.gmu[k] / rn;
            for (g, &x) in self.gm.iter_mut().zip(data.row(i)) {
                *g += c * x as f64;
            }
        }
        let gs = gv / n;
        for i in 0..self.h.len() {
            let (m, s) = (self.m[i], self.s[i]);
            self.grad[i] = beta * s * (self.gm[i] - 2.0 * m * gs);
        }
        if let Some(prev) = anchor {
            let k = kl_scale * beta * beta;
            for (((g, &s), &h), &p) in self.grad.iter_mut().zip(&self.s).zip(&self.h).zip(prev) {
                *g += k * s * (h - p);
            }
        }
        loss
    }

    /// One epoch over `data` in batches of `batch`, in the order drawn from `rng`; with
    /// `anchor`, each batch of b adds (b/P)·KL to it.
    fn epoch(
        &mut self,
        data: &Data,
        batch: usize,
        anchor: Option<&[f64]>,
        opt: &mut Opt,
        rng: &mut Rng,
    ) {
        let p = data.len();
        self.order.clear();
        self.order.extend(0..p);
        rng.shuffle(&mut self.order);
        let order = std::mem::take(&mut self.order);
        for rows in order.chunks(batch) {
            self.loss_grad(data, rows, anchor, rows.len() as f64 / p as f64);
            opt.step(&mut self.h, &self.grad);
            self.refresh();
        }
        self.order = order;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small_data(n: usize, p: usize, seed: u64) -> (Vec<i8>, Data) {
        let w = teacher(n, seed);
        let d = Data::new(patterns(p, n, seed), &w);
        (w, d)
    }

    fn random_fields(n: usize, scale: f64, seed: u64) -> Vec<f64> {
        let mut r = Rng::new(seed);
        (0..n).map(|_| scale * r.normal_f64()).collect()
    }

    #[test]
    fn teachers_overlaps_and_labels() {
        let w1 = teacher(1001, 3);
        assert!(w1.iter().all(|&v| v == 1 || v == -1));
        for r0 in [-0.5, 0.0, 0.5, 1.0, -1.0] {
            let w2 = with_overlap(&w1, r0, 9).unwrap();
            let flips = w1.iter().zip(&w2).filter(|(a, b)| a != b).count();
            assert_eq!(flips, (1001.0 * (1.0 - r0) / 2.0_f64).round() as usize);
            let r = dot_signs(&w1, &w2) as f64 / 1001.0;
            assert!((r - r0).abs() <= 1.0 / 1001.0, "{r} vs {r0}");
        }
        assert!(with_overlap(&w1, 1.5, 0).is_err());
        assert!(with_overlap(&w1, f64::NAN, 0).is_err());
        let x = patterns(50, 1001, 4);
        let y = labels(&w1, &x);
        for (i, &yi) in y.iter().enumerate() {
            let d = dot_signs(&w1, &x[i * 1001..(i + 1) * 1001]);
            assert_eq!(yi as i64, d.signum());
        }
        // Even n: ties are labelled +1.
        assert_eq!(labels(&[1, -1], &[1, 1, -1, -1, 1, -1]), vec![1, 1, 1]);
        assert_eq!(export_sign(&[0.0, -0.0, -1e-300, 2.0]), vec![1, 1, -1, 1]);
        assert_eq!(generalization_error(&[1.0, -1.0], &[1, -1]), 0.0);
        assert!((generalization_error(&[1.0, -1.0], &[-1, 1]) - 1.0).abs() < 1e-15);
    }

    #[test]
    fn loss_gradient_equals_finite_differences() {
        let (n, p) = (37, 20);
        let (_, data) = small_data(n, p, 1);
        let rows: Vec<usize> = (0..p).collect();
        for (beta, scale) in [(1.0, 0.7), (2.5, 0.3)] {
            let h = random_fields(n, scale, 5);
            let prev = random_fields(n, 0.5, 6);
            for anchor in [None, Some(prev.as_slice())] {
                let mut st = Student::new(h.clone(), beta);
                st.loss_grad(&data, &rows, anchor, 0.3);
                let g = st.grad.clone();
                for i in 0..n {
                    let e = 1e-6;
                    let at = |d: f64| {
                        let mut hh = h.clone();
                        hh[i] += d;
                        let mut s = Student::new(hh, beta);
                        let nll = s.loss_grad(&data, &rows, anchor, 0.3);
                        nll + anchor.map_or(0.0, |a| 0.3 * s.kl(a))
                    };
                    let fd = (at(e) - at(-e)) / (2.0 * e);
                    assert!(
                        (fd - g[i]).abs() <= 1e-6 * (1.0 + fd.abs()),
                        "beta {beta}, anchor {}, i {i}: {} vs {fd}",
                        anchor.is_some(),
                        g[i]
                    );
                }
            }
        }
    }

    #[test]
    fn kl_gradient_equals_finite_differences_and_vanishes_when_confident() {
        let n = 25;
        let prev = random_fields(n, 1.0, 2);
        for beta in [0.5, 1.0, 3.0] {
            let h = random_fields(n, 1.5, 3);
            let st = Student::new(h.clone(), beta);
            // With no examples the loss is the KL alone.
            let (_, data) = small_data(n, 0, 1);
            let mut s2 = Student::new(h.clone(), beta);
            assert_eq!(s2.loss_grad(&data, &[], Some(&prev), 1.0), 0.0);
            assert!(st.kl(&prev) >= -1e-12, "KL is not negative");
            for i in 0..n {
                let e = 1e-6;
                let at = |d: f64| {
                    let mut hh = h.clone();
                    hh[i] += d;
                    Student::new(hh, beta).kl(&prev)
                };
                let fd = (at(e) - at(-e)) / (2.0 * e);
                assert!((st.m[i] - (beta * h[i]).tanh()).abs() < 1e-15);
                let analytic = beta * beta * st.s[i] * (h[i] - prev[i]);
                assert!((fd - s2.grad[i]).abs() < 1e-6 * (1.0 + fd.abs()));
                assert!((analytic - s2.grad[i]).abs() < 1e-12);
            }
        }
        // At equal distance from the anchor, the pull fades as the field grows: β²σ → 0.
        let mut last = f64::INFINITY;
        for hv in [0.0, 1.0, 3.0, 6.0, 12.0] {
            let mut st = Student::new(vec![hv + 1.0], 1.0);
            let (_, data) = small_data(1, 0, 1);
            st.loss_grad(&data, &[], Some(&[hv]), 1.0);
            assert!(
                st.grad[0] > 0.0 && st.grad[0] < last,
                "h = {hv}: {}",
                st.grad[0]
            );
            last = st.grad[0];
        }
        assert!(last < 1e-9);
        // KL of a posterior to itself is 0.
        assert!(Student::new(prev.clone(), 2.0).kl(&prev).abs() < 1e-12);
    }

    #[test]
    fn student_learns_task_1() {
        let cfg = PerceptronConfig {
            n: 101,
            alpha1: 3.0,
            epochs1: 150,
            ..PerceptronConfig::default()
        };
        let out = train_task1(&cfg, 11).unwrap();
        assert!(out.eps1 < 0.2, "eps1 = {}", out.eps1);
        assert!(out.train_error1 < 0.1, "train error {}", out.train_error1);
    }

    #[test]
    fn task_2_moves_towards_teacher_2_and_runs_are_reproducible() {
        let cfg = PerceptronConfig {
            n: 101,
            alpha1: 3.0,
            epochs1: 100,
            epochs2: 100,
            curve_every: 7,
            ..PerceptronConfig::default()
        };
        let t1 = train_task1(&cfg, 1).unwrap();
        assert_eq!(t1, train_task1(&cfg, 1).unwrap());
        for v in Task2::ALL {
            let a = train_task2(&cfg, &t1, 0.0, 3.0, v, 2).unwrap();
            let b = train_task2(&cfg, &t1, 0.0, 3.0, v, 2).unwrap();
            assert_eq!(a, b, "{}", v.name());
            let first = a.curve[0];
            assert_eq!(first.0, 0);
            assert!(
                a.eps2 < first.2,
                "{}: eps2 {} from {}",
                v.name(),
                a.eps2,
                first.2
            );
            assert_eq!(a.curve.last().unwrap().0, a.epochs_run);
            assert!(a.epochs_run <= 100);
            assert!(a.epochs_run == 100 || a.train_error2 == 0.0);
        }
        assert!(train_task2(&cfg, &t1, 2.0, 3.0, Task2::Kl, 2).is_err());
        assert!(train_task2(&cfg, &t1, 0.0, 0.0, Task2::Kl, 2).is_err());
        assert!(train_task2(&cfg, &t1, 0.0, f64::NAN, Task2::Kl, 2).is_err());
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(PerceptronConfig::default().validate().is_ok());
        assert!(PerceptronConfig::quick().validate().is_ok());
        let bad = [
            (
                PerceptronConfig {
                    n: 0,
                    ..Default::default()
                },
                "n",
            ),
            (
                PerceptronConfig {
                    alpha1: -1.0,
                    ..Default::default()
                },
                "alpha1",
            ),
            (
                PerceptronConfig {
                    alpha1: 1e-9,
                    ..Default::default()
                },
                "alpha1",
            ),
            (
                PerceptronConfig {
                    n: 1 << 24,
                    alpha1: 1e4,
                    ..Default::default()
                },
                "alpha1",
            ),
            (
                PerceptronConfig {
                    beta: f64::NAN,
                    ..Default::default()
                },
                "beta",
            ),
            (
                PerceptronConfig {
                    epochs2: 0,
                    ..Default::default()
                },
                "epochs2",
            ),
            (
                PerceptronConfig {
                    lr1: 0.0,
                    ..Default::default()
                },
                "lr1",
            ),
            (
                PerceptronConfig {
                    wd2: f64::INFINITY,
                    ..Default::default()
                },
                "wd2",
            ),
            (
                PerceptronConfig {
                    batch: 0,
                    ..Default::default()
                },
                "batch",
            ),
            (
                PerceptronConfig {
                    init_std: 0.0,
                    ..Default::default()
                },
                "init_std",
            ),
            (
                PerceptronConfig {
                    curve_every: 0,
                    ..Default::default()
                },
                "curve_every",
            ),
        ];
        for (c, key) in bad {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(&format!("perceptron.{key}")), "{e}");
        }
        // P·N is bounded by 2^32 values, checked before any pattern is drawn: at the bound
        // it passes, one example more is refused naming both keys.
        let at = |n: usize, alpha1: f64| PerceptronConfig {
            n,
            alpha1,
            ..Default::default()
        };
        assert!(at(1 << 16, 1.0).validate().is_ok());
        let e = at(1 << 16, 1.0 + 1.0 / 65536.0)
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("perceptron.alpha1") && e.contains("perceptron.n = 65536"),
            "{e}"
        );
        let cfg = at(1 << 16, 1.0);
        let t1 = Task1Out {
            w1: vec![1; cfg.n],
            h1: vec![0.0; cfg.n],
            eps1: 0.0,
            train_error1: 0.0,
        };
        let e = train_task2(&cfg, &t1, 0.0, 2.0, Task2::Kl, 0)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("perceptron alpha2 = 2") && e.contains("perceptron.n = 65536"),
            "{e}"
        );
    }
}
