//! Helpers for the strategies' unit tests: a small blobs scenario, a seeded device, an MLP,
//! a hook context, a real minibatch, host gradients and a relative comparison.

use crate::model::ModelConfig;
use crate::model::Net;
use crate::model::params::flat_params;
use crate::model::params::grad_flat;
use crate::scenario::{Scenario, ScenarioConfig};
use crate::strategy::{Batch, Ctx};
use burn::optim::GradientsParams;
use burn::prelude::*;

pub fn blobs(kind: &str, tasks: usize) -> Scenario {
    ScenarioConfig::from_json(&format!(
        r#"{{"kind": "{kind}", "dataset": "blobs", "tasks": {tasks}, "classes-per-task": 2, "seed": 1}}"#
    ))
    .and_then(|c| c.build(None))
    .expect("blobs scenario")
}

/// A seeded autodiff device and the RNG guard the test holds while it builds and draws.
pub fn device() -> (Device, crate::backend::RngGuard) {
    let d = Device::flex();
    let g = crate::backend::seeded(&d, 7);
    (d.autodiff(), g)
}

pub fn mlp(s: &Scenario, hidden: usize, dev: &Device) -> Net {
    ModelConfig::Mlp {
        hidden: vec![hidden],
    }
    .build(s.train.dim, s.train.image, s.num_outputs, dev)
    .expect("mlp")
}

pub fn ctx<'a>(s: &'a Scenario, task: usize, dev: &'a Device) -> Ctx<'a> {
    Ctx {
        scenario: s,
        task,
        device: dev,
        seed: 11,
        step: 0,
        optim: &crate::optim::OptimConfig::DEFAULT,
        lr: 1e-3,
        steps: 100,
    }
}

/// A real minibatch of task `task`.
pub fn batch(s: &Scenario, task: usize, n: usize, dev: &Device) -> Batch {
    batch_at(s, task, 0..n, dev)
}

/// The training examples `range` of `task` as a batch.
pub fn batch_at(s: &Scenario, task: usize, range: std::ops::Range<usize>, dev: &Device) -> Batch {
    let ids: Vec<(usize, usize)> = s.tasks[task].train[range]
        .iter()
        .map(|&i| (task, i))
        .collect();
    let n = ids.len();
    let (x, y) = s.gather(crate::scenario::Part::Train, &ids);
    Batch {
        x: Tensor::<2>::from_data(TensorData::new(x.clone(), [n, s.train.dim]), dev),
        y: Tensor::<1, Int>::from_data(
            TensorData::new(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), [n]),
            dev,
        ),
        ids,
        x_host: x,
        y_host: y,
    }
}

/// Gradients of `loss`, flat on host, in visiting order.
pub fn grads_host(net: &Net, loss: Tensor<1>) -> Vec<Vec<f32>> {
    let g = GradientsParams::from_grads(loss.backward(), net);
    flat_params(net)
        .iter()
        .map(|(i, _)| {
            grad_flat(&g, i)
                .map(|t| {
                    t.into_data()
                        .convert::<f32>()
                        .try_into_vec::<f32>()
                        .expect("grad")
                })
                .unwrap_or_else(|| vec![0.0; i.numel()])
        })
        .collect()
}

pub fn assert_close(a: &[f32], b: &[f32], rel: f32, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12);
    let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(
        err <= rel * scale,
        "{what}: max diff {err} vs scale {scale}"
    );
}

/// A class-incremental scenario of tiny 12×12 images, `tasks` tasks of two classes: class c
/// is a bright 3×3 block at its own place (not symmetric under rotation) on weak noise, 30
/// training and 10 test images per class.
pub fn tiny_images(tasks: usize) -> Scenario {
    use crate::data::{Dataset, Split};
    let classes = 2 * tasks;
    let side = 12;
    let make = |per: usize, seed: u64| {
        let mut rng = engram_weights::rng::Rng::new(seed);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        for c in 0..classes {
            for _ in 0..per {
                let (r0, c0) = (1 + (c * 5) % 8, 1 + (c * 3) % 8);
                for i in 0..side {
                    for j in 0..side {
                        let on = (r0..r0 + 3).contains(&i) && (c0..c0 + 3).contains(&j);
                        x.push(if on { 0.9 } else { 0.0 } + 0.1 * rng.uniform());
                    }
                }
                y.push(c as u32);
            }
        }
        Dataset {
            name: "tiny-images".into(),
            x,
            y,
            dim: side * side,
            image: Some((1, side, side)),
            num_classes: classes,
        }
    };
    let split = Split {
        train: make(30, 1),
        test: make(10, 2),
        files: Vec::new(),
        meta: Default::default(),
    };
    crate::scenario::class_incremental(
        split,
        &crate::scenario::SplitTasks {
            tasks,
            classes_per_task: 2,
            shuffle_classes: false,
            base_classes: None,
        },
        &crate::scenario::Common::default(),
    )
    .expect("tiny image scenario")
}
