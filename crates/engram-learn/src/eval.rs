//! Evaluation of a network on a scenario's test examples: the rows of the accuracy matrix the
//! trainer records after each task, and the accuracy of one task outside a training run
//! (studies that evaluate merged or rebuilt weights).

use crate::metrics::{ClassMask, masked_accuracy};
use crate::model::params::{load_params, param_infos};
use crate::model::{ModelConfig, Net};
use crate::scenario::{EvalMode, Part, Scenario};
use crate::{Result, err};
use burn::prelude::*;
use std::collections::BTreeMap;

/// Task-IL accuracy (percent) of `net` on `part` of task `task`: argmax over the task's own
/// classes (its "head"), batches of `batch` examples.
pub fn task_accuracy(
    net: &Net,
    s: &Scenario,
    task: usize,
    part: Part,
    device: &Device,
    batch: usize,
) -> Result<f64> {
    let t = s
        .tasks
        .get(task)
        .ok_or_else(|| err!("no task {task} in scenario {}", s.name))?;
    let ids: Vec<(usize, usize)> = t.indices(part).iter().map(|&i| (task, i)).collect();
    if ids.is_empty() {
        return Err(err!("task {} has no {part:?} examples", t.name));
    }
    let c = s.num_outputs;
    let classes: Vec<usize> = t.classes.iter().map(|&k| k as usize).collect();
    let mask = ClassMask::only(c, &classes).map_err(|e| err!("{e}"))?;
    let (logits, labels, _) = logits_of(net, s, part, &ids, device, batch.max(1));
    masked_accuracy(&logits, c, &labels, &mask).map_err(|e| err!("{e}"))
}

/// Task-IL accuracy (percent) of the network `model` holding `values` (every parameter by
/// name), evaluated on the CPU device; for callers that keep weights as plain vectors.
pub fn values_accuracy(
    model: &ModelConfig,
    values: &BTreeMap<String, Vec<f32>>,
    s: &Scenario,
    task: usize,
    part: Part,
) -> Result<f64> {
    let device = Device::flex();
    let net = model.build(s.train.dim, s.train.image, s.num_outputs, &device)?;
    let net = load_params(net, values)?;
    task_accuracy(&net, s, task, part, &device, 1000)
}

/// The shape of every parameter of `model` built for the scenario's data, by name.
pub fn param_shapes(model: &ModelConfig, s: &Scenario) -> Result<BTreeMap<String, Vec<usize>>> {
    let device = Device::flex();
    let net = model.build(s.train.dim, s.train.image, s.num_outputs, &device)?;
    Ok(param_infos(&net)
        .into_iter()
        .map(|p| (p.name, p.shape))
        .collect())
}

/// Logits on host for test examples of task `t`, in batches.
pub fn test_logits(
    net: &Net,
    s: &Scenario,
    t: usize,
    device: &Device,
    batch: usize,
) -> (Vec<f32>, Vec<u32>, usize) {
    let ids: Vec<(usize, usize)> = s.tasks[t].test.iter().map(|&i| (t, i)).collect();
    logits_of(net, s, Part::Test, &ids, device, batch)
}

/// Logits on host for the examples `ids` ((task, index into `part`) pairs), in batches; with
/// the labels and the number of outputs.
pub fn logits_of(
    net: &Net,
    s: &Scenario,
    part: Part,
    ids: &[(usize, usize)],
    device: &Device,
    batch: usize,
) -> (Vec<f32>, Vec<u32>, usize) {
    let mut logits = Vec::with_capacity(ids.len() * s.num_outputs);
    let mut labels = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(batch) {
        let (x, y) = s.gather(part, chunk);
        let xt = Tensor::<2>::from_data(TensorData::new(x, [chunk.len(), s.train.dim]), device);
        let out = net.forward(xt);
        logits.extend(
            out.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .unwrap_or_default(),
        );
        labels.extend(y);
    }
    (logits, labels, s.num_outputs)
}

/// Accuracy (percent) of the argmax over the allowed classes (metrics.rs).
pub fn accuracy(logits: &[f32], labels: &[u32], c: usize, allowed: &[bool]) -> f64 {
    let classes: Vec<usize> = (0..c).filter(|&k| allowed[k]).collect();
    ClassMask::only(c, &classes)
        .and_then(|m| crate::metrics::masked_accuracy(logits, c, labels, &m))
        .unwrap_or(0.0)
}

/// `c` flags, set for the listed classes.
pub fn class_mask(c: usize, classes: impl Iterator<Item = u32>) -> Vec<bool> {
    let mut m = vec![false; c];
    for k in classes {
        if (k as usize) < c {
            m[k as usize] = true;
        }
    }
    m
}

/// Rows of the accuracy matrix after training through task `k` (`None`: before training).
pub fn evaluate(
    net: &Net,
    s: &Scenario,
    k: Option<usize>,
    device: &Device,
    batch: usize,
) -> (Vec<f64>, Vec<f64>) {
    let c = s.num_outputs;
    let seen = class_mask(
        c,
        s.tasks
            .iter()
            .take(k.map_or(0, |k| k + 1))
            .flat_map(|t| t.classes.iter().copied()),
    );
    let all = vec![true; c];
    let mut row = Vec::with_capacity(s.tasks.len());
    let mut til = Vec::with_capacity(s.tasks.len());
    for (i, t) in s.tasks.iter().enumerate() {
        let (lg, lb, _) = test_logits(net, s, i, device, batch);
        let own = class_mask(c, t.classes.iter().copied());
        til.push(accuracy(&lg, &lb, c, &own));
        row.push(match s.eval {
            EvalMode::TaskIl => accuracy(&lg, &lb, c, &own),
            EvalMode::DomainIl => accuracy(&lg, &lb, c, &all),
            // Before any training no class is seen: score over all outputs.
            EvalMode::ClassIl if k.is_none() => accuracy(&lg, &lb, c, &all),
            EvalMode::ClassIl => accuracy(&lg, &lb, c, &seen),
        });
    }
    (row, til)
}

/// [`evaluate`] on the CPU device in batches of 1000: the scenario-mode and Task-IL rows of
/// the accuracy matrix for `net` after task `k`.
pub fn accuracy_rows(net: &Net, s: &Scenario, k: Option<usize>) -> (Vec<f64>, Vec<f64>) {
    evaluate(net, s, k, &Device::flex(), 1000)
}
