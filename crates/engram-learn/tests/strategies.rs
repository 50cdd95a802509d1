//! Every strategy through the trainer end to end on small synthetic data: each completes,
//! changes training, and a run stopped after one task and resumed ends with exactly the
//! numbers of an uninterrupted one.

use engram_learn::model::ModelConfig;
use engram_learn::optim::{OptimConfig, OptimKind};
use engram_learn::scenario::{Scenario, ScenarioConfig};
use engram_learn::strategy;
use engram_learn::train::{RunOutput, TrainConfig, Trainer};

/// A run of `name` with `params` on `s`, seed 3, checkpointed in `dir` when given.
fn run(
    s: &Scenario,
    model: ModelConfig,
    train: TrainConfig,
    name: &str,
    params: serde_json::Value,
    dir: Option<&std::path::Path>,
    stop: Option<usize>,
) -> RunOutput {
    let strategy = strategy::build(name, &params).expect("strategy");
    let mut t = Trainer {
        checkpoint_dir: dir.map(std::path::Path::to_path_buf),
        stop_after: stop,
        ..Trainer::new(s, model, train, 3, strategy)
    };
    t.run(&mut |_| {}).expect("run")
}

fn mlp() -> ModelConfig {
    ModelConfig::Mlp { hidden: vec![32] }
}

/// `epochs` of batches of `batch` under `kind` at lr 0.01.
fn train(epochs: usize, batch: usize, kind: OptimKind) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: batch,
        optimizer: OptimConfig::new(kind, 0.01),
        ..Default::default()
    }
}

