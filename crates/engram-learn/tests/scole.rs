//! SCoLe's training knobs through the trainer (`shared/methods/theory.md`, SCoLe):
//! `train.masking = "group"` masks the loss only, never the predictions.

use burn::prelude::*;
use engram_learn::backend;
use engram_learn::model::{Head, ModelConfig};
use engram_learn::optim::{OptimConfig, OptimKind};
use engram_learn::scenario::{Part, Scenario, ScenarioConfig};
use engram_learn::strategy;
use engram_learn::train::{Event, Masking, RunOutput, TrainConfig, Trainer};

fn scenario() -> Scenario {
    ScenarioConfig::from_json(
        r#"{"kind": "scole", "dataset": "blobs", "tasks": 3, "classes-per-task": 2, "seed": 2,
            "blobs": {"image": false, "separation": 2}}"#,
    )
    .expect("config")
    .build(None)
    .expect("scenario")
}

const SEED: u64 = 9;

fn model() -> ModelConfig {
    ModelConfig::mlp(vec![16], Head::Linear)
}

/// One run; the losses of the steps of task 0.
fn run(s: &Scenario, masking: Masking, lr: f64, iterations: usize) -> (RunOutput, Vec<f32>) {
    let mut t = Trainer::new(
        s,
        model(),
        TrainConfig {
            iterations: Some(iterations),
            // The whole task in one batch: the mean over the batch does not depend on order.
            batch_size: 100_000,
            optimizer: OptimConfig::new(OptimKind::Sgd, lr),
            masking,
            ..Default::default()
        },
        SEED,
        strategy::build("naive", &serde_json::Value::Null).expect("naive"),
    );
    let mut losses = Vec::new();
    let out = t
        .run(&mut |e| {
            if let Event::Step { task: 0, loss, .. } = e {
                losses.push(loss);
            }
        })
        .expect("run");
    (out, losses)
}

/// The initial network's logits (host, row-major) for `x`: the trainer's own seeding.
fn initial_logits(s: &Scenario, x: Vec<f32>) -> Vec<f32> {
    let d = Device::flex().autodiff();
    let net = {
        let _g = backend::seeded(&Device::flex(), SEED);
        model()
            .build_with_feedback(s.train.dim, s.train.image, s.num_outputs, false, &d)
            .expect("net")
    };
    let n = x.len() / s.train.dim;
    let x = Tensor::<2>::from_data(TensorData::new(x, [n, s.train.dim]), &d);
    net.forward(x)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32")
}

/// Mean cross-entropy over the classes in `keep` only.
fn ce(logits: &[f32], y: &[u32], c: usize, keep: &[bool]) -> f64 {
    let mut total = 0.0;
    for (r, &label) in y.iter().enumerate() {
        let row = &logits[r * c..(r + 1) * c];
        let z: Vec<f64> = (0..c)
            .filter(|&k| keep[k])
            .map(|k| f64::from(row[k]))
            .collect();
        let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        total += lse - f64::from(row[label as usize]);
    }
    total / y.len() as f64
}

/// The group-masked loss is the cross-entropy over the batch's classes (hand computed from
/// the initial network); unmasked, over every class; the two differ.
#[test]
fn group_masked_loss_is_the_cross_entropy_over_the_batch_classes() {
    let s = scenario();
    let c = s.num_outputs;
    let ids: Vec<(usize, usize)> = s.tasks[0].train.iter().map(|&i| (0, i)).collect();
    let (x, y) = s.gather(Part::Train, &ids);
    let lg = initial_logits(&s, x);
    let mut batch = vec![false; c];
    for &k in &y {
        batch[k as usize] = true;
    }
    assert_eq!(
        batch.iter().filter(|&&b| b).count(),
        2,
        "a task of 2 classes"
    );
    let want_group = ce(&lg, &y, c, &batch);
    let want_all = ce(&lg, &y, c, &vec![true; c]);
    let (_, got_group) = run(&s, Masking::Group, 0.01, 1);
    let (_, got_all) = run(&s, Masking::None, 0.01, 1);
    assert!(
        (f64::from(got_group[0]) - want_group).abs() < 1e-4,
        "{got_group:?} vs {want_group}"
    );
    assert!(
        (f64::from(got_all[0]) - want_all).abs() < 1e-4,
        "{got_all:?} vs {want_all}"
    );
    assert!(want_all - want_group > 0.1, "masking must change the loss");
}

/// Predictions keep every logit: with a learning rate too small to move a weight, the masked
/// run's all-class accuracy is the initial network's argmax over all classes, the same as
/// the unmasked run's, and not the accuracy of an argmax restricted to the classes drawn.
#[test]
fn group_masking_leaves_evaluation_on_all_logits() {
    let s = scenario();
    let c = s.num_outputs;
    let (masked, _) = run(&s, Masking::Group, 1e-30, 1);
    let (plain, _) = run(&s, Masking::None, 1e-30, 1);
    assert_eq!(masked.all_class_curve, plain.all_class_curve);
    let (x, y) = s.all_classes_test();
    assert_eq!(y.len(), s.test.len(), "every class is evaluated");
    let lg = initial_logits(&s, x);
    let acc = |keep: &[bool]| {
        let right = y
            .iter()
            .enumerate()
            .filter(|&(r, &label)| {
                let row = &lg[r * c..(r + 1) * c];
                let best = (0..c)
                    .filter(|&k| keep[k])
                    .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                    .unwrap_or(0);
                best == label as usize
            })
            .count();
        100.0 * right as f64 / y.len() as f64
    };
    let all = acc(&vec![true; c]);
    for t in 0..3 {
        assert!((masked.all_class_curve[t] - all).abs() < 1e-9, "task {t}");
    }
    let mut drawn = vec![false; c];
    for &k in &s.tasks[0].classes {
        drawn[k as usize] = true;
    }
    assert!(
        (acc(&drawn) - all).abs() > 1e-6,
        "the check must tell the two apart"
    );
}

/// Training with group masking, a weight-normalised head and clipping runs and learns.
#[test]
fn scole_knobs_train() {
    let s = scenario();
    let mut t = Trainer::new(
        &s,
        ModelConfig::mlp(vec![16], Head::WeightNorm),
        TrainConfig {
            epochs: 3,
            batch_size: 32,
            optimizer: OptimConfig {
                clip_grad_norm: Some(10.0),
                ..OptimConfig::new(OptimKind::Sgd, 0.1)
            },
            masking: Masking::Group,
            ..Default::default()
        },
        1,
        strategy::build("naive", &serde_json::Value::Null).expect("naive"),
    );
    let out = t.run(&mut |_| {}).expect("run");
    assert_eq!(out.all_class_curve.len(), 3);
    // The last task is learned, and the network knows more classes at the end than after
    // the first task (classes recur and accumulate).
    assert!(out.current_task_curve[2] > 80.0, "{out:?}");
    assert!(
        out.all_class_curve[2] > out.all_class_curve[0] + 10.0,
        "{out:?}"
    );
}
