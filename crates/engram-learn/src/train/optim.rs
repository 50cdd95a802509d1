//! Optimizers (SGD, Adam, AdamW) and learning-rate schedules, as configured in run files.

use super::fused::Optimizer;

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
}

fn default_kind() -> OptimKind {
    OptimKind::Adam
}
fn default_lr() -> f64 {
    1e-3
}
fn default_betas() -> [f64; 2] {
    [0.9, 0.999]
}
fn default_eps() -> f64 {
    1e-5
}
fn default_schedule() -> Schedule {
    Schedule::Constant
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            kind: default_kind(),
            lr: default_lr(),
            momentum: 0.0,
            weight_decay: 0.0,
            betas: default_betas(),
            eps: default_eps(),
            schedule: default_schedule(),
        }
    }
}

impl OptimConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(format!("optimizer lr must be positive, got {}", self.lr));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return Err(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err("weight-decay must be >= 0".into());
        }
        if !self.betas.iter().all(|b| (0.0..1.0).contains(b)) {
            return Err(format!("betas must be in [0, 1), got {:?}", self.betas));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(format!("eps must be positive, got {}", self.eps));
        }
        if let Schedule::Step { every, gamma } = self.schedule
            && (every == 0 || !(gamma > 0.0 && gamma <= 1.0))
        {
            return Err("step schedule needs every >= 1 and gamma in (0, 1]".into());
        }
        Ok(())
    }

    /// A fresh optimizer (engram resets optimizer state at the start of every task, so that a
    /// run resumed at a task boundary continues exactly).
    pub fn init(&self) -> Optimizer {
        Optimizer::new(self)
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
