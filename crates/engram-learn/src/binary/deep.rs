// Binary-weight variational CL, Phys. Rev. E 108, 014309 (2023), vs the metaplastic BNN: Laborieux
// et al., Nature Communications 12, 2549 (2021). Card: shared/methods/theory.md, "Binary-weight".

//! A binary network without biases (784-512-512-10 by default, ReLU hidden layers, softmax
//! cross-entropy) trained on a sequence of tasks in one of four arms ([`Arm`]):
//!
//! - **field-per-step** (card variant (b); *not* a KL to the previous task): fields h ~ N(0, 1),
//!   m = tanh(βh), σ = 1 − m²; the forward pass is the local reparametrisation
//!   z = (a·m)/√N + √((a²·σ)/N + 1e-8)·ε, ε ~ N(0, 1) per unit and example (the 1e-8 keeps
//!   the square root's gradient finite where a row of activations is all zero); Adam; after
//!   every step Δh the term K = β²σ ⊙ Δh is stored and added to the next gradient
//!   ([`super::update`]). The loss is the cross-entropy *summed* over the batch, as in the
//!   paper's code (`Continual learning in deep neural networks/Bayesian-Permuated.py`: its
//!   output error is `out − y`, not divided by the batch), so K is added to that gradient; with
//!   the batch mean K dominates and the network does not learn.
//! - **field-anchor** (card variant (a)): the same network and summed loss, plus KL(q ‖ q_prev)
//!   to the fields at the end of the previous task (the zero-field prior for task 0), scaled by
//!   batch/P_t (the card's).
//! - **ste**: latent real weights W ~ U(−1/√N, 1/√N); the forward pass uses sign(W)/√N (the
//!   field network's scaling); the gradient passes straight through (identity, zeroed where
//!   |W| > 1); Adam; W clipped to [−1, 1] after every step.
//! - **metaplastic** (Laborieux et al., Nature Communications 12, 2549 (2021)): the same
//!   forward pass and straight-through gradient, no clipping; every Adam update component that
//!   moves a weight towards zero is multiplied by 1 − tanh²(m·W), so that weights grown large
//!   (consolidated) hardly flip. Laborieux et al. put BatchNorm between layers; engram uses the
//!   field network's 1/√N scaling instead, so that all four arms share one forward pass.
//!
//! β is annealed over the whole sequence, β = 10·tanh(0.1 + 2(t·E + e + 1)/(T·E)) for task t
//! and epoch e of T tasks of E epochs ([`beta_schedule`], ≈ 1.8 → 9.7 for 5 × 5). One Adam
//! (lr 0.01, betas (0.9, 0.99), ε 1e-8, no weight decay: the card's) runs over the whole
//! sequence, its moments carried across tasks (as the paper's code: one optimizer for the
//! network). Batches are drawn without replacement in a seeded order
//! every epoch, the last one smaller.
//!
//! **Evaluation** after every task, on every task's test set: the *mean-field* accuracy with
//! the noisy pass at the current β (the card's evaluation; noise seeded by (seed, after-task,
//! task)) and the *binary* accuracy of the network whose weights are [`DeepNet::export`]'s
//! sign(h) or sign(W), deterministic (z = (a·w)/√N). The straight-through arms have no mean
//! field: their mean-field accuracy is the binary one.
//!
//! **Speed.** The parameters, their Adam moments and the consolidation vectors live in plain
//! vectors; the forward pass's leaves (m and σ, or sign(W)) are burn tensors updated in place
//! by one fused pass per layer after every step ([`super::update`]), reading burn's gradients
//! where they lie: no weight matrix is copied between burn and the host, and engram allocates
//! nothing the size of a layer per step (burn's own gradients aside). Noise is drawn from
//! engram's RNG (not burn's process-wide one).
//!
//! Random streams (keyed by the configuration's seed): `init` (one per layer), `order` and
//! `noise` (one per task and epoch), `eval-noise` (one per evaluation).

