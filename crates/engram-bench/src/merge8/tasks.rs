//! The study's eight tasks: two real data sets in one labelled space of 20 classes (fashion
//! 0–9, digits 10–19), each set untransformed, rotated, inverted and permuted; a seeded
//! validation split carved per example, so that no example trains one task and validates
//! another.

use super::Settings;
use super::page::StudyTask;
use anyhow::{Result, bail};
use engram_learn::data::Dataset;
use engram_learn::scenario::{EvalMode, EvalPlan, Scenario, Task, Transform};
use engram_weights::rng::Rng;

/// (name, from Fashion-MNIST (else MNIST digits), transform).
pub const TASKS: [(&str, bool, &str); 8] = [
    ("fashion", true, "none"),
    ("digits", false, "none"),
    ("fashion-rot90", true, "rot90"),
    ("digits-rot90", false, "rot90"),
    ("fashion-inverted", true, "invert"),
    ("digits-inverted", false, "invert"),
    ("fashion-permuted", true, "permute"),
    ("digits-permuted", false, "permute"),
];

/// Concatenates two data sets of 28×28 images into one labelled space (the second's labels
/// shifted by the first's class count).
fn concat(a: &Dataset, b: &Dataset) -> Result<Dataset> {
    if a.dim != b.dim || a.image != b.image {
        bail!(
            "{} and {} have different example shapes ({} vs {})",
            a.name,
            b.name,
            a.dim,
            b.dim
        );
    }
    let shift = a.num_classes as u32;
    let mut x = a.x.clone();
    x.extend_from_slice(&b.x);
    let mut y = a.y.clone();
    y.extend(b.y.iter().map(|&v| v + shift));
    Ok(Dataset {
        name: format!("{}+{}", a.name, b.name),
        x,
        y,
        dim: a.dim,
        image: a.image,
        num_classes: a.num_classes + b.num_classes,
    })
}

/// `k` of `pool` drawn with the generator keyed by (`seed`, `key`, `t`), in order; all of it
/// when `k` is `None` or not smaller.
pub fn subsample(pool: Vec<usize>, k: Option<usize>, seed: u64, key: &str, t: u64) -> Vec<usize> {
    match k {
        Some(k) if k < pool.len() => Rng::keyed(seed, key, t).choose_sorted(&pool, k),
        _ => pool,
    }
}

/// The eight tasks over the two data sets' train and test splits joined into one labelled
/// space, each subsampled as `st` says, with the validation split carved out.
pub fn build_scenario(
    ftr: &Dataset,
    fte: &Dataset,
    dtr: &Dataset,
    dte: &Dataset,
    st: &Settings,
) -> Result<Scenario> {
    let train = concat(ftr, dtr)?;
    let test = concat(fte, dte)?;
    let (nf, nd) = (ftr.len(), dtr.len());
    let (mf, md) = (fte.len(), dte.len());
    let mut tasks = Vec::new();
    for (t, (name, fashion, tr)) in TASKS.iter().enumerate() {
        let (train_pool, test_pool, classes): (Vec<usize>, Vec<usize>, Vec<u32>) = if *fashion {
            ((0..nf).collect(), (0..mf).collect(), (0..10).collect())
        } else {
            (
                (nf..nf + nd).collect(),
                (mf..mf + md).collect(),
                (10..20).collect(),
            )
        };
        let transform = match *tr {
            "rot90" => Transform::Rotate(90.0),
            "invert" => Transform::Invert,
            "permute" => Transform::Permute(
                Rng::keyed(st.seed, "merge8-permutation", t as u64).permutation(train.dim),
            ),
            _ => Transform::None,
        };
        tasks.push(Task::new(
            *name,
            classes,
            subsample(
                train_pool,
                st.train_per_task,
                st.seed,
                "merge8-train",
                t as u64,
            ),
            subsample(
                test_pool,
                st.test_per_task,
                st.seed,
                "merge8-test",
                t as u64,
            ),
            transform,
        ));
    }
    let mut s = Scenario {
        name: "merge-8".into(),
        seed: st.seed,
        eval: EvalMode::TaskIl,
        plan: EvalPlan::EveryTask,
        num_outputs: train.num_classes,
        train,
        test,
        tasks,
    };
    s.carve_validation(st.valid_fraction, st.seed)?;
    s.validate()?;
    Ok(s)
}

/// The tasks as the page lists them.
pub fn task_rows(s: &Scenario) -> Vec<StudyTask> {
    s.tasks
        .iter()
        .zip(TASKS)
        .map(|(t, (_, fashion, tr))| StudyTask {
            name: t.name.clone(),
            dataset: if fashion {
                "Fashion-MNIST"
            } else {
                "MNIST digits"
            }
            .into(),
            transform: match tr {
                "rot90" => "rotated 90°",
                "invert" => "inverted (1 − x)",
                "permute" => "pixels permuted",
                _ => "none",
            }
            .into(),
            train: t.train.len(),
            valid: t.valid.len(),
            test: t.test.len(),
        })
        .collect()
}
