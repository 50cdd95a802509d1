//! Class splits: the classes are cut into `tasks` disjoint groups of `classes_per_task`
//! (e.g. Split Fashion-MNIST: 5 tasks of 2 classes). Each task holds every training and test
//! example of its classes, untransformed.
//!
//! Class order: natural (0, 1 | 2, 3 | ...: the standard Split-MNIST pairs) unless
//! `shuffle_classes`, in which case the order is a permutation drawn from the seed. When
//! `tasks × classes_per_task` is smaller than the number of classes, the classes left at the
//! end of the order are not used; the output layer still has one unit per class of the data.
//!
//! Class-incremental ([`class_incremental`]) evaluates without task id over the classes seen
//! so far ([`EvalMode::ClassIl`]); task-incremental ([`task_incremental`]) is the same split
//! evaluated with the task id, the logits masked to `Task::classes` ([`EvalMode::TaskIl`]).

use super::config::{Kind, parse_params, to_json};
use super::{
    Common, EvalMode, EvalPlan, Scenario, ScenarioError, Task, Transform, examples_of, invalid,
    prepare, subsample,
};
use crate::data::Split;
use engram_weights::rng::Rng;
use serde_json::{Map, Value};

#[derive(Clone, Debug, PartialEq)]
pub struct SplitTasks {
    pub tasks: usize,
    pub classes_per_task: usize,
    /// Seeded class order instead of the natural one.
    pub shuffle_classes: bool,
    /// Classes of the first task when it differs (the half-base protocol of class-incremental
    /// learning: a large base task, then small increments); `None`: `classes_per_task`.
    pub base_classes: Option<usize>,
}

/// The order in which classes are dealt to tasks.
pub fn class_order(num_classes: usize, shuffle: bool, seed: u64) -> Vec<u32> {
    if shuffle {
        Rng::keyed(seed, "class-order", 0).permutation(num_classes)
    } else {
        (0..num_classes as u32).collect()
    }
}

fn build(
    data: Split,
    cfg: &SplitTasks,
    common: &Common,
    eval: EvalMode,
) -> Result<Scenario, ScenarioError> {
    let (train, test) = prepare(data, common)?;
    let c = train.num_classes;
    let (t, k) = (cfg.tasks, cfg.classes_per_task);
    let base = cfg.base_classes.unwrap_or(k);
    let first = match cfg.base_classes {
        Some(b) if b != k => format!(" ({b} in the first)"),
        _ => String::new(),
    };
    if t == 0 || k == 0 || base == 0 {
        return invalid(format!(
            "{t} tasks of {k} classes{first}: all must be at least 1"
        ));
    }
    let need = (t - 1).checked_mul(k).and_then(|n| n.checked_add(base));
    if need.is_none_or(|n| n > c) {
        let need = need.map_or("too many".to_string(), |n| n.to_string());
        return invalid(format!(
            "{t} tasks of {k} classes{first} need {need} classes; {} has {c}",
            train.name
        ));
    }
    let order = class_order(c, cfg.shuffle_classes, common.seed);
    let mut tasks = Vec::with_capacity(t);
    let chunks = std::iter::once(&order[..base]).chain(order[base..].chunks_exact(k));
    for (i, chunk) in chunks.take(t).enumerate() {
        let mut classes = chunk.to_vec();
        classes.sort_unstable();
        let tr = subsample(
            examples_of(&train, &classes),
            common.train_per_task,
            common.seed,
            i,
        );
        let te = examples_of(&test, &classes);
        let name = format!(
            "task {i}: classes {}",
            classes
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(",")
        );
        tasks.push(Task::new(name, classes, tr, te, Transform::None));
    }
    let kind = match eval {
        EvalMode::TaskIl => "task-incremental",
        _ => "class-incremental",
    };
    let shape = match cfg.base_classes {
        Some(b) if b != k => format!("{b}+{}x{k}", t - 1),
        _ => format!("{t}x{k}"),
    };
    let s = Scenario {
        name: format!("{kind} {} ({shape})", train.name),
        seed: common.seed,
        eval,
        plan: EvalPlan::EveryTask,
        num_outputs: c,
        train,
        test,
        tasks,
    };
    s.validate()?;
    Ok(s)
}

/// Class-incremental split: evaluation over all classes seen so far, no task id.
pub fn class_incremental(
    data: Split,
    cfg: &SplitTasks,
    common: &Common,
) -> Result<Scenario, ScenarioError> {
    build(data, cfg, common, EvalMode::ClassIl)
}

/// Task-incremental split: the same tasks, evaluated with the task id (logits masked to
/// `Task::classes`).
pub fn task_incremental(
    data: Split,
    cfg: &SplitTasks,
    common: &Common,
) -> Result<Scenario, ScenarioError> {
    build(data, cfg, common, EvalMode::TaskIl)
}

/// The keys of `class-incremental` and `task-incremental`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Params {
    /// Number of tasks (default: as many as fit, ⌊C / K⌋).
    #[serde(default)]
    tasks: Option<usize>,
    #[serde(default = "two")]
    classes_per_task: usize,
    /// Seeded class order instead of the natural one.
    #[serde(default)]
    shuffle_classes: bool,
    /// Classes of the first task (default: classes-per-task).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    base_classes: Option<usize>,
}

fn two() -> usize {
    2
}

fn params(name: &str, m: &Map<String, Value>) -> Result<Params, ScenarioError> {
    let p: Params = parse_params(name, m)?;
    if p.tasks == Some(0) || p.classes_per_task == 0 || p.base_classes == Some(0) {
        return invalid(format!(
            "scenario {name}: tasks, classes-per-task and base-classes must be at least 1"
        ));
    }
    Ok(p)
}

