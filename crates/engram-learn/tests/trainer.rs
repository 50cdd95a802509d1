//! The trainer end to end on small synthetic data: hooks in order, resume equals an
//! uninterrupted run, and Joint forgets less than Naive.

use engram_learn::model::ModelConfig;
use engram_learn::optim::OptimConfig;
use engram_learn::scenario::{Scenario, ScenarioConfig};
use engram_learn::strategy::{self, probe::Probe};
use engram_learn::train::{RunOutput, TrainConfig, Trainer};

fn scenario(kind: &str) -> Scenario {
    let cfg = ScenarioConfig::from_json(&format!(
        r#"{{"kind": "{kind}", "dataset": "blobs", "tasks": 3, "classes-per-task": 2, "seed": 1}}"#
    ))
    .expect("config");
    cfg.build(None).expect("scenario")
}

fn mlp() -> ModelConfig {
    ModelConfig::Mlp { hidden: vec![32] }
}

fn run(
    s: &Scenario,
    name: &str,
    dir: Option<std::path::PathBuf>,
    stop: Option<usize>,
) -> RunOutput {
    let mut t = Trainer {
        scenario: s,
        model: mlp(),
        train: TrainConfig {
            epochs: 4,
            batch_size: 32,
            optimizer: OptimConfig {
                lr: 0.01,
                ..Default::default()
            },
            ..Default::default()
        },
        seed: 3,
        strategy: strategy::build(name, &serde_json::Value::Null).expect("strategy"),
        checkpoint_dir: dir,
        stop_after: stop,
        start: None,
        settings: serde_json::Value::Null,
    };
    t.run(&mut |_| {}).expect("run")
}

#[test]
fn hooks_are_called_in_order() {
    let s = scenario("class-incremental");
    let probe = Probe::default();
    let log = probe.log.clone();
    let mut t = Trainer {
        scenario: &s,
        model: mlp(),
        train: TrainConfig {
            iterations: Some(3),
            batch_size: 16,
            ..Default::default()
        },
        seed: 0,
        strategy: Box::new(probe),
        checkpoint_dir: None,
        stop_after: None,
        start: None,
        settings: serde_json::Value::Null,
    };
    t.run(&mut |_| {}).expect("run");
    let log = log.lock().unwrap().clone();
    let mut want = Vec::new();
    for task in 0..3 {
        want.push(format!("before_task {task}"));
        want.push(format!("train_examples {task}"));
        for step in 0..3 {
            want.push(format!("loss {task} {step}"));
            want.push(format!("after_backward {task} {step}"));
            want.push(format!("after_step {task} {step}"));
        }
        want.push(format!("after_task {task}"));
    }
    assert_eq!(log, want);
}

#[test]
fn a_resumed_run_ends_with_the_same_metrics() {
    let s = scenario("class-incremental");
    let whole = run(&s, "naive", None, None);
    let dir = tempfile::tempdir().unwrap();
    let part = run(&s, "naive", Some(dir.path().to_path_buf()), Some(1));
    assert_eq!(part.accuracy.len(), 1);
    let resumed = run(&s, "naive", Some(dir.path().to_path_buf()), None);
    assert_eq!(resumed.accuracy, whole.accuracy);
    assert_eq!(resumed.task_il_accuracy, whole.task_il_accuracy);
    assert_eq!(resumed.baseline, whole.baseline);
    assert_eq!(resumed.ece, whole.ece);
}

#[test]
fn joint_forgets_less_than_naive_in_class_incremental_learning() {
    let s = scenario("class-incremental");
    let naive = run(&s, "naive", None, None);
    let joint = run(&s, "joint", None, None);
    let last = |o: &RunOutput| o.accuracy.last().unwrap().iter().sum::<f64>() / 3.0;
    // Naive forgets the first tasks' classes; Joint keeps them.
    assert!(naive.accuracy[2][0] < 50.0, "{:?}", naive.accuracy);
    assert!(
        last(&joint) > last(&naive) + 20.0,
        "joint {:?} naive {:?}",
        joint.accuracy,
        naive.accuracy
    );
    assert_eq!(naive.accuracy.len(), 3);
    assert_eq!(naive.baseline.len(), 3);
}