use super::tasks::Task;
use super::update::{self, Consolidation, FieldSlices, Latent};
use crate::backend::host;
use crate::data::rand_source::RandSource;
use crate::optim::AdamStep;
use crate::{Result, err};
use burn::backend::Flex;
use burn::prelude::*;
use burn::tensor::DType;
use burn::tensor::activation::{log_softmax, relu};
use burn_flex::FlexTensor;
use engram_weights::rng::Rng;
use rand_distr::{Distribution, StandardNormal};
use std::time::Instant;

/// The metaplastic strength of the card's PMNIST setting ([unverified] on the card).
pub const META_M: f64 = 1.3;
/// Added to the variance inside the square root of the noisy pass.
const VAR_FLOOR: f64 = 1e-8;
/// Test examples per evaluated batch.
const EVAL_CHUNK: usize = 1000;

/// How the binary network learns (see the module comment).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Arm {
    FieldPerStep,
    FieldAnchor,
    Ste,
    Meta { m: f64 },
}

impl Arm {
    /// The four arms, the metaplastic one at [`META_M`].
    pub fn all() -> [Arm; 4] {
        [
            Arm::FieldPerStep,
            Arm::FieldAnchor,
            Arm::Ste,
            Arm::Meta { m: META_M },
        ]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Arm::FieldPerStep => "field-per-step",
            Arm::FieldAnchor => "field-anchor",
            Arm::Ste => "ste",
            Arm::Meta { .. } => "metaplastic",
        }
    }

    /// The arms that train fields (a mean-field posterior) rather than latent weights.
    pub fn is_field(&self) -> bool {
        matches!(self, Arm::FieldPerStep | Arm::FieldAnchor)
    }

    pub fn validate(&self) -> Result<()> {
        if let Arm::Meta { m } = self
            && !(m.is_finite() && *m >= 0.0 && *m <= 1e6)
        {
            return Err(err!(
                "metaplastic m must be finite and in [0, 1e6], got {m}"
            ));
        }
        Ok(())
    }
}

/// β = 10·tanh(0.1 + 2(t·E + e + 1)/(T·E)) for task `task` and epoch `epoch` (both from 0)
/// of `tasks` tasks of `epochs` epochs.
pub fn beta_schedule(task: usize, epoch: usize, tasks: usize, epochs: usize) -> f64 {
    let done = (task * epochs + epoch + 1) as f64;
    let total = (tasks.max(1) * epochs.max(1)) as f64;
    10.0 * (0.1 + 2.0 * done / total).tanh()
}

/// The deep experiment's settings; defaults are the card's (784-512-512-10 once the input
/// width is known, Adam lr 0.01, β₂ 0.99, batch 64, 5 epochs per task).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeepConfig {
    /// Hidden widths.
    pub hidden: Vec<usize>,
    /// Output classes.
    pub classes: usize,
    /// Epochs per task.
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    /// Adam's moment decays and ε (PyTorch's ε; the reference code is PyTorch).
    pub beta1: f64,
    pub beta2: f64,
    pub adam_eps: f64,
    /// Standard deviation of the initial fields (the field arms).
    pub field_init_std: f64,
    /// Test examples per task used in each evaluation (the first ones); `None`: all.
    pub eval_samples: Option<usize>,
    pub seed: u64,
}

impl Default for DeepConfig {
    fn default() -> Self {
        DeepConfig {
            hidden: vec![512, 512],
            classes: 10,
            epochs: 5,
            batch: 64,
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.99,
            adam_eps: 1e-8,
            field_init_std: 1.0,
            eval_samples: None,
            seed: 0,
        }
    }
}

