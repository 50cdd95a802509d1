// Adversarial training arms of `engram bench robust`: PGD-AT (arXiv 1706.06083), the doubly
// robust reweighting's simplified variant dro-softmax (arXiv 2308.00311) and GAIRAT (arXiv
// 2010.01736). Card: shared/methods/robustness_safety.md.

//! The data of the study, the training of one arm (the trainer's `[train.adversarial]`
//! mode) and the scores every model gets: clean accuracy, PGD-K robust accuracy (PGD-20 here,
//! the card's engram evaluation; RiFT's curves use PGD-10, its card's) with its per-class
//! breakdown and RA-Tail-30 (the mean robust accuracy of the worst 3 of 10 classes), and mean
//! accuracy over the 15 FMNIST-C corruptions at severity 5; plus the gradient-masking checks
//! on final-point robust accuracy with independent random starts per attack (more steps,
//! more restarts and a larger ε should not raise it).

use super::common::{Values, corrupt_dataset, split_off, subset, train_net};
use anyhow::Result;
use engram_learn::data::corrupt::Corruption;
use engram_learn::data::{Dataset, Split};
use engram_learn::model::params::named_values;
use engram_learn::model::{ModelConfig, Net};
use engram_learn::optim::{OptimConfig, OptimKind};
use engram_learn::robust::attack::{
    Attack, clean_correct, final_correct, per_class, percent, robust_correct, tail,
};
use engram_learn::robust::{Adversarial, Method};
use engram_learn::train::TrainConfig;
use serde::{Deserialize, Serialize};

pub fn model() -> ModelConfig {
    ModelConfig::Cnn {
        channels: [16, 32],
        hidden: 64,
    }
}

/// The threat model (card: engram Fashion-MNIST): ℓ∞, ε = 0.1, η = 0.025.
pub const EPSILON: f32 = 0.1;
pub const STEP: f32 = 0.025;
pub const TRAIN_STEPS: usize = 5;
/// PGD steps of the adversarial-training table (card: 20 for evaluation) and of RiFT's
/// curves (its card: PGD-10).
pub const EVAL_STEPS: usize = 20;
pub const RIFT_EVAL_STEPS: usize = 10;
pub const SEVERITY: usize = 5;
/// Seed of the data draws (subsamples, corruptions): one data set for every seed.
pub const DATA_SEED: u64 = 0;

/// Sizes of the study's data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sizes {
    /// Training images per class (balanced set; the long-tailed set keeps a share).
    pub train_per_class: usize,
    /// Held-out training images per class for validation (choices of r and α).
    pub valid_per_class: usize,
    /// Held-out training images per class for RiFT's adversarial set.
    pub mrc_per_class: usize,
    pub test_per_class: usize,
    /// Images per class of each FMNIST-C corruption (test; validation gets a fifth).
    pub corrupt_per_class: usize,
    /// Imbalance ratio of the long-tailed set: class c keeps n·ratio^(−c/9).
    pub imbalance: f64,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
}

/// The study's data sets, drawn once.
pub struct Data {
    pub train: Dataset,
    pub long_tail: Dataset,
    pub valid: Dataset,
    pub mrc: Dataset,
    pub test: Dataset,
    pub valid_c: Vec<(Corruption, Dataset)>,
    pub test_c: Vec<(Corruption, Dataset)>,
}

/// The long-tailed subset: the first n·ratio^(−c/(C−1)) examples of class c.
pub fn long_tailed(ds: &Dataset, ratio: f64) -> Dataset {
    let by = ds.by_class();
    let c = by.len().max(2);
    let mut keep = Vec::new();
    for (k, members) in by.iter().enumerate() {
        let n = (members.len() as f64 * ratio.powf(-(k as f64) / (c - 1) as f64)).round() as usize;
        keep.extend(members.iter().take(n.max(1)).copied());
    }
    keep.sort_unstable();
    ds.subset(&keep)
}

