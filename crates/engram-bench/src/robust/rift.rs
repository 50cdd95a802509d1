// RiFT in `engram bench robust`: module robust criticality, critical fine-tuning and the
// interpolation curves (arXiv 2308.02533). Cards: shared/methods/robustness_safety.md
// ("RiFT") and patching.md ("RiFT interpolation").

//! One seed: from the PGD-AT model of that seed, a fixed adversarial set (PGD-10, ε = 0.1,
//! step 2/255 as the card writes, random start) from a held-out training split (never the
//! test set); the MRC of each of the CNN's four weights; three fine-tunings on clean training
//! data (the lowest-MRC module, the highest-MRC module, every layer) with the reference's
//! optimizer (SGD, momentum 0.9, lr 1e-3, weight decay 5e-4, lr ×0.1 from the middle epoch);
//! then θ(α) = α·θ_FT + (1 − α)·θ_AT at α = 0, 0.1, …, 1, each scored on validation and test
//! (clean, PGD-10, FMNIST-C). α is chosen per curve on validation: the largest clean gain
//! with validation robust accuracy ≥ the AT model's − 0.5 points.

use super::at::{self, Data, Scores, Sizes};
use super::common::Values;
use anyhow::Result;
use engram_learn::optim::{OptimConfig, OptimKind, Schedule};
use engram_learn::robust::attack::{Attack, perturb};
use engram_learn::robust::rift::{Mrc, MrcConfig, interpolate, mrc_all};
use engram_learn::train::TrainConfig;
use engram_weights::rng::Rng;
use serde::{Deserialize, Serialize};

pub const ALPHAS: [f32; 11] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// The selection rule's tolerance on validation robust accuracy (points).
pub const ROBUST_TOLERANCE: f64 = 0.5;

/// One point of a curve.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Point {
    pub alpha: f32,
    pub valid: Scores,
    pub test: Scores,
}

/// One fine-tuning choice's curve.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Curve {
    /// lowest-mrc | highest-mrc | all-layers.
    pub arm: String,
    /// Parameter-name prefixes fine-tuned.
    pub modules: Vec<String>,
    pub points: Vec<Point>,
    /// α chosen on validation.
    pub chosen_alpha: f32,
}

impl Curve {
    pub fn chosen(&self) -> &Point {
        self.points
            .iter()
            .find(|p| p.alpha == self.chosen_alpha)
            .unwrap_or(&self.points[0])
    }
}

/// One seed's RiFT.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RiftRun {
    pub seed: u64,
    pub mrc: Vec<Mrc>,
    /// Images of the adversarial set and the AT model's accuracy on it.
    pub adversarial_set: usize,
    pub at_accuracy_on_set: f64,
    pub curves: Vec<Curve>,
    pub fine_tune_epochs: usize,
    pub seconds: f64,
}

/// The validation rule: the largest clean gain over α = 0 with robust ≥ α = 0's − tolerance
/// (ties: the smaller α).
pub fn choose_alpha(points: &[(f32, f64, f64)]) -> f32 {
    let Some(&(a0, c0, r0)) = points.first() else {
        return 0.0;
    };
    let mut best = (a0, c0);
    for &(a, c, r) in &points[1..] {
        if r >= r0 - ROBUST_TOLERANCE && c > best.1 {
            best = (a, c);
        }
    }
    best.0
}

/// The module prefix of a weight's parameter name (`conv2.weight` → `conv2`).
fn prefix(name: &str) -> String {
    name.strip_suffix(".weight").unwrap_or(name).to_string()
}

/// The fine-tuning optimizer of the reference, over `epochs` epochs.
fn fine_tune_config(z: &Sizes, epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: z.batch,
        optimizer: OptimConfig {
            momentum: 0.9,
            weight_decay: 5e-4,
            schedule: Schedule::Step {
                every: epochs.div_ceil(2).max(1),
                gamma: 0.1,
            },
            ..OptimConfig::new(OptimKind::Sgd, 1e-3)
        },
        ..TrainConfig::default()
    }
}