impl DeepConfig {
    pub fn validate(&self) -> Result<()> {
        for (i, &w) in self.hidden.iter().enumerate() {
            if !(1..=1 << 16).contains(&w) {
                return Err(err!("deep.hidden[{i}] must be in 1..=65536, got {w}"));
            }
        }
        if !(2..=1 << 16).contains(&self.classes) {
            return Err(err!(
                "deep.classes must be in 2..=65536, got {}",
                self.classes
            ));
        }
        if self.epochs == 0 {
            return Err("deep.epochs must be at least 1".into());
        }
        if self.batch == 0 {
            return Err("deep.batch must be at least 1".into());
        }
        let positive = |v: f64, key: &str| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(err!("deep.{key} must be finite and positive, got {v}"))
            }
        };
        positive(self.lr, "lr")?;
        positive(self.adam_eps, "adam_eps")?;
        positive(self.field_init_std, "field_init_std")?;
        for (key, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(err!("deep.{key} must be in [0, 1), got {b}"));
            }
        }
        if self.eval_samples == Some(0) {
            return Err("deep.eval_samples must be at least 1 (or absent: all)".into());
        }
        Ok(())
    }
}

/// Where a run is, after each epoch.
#[derive(Clone, Debug, PartialEq)]
pub struct DeepProgress {
    pub arm: &'static str,
    pub task: usize,
    pub tasks: usize,
    pub epoch: usize,
    pub epochs: usize,
    /// Mean training loss of the epoch (cross-entropy; without the anchor's KL).
    pub loss: f64,
    /// β of the epoch (field arms).
    pub beta: Option<f64>,
    /// Since the run began.
    pub seconds: f64,
}

/// A run's results.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeepOut {
    pub arm: String,
    /// `[i][j]`: accuracy on task j's test set after training on task i (every j, the tasks
    /// not yet seen included), with the noisy mean-field pass (field arms) or the binary one.
    pub acc_mean_field: Vec<Vec<f64>>,
    /// The same with the binary network sign(h) or sign(W), deterministic.
    pub acc_binary: Vec<Vec<f64>>,
    /// `[t][e]`: mean training loss (cross-entropy) of epoch e of task t.
    pub train_loss: Vec<Vec<f64>>,
    /// Wall-clock seconds of the whole run (training and evaluation).
    pub seconds: f64,
}

/// Trains `arm` on `tasks` in order and evaluates every task after each one; `progress` hears
/// after every epoch.
pub fn run(
    arm: Arm,
    cfg: &DeepConfig,
    tasks: &[Task],
    progress: &mut dyn FnMut(&DeepProgress),
) -> Result<DeepOut> {
    cfg.validate()?;
    arm.validate()?;
    let Some(first) = tasks.first() else {
        return Err("deep run: no tasks".into());
    };
    for (i, t) in tasks.iter().enumerate() {
        t.check(i, cfg.classes)?;
        if t.dim != first.dim {
            return Err(err!(
                "task {i} has {} features per example, task 0 has {}",
                t.dim,
                first.dim
            ));
        }
    }
    let clock = Instant::now();
    let mut net = DeepNet::new(arm, cfg, first.dim)?;
    let n = tasks.len();
    let mut out = DeepOut {
        arm: arm.name().to_string(),
        acc_mean_field: Vec::with_capacity(n),
        acc_binary: Vec::with_capacity(n),
        train_loss: Vec::with_capacity(n),
        seconds: 0.0,
    };
    for (i, task) in tasks.iter().enumerate() {
        let losses = net.train_task(task, i, n, &mut |epoch, loss, beta| {
            progress(&DeepProgress {
                arm: arm.name(),
                task: i,
                tasks: n,
                epoch,
                epochs: cfg.epochs,
                loss,
                beta,
                seconds: clock.elapsed().as_secs_f64(),
            })
        })?;
        out.train_loss.push(losses);
        let (mut mf, mut bin) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for (j, other) in tasks.iter().enumerate() {
            let rows = cfg
                .eval_samples
                .map_or(other.y_test.len(), |k| k.min(other.y_test.len()));
            let (x, y) = (&other.x_test[..rows * other.dim], &other.y_test[..rows]);
            let b = net.accuracy_binary(x, y)?;
            let m = if arm.is_field() {
                net.accuracy_mean_field(x, y, (i * n + j) as u64)?
            } else {
                b
            };
            bin.push(b);
            mf.push(m);
        }
        out.acc_mean_field.push(mf);
        out.acc_binary.push(bin);
    }
    out.seconds = clock.elapsed().as_secs_f64();
    Ok(out)
}