impl Data {
    pub fn load(split: &Split, z: &Sizes) -> Result<Data> {
        let (rest, held) = split_off(
            &split.train,
            (z.valid_per_class + z.mrc_per_class) as f64 * 10.0 / split.train.len() as f64,
            DATA_SEED,
        );
        let (valid, mrc) = split_off(
            &held,
            z.mrc_per_class as f64 / (z.valid_per_class + z.mrc_per_class) as f64,
            DATA_SEED + 1,
        );
        let train = subset(&rest, z.train_per_class, DATA_SEED);
        let long_tail = long_tailed(&train, z.imbalance);
        let test = subset(&split.test, z.test_per_class, DATA_SEED);
        let ctest = subset(&split.test, z.corrupt_per_class, DATA_SEED + 2);
        let cvalid = subset(&valid, (z.corrupt_per_class / 5).max(1), DATA_SEED + 3);
        let corrupt = |ds: &Dataset, salt: u64| -> Result<Vec<(Corruption, Dataset)>> {
            Corruption::STREAM
                .iter()
                .map(|&c| Ok((c, corrupt_dataset(ds, c, SEVERITY, DATA_SEED + salt)?)))
                .collect()
        };
        Ok(Data {
            valid_c: corrupt(&cvalid, 10)?,
            test_c: corrupt(&ctest, 20)?,
            train,
            long_tail,
            valid,
            mrc,
            test,
        })
    }
}

/// The adversarial settings of an arm (`None`: standard training).
pub fn adversarial(method: Option<Method>, r: Option<f64>) -> Option<Adversarial> {
    method.map(|m| Adversarial {
        method: m,
        epsilon: EPSILON,
        step: STEP,
        steps: TRAIN_STEPS,
        r: if m == Method::DroSoftmax { r } else { None },
        ..Default::default()
    })
}

/// One arm's adversarial (or standard) training: Adam at `z.lr`, `z.epochs` epochs.
pub fn train_arm(train: &Dataset, z: &Sizes, adv: Option<Adversarial>, seed: u64) -> Result<Net> {
    let cfg = TrainConfig {
        epochs: z.epochs,
        batch_size: z.batch,
        optimizer: OptimConfig::new(OptimKind::Adam, z.lr),
        adversarial: adv,
        ..TrainConfig::default()
    };
    train_net(
        &model(),
        train,
        cfg,
        ("naive", serde_json::Value::Null),
        None,
        seed,
    )
}

/// The autodiff network of the study's model holding `values`.
pub fn net_of(values: &Values, ds: &Dataset) -> Result<Net> {
    Ok(engram_learn::robust::net_with(
        &model(),
        ds.dim,
        ds.image,
        ds.num_classes,
        values,
    )?)
}

pub fn values_of(net: &Net) -> Values {
    named_values(net)
}

/// The evaluation attack with `steps` PGD steps.
pub fn eval_attack(steps: usize) -> Attack {
    Attack::pgd(EPSILON, STEP, steps)
}

/// A model's scores on one part (test or validation).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Scores {
    pub clean: f64,
    /// PGD-K robust accuracy (strict: every iterate counts).
    pub robust: f64,
    /// RA-Tail-30: mean PGD-K robust accuracy of the worst 3 classes.
    pub tail: f64,
    /// Robust accuracy per class (`None`: no example of the class attacked).
    pub robust_per_class: Vec<Option<f64>>,
    /// Mean accuracy over the 15 FMNIST-C corruptions (severity 5).
    pub corrupt: f64,
}

/// Scores of `net` on (`ds`, its corrupted copies) under PGD-`steps`; `robust_n` caps the
/// images attacked (the first ones of a class-balanced draw, every class kept).
pub fn score(
    net: &Net,
    ds: &Dataset,
    corrupted: &[(Corruption, Dataset)],
    (robust_n, steps): (usize, usize),
    seed: u64,
) -> Result<Scores> {
    let clean = percent(&clean_correct(net, &ds.x, &ds.y, 500)?);
    let n = robust_n.min(ds.len());
    let ids = balanced_prefix(ds, n);
    let sub = ds.subset(&ids);
    let ok = robust_correct(net, &sub.x, &sub.y, &eval_attack(steps), seed, 250)?;
    let pcs = per_class(&ok, &sub.y, ds.num_classes);
    let mut corrupt = 0.0;
    for (_, c) in corrupted {
        corrupt += percent(&clean_correct(net, &c.x, &c.y, 500)?);
    }
    Ok(Scores {
        clean,
        robust: percent(&ok),
        tail: tail(&ok, &sub.y, ds.num_classes, 0.3),
        robust_per_class: pcs,
        corrupt: corrupt / corrupted.len().max(1) as f64,
    })
}