fn run_with(
    s: &Scenario,
    name: &str,
    train: TrainConfig,
    dir: Option<std::path::PathBuf>,
    stop: Option<usize>,
) -> RunOutput {
    let mut t = Trainer {
        scenario: s,
        model: mlp(),
        train,
        seed: 3,
        strategy: strategy::build(name, &serde_json::Value::Null).expect("strategy"),
        checkpoint_dir: dir,
        stop_after: stop,
        start: None,
        settings: serde_json::Value::Null,
    };
    t.run(&mut |_| {}).expect("run")
}

fn adam(reset: bool) -> TrainConfig {
    TrainConfig {
        epochs: 2,
        batch_size: 32,
        optimizer: OptimConfig {
            kind: engram_learn::optim::OptimKind::Adam,
            lr: 0.001,
            ..Default::default()
        },
        reset_optimizer: reset,
        ..Default::default()
    }
}

/// Issue 15, defect 1: in Class-IL the column of a task not yet trained is scored over the
/// classes seen so far plus its own (as Mammoth), so a[k][i] for i > k is not 0 by
/// construction; the baseline likewise over the classes of tasks 0..=i.
#[test]
fn class_il_scores_a_coming_task_over_its_own_classes_too() {
    use burn::prelude::*;
    use engram_learn::eval::{accuracy, class_mask, column_mask, evaluate_all, test_logits};
    let s = scenario("class-incremental");
    let d = Device::flex();
    // Untrained networks of a few seeds: one that picks a coming task's classes.
    let (net, e) = (0..16)
        .map(|seed| {
            let _g = engram_learn::backend::seeded(&d, seed);
            let net = mlp()
                .build(s.train.dim, s.train.image, s.num_outputs, &d)
                .expect("net");
            let e = evaluate_all(&net, &s, 0, &d, 100).expect("evaluation");
            (net, e)
        })
        .find(|(_, e)| e.row[1] > 0.0)
        .expect("some untrained network scores on task 1");
    let c = s.num_outputs;
    let upto = |i: usize| {
        class_mask(
            c,
            s.tasks[..=i].iter().flat_map(|t| t.classes.iter().copied()),
        )
    };
    assert_eq!(column_mask(&s, Some(0), 1), upto(1));
    assert_eq!(column_mask(&s, Some(0), 2), upto(2));
    assert_eq!(column_mask(&s, Some(2), 0), upto(2));
    assert_eq!(column_mask(&s, None, 1), upto(1));
    for i in 0..3 {
        let (lg, lb, _) = test_logits(&net, &s, i, &d, 100);
        assert_eq!(
            e.row[i],
            accuracy(&lg, &lb, c, &column_mask(&s, Some(0), i))
        );
    }
    // Over the classes seen before it (the old mask) its accuracy would be 0.
    let (lg, lb, _) = test_logits(&net, &s, 1, &d, 100);
    assert_eq!(accuracy(&lg, &lb, c, &upto(0)), 0.0);
}

/// Issue 15, defect 7: ECE after every task, per task (a matrix like the accuracies) and
/// over the tasks seen; the final ECE is the last point of the curve.
#[test]
fn ece_is_recorded_after_every_task() {
    let s = scenario("class-incremental");
    let out = run(&s, "naive", None, None);
    assert_eq!(out.ece_curve.len(), 3);
    assert_eq!(out.ece_matrix.len(), 3);
    assert!(out.ece_matrix.iter().all(|r| r.len() == 3));
    assert_eq!(out.ece, out.ece_curve[2]);
    assert!(out.ece_curve.iter().flatten_ok());
    // The curve moves as tasks arrive (a constant would be a value written once).
    assert!(
        out.ece_curve.windows(2).any(|w| w[0] != w[1]),
        "{:?}",
        out.ece_curve
    );
}

