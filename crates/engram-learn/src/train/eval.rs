//! Accuracy of a network on one task's examples, outside a training run (studies that
//! evaluate merged or rebuilt weights).

use super::trainer::gather;
use crate::metrics::{ClassMask, masked_accuracy};
use crate::model::params::{load_params, param_infos};
use crate::model::{ModelConfig, Net};
use crate::scenario::{Part, Scenario};
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
) -> Result<f64, String> {
    let t = s
        .tasks
        .get(task)
        .ok_or_else(|| format!("no task {task} in scenario {}", s.name))?;
    let ids: Vec<(usize, usize)> = t.indices(part).iter().map(|&i| (task, i)).collect();
    if ids.is_empty() {
        return Err(format!("task {} has no {part:?} examples", t.name));
    }
    let c = s.num_outputs;
    let classes: Vec<usize> = t.classes.iter().map(|&k| k as usize).collect();
    let mask = ClassMask::only(c, &classes).map_err(|e| e.to_string())?;
    let mut logits = Vec::with_capacity(ids.len() * c);
    let mut labels = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(batch.max(1)) {
        let (x, y) = gather(s, part, chunk);
        let xt = Tensor::<2>::from_data(TensorData::new(x, [chunk.len(), s.train.dim]), device);
        let out = net
            .forward(xt)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| format!("{e:?}"))?;
        logits.extend(out);
        labels.extend(y);
    }
    masked_accuracy(&logits, c, &labels, &mask).map_err(|e| e.to_string())
}

/// Task-IL accuracy (percent) of the network `model` holding `values` (every parameter by
/// name), evaluated on the CPU device; for callers that keep weights as plain vectors.
pub fn values_accuracy(
    model: &ModelConfig,
    values: &BTreeMap<String, Vec<f32>>,
    s: &Scenario,
    task: usize,
    part: Part,
) -> Result<f64, String> {
    let device = Device::flex();
    let net = model.build(s.train.dim, s.train.image, s.num_outputs, &device)?;
    let net = load_params(net, values)?;
    task_accuracy(&net, s, task, part, &device, 1000)
}

/// The shape of every parameter of `model` built for the scenario's data, by name.
pub fn param_shapes(
    model: &ModelConfig,
    s: &Scenario,
) -> Result<BTreeMap<String, Vec<usize>>, String> {
    let device = Device::flex();
    let net = model.build(s.train.dim, s.train.image, s.num_outputs, &device)?;
    Ok(param_infos(&net)
        .into_iter()
        .map(|p| (p.name, p.shape))
        .collect())
}
