//! Domain-incremental scenarios: every task holds all classes (one shared label space,
//! [`EvalMode::DomainIl`]) and differs only by an input transform applied when batches are
//! built.
//!
//! - [`permuted`] (Permuted MNIST): **every task, task 0 included, has its own seeded pixel
//!   permutation** (stream keyed by the seed and the task index), the convention of
//!   Avalanche's `PermutedMNIST` and of GEM. The permutation covers all `dim` values, so it
//!   also works on flat features.
//! - [`rotated`] (Rotated MNIST): task t rotates the images counter-clockwise by
//!   `max_angle · t / (T − 1)` degrees, evenly spread over [0, max_angle] (task 0 is the
//!   original images; one task: 0°). With the default 180° and 5 tasks: 0, 45, 90, 135, 180.
//!   The angles do not depend on the seed (the seed still drives subsampling).
//!
//! Each task uses all training examples (or its own seeded subsample of `train_per_task`) and
//! the whole test set.

use super::config::{Kind, parse_params, to_json};
use super::{
    Common, EvalMode, EvalPlan, Scenario, ScenarioError, Task, Transform, invalid, prepare,
    subsample,
};
use crate::data::Split;
use engram_weights::rng::Rng;
use serde_json::{Map, Value};

fn build(
    data: Split,
    kind: &str,
    transforms: Vec<Transform>,
    common: &Common,
) -> Result<Scenario, ScenarioError> {
    let (train, test) = prepare(data, common)?;
    let c = train.num_classes;
    let classes: Vec<u32> = (0..c as u32).collect();
    let tasks = transforms
        .into_iter()
        .enumerate()
        .map(|(t, tf)| {
            let name = match &tf {
                Transform::Rotate(a) => format!("task {t}: rotated {a}°"),
                Transform::Permute(_) => format!("task {t}: permutation {t}"),
                _ => format!("task {t}"),
            };
            let tr = subsample(
                (0..train.len()).collect(),
                common.train_per_task,
                common.seed,
                t,
            );
            Task::new(name, classes.clone(), tr, (0..test.len()).collect(), tf)
        })
        .collect::<Vec<_>>();
    let s = Scenario {
        name: format!("{kind} {} ({} tasks)", train.name, tasks.len()),
        seed: common.seed,
        eval: EvalMode::DomainIl,
        plan: EvalPlan::EveryTask,
        num_outputs: c,
        train,
        test,
        tasks,
    };
    s.validate()?;
    Ok(s)
}

/// Permuted scenario: `tasks` tasks, each with its own seeded permutation of the inputs.
pub fn permuted(data: Split, tasks: usize, common: &Common) -> Result<Scenario, ScenarioError> {
    if tasks == 0 {
        return invalid("permuted: tasks must be at least 1");
    }
    let dim = data.train.dim;
    let transforms = (0..tasks)
        .map(|t| {
            Transform::Permute(Rng::keyed(common.seed, "permutation", t as u64).permutation(dim))
        })
        .collect();
    build(data, "permuted", transforms, common)
}

/// The rotation angle of each task: `max_angle · t / (tasks − 1)`.
pub fn rotation_angles(tasks: usize, max_angle: f32) -> Vec<f32> {
    if tasks <= 1 {
        return vec![0.0; tasks];
    }
    (0..tasks)
        .map(|t| (max_angle as f64 * t as f64 / (tasks - 1) as f64) as f32)
        .collect()
}

/// Rotated scenario: `tasks` tasks with angles spread evenly over [0, max_angle] degrees.
/// Needs square images.
pub fn rotated(
    data: Split,
    tasks: usize,
    max_angle: f32,
    common: &Common,
) -> Result<Scenario, ScenarioError> {
    if tasks == 0 {
        return invalid("rotated: tasks must be at least 1");
    }
    if !max_angle.is_finite() {
        return invalid(format!(
            "rotated: max-angle {max_angle} is not a number of degrees"
        ));
    }
    match data.train.image {
        Some((_, h, w)) if h == w => {}
        other => {
            return invalid(format!(
                "rotated: {} is not a set of square images ({other:?}); use permuted instead",
                data.train.name
            ));
        }
    }
    let transforms = rotation_angles(tasks, max_angle)
        .into_iter()
        .map(Transform::Rotate)
        .collect();
    build(data, "rotated", transforms, common)
}

/// The keys of `permuted` and `rotated`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct PermutedParams {
    #[serde(default = "five")]
    tasks: usize,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RotatedParams {
    #[serde(default = "five")]
    tasks: usize,
    /// The last task's angle in degrees.
    #[serde(default = "half_turn")]
    max_angle: f32,
}

fn five() -> usize {
    5
}
fn half_turn() -> f32 {
    180.0
}

fn permuted_params(m: &Map<String, Value>) -> Result<PermutedParams, ScenarioError> {
    let p: PermutedParams = parse_params("permuted", m)?;
    if p.tasks == 0 {
        return invalid("scenario permuted: tasks must be at least 1");
    }
    Ok(p)
}

