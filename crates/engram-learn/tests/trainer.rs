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
