//! SCoLe (Scaling Continual Learning; TLESORT/SCoLe, CoLLAs 2023): long streams of tasks in
//! which classes recur at random.
//!
//! Task t draws `classes_per_task` (K) distinct classes **without replacement** from a class
//! distribution p (sequentially: draw one class with probability ∝ p, remove it,
//! renormalise — numpy's `choice(replace=False, p=p)`), and holds all training data of those
//! classes (or a seeded subsample of `train_per_task`, drawn per task, so a recurring class
//! brings different examples each time) and the test data of those classes (the
//! current-task accuracy). Each task draws from its own stream keyed by the seed and t.
//! The evaluation plan is [`EvalPlan::AllClasses`]: the test set of every class of the data
//! set after every task (classes not yet drawn, or never drawn, included), with every
//! class's logit (even when training masks the softmax to the batch's classes,
//! `train.masking = "group"`).
//!
//! **Class distribution** ([`ClassDistribution`]):
//! - `Uniform`;
//! - `EntropyDecrease(e)`, SCoLe's skew knob (`entropy_decrease` in its `sampling.py`):
//!   p_c ∝ (1 − f·c)^e for c = 0..C, with f = 0.05 when C ≤ 20 (SCoLe's value for 10
//!   classes) and f = 1/C otherwise (SCoLe's 0.01 for 100 classes), the vector then shuffled
//!   across classes by the seed. e = 0 is uniform; larger e lowers the entropy (for C = 10:
//!   e = 1 gives p from 0.13 down to 0.07, e = 4 from 0.22 down to 0.02);
//! - `Weights(w)`: explicit non-negative weights, one per class.
//!
//! Variant `forgetting`: from task ⌊T/2⌋ + 1 on (SCoLe: `task_id > num_tasks / 2`), classes
//! are drawn only among the first half of the labels (0..C/2), p renormalised there.
//!
//! The stream is stored as the list of class tuples ([`Scenario::stream`]) and can be
//! rebuilt from one with [`scole_from_stream`], so runs stay comparable.