/// One layer: `n_in × n_out` values, row-major [in, out] (burn's `Linear` layout).
struct Layer {
    n_in: usize,
    n_out: usize,
    /// Fields h or latent weights W.
    p: Vec<f32>,
    /// Adam's moments.
    am: Vec<f32>,
    av: Vec<f32>,
    /// K (field-per-step), the anchor fields (field-anchor), empty otherwise.
    aux: Vec<f32>,
    /// The forward pass's leaves: m (field arms) or sign(W); σ (field arms).
    a: FlexTensor,
    s: Option<FlexTensor>,
}

impl Layer {
    fn len(&self) -> usize {
        self.n_in * self.n_out
    }
}

/// The binary network of one arm, its optimizer state and its leaves (see the module
/// comment); [`run`] drives it, and it can be driven task by task.
pub struct DeepNet {
    arm: Arm,
    cfg: DeepConfig,
    dims: Vec<usize>,
    layers: Vec<Layer>,
    /// Adam steps taken.
    steps: u64,
    /// The β the field leaves were computed at.
    beta: f64,
    /// Leaf updates that had to copy (the storage was shared): 0 in a healthy run.
    copies: usize,
}

impl DeepNet {
    /// A network with `input` features and `cfg`'s hidden widths and classes, initialised from
    /// `cfg.seed` (fields ~ N(0, field_init_std²), latent weights ~ U(−1/√N, 1/√N)).
    pub fn new(arm: Arm, cfg: &DeepConfig, input: usize) -> Result<DeepNet> {
        cfg.validate()?;
        arm.validate()?;
        if !(1..=1 << 24).contains(&input) {
            return Err(err!(
                "deep network input width must be in 1..=2^24, got {input}"
            ));
        }
        let mut dims = vec![input];
        dims.extend_from_slice(&cfg.hidden);
        dims.push(cfg.classes);
        for (l, w) in dims.windows(2).enumerate() {
            if w[0].checked_mul(w[1]).is_none_or(|n| n > 1 << 28) {
                return Err(err!(
                    "deep network layer {l} of {} x {} weights is larger than 2^28",
                    w[0],
                    w[1]
                ));
            }
        }
        let beta = 1.0;
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(l, w)| {
                let (n_in, n_out) = (w[0], w[1]);
                let n = n_in * n_out;
                let mut rng = Rng::keyed(cfg.seed, "init", l as u64);
                let p: Vec<f32> = if arm.is_field() {
                    (0..n)
                        .map(|_| (cfg.field_init_std * rng.normal_f64()) as f32)
                        .collect()
                } else {
                    let r = 1.0 / (n_in as f64).sqrt();
                    (0..n)
                        .map(|_| ((2.0 * rng.uniform_f64() - 1.0) * r) as f32)
                        .collect()
                };
                let aux = match arm {
                    Arm::FieldPerStep | Arm::FieldAnchor => vec![0.0; n],
                    _ => Vec::new(),
                };
                let (a, s) = if arm.is_field() {
                    let (mut m, mut s) = (vec![0.0; n], vec![0.0; n]);
                    update::field_leaves(&p, beta as f32, &mut m, &mut s)?;
                    (flex(m, n_in, n_out), Some(flex(s, n_in, n_out)))
                } else {
                    (flex(signs(&p), n_in, n_out), None)
                };
                Ok(Layer {
                    n_in,
                    n_out,
                    p,
                    am: vec![0.0; n],
                    av: vec![0.0; n],
                    aux,
                    a,
                    s,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DeepNet {
            arm,
            cfg: cfg.clone(),
            dims,
            layers,
            steps: 0,
            beta,
            copies: 0,
        })
    }

    pub fn arm(&self) -> Arm {
        self.arm
    }

    /// Widths: input, hidden..., classes.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// The β the field leaves stand at.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// Leaf updates that had to copy their storage (something else held it): 0 unless a
    /// caller keeps tensors of the network alive across steps.
    pub fn copied_updates(&self) -> usize {
        self.copies
    }

    /// Sets β and recomputes m and σ from the fields (field arms; nothing otherwise).
    pub fn set_beta(&mut self, beta: f64) -> Result<()> {
        if !(beta.is_finite() && beta > 0.0) {
            return Err(err!(
                "deep network beta must be finite and positive, got {beta}"
            ));
        }
        self.beta = beta;
        if !self.arm.is_field() {
            return Ok(());
        }
        for layer in &mut self.layers {
            let n = layer.len();
            let copied = !layer.a.is_unique() || layer.s.as_ref().is_some_and(|s| !s.is_unique());
            self.copies += usize::from(copied);
            let Some(s) = layer.s.as_mut() else {
                return Err("field layer without its variance leaf".into());
            };
            let (m, s) = (values_mut(&mut layer.a, n)?, values_mut(s, n)?);
            update::field_leaves(&layer.p, beta as f32, m, s)?;
        }
        Ok(())
    }

    /// The trained values, by layer: fields h (field arms) or latent weights W, row-major
    /// [in, out], named `layers.L.weight`.
    pub fn params(&self) -> Vec<(String, Vec<f32>)> {
        self.layers
            .iter()
            .enumerate()
            .map(|(l, layer)| (format!("layers.{l}.weight"), layer.p.clone()))
            .collect()
    }

    /// The binary network: sign(h) or sign(W) (±1, sign(0) = +1), by layer, row-major
    /// [in, out], named `layers.L.weight`.
    pub fn export(&self) -> Vec<(String, Vec<f32>)> {
        self.layers
            .iter()
            .enumerate()
            .map(|(l, layer)| (format!("layers.{l}.weight"), signs(&layer.p)))
            .collect()
    }

    /// Trains task `index` of `tasks` for the configured epochs; `progress(epoch, mean loss,
    /// β)` after each. Returns the epochs' mean losses. The anchor arm takes this task's fields
    /// as its next anchor at the end.
    pub fn train_task(
        &mut self,
        task: &Task,
        index: usize,
        tasks: usize,
        progress: &mut dyn FnMut(usize, f64, Option<f64>),
    ) -> Result<Vec<f64>> {
        task.check(index, self.cfg.classes)?;
        if task.dim != self.dims[0] {
            return Err(err!(
                "task {index} has {} features per example; the network takes {}",
                task.dim,
                self.dims[0]
            ));
        }
        let (epochs, p, dim) = (self.cfg.epochs, task.len(), task.dim);
        let mut losses = Vec::with_capacity(epochs);
        for e in 0..epochs {
            let key = (index * epochs + e) as u64;
            let beta = if self.arm.is_field() {
                self.set_beta(beta_schedule(index, e, tasks, epochs))?;
                Some(self.beta)
            } else {
                None
            };
            let order = Rng::keyed(self.cfg.seed, "order", key).permutation(p);
            let mut noise = Rng::keyed(self.cfg.seed, "noise", key);
            let mut sum = 0.0;
            for rows in order.chunks(self.cfg.batch) {
                let mut x = Vec::with_capacity(rows.len() * dim);
                for &r in rows {
                    let r = r as usize;
                    x.extend_from_slice(&task.x[r * dim..(r + 1) * dim]);
                }
                let y: Vec<u32> = rows.iter().map(|&r| task.y[r as usize]).collect();
                let loss = self.step(x, &y, &mut noise, 1.0 / p as f64)?;
                if !loss.is_finite() {
                    return Err(err!(
                        "{}: the loss is not finite at task {index}, epoch {e}",
                        self.arm.name()
                    ));
                }
                sum += loss * rows.len() as f64;
            }
            let mean = sum / p as f64;
            losses.push(mean);
            progress(e, mean, beta);
        }
        if self.arm == Arm::FieldAnchor {
            for layer in &mut self.layers {
                layer.aux.copy_from_slice(&layer.p);
            }
        }
        Ok(losses)
    }

    /// One training step on the batch `x` (rows × input) with labels `y`; `kl_scale` is the
    /// anchor arm's 1/P per example of the batch. Returns the batch's mean cross-entropy.
    fn step(&mut self, x: Vec<f32>, y: &[u32], noise: &mut Rng, kl_scale: f64) -> Result<f64> {
        let device = Device::flex().autodiff();
        let b = y.len();
        let x = Tensor::<2>::from_data(TensorData::new(x, [b, self.dims[0]]), &device);
        let leaf = |t: &FlexTensor| {
            Tensor::<2>::from_primitive::<Flex>(t.clone())
                .autodiff()
                .require_grad()
        };
        let a: Vec<Tensor<2>> = self.layers.iter().map(|l| leaf(&l.a)).collect();
        let s: Option<Vec<Tensor<2>>> =
            self.layers.iter().map(|l| l.s.as_ref().map(leaf)).collect();
        let eps = s.as_ref().map(|_| self.noise(b, noise, &device));
        let logits = forward(x, &a, s.as_deref(), eps, &self.dims);
        let loss = cross_entropy(logits, y, self.cfg.classes, &device);
        let value = host(loss.clone()).first().copied().unwrap_or(f32::NAN) as f64;
        // The field arms descend the cross-entropy summed over the batch, as the paper's code
        // does (its output error is `out − y`, not divided by the batch): the per-step term K
        // and the anchor's (batch/P)·KL are added to that gradient, so the scale matters.
        // The latent-weight arms keep the mean (Adam is indifferent to the scale).
        let sum = if self.arm.is_field() { b as f64 } else { 1.0 };
        let kl_scale = kl_scale * sum;
        let mut grads = loss.mul_scalar(sum).backward();
        let grad = |t: &Tensor<2>, grads: &mut burn::tensor::Gradients| {
            t.grad_remove(grads)
                .map(Values::of)
                .ok_or_else(|| err!("{}: a layer got no gradient", self.arm.name()))
        };
        let ga = a
            .iter()
            .map(|t| grad(t, &mut grads))
            .collect::<Result<Vec<_>>>()?;
        let gs = match &s {
            Some(s) => Some(
                s.iter()
                    .map(|t| grad(t, &mut grads))
                    .collect::<Result<Vec<_>>>()?,
            ),
            None => None,
        };
        // Nothing but the layers may hold the leaves' storage now, so that they update in
        // place.
        drop(grads);
        drop(a);
        drop(s);
        self.steps += 1;
        let adam = AdamStep::new(
            self.cfg.lr,
            self.steps,
            [self.cfg.beta1, self.cfg.beta2],
            self.cfg.adam_eps,
            0.0,
            false,
        );
        let beta = self.beta as f32;
        for (l, layer) in self.layers.iter_mut().enumerate() {
            let n = layer.len();
            let copied = !layer.a.is_unique() || layer.s.as_ref().is_some_and(|s| !s.is_unique());
            self.copies += usize::from(copied);
            let g = ga[l].slice(n)?;
            match (self.arm, layer.s.as_mut(), gs.as_ref()) {
                (Arm::FieldPerStep | Arm::FieldAnchor, Some(s), Some(gs)) => {
                    let cons = match self.arm {
                        Arm::FieldAnchor => Consolidation::Anchor {
                            scale: kl_scale as f32,
                        },
                        _ => Consolidation::PerStep,
                    };
                    let slices = FieldSlices {
                        h: &mut layer.p,
                        adam_m: &mut layer.am,
                        adam_v: &mut layer.av,
                        aux: &mut layer.aux,
                        m: values_mut(&mut layer.a, n)?,
                        s: values_mut(s, n)?,
                        grad_m: g,
                        grad_s: gs[l].slice(n)?,
                    };
                    update::field_step(slices, beta, adam, cons)?;
                }
                (Arm::Ste, _, _) => update::latent_step(
                    &mut layer.p,
                    &mut layer.am,
                    &mut layer.av,
                    values_mut(&mut layer.a, n)?,
                    g,
                    adam,
                    Latent::Ste,
                )?,
                (Arm::Meta { m }, _, _) => update::latent_step(
                    &mut layer.p,
                    &mut layer.am,
                    &mut layer.av,
                    values_mut(&mut layer.a, n)?,
                    g,
                    adam,
                    Latent::Meta { m: m as f32 },
                )?,
                _ => return Err("field layer without its variance leaf".into()),
            }
        }
        Ok(value)
    }

    /// ε ~ N(0, 1) for every unit of every layer, `b` examples.
    fn noise(&self, b: usize, rng: &mut Rng, device: &Device) -> Vec<Tensor<2>> {
        self.layers
            .iter()
            .map(|l| {
                let v: Vec<f32> = (0..b * l.n_out)
                    .map(|_| StandardNormal.sample(&mut RandSource(rng)))
                    .collect();
                Tensor::<2>::from_data(TensorData::new(v, [b, l.n_out]), device)
            })
            .collect()
    }

    /// Accuracy of the noisy mean-field pass at the current β on `x` (rows × input) and `y`;
    /// the noise comes from the stream (seed, "eval-noise", `key`). For the straight-through
    /// arms, the binary accuracy.
    pub fn accuracy_mean_field(&self, x: &[f32], y: &[u32], key: u64) -> Result<f64> {
        if !self.arm.is_field() {
            return self.accuracy_binary(x, y);
        }
        let device = Device::flex();
        let a: Vec<Tensor<2>> = self
            .layers
            .iter()
            .map(|l| Tensor::<2>::from_primitive::<Flex>(l.a.clone()))
            .collect();
        let s: Vec<Tensor<2>> = self
            .layers
            .iter()
            .filter_map(|l| l.s.clone())
            .map(Tensor::<2>::from_primitive::<Flex>)
            .collect();
        let mut rng = Rng::keyed(self.cfg.seed, "eval-noise", key);
        self.accuracy(x, y, |xb, rows| {
            let eps = self.noise(rows, &mut rng, &device);
            forward(xb, &a, Some(&s), Some(eps), &self.dims)
        })
    }

    /// Accuracy of the binary network [`DeepNet::export`] on `x` (rows × input) and `y`.
    pub fn accuracy_binary(&self, x: &[f32], y: &[u32]) -> Result<f64> {
        let device = Device::flex();
        let w: Vec<Tensor<2>> = self
            .export()
            .into_iter()
            .zip(&self.layers)
            .map(|((_, v), l)| {
                Tensor::<2>::from_data(TensorData::new(v, [l.n_in, l.n_out]), &device)
            })
            .collect();
        self.accuracy(x, y, |xb, _| forward(xb, &w, None, None, &self.dims))
    }

    /// The fraction of `y` that `logits` (of chunks of `x`) rank first.
    fn accuracy(
        &self,
        x: &[f32],
        y: &[u32],
        mut logits: impl FnMut(Tensor<2>, usize) -> Tensor<2>,
    ) -> Result<f64> {
        let dim = self.dims[0];
        if y.is_empty() || x.len() != y.len() * dim {
            return Err(err!(
                "evaluation: {} values for {} examples of dim {dim}",
                x.len(),
                y.len()
            ));
        }
        let classes = self.cfg.classes;
        let device = Device::flex();
        let mut right = 0usize;
        for (xc, yc) in x.chunks(EVAL_CHUNK * dim).zip(y.chunks(EVAL_CHUNK)) {
            let rows = yc.len();
            let xb = Tensor::<2>::from_data(TensorData::new(xc.to_vec(), [rows, dim]), &device);
            let out = host(logits(xb, rows));
            if out.len() != rows * classes {
                return Err(err!("evaluation: logits of {} values", out.len()));
            }
            for (row, &label) in out.chunks_exact(classes).zip(yc) {
                let mut best = 0;
                for (c, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = c;
                    }
                }
                right += usize::from(best == label as usize);
            }
        }
        Ok(right as f64 / y.len() as f64)
    }
}

/// The network's pass: with `s` and `eps` the noisy mean-field pass
/// z = (a·m)/√N + √((a²·σ)/N + floor)·ε, otherwise z = (a·w)/√N; ReLU between layers.
fn forward(
    x: Tensor<2>,
    w: &[Tensor<2>],
    s: Option<&[Tensor<2>]>,
    eps: Option<Vec<Tensor<2>>>,
    dims: &[usize],
) -> Tensor<2> {
    let mut a = x;
    let last = w.len().saturating_sub(1);
    let mut eps = eps.map(|e| e.into_iter());
    for (l, wl) in w.iter().enumerate() {
        let n = dims[l] as f64;
        let mean = a.clone().matmul(wl.clone()).mul_scalar(1.0 / n.sqrt());
        let z = match (s, eps.as_mut().and_then(|e| e.next())) {
            (Some(s), Some(e)) => {
                let var = (a.clone() * a)
                    .matmul(s[l].clone())
                    .mul_scalar(1.0 / n)
                    .add_scalar(VAR_FLOOR);
                mean + var.sqrt() * e
            }
            _ => mean,
        };
        a = if l < last { relu(z) } else { z };
    }
    a
}

/// The mean cross-entropy of `logits` against labels `y`.
fn cross_entropy(logits: Tensor<2>, y: &[u32], classes: usize, device: &Device) -> Tensor<1> {
    let b = y.len();
    let mut onehot = vec![0.0f32; b * classes];
    for (i, &c) in y.iter().enumerate() {
        onehot[i * classes + c as usize] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [b, classes]), device);
    (log_softmax(logits, 1) * onehot)
        .sum()
        .mul_scalar(-1.0 / b as f64)
}

