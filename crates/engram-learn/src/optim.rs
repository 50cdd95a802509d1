//! Optimizer settings (SGD, Adam, AdamW) and learning-rate schedules, as configured in run
//! files, and the one Adam/AdamW element update ([`AdamStep`], PyTorch's formulas): the
//! trainer's fused optimizer (`train/fused.rs`) runs it densely over every parameter, and
//! strategies that keep optimizer state for a subset of the entries (LIFT's sparse AdamW, LoRA's
//! factors) run it over theirs, so that the same settings mean the same update everywhere.

use crate::{Result, err};

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    Sgd,
    Adam,
    Adamw,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    /// The same rate throughout.
    Constant,
    /// Cosine decay to 0 over each task's steps.
    Cosine,
    /// Multiply by `gamma` every `step` epochs within a task.
    Step { every: usize, gamma: f64 },
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct OptimConfig {
    #[serde(default = "default_kind")]
    pub kind: OptimKind,
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// SGD momentum (0 = none; dampening 0 as in PyTorch).
    #[serde(default)]
    pub momentum: f64,
    /// L2 penalty (SGD, Adam) or decoupled decay (AdamW).
    #[serde(default)]
    pub weight_decay: f64,
    /// Adam's and AdamW's moment decay rates (PyTorch's defaults).
    #[serde(default = "default_betas")]
    pub betas: [f64; 2],
    /// Adam's and AdamW's term added to the root of the second moment. Default 1e-5, burn's
    /// default, with which engram's reported continual-learning results were made (PyTorch's
    /// is 1e-8; at 1e-8 KD + Weight Aligning lost 9 points of ACC on Split Fashion-MNIST,
    /// three seeds).
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default = "default_schedule")]
    pub schedule: Schedule,
    /// Clip the gradient's global L2 norm (all parameters together) to this value before
    /// every step, as PyTorch's `clip_grad_norm_` (gradients × min(1, max/(‖g‖ + 1e-6))),
    /// SCoLe's setting (10; `shared/methods/theory.md`). `None`: no clipping. Applies to the
    /// trainer's optimizer, not to strategies that update some weights themselves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
}

fn default_kind() -> OptimKind {
    OptimConfig::DEFAULT.kind
}
fn default_lr() -> f64 {
    OptimConfig::DEFAULT.lr
}
fn default_betas() -> [f64; 2] {
    OptimConfig::DEFAULT.betas
}
fn default_eps() -> f64 {
    OptimConfig::DEFAULT.eps
}
fn default_schedule() -> Schedule {
    OptimConfig::DEFAULT.schedule
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig::DEFAULT
    }
}

impl OptimConfig {
    /// Adam at lr 1e-3, betas (0.9, 0.999), eps 1e-5, no decay, constant rate.
    pub const DEFAULT: OptimConfig = OptimConfig {
        kind: OptimKind::Adam,
        lr: 1e-3,
        momentum: 0.0,
        weight_decay: 0.0,
        betas: [0.9, 0.999],
        eps: 1e-5,
        schedule: Schedule::Constant,
        clip_grad_norm: None,
    };

    /// The given kind at learning rate `lr`, every other setting at its default.
    pub fn new(kind: OptimKind, lr: f64) -> OptimConfig {
        OptimConfig {
            kind,
            lr,
            ..OptimConfig::DEFAULT
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(err!("optimizer lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(err!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err("weight-decay must be >= 0".into());
        }
        if !self.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            return Err(err!("betas must be in [0, 1), got {:?}", self.betas));
        }
        if let Some(c) = self.clip_grad_norm
            && !(c.is_finite() && c > 0.0)
        {
            return Err(err!(
                "train.optimizer.clip-grad-norm must be positive, got {c}"
            ));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(err!("eps must be positive, got {}", self.eps));
        }
        // A key that has no effect with this optimizer is an error, not a setting ignored.
        let d = OptimConfig::DEFAULT;
        let unused = match self.kind {
            OptimKind::Sgd if self.betas != d.betas => Some("betas"),
            OptimKind::Sgd if self.eps != d.eps => Some("eps"),
            OptimKind::Adam | OptimKind::Adamw if self.momentum != 0.0 => Some("momentum"),
            _ => None,
        };
        if let Some(key) = unused {
            return Err(err!(
                "train.optimizer.{key} has no effect with kind = \"{}\"; remove it",
                format!("{:?}", self.kind).to_lowercase()
            ));
        }
        if let Schedule::Step { every, gamma } = self.schedule
            && (every == 0 || !(gamma > 0.0 && gamma <= 1.0))
        {
            return Err("step schedule needs every >= 1 and gamma in (0, 1]".into());
        }
        Ok(())
    }

    /// The Adam update at learning rate `lr` and step `t` (1-based) with these settings: L2 in
    /// the gradient for Adam, decoupled decay for AdamW.
    pub fn adam_step(&self, lr: f64, t: u64) -> AdamStep {
        AdamStep::new(
            lr,
            t,
            self.betas,
            self.eps,
            self.weight_decay,
            self.kind == OptimKind::Adamw,
        )
    }

    /// Learning rate at `step` of `total` steps of a task (`epoch` counts from 0).
    pub fn lr_at(&self, step: usize, total: usize, epoch: usize) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let t = step as f64 / total.max(1) as f64;
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
            Schedule::Step { every, gamma } => self.lr * gamma.powi((epoch / every.max(1)) as i32),
        }
    }
}

/// The float an Adam step runs in: f32 (every network's weights) or f64 (the binary
/// perceptron's fields, `binary/perceptron.rs`, host vectors kept in f64).
pub trait AdamFloat:
    Copy
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
{
    /// `v` rounded to this type.
    fn of(v: f64) -> Self;
    fn sqrt(self) -> Self;
}

