// Robust Weight Signatures (Cai et al., ICML 2023, arXiv 2302.12480) and the robustness study.
// Card: shared/methods/patching.md (RWS), robustness_safety.md. Shared data and training helpers.

//! What the robustness studies share: corrupted copies of a data set, training a network on
//! one data set from given starting values, its accuracy, and seeded subsamples and splits.
//! Weights travel as plain values by parameter name, so that the studies can save, patch and
//! compare them without the deep-learning framework.

use anyhow::{Context, Result, bail};
use engram_learn::data::corrupt::{Corruption, corrupt_image};
use engram_learn::data::{Dataset, Split};
use engram_learn::eval::{param_shapes, values_accuracy};
use engram_learn::model::ModelConfig;
use engram_learn::model::Net;
use engram_learn::model::params::named_values;
use engram_learn::optim::{OptimConfig, OptimKind};
use engram_learn::scenario::{Common, Part, Scenario, joint};
use engram_learn::train::{Start, TrainConfig, Trainer};
use engram_weights::rng::Rng;
use rayon::prelude::*;
use serde_json::Value;
use std::collections::BTreeMap;

/// Weights by parameter name.
pub type Values = BTreeMap<String, Vec<f32>>;

/// `ds` with every image corrupted by `c` at `severity` (1–5): image i draws from
/// (seed, c, severity, i), so the result does not depend on the thread count. Labels are kept.
pub fn corrupt_dataset(ds: &Dataset, c: Corruption, severity: usize, seed: u64) -> Result<Dataset> {
    if ds.image != Some((1, 28, 28)) {
        bail!(
            "{}: {} needs 1×28×28 gray images, not {:?}",
            ds.name,
            c.name(),
            ds.image
        );
    }
    let rows: Vec<Vec<u8>> = (0..ds.len())
        .into_par_iter()
        .map(|i| corrupt_image(c, severity, seed, i as u64, ds.row(i), 28, 28))
        .collect::<Result<_, _>>()
        .with_context(|| {
            format!(
                "{}: corrupting with {} (severity {severity})",
                ds.name,
                c.name()
            )
        })?;
    Ok(Dataset {
        name: format!("{} {} s{severity}", ds.name, c.name()),
        x: rows.iter().flatten().map(|&v| v as f32 / 255.0).collect(),
        ..ds.clone()
    })
}

/// A one-task scenario training on `train` and testing on `test`.
fn scenario(train: Dataset, test: Dataset, seed: u64) -> Result<Scenario> {
    let split = Split {
        train,
        test,
        files: Vec::new(),
        meta: Default::default(),
    };
    let common = Common {
        seed,
        ..Common::default()
    };
    Ok(joint(split, &common)?)
}

/// Trains a network of `model` on `train` (every class an output) with Adam at `lr` for
/// `epochs` epochs of batches of `batch`, from `start` when given (else a fresh network of
/// `seed`); returns the trained values. Deterministic in `seed`.
pub fn train_values(
    model: &ModelConfig,
    train: &Dataset,
    start: Option<&Values>,
    epochs: usize,
    lr: f64,
    batch: usize,
    seed: u64,
) -> Result<Values> {
    let cfg = TrainConfig {
        epochs,
        batch_size: batch,
        optimizer: OptimConfig::new(OptimKind::Adam, lr),
        ..TrainConfig::default()
    };
    let net = train_net(model, train, cfg, ("naive", Value::Null), start, seed)?;
    Ok(named_values(&net))
}

/// Trains `strategy` (name, parameters) on `train` with `cfg` through the one trainer, from
/// `start` when given (else a fresh network of `seed`); the network back.
pub fn train_net(
    model: &ModelConfig,
    train: &Dataset,
    cfg: TrainConfig,
    strategy: (&str, Value),
    start: Option<&Values>,
    seed: u64,
) -> Result<Net> {
    // The trainer evaluates after the task; a few training rows keep that cheap.
    let probe: Vec<usize> = (0..train.len().min(100)).collect();
    let s = scenario(train.clone(), train.subset(&probe), seed)?;
    let st = engram_learn::strategy::build(strategy.0, &strategy.1)?;
    let mut t = Trainer::new(&s, model.clone(), cfg, seed, st);
    t.start = start.map(|v| Start {
        task: 0,
        values: v.clone(),
    });
    let (_, net) = t
        .run_net(&mut |_| {})
        .with_context(|| format!("training {model:?} on {}", train.name))?;
    Ok(net)
}

/// Accuracy (percent, argmax over all classes) of the network `model` holding `values` on
/// `ds`, evaluated on the CPU in batches of 1000.
pub fn accuracy(model: &ModelConfig, values: &Values, ds: &Dataset) -> Result<f64> {
    if ds.is_empty() {
        bail!("{}: no examples to measure accuracy on", ds.name);
    }
    let s = scenario(ds.subset(&[0]), ds.clone(), 0)?;
    values_accuracy(model, values, &s, 0, Part::Test)
        .with_context(|| format!("accuracy on {}", ds.name))
}

