//! Adversarial robustness (card: shared/methods/robustness_safety.md): attacks and robust
//! evaluation ([`attack`]), adversarial training as a mode of the trainer (`[train.adversarial]`,
//! [`Adversarial`]) with PGD-AT, the doubly robust reweighting's simplified variant
//! `dro-softmax` ([`dro`]) and GAIRAT ([`gairat`]), and RiFT's module robust criticality and
//! interpolation ([`rift`]; its fine-tuning step is the `rift` strategy).
//!
//! ```toml
//! [train.adversarial]
//! method = "dro-softmax"   # pgd-at (default) | dro-softmax | gairat
//! epsilon = 0.1            # ℓ∞ radius (Fashion-MNIST, engram's default)
//! step = 0.025
//! steps = 5
//! r = 1.0                  # dro-softmax temperature
//! ```
//!
//! Each minibatch is attacked with PGD against the current network (evaluation mode, the card's
//! engram choice), drawing its random start from (seed, task, step), so a resumed run ends with
//! the same bytes; the network then trains on the attacked batch (strategies see the attacked
//! inputs). PGD-AT keeps the trainer's loss; `dro-softmax` and `gairat` replace the mean
//! cross-entropy by Σᵢ wᵢ·CEᵢ with their detached weights (which sum to 1, but for
//! `dro-softmax`'s running normaliser `rho`, whose weights sum to 1 on average; it restarts at
//! each task). Inputs must lie in [0, 1] (the attack clips to that range; checked when a run
//! starts).

pub mod attack;
pub mod dro;
pub mod gairat;
pub mod rift;

use crate::{Result, err};
use attack::{Attack, Norm};

/// A network of `model` holding `values` (every parameter by name) on the autodiff CPU
/// device: what attacks and MRC work on, for callers that keep weights as plain vectors.
pub fn net_with(
    model: &crate::model::ModelConfig,
    dim: usize,
    image: Option<(usize, usize, usize)>,
    outputs: usize,
    values: &std::collections::BTreeMap<String, Vec<f32>>,
) -> Result<crate::model::Net> {
    use burn::prelude::*;
    if model.has_batchnorm() {
        return Err(err!(
            "{model:?}: BatchNorm running statistics are not parameters and would not be carried \
             by plain values; use a model without BatchNorm"
        ));
    }
    let net = model.build(dim, image, outputs, &Device::flex().autodiff())?;
    crate::model::params::load_params(net, values)
}

/// The adversarial training method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    /// Madry et al.'s PGD adversarial training: mean cross-entropy on the attacked batch.
    #[default]
    PgdAt,
    /// The doubly robust reweighting's simplified variant (KL-DRO softmax weights).
    DroSoftmax,
    /// Geometry-aware instance reweighting (the baseline).
    Gairat,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::PgdAt => "pgd-at",
            Method::DroSoftmax => "dro-softmax",
            Method::Gairat => "gairat",
        }
    }
}

/// `[train.adversarial]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Adversarial {
    #[serde(default)]
    pub method: Method,
    #[serde(default)]
    pub norm: Norm,
    #[serde(default = "default_epsilon")]
    pub epsilon: f32,
    #[serde(default = "default_step")]
    pub step: f32,
    #[serde(default = "default_steps")]
    pub steps: usize,
    #[serde(default = "yes")]
    pub random_start: bool,
    /// `dro-softmax`: the KL temperature r (default 1; the card sweeps 0.5, 1, 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r: Option<f64>,
    /// `dro-softmax`: the running normaliser's rate ρ (off by default; the card's 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rho: Option<f64>,
    /// `gairat`: λ (default −1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lambda: Option<f64>,
    /// `gairat`: the epoch (counted from 1, as the reference's `(epoch + 1) >= begin_epoch`)
    /// from which each task uses geometry-aware weights (default: half the task's epochs, the
    /// reference's 60 of 120).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub begin_epoch: Option<usize>,
}

fn default_epsilon() -> f32 {
    0.1
}
fn default_step() -> f32 {
    0.025
}
fn default_steps() -> usize {
    5
}
fn yes() -> bool {
    true
}

impl Default for Adversarial {
    fn default() -> Self {
        Adversarial {
            method: Method::PgdAt,
            norm: Norm::Linf,
            epsilon: default_epsilon(),
            step: default_step(),
            steps: default_steps(),
            random_start: true,
            r: None,
            rho: None,
            lambda: None,
            begin_epoch: None,
        }
    }
}

impl Adversarial {
    /// The training attack.
    pub fn attack(&self) -> Attack {
        Attack {
            norm: self.norm,
            epsilon: self.epsilon,
            step: self.step,
            steps: self.steps,
            random_start: self.random_start,
            restarts: 1,
        }
    }

    pub fn r(&self) -> f64 {
        self.r.unwrap_or(1.0)
    }

    pub fn lambda(&self) -> f64 {
        self.lambda.unwrap_or(-1.0)
    }