fn rotated_params(m: &Map<String, Value>) -> Result<RotatedParams, ScenarioError> {
    let p: RotatedParams = parse_params("rotated", m)?;
    if p.tasks == 0 {
        return invalid("scenario rotated: tasks must be at least 1");
    }
    if !p.max_angle.is_finite() {
        return invalid(format!("scenario rotated: max-angle = {}", p.max_angle));
    }
    Ok(p)
}

pub const PERMUTED: Kind = Kind {
    name: "permuted",
    summary: "domain-incremental: each task permutes the pixels by its own seeded permutation",
    params: |m| to_json(&permuted_params(m)?),
    build: |data, m, common| permuted(data, permuted_params(m)?.tasks, common),
};

pub const ROTATED: Kind = Kind {
    name: "rotated",
    summary: "domain-incremental: task t rotates the images by max-angle·t/(T−1) degrees",
    params: |m| to_json(&rotated_params(m)?),
    build: |data, m, common| {
        let p = rotated_params(m)?;
        rotated(data, p.tasks, p.max_angle, common)
    },
};

#[cfg(test)]
mod tests {
    use super::super::Part;
    use super::super::tests::{ok, small_blobs};
    use super::*;
    use crate::data::blobs::{BlobsConfig, generate};

    fn perm_of(s: &Scenario, t: usize) -> Vec<u32> {
        match &s.tasks[t].transform {
            Transform::Permute(p) => p.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn permutations_are_permutations_and_seeded() {
        let a = ok(permuted(small_blobs(), 4, &Common::default()));
        assert_eq!(a.eval, EvalMode::DomainIl);
        let mut perms = Vec::new();
        for t in 0..4 {
            let p = perm_of(&a, t);
            let mut sorted = p.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..64).collect::<Vec<u32>>());
            assert_ne!(p, sorted, "task {t} kept the identity");
            assert_eq!(a.tasks[t].classes, (0..10).collect::<Vec<u32>>());
            assert_eq!(a.tasks[t].train.len(), 400);
            perms.push(p);
        }
        assert!(perms.windows(2).all(|w| w[0] != w[1]));
        let b = ok(permuted(small_blobs(), 4, &Common::default()));
        let c = ok(permuted(
            small_blobs(),
            4,
            &Common {
                seed: 1,
                ..Common::default()
            },
        ));
        for t in 0..4 {
            assert_eq!(perm_of(&a, t), perm_of(&b, t));
            assert_ne!(perm_of(&a, t), perm_of(&c, t));
        }
        // Batches apply the permutation: output j is input perm[j].
        let i = a.tasks[2].train[5];
        let (x, _) = a.batch(2, Part::Train, &[i]);
        let p = perm_of(&a, 2);
        for j in 0..64 {
            assert_eq!(x[j], a.train.row(i)[p[j] as usize]);
        }
    }

    #[test]
    fn rotated_angles_and_batches() {
        assert_eq!(
            rotation_angles(5, 180.0),
            vec![0.0, 45.0, 90.0, 135.0, 180.0]
        );
        assert_eq!(rotation_angles(1, 180.0), vec![0.0]);
        assert_eq!(rotation_angles(3, 90.0), vec![0.0, 45.0, 90.0]);
        let s = ok(rotated(small_blobs(), 5, 180.0, &Common::default()));
        assert_eq!(s.eval, EvalMode::DomainIl);
        // Task 0 is the identity, task 2 an exact quarter turn.
        let i = s.tasks[0].test[7];
        let (x0, _) = s.batch(0, Part::Test, &[i]);
        assert_eq!(x0, s.test.row(i));
        let (x2, _) = s.batch(2, Part::Test, &[i]);
        let src = s.test.row(i);
        for r in 0..8 {
            for c in 0..8 {
                // Counter-clockwise: output (r, c) is input (c, 7 − r).
                assert_eq!(x2[r * 8 + c], src[c * 8 + (7 - r)]);
            }
        }
    }

    #[test]
    fn rotated_needs_square_images() {
        let flat = match generate(&BlobsConfig {
            dim: 6,
            image: false,
            ..BlobsConfig::default()
        }) {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert!(rotated(flat.clone(), 3, 90.0, &Common::default()).is_err());
        assert!(permuted(flat, 3, &Common::default()).is_ok());
        assert!(rotated(small_blobs(), 0, 90.0, &Common::default()).is_err());
        assert!(rotated(small_blobs(), 2, f32::INFINITY, &Common::default()).is_err());
    }

    #[test]
    fn per_task_subsamples_differ() {
        let c = Common {
            seed: 9,
            train_per_task: Some(50),
            ..Common::default()
        };
        let s = ok(rotated(small_blobs(), 3, 90.0, &c));
        assert!(s.tasks.iter().all(|t| t.train.len() == 50));
        assert_ne!(s.tasks[0].train, s.tasks[1].train);
    }
}
