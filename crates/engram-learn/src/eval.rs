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
    let net = values_net(
        model,
        values,
        s.train.dim,
        s.train.image,
        s.num_outputs,
        &device,
    )?;
    task_accuracy(&net, s, task, part, &device, 1000)
}

/// The network of `model` for inputs of width `dim` (`image`: their shape) with `outputs`
/// outputs, holding `values` (every parameter by name).
pub fn values_net(
    model: &ModelConfig,
    values: &BTreeMap<String, Vec<f32>>,
    dim: usize,
    image: Option<(usize, usize, usize)>,
    outputs: usize,
    device: &Device,
) -> Result<Net> {
    load_params(model.build(dim, image, outputs, device)?, values)
}

/// Penultimate features (what the head reads) of every example of `ds` for the network
/// `model` holding `values` (built with `ds.num_classes` outputs), on host: n × feature
/// width, and the width. Batches of 1000. Studies that measure the geometry of a network's
/// features (whitening in `engram bench binary`) read them here.
pub fn values_features(
    model: &ModelConfig,
    values: &BTreeMap<String, Vec<f32>>,
    ds: &crate::data::Dataset,
) -> Result<(Vec<f32>, usize)> {
    let device = Device::flex();
    let net = values_net(model, values, ds.dim, ds.image, ds.num_classes, &device)?;
    let (mut out, mut width) = (Vec::new(), 0);
    for rows in ds.x.chunks(1000 * ds.dim.max(1)) {
        let n = rows.len() / ds.dim.max(1);
        let x = Tensor::<2>::from_data(TensorData::new(rows.to_vec(), [n, ds.dim]), &device);
        let f = net.features(x);
        width = f.dims()[1];
        out.extend(crate::backend::host(f));
    }
    if out.is_empty() {
        return Err(err!("{}: no examples to read features of", ds.name));
    }
    Ok((out, width))
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
    scores_of(net, s, part, ids, device, batch, &Net::forward)
}

/// How a network's class scores are computed at evaluation: its logits ([`Net::forward`]) or
/// a strategy's classifier on its features ([`crate::strategy::Strategy::scores`]).
pub type Scores<'a> = &'a dyn Fn(&Net, Tensor<2>) -> Tensor<2>;

/// [`logits_of`] with the class scores of `scores`.
pub fn scores_of(
    net: &Net,
    s: &Scenario,
    part: Part,
    ids: &[(usize, usize)],
    device: &Device,
    batch: usize,
    scores: Scores,
) -> (Vec<f32>, Vec<u32>, usize) {
    let mut logits = Vec::with_capacity(ids.len() * s.num_outputs);
    let mut labels = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(batch) {
        let (x, y) = s.gather(part, chunk);
        let xt = Tensor::<2>::from_data(TensorData::new(x, [chunk.len(), s.train.dim]), device);
        let out = scores(net, xt);
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
    evaluate_with(net, s, k, device, batch, &Net::forward)
}

/// [`evaluate`] with the class scores of `scores`.
pub fn evaluate_with(
    net: &Net,
    s: &Scenario,
    k: Option<usize>,
    device: &Device,
    batch: usize,
    scores: Scores,
) -> (Vec<f64>, Vec<f64>) {
    let (row, task_il, _) = rows(net, s, k, device, batch, scores);
    (row, task_il)
}

/// The accuracy rows after task `k`, with each task's logits and labels.
#[allow(clippy::type_complexity)]
fn rows(
    net: &Net,
    s: &Scenario,
    k: Option<usize>,
    device: &Device,
    batch: usize,
    scores: Scores,
) -> (Vec<f64>, Vec<f64>, Vec<(Vec<f32>, Vec<u32>)>) {
    let c = s.num_outputs;
    let (mut row, mut til, mut outs) = (Vec::new(), Vec::new(), Vec::new());
    for (i, t) in s.tasks.iter().enumerate() {
        let ids: Vec<(usize, usize)> = t.test.iter().map(|&j| (i, j)).collect();
        let (lg, lb, _) = scores_of(net, s, Part::Test, &ids, device, batch, scores);
        let own = class_mask(c, t.classes.iter().copied());
        til.push(accuracy(&lg, &lb, c, &own));
        row.push(accuracy(&lg, &lb, c, &column_mask(s, k, i)));
        outs.push((lg, lb));
    }
    (row, til, outs)
}

/// What one evaluation after a task measures (see [`evaluate_all`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Evaluation {
    /// a[k][i] in the scenario's mode, percent.
    pub row: Vec<f64>,
    /// The same in Task-IL.
    pub task_il: Vec<f64>,
    /// ECE (15 bins, percent) on each task's test set in the Class-IL mode: the argmax and
    /// its confidence over the classes of tasks 0..=max(k, i), as `row` in Class-IL (every
    /// output in Domain-IL).
    pub ece_row: Vec<f64>,
    /// ECE over the union of the test sets of the tasks seen so far, Class-IL over the
    /// classes seen (Domain-IL: every output).
    pub ece_seen: f64,
}