    /// Checks every key; a key of another method is an error naming it.
    pub fn validate(&self) -> Result<()> {
        const W: &str = "train.adversarial";
        self.attack().validate(W)?;
        let m = self.method;
        for (key, set, owner) in [
            ("r", self.r.is_some(), Method::DroSoftmax),
            ("rho", self.rho.is_some(), Method::DroSoftmax),
            ("lambda", self.lambda.is_some(), Method::Gairat),
            ("begin-epoch", self.begin_epoch.is_some(), Method::Gairat),
        ] {
            if set && m != owner {
                return Err(err!(
                    "{W}.{key} has no effect with method = \"{}\" (it is {}'s); remove it",
                    m.name(),
                    owner.name()
                ));
            }
        }
        if let Some(r) = self.r
            && !(r.is_finite() && r >= 1e-6)
        {
            return Err(err!("{W}.r = {r} must be a number ≥ 1e-6"));
        }
        if self.begin_epoch == Some(0) {
            return Err(err!("{W}.begin-epoch counts from 1; 0 is not an epoch"));
        }
        if let Some(rho) = self.rho
            && !(rho > 0.0 && rho <= 1.0)
        {
            return Err(err!("{W}.rho = {rho} must be in (0, 1]"));
        }
        if let Some(l) = self.lambda
            && !l.is_finite()
        {
            return Err(err!("{W}.lambda = {l} must be a finite number"));
        }
        if m == Method::Gairat && self.steps < 2 {
            return Err(err!(
                "{W}.steps = {} is too few for gairat: κ counts PGD iterations, ⌊K/2⌋ ≥ 1",
                self.steps
            ));
        }
        Ok(())
    }

    /// Per-task state of the reweighting.
    pub fn reweighter(&self) -> Reweighter {
        Reweighter {
            normaliser: self.rho.map(dro::Normaliser::new),
        }
    }
}

/// The reweighting's state through one task.
#[derive(Clone, Debug)]
pub struct Reweighter {
    normaliser: Option<dro::Normaliser>,
}

impl Reweighter {
    /// Whether this step needs the per-example losses (`weights` then returns `Some`).
    pub fn active(&self, a: &Adversarial, epoch: usize, epochs: usize) -> bool {
        match a.method {
            Method::PgdAt => false,
            Method::DroSoftmax => true,
            Method::Gairat => epoch + 1 >= a.begin_epoch.unwrap_or((epochs / 2).max(1)),
        }
    }

    /// Loss weights (Σᵢ wᵢ·ℓᵢ is the loss) from the per-example adversarial losses and κ.
    pub fn weights(&mut self, a: &Adversarial, losses: &[f32], kappa: &[u32]) -> Vec<f32> {
        match a.method {
            Method::PgdAt => vec![1.0 / losses.len().max(1) as f32; losses.len()],
            Method::DroSoftmax => match &mut self.normaliser {
                Some(nz) => nz.weights(losses, a.r()),
                None => dro::dro_softmax(losses, a.r()),
            },
            Method::Gairat => gairat::weights(kappa, a.steps, a.lambda()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_another_method_are_refused() {
        let a = Adversarial {
            r: Some(0.5),
            ..Default::default()
        };
        let e = a.validate().unwrap_err().to_string();
        assert!(
            e.contains("train.adversarial.r") && e.contains("pgd-at"),
            "{e}"
        );
        for bad in [
            Adversarial {
                method: Method::DroSoftmax,
                r: Some(0.0),
                ..Default::default()
            },
            Adversarial {
                method: Method::DroSoftmax,
                rho: Some(1.5),
                ..Default::default()
            },
            Adversarial {
                method: Method::Gairat,
                steps: 1,
                ..Default::default()
            },
            Adversarial {
                epsilon: -0.1,
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        let ok: Adversarial =
            toml::from_str("method = \"gairat\"\nlambda = 0.0\nsteps = 10").expect("parses");
        ok.validate().unwrap();
        assert!(toml::from_str::<Adversarial>("eps = 0.1").is_err());
    }

    #[test]
    fn gairat_waits_for_its_begin_epoch() {
        let a = Adversarial {
            method: Method::Gairat,
            ..Default::default()
        };
        // Default: from epoch 2 of 4 counted from 1 (index 1), as the reference's
        // (epoch + 1) >= begin_epoch.
        let r = a.reweighter();
        assert!(!r.active(&a, 0, 4) && r.active(&a, 1, 4));
        let b = Adversarial {
            begin_epoch: Some(3),
            ..a.clone()
        };
        assert!(!r.active(&b, 1, 4) && r.active(&b, 2, 4));
        let dro = Adversarial {
            method: Method::DroSoftmax,
            ..Default::default()
        };
        assert!(dro.reweighter().active(&dro, 0, 4));
        let at = Adversarial::default();
        assert!(!at.reweighter().active(&at, 3, 4));
    }
}