fn split(p: &Params, data: &Split) -> SplitTasks {
    SplitTasks {
        tasks: p.tasks.unwrap_or_else(|| {
            let base = p.base_classes.unwrap_or(p.classes_per_task);
            1 + data.train.num_classes.saturating_sub(base) / p.classes_per_task
        }),
        classes_per_task: p.classes_per_task,
        shuffle_classes: p.shuffle_classes,
        base_classes: p.base_classes,
    }
}

pub const CLASS_INCREMENTAL: Kind = Kind {
    name: "class-incremental",
    summary: "disjoint class splits, evaluated over every class seen so far (no task id)",
    params: |m| to_json(&params("class-incremental", m)?),
    build: |data, m, common| {
        let p = params("class-incremental", m)?;
        let cfg = split(&p, &data);
        class_incremental(data, &cfg, common)
    },
};

pub const TASK_INCREMENTAL: Kind = Kind {
    name: "task-incremental",
    summary: "the same splits, evaluated with the task id (logits masked to the task's classes)",
    params: |m| to_json(&params("task-incremental", m)?),
    build: |data, m, common| {
        let p = params("task-incremental", m)?;
        let cfg = split(&p, &data);
        task_incremental(data, &cfg, common)
    },
};

#[cfg(test)]
mod tests {
    use super::super::tests::{ok, small_blobs, split_cfg};
    use super::*;

    #[test]
    fn tasks_partition_the_classes() {
        for shuffle in [false, true] {
            let s = ok(class_incremental(
                small_blobs(),
                &split_cfg(5, 2, shuffle),
                &Common::default(),
            ));
            assert_eq!(s.eval, EvalMode::ClassIl);
            assert_eq!(s.num_outputs, 10);
            let mut all: Vec<u32> = s.tasks.iter().flat_map(|t| t.classes.clone()).collect();
            all.sort_unstable();
            assert_eq!(all, (0..10).collect::<Vec<u32>>());
            let mut train_all: Vec<usize> = Vec::new();
            for task in &s.tasks {
                assert_eq!(task.classes.len(), 2);
                assert_eq!(task.train.len(), 80);
                assert_eq!(task.test.len(), 20);
                assert_eq!(task.transform, Transform::None);
                train_all.extend(&task.train);
            }
            train_all.sort_unstable();
            assert_eq!(train_all, (0..400).collect::<Vec<usize>>());
        }
    }

    /// The half-base protocol: 4 base classes, then 3 increments of 2.
    #[test]
    fn a_base_task_takes_more_classes() {
        let s = ok(class_incremental(
            small_blobs(),
            &SplitTasks {
                base_classes: Some(4),
                ..split_cfg(4, 2, false)
            },
            &Common::default(),
        ));
        assert_eq!(
            s.stream(),
            vec![vec![0, 1, 2, 3], vec![4, 5], vec![6, 7], vec![8, 9]]
        );
        assert!(s.name.contains("4+3x2"), "{}", s.name);
        let too_many = class_incremental(
            small_blobs(),
            &SplitTasks {
                base_classes: Some(6),
                ..split_cfg(4, 2, false)
            },
            &Common::default(),
        );
        assert!(too_many.is_err());
        // From a run file: tasks default to as many as fit after the base.
        let c = crate::scenario::ScenarioConfig::from_json(
            r#"{"kind": "class-incremental", "dataset": "blobs", "base-classes": 4, "classes-per-task": 2}"#,
        )
        .and_then(|c| c.build(None))
        .expect("scenario");
        assert_eq!(c.tasks.len(), 4);
        assert_eq!(c.tasks[0].classes, [0, 1, 2, 3]);
    }

    #[test]
    fn natural_order_pairs() {
        let s = ok(class_incremental(
            small_blobs(),
            &split_cfg(5, 2, false),
            &Common::default(),
        ));
        let stream = s.stream();
        assert_eq!(
            stream,
            vec![vec![0, 1], vec![2, 3], vec![4, 5], vec![6, 7], vec![8, 9]]
        );
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let mk = |seed| {
            ok(class_incremental(
                small_blobs(),
                &split_cfg(5, 2, true),
                &Common {
                    seed,
                    train_per_task: Some(30),
                    ..Common::default()
                },
            ))
        };
        let (a, b, c) = (mk(1), mk(1), mk(2));
        assert_eq!(a.stream(), b.stream());
        for t in 0..5 {
            assert_eq!(a.tasks[t].train, b.tasks[t].train);
            assert_eq!(a.tasks[t].train.len(), 30);
        }
        assert_ne!(a.stream(), c.stream());
    }

    #[test]
    fn task_incremental_uses_task_il() {
        let s = ok(task_incremental(
            small_blobs(),
            &split_cfg(2, 3, false),
            &Common::default(),
        ));
        assert_eq!(s.eval, EvalMode::TaskIl);
        assert_eq!(s.stream(), vec![vec![0, 1, 2], vec![3, 4, 5]]);
        assert_eq!(s.plan, EvalPlan::EveryTask);
    }

    #[test]
    fn impossible_splits_are_errors() {
        for (t, k) in [(6, 2), (0, 2), (2, 0), (11, 1), (usize::MAX, 2)] {
            let e = class_incremental(small_blobs(), &split_cfg(t, k, false), &Common::default());
            match e {
                Ok(_) => panic!("{t}x{k} accepted"),
                Err(e) => assert!(e.to_string().contains("tasks of"), "{e}"),
            }
        }
        let e = class_incremental(
            small_blobs(),
            &split_cfg(5, 2, false),
            &Common {
                train_per_task: Some(0),
                ..Common::default()
            },
        );
        assert!(e.is_err());
    }
}