#[test]
fn every_regularization_strategy_runs_and_resumes_exactly() {
    let s = ScenarioConfig::from_json(
        r#"{"kind": "task-incremental", "dataset": "blobs", "tasks": 3, "classes-per-task": 2, "seed": 1}"#,
    )
    .and_then(|c| c.build(None))
    .expect("blobs scenario");
    let run = |name: &str, params: serde_json::Value, dir: Option<&std::path::Path>, stop| {
        run(
            &s,
            mlp(),
            train(3, 32, OptimKind::Adam),
            name,
            params,
            dir,
            stop,
        )
    };
    for name in ["ewc", "online-ewc", "si", "l2", "classp"] {
        let params = if name == "ewc" || name == "online-ewc" {
            serde_json::json!({"samples": 100})
        } else {
            serde_json::Value::Null
        };
        let whole = run(name, params.clone(), None, None);
        assert_eq!(whole.accuracy.len(), 3, "{name}");
        assert!(
            whole.accuracy.iter().flatten().all(|a| a.is_finite()),
            "{name}"
        );
        if name != "classp" {
            assert!(whole.strategy_state_bytes > 0, "{name}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let part = run(name, params.clone(), Some(dir.path()), Some(1));
        assert_eq!(part.accuracy.len(), 1);
        let resumed = run(name, params, Some(dir.path()), None);
        assert_eq!(
            resumed.accuracy, whole.accuracy,
            "{name}: resumed run differs"
        );
    }
}

/// Replay and distillation strategies on Class-IL blobs.
fn class_il_blobs() -> Scenario {
    ScenarioConfig::from_json(
        r#"{"kind": "class-incremental", "dataset": "blobs", "tasks": 3, "classes-per-task": 2, "seed": 1}"#,
    )
    .expect("config")
    .build(None)
    .expect("scenario")
}

fn final_acc(o: &RunOutput) -> f64 {
    let last = o.accuracy.last().map_or(&[][..], |r| &r[..]);
    last.iter().sum::<f64>() / last.len().max(1) as f64
}

#[test]
fn each_strategy_completes_and_resumes_exactly() {
    let s = class_il_blobs();
    let run = |name: &str, params: serde_json::Value, dir: Option<&std::path::Path>, stop| {
        run(
            &s,
            mlp(),
            train(10, 16, OptimKind::Adam),
            name,
            params,
            dir,
            stop,
        )
    };
    let naive = run("naive", serde_json::Value::Null, None, None);
    let small = serde_json::json!({"buffer": 40});
    let mut results = Vec::new();
    for (name, p) in [
        ("er", small.clone()),
        (
            "er",
            serde_json::json!({"buffer": 40, "sampling": "class-balanced"}),
        ),
        ("der", small.clone()),
        ("der++", small.clone()),
        ("lwf", serde_json::Value::Null),
        ("kd-wa", serde_json::json!({"exemplars": 40})),
        ("ider", small.clone()),
        ("gem", small.clone()),
        ("a-gem", small.clone()),
        ("er-ace", small.clone()),
        ("icarl", serde_json::json!({"memory": 40})),
        ("gdumb", serde_json::json!({"memory": 40, "epochs": 3})),
        ("napa-vq", serde_json::Value::Null),
        ("pass", serde_json::Value::Null),
    ] {
        let whole = run(name, p.clone(), None, None);
        assert_eq!(whole.accuracy.len(), 3, "{name}");
        assert!(whole.accuracy.iter().flatten().all(|a| a.is_finite()));
        // The strategy changed training.
        assert_ne!(
            (&whole.task_il_accuracy, whole.ece),
            (&naive.task_il_accuracy, naive.ece),
            "{name}"
        );
        // Stopped after the first task and resumed: the same numbers.
        let dir = tempfile::tempdir().expect("tmp");
        let _ = run(name, p.clone(), Some(dir.path()), Some(1));
        let resumed = run(name, p.clone(), Some(dir.path()), None);
        assert_eq!(resumed.accuracy, whole.accuracy, "{name} {p}");
        assert_eq!(resumed.ece, whole.ece, "{name}");
        results.push((name, final_acc(&whole), whole.strategy_state_bytes));
    }
    eprintln!("naive {} {:?}", final_acc(&naive), naive.accuracy);
    eprintln!("{results:?}");
    let er = results[0].1;
    assert!(
        er > final_acc(&naive) + 10.0,
        "er {er} naive {}",
        final_acc(&naive)
    );
    // Replay strategies report their buffers.
    assert!(
        results.iter().filter(|r| r.0 != "lwf").all(|r| r.2 > 0),
        "{results:?}"
    );
}

/// The selective fine-tuning strategies on a residual MLP, Task-IL blobs, from the second
/// task on: each completes, trains fewer values than the network has, and resumes exactly.
#[test]
fn selective_strategies_complete_and_resume_exactly() {
    let s = ScenarioConfig::from_json(
        r#"{"kind": "task-incremental", "dataset": "blobs", "tasks": 3, "classes-per-task": 2, "seed": 1}"#,
    )
    .and_then(|c| c.build(None))
    .expect("blobs scenario");
    let resmlp = ModelConfig::Resmlp {
        width: 16,
        hidden: 32,
        blocks: 2,
    };
    let run = |name: &str, params: serde_json::Value, dir: Option<&std::path::Path>, stop| {
        let cfg = train(2, 32, OptimKind::Adamw);
        run(&s, resmlp.clone(), cfg, name, params, dir, stop)
    };
    for (name, p) in [
        (
            "lift",
            serde_json::json!({"from-task": 1, "rank": 2, "interval": 5}),
        ),
        ("kappatune", serde_json::json!({"from-task": 1, "n": 2})),
        ("lora", serde_json::json!({"from-task": 1, "r": 2})),
        (
            "lora",
            serde_json::json!({"from-task": 1, "r": 2, "orthogonal": true}),
        ),
        (
            "block-expansion",
            serde_json::json!({"from-task": 1, "expansions": 1}),
        ),
        (
            "block-expansion",
            serde_json::json!({"from-task": 1, "blocks": [0, 1], "gate": "dlerp", "divergence": "cosine"}),
        ),
    ] {
        let whole = run(name, p.clone(), None, None);
        assert_eq!(whole.accuracy.len(), 3, "{name}");
        let t = whole.trainable_values.expect("restricted");
        assert!(
            t > 0 && t < whole.params,
            "{name} {p}: {t} of {}",
            whole.params
        );
        let dir = tempfile::tempdir().expect("tmp");
        for stop in [1, 2] {
            let _ = run(name, p.clone(), Some(dir.path()), Some(stop));
        }
        let resumed = run(name, p.clone(), Some(dir.path()), None);
        assert_eq!(resumed.accuracy, whole.accuracy, "{name} {p}");
    }
}