/// ±1 of `p` (sign(0) = +1).
fn signs(p: &[f32]) -> Vec<f32> {
    p.iter()
        .map(|&v| if v < 0.0 { -1.0 } else { 1.0 })
        .collect()
}

/// A contiguous flex f32 tensor of `values`, shape [rows, cols].
fn flex(values: Vec<f32>, rows: usize, cols: usize) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, [rows, cols]))
}

/// The values of a leaf tensor to write (copied first if its storage is shared), checked to
/// be `n` long.
fn values_mut(t: &mut FlexTensor, n: usize) -> Result<&mut [f32]> {
    if t.dtype() != DType::F32 {
        return Err(err!("a leaf tensor is {:?}, not f32", t.dtype()));
    }
    let v = t.storage_mut::<f32>();
    if v.len() != n {
        return Err(err!("a leaf tensor holds {} values, not {n}", v.len()));
    }
    Ok(v)
}

/// A gradient's values: borrowed from burn's storage when it is a contiguous flex f32 tensor,
/// otherwise copied out.
enum Values {
    Flex(FlexTensor),
    Host(Vec<f32>),
}

impl Values {
    fn of(t: Tensor<2>) -> Values {
        if t.dtype() == DType::F32
            && let Ok(f) = t.clone().try_into_primitive::<Flex>()
        {
            if f.as_slice::<f32>().is_some() {
                return Values::Flex(f);
            }
            let c = f.to_contiguous();
            if c.as_slice::<f32>().is_some() {
                return Values::Flex(c);
            }
        }
        Values::Host(host(t))
    }

    fn slice(&self, n: usize) -> Result<&[f32]> {
        let v = match self {
            Values::Flex(f) => f.as_slice::<f32>().unwrap_or(&[]),
            Values::Host(v) => v,
        };
        if v.len() != n {
            return Err(err!("a gradient holds {} values, not {n}", v.len()));
        }
        Ok(v)
    }
}

#[cfg(test)]
mod tests;