/// The classes task `i`'s column is scored over after task `k` in the scenario's mode
/// (metrics card, "Evaluation modes" and "FWT in Class-IL"):
/// - Task-IL: task `i`'s own classes;
/// - Domain-IL: every output;
/// - Class-IL: the classes of tasks 0..=max(k, i). For a seen task (i ≤ k) these are the
///   classes seen so far; for a task not yet trained (i > k, the upper triangle FWT reads, and
///   the baseline before training, k = None) the classes seen so far **plus** those of tasks up
///   to i, as aimagelab/mammoth scores a[i−1][i]: masking to the classes seen before task i
///   would make a[i−1][i] ≡ 0 for disjoint class splits, and FWT the same for every strategy.
pub fn column_mask(s: &Scenario, k: Option<usize>, i: usize) -> Vec<bool> {
    let c = s.num_outputs;
    match s.eval {
        EvalMode::TaskIl => class_mask(c, s.tasks[i].classes.iter().copied()),
        EvalMode::DomainIl => vec![true; c],
        EvalMode::ClassIl => {
            let upto = k.map_or(i, |k| k.max(i));
            class_mask(
                c,
                s.tasks[..=upto]
                    .iter()
                    .flat_map(|t| t.classes.iter().copied()),
            )
        }
    }
}

/// ECE (percent) of the argmax over the allowed classes.
fn masked_ece(logits: &[f32], labels: &[u32], c: usize, allowed: &[bool]) -> Result<f64> {
    let classes: Vec<usize> = (0..c).filter(|&k| allowed[k]).collect();
    ClassMask::only(c, &classes)
        .and_then(|m| crate::metrics::ece_from_logits(logits, c, labels, &m))
        .map_err(|e| err!("calibration: {e}"))
}

/// The classes ECE is scored over for task `i`'s column after task `k`, in the Class-IL mode
/// (tasks 0..=max(k, i)) in class- and task-incremental scenarios; every output in Domain-IL.
fn calibration_mask(s: &Scenario, k: usize, i: usize) -> Vec<bool> {
    let c = s.num_outputs;
    match s.eval {
        EvalMode::DomainIl => vec![true; c],
        EvalMode::ClassIl | EvalMode::TaskIl => class_mask(
            c,
            s.tasks[..=k.max(i)]
                .iter()
                .flat_map(|t| t.classes.iter().copied()),
        ),
    }
}

/// The accuracy row (scenario mode and Task-IL) after training through task `k`, with
/// calibration in the Class-IL mode (metrics card: "Report it per task and over all seen
/// classes, in the Class-IL mode"): ECE per task, and over the tasks seen so far. One forward
/// pass per test example. An ECE that cannot be computed (e.g. a task without test examples,
/// a non-finite logit) is an error naming the task.
pub fn evaluate_all(
    net: &Net,
    s: &Scenario,
    k: usize,
    device: &Device,
    batch: usize,
) -> Result<Evaluation> {
    evaluate_all_with(net, s, k, device, batch, &Net::forward)
}

/// [`evaluate_all`] with the class scores of `scores`.
pub fn evaluate_all_with(
    net: &Net,
    s: &Scenario,
    k: usize,
    device: &Device,
    batch: usize,
    scores: Scores,
) -> Result<Evaluation> {
    let c = s.num_outputs;
    let (row, task_il, outs) = rows(net, s, Some(k), device, batch, scores);
    let mut e = Evaluation {
        row,
        task_il,
        ..Default::default()
    };
    let (mut seen_logits, mut seen_labels) = (Vec::new(), Vec::new());
    for (i, (lg, lb)) in outs.into_iter().enumerate() {
        let ece = masked_ece(&lg, &lb, c, &calibration_mask(s, k, i))
            .map_err(|e| err!("task {}: {e}", s.tasks[i].name))?;
        e.ece_row.push(ece);
        if i <= k {
            seen_logits.extend(lg);
            seen_labels.extend(lb);
        }
    }
    e.ece_seen = masked_ece(&seen_logits, &seen_labels, c, &calibration_mask(s, k, k))?;
    Ok(e)
}

/// [`evaluate`] on `net`'s device in batches of 1000: the scenario-mode and Task-IL rows of
/// the accuracy matrix for `net` after task `k`.
pub fn accuracy_rows(net: &Net, s: &Scenario, k: Option<usize>) -> (Vec<f64>, Vec<f64>) {
    evaluate(net, s, k, &crate::backend::device_of(net), 1000)
}