/// `n` indices of `ds` taking classes in turn (each class's examples in order), so that a
/// prefix stays class-balanced.
pub fn balanced_prefix(ds: &Dataset, n: usize) -> Vec<usize> {
    let by = ds.by_class();
    let mut out = Vec::with_capacity(n);
    let mut k = 0;
    while out.len() < n {
        let mut any = false;
        for m in &by {
            if let Some(&i) = m.get(k) {
                any = true;
                if out.len() < n {
                    out.push(i);
                }
            }
        }
        if !any {
            break;
        }
        k += 1;
    }
    out.sort_unstable();
    out
}

/// The gradient-masking checks on `n` test images, on final-point robust accuracy with
/// independent random starts per attack: PGD-10, PGD-20, PGD-20 with 5 restarts, and PGD-20
/// at ε = 0.05, 0.1, 0.15, 0.3 (η = ε/4).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Masking {
    pub images: usize,
    pub pgd10: f64,
    pub pgd20: f64,
    pub pgd20_restarts5: f64,
    /// (ε, PGD-20 robust accuracy), ε ascending.
    pub by_epsilon: Vec<(f32, f64)>,
    /// Every comparison holds: stronger attacks never raise robust accuracy.
    pub passes: bool,
}

pub fn masking(net: &Net, ds: &Dataset, n: usize, seed: u64) -> Result<Masking> {
    let ids = balanced_prefix(ds, n.min(ds.len()));
    let sub = ds.subset(&ids);
    let acc = |a: &Attack| -> Result<f64> {
        Ok(percent(&final_correct(net, &sub.x, &sub.y, a, seed, 250)?))
    };
    let pgd10 = acc(&Attack::pgd(EPSILON, STEP, 10))?;
    let pgd20 = acc(&Attack::pgd(EPSILON, STEP, 20))?;
    let pgd20_restarts5 = acc(&Attack::pgd(EPSILON, STEP, 20).with_restarts(5))?;
    let mut by_epsilon = Vec::new();
    for e in [0.05f32, 0.1, 0.15, 0.3] {
        by_epsilon.push((e, acc(&Attack::pgd(e, e / 4.0, 20))?));
    }
    let passes = pgd20 <= pgd10
        && pgd20_restarts5 <= pgd20
        && by_epsilon.windows(2).all(|w| w[1].1 <= w[0].1);
    Ok(Masking {
        images: sub.len(),
        pgd10,
        pgd20,
        pgd20_restarts5,
        by_epsilon,
        passes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(counts: &[usize]) -> Dataset {
        let mut y = Vec::new();
        for (c, &n) in counts.iter().enumerate() {
            y.extend(std::iter::repeat_n(c as u32, n));
        }
        Dataset {
            name: "t".into(),
            x: vec![0.0; y.len()],
            dim: 1,
            image: None,
            num_classes: counts.len(),
            y,
        }
    }

    #[test]
    fn long_tail_and_balanced_prefix() {
        let d = ds(&[100; 10]);
        let lt = long_tailed(&d, 10.0);
        let counts = lt.class_counts();
        assert_eq!(counts[0], 100);
        assert_eq!(counts[9], 10);
        assert!(counts.windows(2).all(|w| w[0] >= w[1]), "{counts:?}");
        let p = balanced_prefix(&ds(&[3, 1, 5]), 6);
        let sub = ds(&[3, 1, 5]).subset(&p);
        assert_eq!(sub.class_counts(), vec![3, 1, 2]);
    }
}