impl AdamFloat for f32 {
    #[inline(always)]
    fn of(v: f64) -> f32 {
        v as f32
    }
    #[inline(always)]
    fn sqrt(self) -> f32 {
        f32::sqrt(self)
    }
}

impl AdamFloat for f64 {
    #[inline(always)]
    fn of(v: f64) -> f64 {
        v
    }
    #[inline(always)]
    fn sqrt(self) -> f64 {
        f64::sqrt(self)
    }
}

/// The constants of one Adam step: learning rate `lr` at step `t` (1-based, for the bias
/// correction) with moment decays `betas`, `eps`, and either an L2 penalty in the gradient
/// (Adam) or a decoupled decay of the weight (AdamW). The constants are computed in f64 and
/// rounded to `F` once.
#[derive(Clone, Copy, Debug)]
pub struct AdamStep<F = f32> {
    b1: F,
    b2: F,
    step: F,
    rc2: F,
    eps: F,
    l2: F,
    keep: F,
}

impl<F: AdamFloat> AdamStep<F> {
    /// `decoupled`: AdamW's decay `w ← w·(1 − lr·wd)`; otherwise Adam's `g ← g + wd·w`.
    pub fn new(
        lr: f64,
        t: u64,
        betas: [f64; 2],
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
    ) -> AdamStep<F> {
        let t = t.min(i32::MAX as u64) as i32;
        let c1 = 1.0 - betas[0].powi(t);
        let c2 = 1.0 - betas[1].powi(t);
        let (l2, keep) = if decoupled {
            (F::of(0.0), F::of(1.0) - F::of(lr * weight_decay))
        } else {
            (F::of(weight_decay), F::of(1.0))
        };
        AdamStep {
            b1: F::of(betas[0]),
            b2: F::of(betas[1]),
            // PyTorch's form: w -= (lr / c1) · m / (√v / √c2 + eps).
            step: F::of(lr / c1),
            rc2: F::of(1.0 / c2.sqrt()),
            eps: F::of(eps),
            l2,
            keep,
        }
    }

    /// One element: weight `w`, gradient `g`, moments `m` and `v`.
    #[inline(always)]
    pub fn apply(&self, w: &mut F, g: F, m: &mut F, v: &mut F) {
        let one = F::of(1.0);
        let g = g + self.l2 * *w;
        *m = self.b1 * *m + (one - self.b1) * g;
        *v = self.b2 * *v + (one - self.b2) * g * g;
        *w = *w * self.keep - self.step * *m / (v.sqrt() * self.rc2 + self.eps);
    }
}

impl AdamStep<f32> {
    /// [`AdamStep::apply`] on whole tensors (a GPU's parameters, flattened): the same formula
    /// in the same order, element by element. Returns the new weight and moments.
    pub fn apply_tensors(
        &self,
        w: burn::prelude::Tensor<1>,
        g: burn::prelude::Tensor<1>,
        m: burn::prelude::Tensor<1>,
        v: burn::prelude::Tensor<1>,
    ) -> [burn::prelude::Tensor<1>; 3] {
        let g = if self.l2 != 0.0 {
            g + w.clone().mul_scalar(self.l2)
        } else {
            g
        };
        let m = m.mul_scalar(self.b1) + g.clone().mul_scalar(1.0 - self.b1);
        let v = v.mul_scalar(self.b2) + (g.clone() * g).mul_scalar(1.0 - self.b2);
        let den = v.clone().sqrt().mul_scalar(self.rc2).add_scalar(self.eps);
        let w = w.mul_scalar(self.keep) - m.clone().mul_scalar(self.step) / den;
        [w, m, v]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adam as PyTorch writes it, in f64.
    fn reference(w: f64, grads: &[f64], lr: f64, wd: f64, decoupled: bool) -> f64 {
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        let (mut w, mut m, mut v) = (w, 0.0, 0.0);
        for (t, &g) in grads.iter().enumerate() {
            let t = t as i32 + 1;
            let g = if decoupled { g } else { g + wd * w };
            if decoupled {
                w *= 1.0 - lr * wd;
            }
            m = b1 * m + (1.0 - b1) * g;
            v = b2 * v + (1.0 - b2) * g * g;
            let mh = m / (1.0 - b1.powi(t));
            let vh = v / (1.0 - b2.powi(t));
            w -= lr * mh / (vh.sqrt() + eps);
        }
        w
    }

    #[test]
    fn matches_pytorch_adam_and_adamw() {
        let grads = [0.3, -0.2, 0.5, 0.05, -0.4];
        for decoupled in [false, true] {
            let (mut w, mut m, mut v) = (1.5f32, 0.0f32, 0.0f32);
            for (t, &g) in grads.iter().enumerate() {
                AdamStep::new(0.01, t as u64 + 1, [0.9, 0.999], 1e-8, 0.1, decoupled)
                    .apply(&mut w, g as f32, &mut m, &mut v);
            }
            let r = reference(1.5, &grads, 0.01, 0.1, decoupled);
            assert!((w as f64 - r).abs() < 1e-6, "{decoupled}: {w} vs {r}");
            // In f64 the same step meets the reference to f64 rounding.
            let (mut w, mut m, mut v) = (1.5f64, 0.0f64, 0.0f64);
            for (t, &g) in grads.iter().enumerate() {
                AdamStep::new(0.01, t as u64 + 1, [0.9, 0.999], 1e-8, 0.1, decoupled)
                    .apply(&mut w, g, &mut m, &mut v);
            }
            assert!((w - r).abs() < 1e-14, "{decoupled}: {w} vs {r}");
        }
    }
}