trait AllPercent {
    fn flatten_ok(self) -> bool;
}
impl<'a, I: Iterator<Item = &'a f64>> AllPercent for I {
    fn flatten_ok(mut self) -> bool {
        self.all(|v| v.is_finite() && (0.0..=100.0).contains(v))
    }
}

/// Issue 15, convention 8: `reset-optimizer = false` carries Adam's moments and step count
/// across tasks (another run than the default), and a resumed run continues exactly.
#[test]
fn carried_optimizer_state_changes_the_run_and_resumes_exactly() {
    let s = scenario("class-incremental");
    let reset = run_with(&s, "naive", adam(true), None, None);
    let kept = run_with(&s, "naive", adam(false), None, None);
    assert_eq!(
        reset.accuracy[0], kept.accuracy[0],
        "task 0 is the same run"
    );
    assert_ne!(reset.accuracy[1..], kept.accuracy[1..]);
    let dir = tempfile::tempdir().unwrap();
    let part = run_with(
        &s,
        "naive",
        adam(false),
        Some(dir.path().to_path_buf()),
        Some(1),
    );
    assert_eq!(part.accuracy.len(), 1);
    assert!(dir.path().join("task-1.optimizer.safetensors").is_file());
    let resumed = run_with(
        &s,
        "naive",
        adam(false),
        Some(dir.path().to_path_buf()),
        None,
    );
    assert_eq!(resumed.accuracy, kept.accuracy);
    assert_eq!(resumed.ece_curve, kept.ece_curve);
    // The default keeps no optimizer file.
    let dir2 = tempfile::tempdir().unwrap();
    run_with(
        &s,
        "naive",
        adam(true),
        Some(dir2.path().to_path_buf()),
        Some(1),
    );
    assert!(!dir2.path().join("task-1.optimizer.safetensors").exists());
}

/// Probe of issue 15: EWC's per-example Fisher takes the one-example loop on an MLP with a
/// weight-normalised head (the fast probe pass mirrors a linear head only), and kd-wa's
/// weight aligning, which a normalised head makes a no-op, is refused before training.
#[test]
fn weight_norm_head_with_ewc_runs_and_with_weight_aligning_is_refused() {
    use engram_learn::model::Head;
    let s = scenario("class-incremental");
    let mk = |name: &str, params: serde_json::Value| Trainer {
        scenario: &s,
        model: ModelConfig::mlp(vec![16], Head::WeightNorm),
        train: TrainConfig {
            epochs: 1,
            batch_size: 32,
            ..Default::default()
        },
        seed: 1,
        strategy: strategy::build(name, &params).expect("strategy"),
        checkpoint_dir: None,
        stop_after: None,
        start: None,
        settings: serde_json::Value::Null,
    };
    let out = mk("ewc", serde_json::json!({"samples": 20}))
        .run(&mut |_| {})
        .expect("ewc with a weight-norm head");
    assert_eq!(out.accuracy.len(), 3);
    let e = mk("kd-wa", serde_json::json!({"exemplars": 20}))
        .run(&mut |_| {})
        .expect_err("wa on a normalised head")
        .to_string();
    assert!(e.contains("model.head"), "{e}");
    mk("kd-wa", serde_json::json!({"exemplars": 20, "wa": false}))
        .run(&mut |_| {})
        .expect("kd without wa");
}

/// `reset-optimizer = false` with an optimizer that keeps no state is refused as having no
/// effect.
#[test]
fn carrying_the_state_of_stateless_sgd_is_refused() {
    let s = scenario("class-incremental");
    let mut train = adam(false);
    train.optimizer.kind = engram_learn::optim::OptimKind::Sgd;
    let mut t = Trainer::new(
        &s,
        mlp(),
        train,
        0,
        strategy::build("naive", &serde_json::Value::Null).expect("naive"),
    );
    let e = t.run(&mut |_| {}).expect_err("no state").to_string();
    assert!(e.contains("reset-optimizer"), "{e}");
}