use super::config::{Kind, parse_params, to_json};
use super::{
    Common, EvalMode, EvalPlan, Scenario, ScenarioError, Task, Transform, invalid, prepare,
    subsample,
};
use crate::data::{Dataset, Split};
use engram_weights::rng::Rng;
use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassDistribution {
    Uniform,
    /// SCoLe's `entropy_decrease` power e ≥ 0 (0 = uniform).
    EntropyDecrease(f64),
    /// One non-negative weight per class (normalised).
    Weights(Vec<f64>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ScoleConfig {
    pub tasks: usize,
    pub classes_per_task: usize,
    pub distribution: ClassDistribution,
    pub forgetting: bool,
}

impl Default for ScoleConfig {
    /// T = 500, K = 2, uniform (theory.md's defaults for MNIST-family data).
    fn default() -> Self {
        ScoleConfig {
            tasks: 500,
            classes_per_task: 2,
            distribution: ClassDistribution::Uniform,
            forgetting: false,
        }
    }
}

/// The class probabilities p (summing to 1) for `num_classes` classes.
pub fn class_probabilities(
    num_classes: usize,
    dist: &ClassDistribution,
    seed: u64,
) -> Result<Vec<f64>, ScenarioError> {
    let c = num_classes;
    if c == 0 {
        return invalid("scole: the data set has no class");
    }
    let w: Vec<f64> = match dist {
        ClassDistribution::Uniform => vec![1.0; c],
        ClassDistribution::EntropyDecrease(e) => {
            if !e.is_finite() || *e < 0.0 {
                return invalid(format!("scole: skew (entropy decrease) {e} must be >= 0"));
            }
            if *e == 0.0 {
                vec![1.0; c]
            } else {
                let f = if c <= 20 { 0.05 } else { 1.0 / c as f64 };
                let mut w: Vec<f64> = (0..c).map(|k| (1.0 - f * k as f64).powf(*e)).collect();
                Rng::keyed(seed, "scole-probabilities", 0).shuffle(&mut w);
                w
            }
        }
        ClassDistribution::Weights(w) => {
            if w.len() != c {
                return invalid(format!("scole: {} class weights for {c} classes", w.len()));
            }
            if w.iter().any(|v| !v.is_finite() || *v < 0.0) {
                return invalid("scole: class weights must be finite and >= 0");
            }
            w.clone()
        }
    };
    let total: f64 = w.iter().sum();
    if total <= 0.0 || !total.is_finite() {
        return invalid("scole: the class weights sum to 0");
    }
    Ok(w.into_iter().map(|v| v / total).collect())
}

/// Draws the stream: one ascending tuple of `classes_per_task` distinct classes per task.
pub fn sample_stream(
    num_classes: usize,
    cfg: &ScoleConfig,
    seed: u64,
) -> Result<Vec<Vec<u32>>, ScenarioError> {
    let p = class_probabilities(num_classes, &cfg.distribution, seed)?;
    let k = cfg.classes_per_task;
    if cfg.tasks == 0 || k == 0 {
        return invalid(format!(
            "scole: {} tasks of {k} classes: both must be at least 1",
            cfg.tasks
        ));
    }
    let positive = |p: &[f64]| p.iter().filter(|&&v| v > 0.0).count();
    if positive(&p) < k {
        return invalid(format!(
            "scole: {k} classes per task but only {} of {num_classes} classes have positive \
             probability",
            positive(&p)
        ));
    }
    let half: Vec<f64> = p
        .iter()
        .enumerate()
        .map(|(c, &v)| if c < num_classes / 2 { v } else { 0.0 })
        .collect();
    if cfg.forgetting && positive(&half) < k {
        return invalid(format!(
            "scole: forgetting keeps {} of the classes 0..{} but tasks need {k}",
            positive(&half),
            num_classes / 2
        ));
    }
    let mut stream = Vec::with_capacity(cfg.tasks);
    for t in 0..cfg.tasks {
        let mut w = if cfg.forgetting && 2 * t > cfg.tasks {
            half.clone()
        } else {
            p.clone()
        };
        let mut rng = Rng::keyed(seed, "scole-task", t as u64);
        let mut classes = Vec::with_capacity(k);
        for _ in 0..k {
            let c = rng.weighted(&w);
            w[c] = 0.0;
            classes.push(c as u32);
        }
        classes.sort_unstable();
        stream.push(classes);
    }
    Ok(stream)
}

fn build(
    train: Dataset,
    test: Dataset,
    stream: Vec<Vec<u32>>,
    common: &Common,
) -> Result<Scenario, ScenarioError> {
    let c = train.num_classes;
    let train_by = train.by_class();
    let test_by = test.by_class();
    let mut tasks = Vec::with_capacity(stream.len());
    // The task holding the fewest training examples (for a `train-per-task` above it).
    let mut fewest: Option<(usize, usize)> = None;
    for (t, mut classes) in stream.into_iter().enumerate() {
        classes.sort_unstable();
        if classes.is_empty() || classes.windows(2).any(|w| w[0] == w[1]) {
            return invalid(format!(
                "scole: task {t} must have distinct classes, has {classes:?}"
            ));
        }
        if let Some(&bad) = classes.iter().find(|&&k| k as usize >= c) {
            return invalid(format!(
                "scole: task {t} has class {bad}; the data have {c}"
            ));
        }
        let merge = |by: &[Vec<usize>]| {
            let mut v: Vec<usize> = classes
                .iter()
                .flat_map(|&k| by[k as usize].iter().copied())
                .collect();
            v.sort_unstable();
            v
        };
        let all = merge(&train_by);
        if fewest.is_none_or(|(_, n)| all.len() < n) {
            fewest = Some((t, all.len()));
        }
        let tr = subsample(all, common.train_per_task, common.seed, t);
        let te = merge(&test_by);
        let name = format!(
            "task {t}: classes {}",
            classes
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        tasks.push(Task::new(name, classes, tr, te, Transform::None));
    }
    if tasks.is_empty() {
        return invalid("scole: the stream has no task");
    }
    // A request above what a task holds would be capped silently while the requested value
    // is recorded: refuse it (every task checked).
    if let (Some(k), Some((t, n))) = (common.train_per_task, fewest)
        && k > n
    {
        return invalid(format!(
            "scenario.train-per-task = {k} is more than the {n} training examples available \
             in task {t} (classes {:?}); at most {n} (the fewest any task of this stream \
             holds)",
            tasks[t].classes
        ));
    }
    let s = Scenario {
        name: format!("scole {} ({} tasks)", train.name, tasks.len()),
        seed: common.seed,
        eval: EvalMode::ClassIl,
        plan: EvalPlan::AllClasses,
        num_outputs: c,
        train,
        test,
        tasks,
    };
    s.validate()?;
    Ok(s)
}

/// A SCoLe stream drawn from `common.seed`.
pub fn scole(data: Split, cfg: &ScoleConfig, common: &Common) -> Result<Scenario, ScenarioError> {
    let (train, test) = prepare(data, common)?;
    let stream = sample_stream(train.num_classes, cfg, common.seed)?;
    build(train, test, stream, common)
}

/// A SCoLe scenario replaying a stored stream (one class tuple per task); the seed still
/// drives the train and test subsamples.
pub fn scole_from_stream(
    data: Split,
    stream: Vec<Vec<u32>>,
    common: &Common,
) -> Result<Scenario, ScenarioError> {
    let (train, test) = prepare(data, common)?;
    build(train, test, stream, common)
}

/// The keys of `scole`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    #[serde(default = "default_tasks")]
    tasks: usize,
    #[serde(default = "two")]
    classes_per_task: usize,
    /// SCoLe's `entropy_decrease` power (0 = uniform).
    #[serde(default)]
    skew: f64,
    /// Explicit class weights, one per class (instead of `skew`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    class_weights: Option<Vec<f64>>,
    /// After half the tasks, only the first half of the classes is drawn.
    #[serde(default)]
    forgetting: bool,
}

fn default_tasks() -> usize {
    500
}
fn two() -> usize {
    2
}

fn params(m: &Map<String, Value>) -> Result<Params, ScenarioError> {
    let p: Params = parse_params("scole", m)?;
    if p.skew != 0.0 && p.class_weights.is_some() {
        return invalid("scenario scole: give `skew` or `class-weights`, not both");
    }
    if p.tasks == 0 || p.classes_per_task == 0 {
        return invalid("scenario scole: tasks and classes-per-task must be at least 1");
    }
    if !(p.skew.is_finite() && p.skew >= 0.0) {
        return invalid(format!("scenario scole: skew = {} must be >= 0", p.skew));
    }
    Ok(p)
}

pub const SCOLE: Kind = Kind {
    name: "scole",
    summary: "long streams of recurring classes (SCoLe), evaluated on all classes",
    params: |m| to_json(&params(m)?),
    build: |data, m, common| {
        let p = params(m)?;
        let distribution = match (&p.class_weights, p.skew) {
            (Some(w), _) => ClassDistribution::Weights(w.clone()),
            (None, e) if e > 0.0 => ClassDistribution::EntropyDecrease(e),
            _ => ClassDistribution::Uniform,
        };
        let cfg = ScoleConfig {
            tasks: p.tasks,
            classes_per_task: p.classes_per_task,
            distribution,
            forgetting: p.forgetting,
        };
        scole(data, &cfg, common)
    },
};

#[cfg(test)]
mod tests {
    use super::super::tests::{ok, small_blobs};
    use super::*;

    fn cfg(tasks: usize, k: usize, distribution: ClassDistribution) -> ScoleConfig {
        ScoleConfig {
            tasks,
            classes_per_task: k,
            distribution,
            forgetting: false,
        }
    }

    fn counts(stream: &[Vec<u32>], c: usize) -> Vec<usize> {
        let mut n = vec![0; c];
        for t in stream {
            for &k in t {
                n[k as usize] += 1;
            }
        }
        n
    }

    #[test]
    fn every_task_has_k_distinct_classes_and_its_data() {
        let s = ok(scole(
            small_blobs(),
            &cfg(200, 3, ClassDistribution::Uniform),
            &Common::default(),
        ));
        assert_eq!(s.plan, EvalPlan::AllClasses);
        assert_eq!(s.eval, EvalMode::ClassIl);
        assert_eq!(s.num_tasks(), 200);
        for t in &s.tasks {
            assert_eq!(t.classes.len(), 3);
            assert!(t.classes.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(t.train.len(), 120);
            assert_eq!(t.test.len(), 30);
            assert!(t.train.iter().all(|&i| t.classes.contains(&s.train.y[i])));
        }
        // Classes recur.
        assert!(s.class_draws(199).iter().all(|&n| n > 20));
        let (_, y) = s.all_classes_test();
        assert_eq!(y.len(), 100);
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let c = cfg(50, 2, ClassDistribution::EntropyDecrease(2.0));
        let mk = |seed| {
            ok(scole(
                small_blobs(),
                &c,
                &Common {
                    seed,
                    train_per_task: Some(25),
                    ..Common::default()
                },
            ))
        };
        let (a, b, d) = (mk(11), mk(11), mk(12));
        assert_eq!(a.stream(), b.stream());
        assert_eq!(a.tasks[7].train, b.tasks[7].train);
        assert_ne!(a.stream(), d.stream());
        // Replaying the stored stream rebuilds the same tasks.
        let r = ok(scole_from_stream(
            small_blobs(),
            a.stream(),
            &Common {
                seed: 11,
                train_per_task: Some(25),
                ..Common::default()
            },
        ));
        for t in 0..50 {
            assert_eq!(r.tasks[t].classes, a.tasks[t].classes);
            assert_eq!(r.tasks[t].train, a.tasks[t].train);
        }
        // A recurring class brings a different subsample.
        let t2 = (1..50).find(|&t| a.tasks[t].classes == a.tasks[0].classes);
        if let Some(t2) = t2 {
            assert_ne!(a.tasks[t2].train, a.tasks[0].train);
        }
    }

    #[test]
    fn uniform_frequencies() {
        let stream = ok(sample_stream(
            10,
            &cfg(5000, 2, ClassDistribution::Uniform),
            1,
        ));
        // Each class is in a task with probability 0.2: 1000 ± 28 (one sd).
        for (c, n) in counts(&stream, 10).into_iter().enumerate() {
            assert!((900..=1100).contains(&n), "class {c}: {n}");
        }
    }

    #[test]
    fn skewed_frequencies_follow_the_distribution() {
        let dist = ClassDistribution::EntropyDecrease(4.0);
        let p = ok(class_probabilities(10, &dist, 3));
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        let mut sorted = p.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        // p ∝ (1 − 0.05 c)^4, shuffled.
        let z: f64 = (0..10).map(|c| (1.0 - 0.05 * c as f64).powi(4)).sum();
        for (c, &v) in sorted.iter().enumerate() {
            assert!((v - (1.0 - 0.05 * c as f64).powi(4) / z).abs() < 1e-12);
        }
        assert_ne!(p, sorted, "the probabilities are shuffled across classes");
        let entropy = |p: &[f64]| -p.iter().map(|v| v * v.ln()).sum::<f64>();
        assert!(entropy(&p) < (10f64).ln() - 0.1);

        // K = 1: frequencies are p itself. T = 20000: within 5 standard deviations.
        let t = 20_000;
        let stream = ok(sample_stream(10, &cfg(t, 1, dist.clone()), 3));
        for (c, n) in counts(&stream, 10).into_iter().enumerate() {
            let sd = (t as f64 * p[c] * (1.0 - p[c])).sqrt();
            assert!((n as f64 - t as f64 * p[c]).abs() < 5.0 * sd, "class {c}");
        }
        // K = 2 without replacement: P(c in task) = p_c + Σ_{j≠c} p_j p_c / (1 − p_j).
        let stream = ok(sample_stream(10, &cfg(t, 2, dist), 3));
        let n = counts(&stream, 10);
        for c in 0..10 {
            let q = p[c]
                + (0..10)
                    .filter(|&j| j != c)
                    .map(|j| p[j] * p[c] / (1.0 - p[j]))
                    .sum::<f64>();
            let sd = (t as f64 * q * (1.0 - q)).sqrt();
            assert!(
                (n[c] as f64 - t as f64 * q).abs() < 5.0 * sd,
                "class {c}: {} vs {}",
                n[c],
                t as f64 * q
            );
        }
        // The most probable class is drawn more often than the least.
        let (hi, lo) = (
            (0..10).max_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0),
            (0..10).min_by(|&a, &b| p[a].total_cmp(&p[b])).unwrap_or(0),
        );
        assert!(n[hi] > 2 * n[lo]);
    }

    #[test]
    fn explicit_weights_and_zero_classes() {
        let w = ClassDistribution::Weights(vec![1.0, 1.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let stream = ok(sample_stream(10, &cfg(300, 2, w.clone()), 0));
        let n = counts(&stream, 10);
        assert_eq!(n.iter().sum::<usize>(), 600);
        assert!(
            n.iter()
                .enumerate()
                .all(|(c, &v)| (v > 0) == [0, 1, 3].contains(&c))
        );
        assert!(sample_stream(10, &cfg(10, 4, w), 0).is_err());
        assert!(
            sample_stream(10, &cfg(10, 2, ClassDistribution::Weights(vec![1.0; 3])), 0).is_err()
        );
        assert!(
            sample_stream(10, &cfg(10, 2, ClassDistribution::EntropyDecrease(-1.0)), 0).is_err()
        );
        assert!(sample_stream(10, &cfg(10, 11, ClassDistribution::Uniform), 0).is_err());
        assert!(sample_stream(10, &cfg(0, 2, ClassDistribution::Uniform), 0).is_err());
    }

    #[test]
    fn forgetting_drops_half_the_classes() {
        let c = ScoleConfig {
            forgetting: true,
            ..cfg(100, 2, ClassDistribution::Uniform)
        };
        let stream = ok(sample_stream(10, &c, 5));
        assert!(stream[51..].iter().flatten().all(|&k| k < 5));
        assert!(stream[..=50].iter().flatten().any(|&k| k >= 5));
        let c = ScoleConfig {
            forgetting: true,
            ..cfg(100, 6, ClassDistribution::Uniform)
        };
        assert!(sample_stream(10, &c, 5).is_err());
    }

    /// Classes the stream never draws are in the all-class evaluation set.
    #[test]
    fn never_drawn_classes_are_evaluated() {
        let s = ok(scole_from_stream(
            small_blobs(),
            vec![vec![0, 1], vec![1, 2]],
            &Common::default(),
        ));
        let (_, y) = s.all_classes_test();
        assert_eq!(y.len(), s.test.len());
        for c in 0..10u32 {
            assert!(y.contains(&c), "class {c}");
        }
        assert_eq!(s.class_draws(1)[5], 0);
    }

    /// A `train-per-task` above what a task holds is an error naming the key and the
    /// count, not a silent cap; the largest valid value is accepted.
    #[test]
    fn train_per_task_above_a_tasks_examples_is_an_error() {
        let common = |k| Common {
            train_per_task: Some(k),
            ..Common::default()
        };
        let c = cfg(30, 2, ClassDistribution::Uniform);
        let fewest = ok(scole(small_blobs(), &c, &Common::default()))
            .tasks
            .iter()
            .map(|t| t.train.len())
            .min()
            .unwrap_or(0);
        assert!(fewest > 0);
        let s = ok(scole(small_blobs(), &c, &common(fewest)));
        assert!(s.tasks.iter().all(|t| t.train.len() == fewest));
        for k in [fewest + 1, 1_000_000_000] {
            let e = scole(small_blobs(), &c, &common(k))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains("scenario.train-per-task"), "{e}");
            assert!(e.contains(&format!("{k}")), "{e}");
            assert!(
                e.contains(&format!("the {fewest} training examples")),
                "{e}"
            );
        }
        // A stored stream is checked the same way, on every task (not only the first).
        let e = scole_from_stream(
            small_blobs(),
            vec![vec![0, 1, 2], vec![0, 1, 2], vec![3, 4]],
            &common(100),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("task 2"), "{e}");
    }

    #[test]
    fn bad_stored_streams_are_errors() {
        for stream in [vec![], vec![vec![0, 0]], vec![vec![10]], vec![vec![]]] {
            assert!(scole_from_stream(small_blobs(), stream, &Common::default()).is_err());
        }
    }
}