/// The shape of every parameter of `model` built for `ds`'s examples (every class an
/// output), by name: what [`engram_learn::model::io::save_values`] needs to write values.
pub fn shapes(model: &ModelConfig, ds: &Dataset) -> Result<BTreeMap<String, Vec<usize>>> {
    if ds.is_empty() {
        bail!("{}: no example to size the network by", ds.name);
    }
    let s = scenario(ds.subset(&[0]), ds.subset(&[0]), 0)?;
    Ok(param_shapes(model, &s)?)
}

/// At most `per_class` examples of each class, drawn uniformly (seeded), in their original
/// order.
pub fn subset(ds: &Dataset, per_class: usize, seed: u64) -> Dataset {
    let mut keep = Vec::new();
    for (c, members) in ds.by_class().iter().enumerate() {
        keep.extend(Rng::keyed(seed, "robust-subset", c as u64).choose_sorted(members, per_class));
    }
    keep.sort_unstable();
    ds.subset(&keep)
}

/// A seeded stratified split: (the rest, the held-out `share` of each class).
pub fn split_off(ds: &Dataset, share: f64, seed: u64) -> (Dataset, Dataset) {
    let mut held = Vec::new();
    for (c, members) in ds.by_class().iter().enumerate() {
        let k = (members.len() as f64 * share.clamp(0.0, 1.0)).round() as usize;
        held.extend(Rng::keyed(seed, "robust-split", c as u64).choose_sorted(members, k));
    }
    held.sort_unstable();
    let mut is_held = vec![false; ds.len()];
    for &i in &held {
        is_held[i] = true;
    }
    let rest: Vec<usize> = (0..ds.len()).filter(|&i| !is_held[i]).collect();
    (ds.subset(&rest), ds.subset(&held))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 60 images of 1×28×28 in 3 classes: class k is bright in band k.
    fn images() -> Dataset {
        let (n, dim) = (60, 784);
        let mut x = vec![0.0f32; n * dim];
        let y: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        for i in 0..n {
            let band = y[i] as usize * 9;
            for r in band..band + 9 {
                for col in 0..28 {
                    x[i * dim + r * 28 + col] = ((i + col) % 7) as f32 / 7.0;
                }
            }
        }
        Dataset {
            name: "bands".into(),
            x,
            y,
            dim,
            image: Some((1, 28, 28)),
            num_classes: 3,
        }
    }

    #[test]
    fn subsets_and_splits_are_seeded_and_balanced() {
        let ds = images();
        let a = subset(&ds, 5, 1);
        assert_eq!(a.class_counts(), vec![5, 5, 5]);
        assert_eq!(a, subset(&ds, 5, 1));
        assert_ne!(a.x, subset(&ds, 5, 2).x);
        let (rest, held) = split_off(&ds, 0.1, 3);
        assert_eq!(held.class_counts(), vec![2, 2, 2]);
        assert_eq!(rest.len() + held.len(), ds.len());
        assert_eq!(split_off(&ds, 0.1, 3).1, held);
    }

    #[test]
    fn corruption_is_deterministic_and_changes_images() -> Result<()> {
        let ds = images();
        let a = corrupt_dataset(&ds, Corruption::GaussianNoise, 5, 7)?;
        assert_eq!(a.y, ds.y);
        assert_eq!(a.x.len(), ds.x.len());
        assert_ne!(a.x, ds.x);
        assert_eq!(a, corrupt_dataset(&ds, Corruption::GaussianNoise, 5, 7)?);
        let flat = Dataset {
            image: None,
            ..ds.clone()
        };
        let e = corrupt_dataset(&flat, Corruption::Contrast, 5, 7).err();
        assert!(e.is_some_and(|e| e.to_string().contains("contrast")));
        Ok(())
    }

    #[test]
    fn training_learns_and_is_deterministic() -> Result<()> {
        let ds = images();
        let model = ModelConfig::mlp(vec![16], engram_learn::model::Head::default());
        let v = train_values(&model, &ds, None, 5, 1e-2, 20, 0)?;
        assert!(accuracy(&model, &v, &ds)? > 90.0);
        assert_eq!(v, train_values(&model, &ds, None, 5, 1e-2, 20, 0)?);
        // Starting from trained values with no training steps left changes nothing.
        let w = train_values(&model, &ds, Some(&v), 1, 1e-9, 20, 1)?;
        let diff = v
            .iter()
            .map(|(k, a)| {
                a.iter()
                    .zip(&w[k])
                    .map(|(p, q)| (p - q).abs())
                    .fold(0.0, f32::max)
            })
            .fold(0.0, f32::max);
        assert!(diff < 1e-4, "{diff}");
        Ok(())
    }
}