/// RiFT for one seed from the AT model `at_values`, fine-tuning `epochs` epochs; each point
/// of a curve attacks (validation, test) images.
pub fn run(
    d: &Data,
    z: &Sizes,
    at_values: &Values,
    seed: u64,
    epochs: usize,
    (valid_robust_n, test_robust_n): (usize, usize),
    progress: &mut dyn FnMut(String),
) -> Result<RiftRun> {
    let t0 = std::time::Instant::now();
    let at_net = at::net_of(at_values, &d.train)?;
    // The fixed adversarial set, from the held-out split.
    let set_attack = Attack::pgd(at::EPSILON, 2.0 / 255.0, 10);
    let mut xs = Vec::with_capacity(d.mrc.x.len());
    let mut hits = 0usize;
    for (b, start) in (0..d.mrc.len()).step_by(250).enumerate() {
        let end = (start + 250).min(d.mrc.len());
        let p = perturb(
            &at_net,
            &d.mrc.x[start * d.mrc.dim..end * d.mrc.dim],
            &d.mrc.y[start..end],
            None,
            &set_attack,
            &mut Rng::keyed(seed, "rift-adversarial-set", b as u64),
        )?;
        hits += p.survived.iter().filter(|&&s| s).count();
        xs.extend(p.x);
    }
    let ys = d.mrc.y.clone();
    progress(format!(
        "rift s{seed}: adversarial set of {} images built",
        ys.len()
    ));
    let mrc = mrc_all(&at_net, &xs, &ys, &MrcConfig::default())?;
    progress(format!(
        "rift s{seed}: MRC {}",
        mrc.iter()
            .map(|m| format!("{} {:.3}", m.module, m.mrc))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if mrc.is_empty() {
        anyhow::bail!("rift: the network has no weight matrices to rank");
    }
    let mut order: Vec<&Mrc> = mrc.iter().collect();
    order.sort_by(|a, b| {
        a.mrc
            .total_cmp(&b.mrc)
            .then_with(|| a.module.cmp(&b.module))
    });
    let lowest = prefix(&order[0].module);
    let highest = prefix(&order[order.len() - 1].module);
    let all: Vec<String> = mrc.iter().map(|m| prefix(&m.module)).collect();
    let arms = [
        ("lowest-mrc", vec![lowest]),
        ("highest-mrc", vec![highest]),
        ("all-layers", all),
    ];
    // α = 0 is the AT model for every curve: scored once.
    let (vk, tk) = (
        (valid_robust_n, at::RIFT_EVAL_STEPS),
        (test_robust_n, at::RIFT_EVAL_STEPS),
    );
    let at_valid = at::score(&at_net, &d.valid, &d.valid_c, vk, seed)?;
    let at_test = at::score(&at_net, &d.test, &d.test_c, tk, seed)?;
    let mut curves = Vec::new();
    for (arm, modules) in arms {
        let ft = super::common::train_net(
            &at::model(),
            &d.train,
            fine_tune_config(z, epochs),
            ("rift", serde_json::json!({ "modules": modules })),
            Some(at_values),
            seed,
        )?;
        let ft_values = at::values_of(&ft);
        let mut points = vec![Point {
            alpha: 0.0,
            valid: at_valid.clone(),
            test: at_test.clone(),
        }];
        for &alpha in &ALPHAS[1..] {
            let v = interpolate(at_values, &ft_values, alpha)?;
            let net = at::net_of(&v, &d.train)?;
            points.push(Point {
                alpha,
                valid: at::score(&net, &d.valid, &d.valid_c, vk, seed)?,
                test: at::score(&net, &d.test, &d.test_c, tk, seed)?,
            });
        }
        let chosen_alpha = choose_alpha(
            &points
                .iter()
                .map(|p| (p.alpha, p.valid.clean, p.valid.robust))
                .collect::<Vec<_>>(),
        );
        let c = Curve {
            arm: arm.into(),
            modules,
            points,
            chosen_alpha,
        };
        let p = c.chosen();
        progress(format!(
            "rift s{seed} {arm} ({}): α {chosen_alpha:.1} → test clean {:.2} ({:+.2}), PGD-10 {:.2} ({:+.2}), FMNIST-C {:.2} ({:+.2})",
            c.modules.join("+"),
            p.test.clean,
            p.test.clean - at_test.clean,
            p.test.robust,
            p.test.robust - at_test.robust,
            p.test.corrupt,
            p.test.corrupt - at_test.corrupt
        ));
        curves.push(c);
    }
    Ok(RiftRun {
        seed,
        adversarial_set: ys.len(),
        at_accuracy_on_set: 100.0 * hits as f64 / ys.len().max(1) as f64,
        mrc,
        curves,
        fine_tune_epochs: epochs,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The share of `other`'s (clean, robust) points that some point of `curve` dominates (at
/// least as good in both, better in one). Callers leave out the shared α = 0 point.
pub fn dominated_share(curve: &[(f64, f64)], other: &[(f64, f64)]) -> f64 {
    if other.is_empty() {
        return 1.0;
    }
    let d = other
        .iter()
        .filter(|(c, r)| {
            curve
                .iter()
                .any(|(cc, rr)| cc >= c && rr >= r && (cc > c || rr > r))
        })
        .count();
    d as f64 / other.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alpha_rule_and_dominance() {
        // (α, clean, robust): α = 0.3 gains most within the tolerance; 0.5 gains more but
        // loses 1 robust point.
        let pts = [
            (0.0, 80.0, 50.0),
            (0.1, 81.0, 50.2),
            (0.3, 82.0, 49.6),
            (0.5, 84.0, 49.0),
        ];
        assert_eq!(choose_alpha(&pts), 0.3);
        assert_eq!(choose_alpha(&[(0.0, 80.0, 50.0), (0.1, 79.0, 51.0)]), 0.0);
        let a = [(80.0, 50.0), (82.0, 49.0)];
        assert_eq!(dominated_share(&a, &[(81.0, 48.0), (79.0, 50.0)]), 1.0);
        assert_eq!(dominated_share(&a, &[(83.0, 40.0), (79.0, 50.0)]), 0.5);
        // A point equal to one of the curve's is not dominated.
        assert_eq!(dominated_share(&a, &[(80.0, 50.0)]), 0.0);
    }
}
