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
