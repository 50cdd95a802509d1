//! Training strategies: values with hooks that the trainer calls (DESIGN.md, "The strategy
//! contract"). A strategy overrides only the hooks it needs; the trainer owns the loop, the
//! data and the evaluation. Adding a strategy is one file and one line in [`REGISTRY`].

pub mod agem;
pub mod block_expansion;
pub mod classp;
pub mod der;
pub mod er;
pub mod er_ace;
pub mod ewc;
pub mod gdumb;
pub mod gem;
pub mod icarl;
pub mod ider;
pub mod joint;
pub mod kappatune;
pub mod kd_wa;
pub mod l2;
pub mod lift;
pub mod lora;
pub mod lwf;
pub mod naive;
pub mod napa_vq;
pub mod online_ewc;
pub mod parts;
pub mod pass;
pub mod probe;
pub mod rift;
pub mod si;

use crate::model::Net;
use crate::optim::OptimConfig;
use crate::scenario::Scenario;
use crate::{Result, err};
use burn::optim::GradientsParams;
use burn::prelude::*;
use std::collections::BTreeMap;

/// What every hook sees.
pub struct Ctx<'a> {
    pub scenario: &'a Scenario,
    /// The task being trained (0-based).
    pub task: usize,
    /// Training device (autodiff).
    pub device: &'a Device,
    pub seed: u64,
    /// Optimizer steps taken in this task so far.
    pub step: usize,
    /// Optimizer steps this task trains for (0 before the count is known: in `before_task`
    /// and `train_examples`).
    pub steps: usize,
    /// The run's optimizer settings, for strategies that update some parameters themselves
    /// (with [`crate::optim::AdamStep`], so that the settings mean the same update).
    pub optim: &'a OptimConfig,
    /// This step's learning rate (the schedule applied).
    pub lr: f64,
}

/// One training minibatch.
pub struct Batch {
    /// Inputs [len, dim] on the training device.
    pub x: Tensor<2>,
    /// Labels [len].
    pub y: Tensor<1, Int>,
    /// (task, train index) of every example, for strategies that store examples.
    pub ids: Vec<(usize, usize)>,
    /// Host copies of the inputs and labels.
    pub x_host: Vec<f32>,
    pub y_host: Vec<u32>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.y_host.len()
    }
    pub fn is_empty(&self) -> bool {
        self.y_host.is_empty()
    }
}

/// Strategy state saved with each checkpoint, so that a resumed run continues exactly.
#[derive(Clone, Debug, Default)]
pub struct State {
    /// Named f32 tensors with their shapes.
    pub tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// Scalars and small structures.
    pub json: serde_json::Value,
}

/// What [`Strategy::check`] sees: the run's scenario, its freshly built network and its
/// optimizer settings.
pub struct Setup<'a> {
    pub scenario: &'a Scenario,
    pub net: &'a Net,
    pub optim: &'a OptimConfig,
    /// `train.reset-optimizer`.
    pub reset_optimizer: bool,
}

pub trait Strategy: Send {
    /// Registry name.
    fn name(&self) -> &'static str;

    /// Parameters with their defaults filled in: every key the run file accepts, no other
    /// (what `engram strategies` lists and what a checkpoint records and compares).
    fn params(&self) -> serde_json::Value {
        serde_json::json!({})
    }

    /// Checks the parameters against the run (task count, the network's weights, the
    /// optimizer) before anything trains; the trainer calls it once, at the start.
    fn check(&self, _setup: &Setup) -> Result<()> {
        Ok(())
    }

    /// Whether [`Strategy::masks`] has something to export (asked before the run starts).
    fn has_masks(&self) -> bool {
        false
    }

    /// Before training a task: set up anchors, heads, buffers.
    fn before_task(&mut self, _cx: &Ctx, net: Net) -> Result<Net> {
        Ok(net)
    }

    /// The (task, train index) examples to train on in this task; default: the task's own.
    fn train_examples(&mut self, cx: &Ctx) -> Vec<(usize, usize)> {
        task_examples(cx)
    }

    /// The loss of a batch: `loss` is the trainer's cross-entropy on `logits`; add
    /// penalties, distillation or replay terms.
    fn loss(
        &mut self,
        _cx: &Ctx,
        _net: &Net,
        _batch: &Batch,
        _logits: Tensor<2>,
        loss: Tensor<1>,
    ) -> Tensor<1> {
        loss
    }

    /// After the backward pass, before the network's gradients are collected: take out the
    /// gradients of parameters the strategy holds itself (NAPA-VQ's code vectors, PASS's
    /// rotation head) and update those parameters with their own optimizer.
    fn take_grads(&mut self, _cx: &Ctx, _grads: &mut burn::tensor::Gradients) {}

    /// After the backward pass, before the optimizer: mask, scale or threshold gradients.
    fn after_backward(&mut self, _cx: &Ctx, _net: &Net, _grads: &mut GradientsParams) {}

    /// Factor on the run's learning rate (its schedule applied) in task `task`, for methods
    /// whose paper lowers the rate after the first task (NAPA-VQ, PASS: ×0.1).
    fn lr_factor(&self, _task: usize) -> f64 {
        1.0
    }

    /// Whether the trainer takes gradient steps on each task's stream (`false`: GDumb, which
    /// only fills its memory and trains from scratch in [`Strategy::after_task`]).
    fn trains_on_stream(&self) -> bool {
        true
    }

    /// Class scores `[batch, outputs]` at evaluation (argmax is the prediction): the
    /// network's logits, or another classifier on its features (iCaRL's nearest mean of
    /// exemplars, NAPA-VQ's nearest code vector). A strategy whose scores are not logits says
    /// so in its module comment (calibration is computed from their softmax all the same).
    fn scores(&self, net: &Net, x: Tensor<2>) -> Tensor<2> {
        net.forward(x)
    }

    /// After the optimizer step: accumulate importance, restore weights, update a teacher.
    fn after_step(&mut self, _cx: &Ctx, net: Net) -> Net {
        net
    }

    /// After a task: Fisher, weight aligning, freezing, prototypes.
    fn after_task(&mut self, _cx: &Ctx, net: Net) -> Result<Net> {
        Ok(net)
    }

    /// Whether the model needs a feedback input of width `num_outputs` (IDER's f(x, y)); the
    /// trainer builds the network with it.
    fn feedback_input(&self) -> bool {
        false
    }

    /// Bytes of extra state (buffers, Fisher, masks, a strategy's own optimizer state).
    fn state_bytes(&self) -> u64 {
        0
    }

    /// Values training may change when the strategy restricts them (selective fine-tuning);
    /// `None`: every parameter.
    fn trainable(&self, _net: &Net) -> Option<usize> {
        None
    }

    /// Bytes of optimizer state the strategy keeps for the parameters it updates itself
    /// (LIFT's sparse moments, LoRA's factor moments); part of [`Strategy::state_bytes`].
    fn optimizer_bytes(&self) -> u64 {
        0
    }

    /// Named tensors a user of another trainer can apply (masks of trainable entries,
    /// importance): written by `engram train --export-masks FILE` after the run. A tensor
    /// shaped like a parameter carries that parameter's name, so that another trainer looks
    /// it up by its own parameter names (PEFT-style named tensors).
    fn masks(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        Vec::new()
    }

    /// What [`Strategy::masks`] holds: `mask` (1 = trainable), `fisher` (diagonal Fisher
    /// information), `importance` or `kappa`; recorded as the file's `engram.kind`.
    fn masks_kind(&self) -> &'static str {
        "mask"
    }

    fn state(&self) -> State {
        State::default()
    }

    fn load_state(&mut self, _state: State) -> Result<()> {
        Ok(())
    }

    /// On resume, after [`Strategy::load_state`]: give a freshly built network the shape the
    /// strategy had given it (extra parameters), so that the checkpoint's values load.
    fn reshape(&mut self, net: Net, _device: &Device) -> Result<Net> {
        Ok(net)
    }
}

type Build = fn(&serde_json::Value) -> Result<Box<dyn Strategy>>;

/// Strategies that protect earlier tasks through the weights alone (penalties, an
/// optimizer, distillation on the new data) and keep no examples: Task-IL methods.
pub const TASK_IL_METHODS: &[&str] = &["ewc", "online-ewc", "si", "l2", "classp", "lwf"];

/// A note for a run of `strategy` whose result a user may take for a bug: a Task-IL method in
/// class-incremental learning over a sequence of disjoint tasks (not a stream scored on all
/// classes), where near 1/T final accuracy is the expected result.
pub fn scenario_note(strategy: &str, s: &crate::scenario::Scenario) -> Option<String> {
    use crate::scenario::{EvalMode, EvalPlan};
    let tasks = s.tasks.len();
    if s.eval != EvalMode::ClassIl
        || s.plan != EvalPlan::EveryTask
        || !TASK_IL_METHODS.contains(&strategy)
        || tasks < 2
    {
        return None;
    }
    let how = if strategy == "lwf" {
        "distils the previous model's outputs on the new task's data"
    } else {
        "protects earlier tasks through the weights"
    };
    Some(format!(
        "{strategy} {how} and keeps no examples: in class-incremental learning (no task id at \
         test time) it predicts mostly the last task's classes, so a final accuracy near \
         1/T = {:.1}% is the expected result, not a bug. Compare it in task-incremental \
         learning, or use a replay method (er, der++, ider).",
        100.0 / tasks as f64
    ))
}

/// (name, one-line summary, constructor from parameters).
pub const REGISTRY: &[(&str, &str, Build)] = &[
    (
        "naive",
        "fine-tune on each task in turn (lower bound)",
        naive::build,
    ),
    (
        "joint",
        "train on the union of all tasks so far (upper bound)",
        joint::build,
    ),
    (
        "probe",
        "test-only: records the order of hook calls",
        probe::build,
    ),
    (
        "ewc",
        "EWC: (λ/2)·Σ_k F_k·(θ−θ*_k)², diagonal Fisher per task",
        ewc::build,
    ),
    (
        "online-ewc",
        "online EWC: one running Fisher F̃ ← γF̃ + F, one anchor",
        online_ewc::build,
    ),
    (
        "si",
        "Synaptic Intelligence: path-integral importance Ω",
        si::build,
    ),
    (
        "l2",
        "L2 anchor to the previous task's weights, (λ/2)·‖θ−θ*‖²",
        l2::build,
    ),
    (
        "classp",
        "CLASSP: adjustment suppression + per-weight gradient threshold g² > t, per-task schedule",
        classp::build,
    ),
    (
        "lwf",
        "LwF: distil the previous model's old-class outputs on current data (KD_T)",
        lwf::build,
    ),
    (
        "er",
        "experience replay: CE on a reservoir or class-balanced buffer batch",
        er::build,
    ),
    (
        "der",
        "DER: replay buffer logits, α·MSE to those stored at insertion",
        der::build,
    ),
    (
        "der++",
        "DER++: DER plus β·CE on the labels of a second buffer batch",
        der::build_plus,
    ),
    (
        "gem",
        "GEM: project the gradient so no earlier task's memory loss rises (dual QP)",
        gem::build,
    ),
    (
        "a-gem",
        "A-GEM: project the gradient off a memory batch's gradient when they conflict",
        agem::build,
    ),
    (
        "er-ace",
        "ER-ACE: incoming CE over the batch's classes only + replay CE over all",
        er_ace::build,
    ),
    (
        "kd-wa",
        "KD on old classes + Weight Aligning of new head rows, exemplars",
        kd_wa::build,
    ),
    (
        "icarl",
        "iCaRL: herding exemplars, sigmoid BCE + distillation, nearest-mean-of-exemplars",
        icarl::build,
    ),
    (
        "gdumb",
        "GDumb: greedy class-balanced memory, retrain from scratch on it after each task",
        gdumb::build,
    ),
    (
        "ider",
        "IDER: idempotent two-pass replay f(x, f(x)) + idempotence distillation",
        ider::build,
    ),
    (
        "napa-vq",
        "NAPA-VQ: exemplar-free; code vectors in a neighbour graph, prototype mixing, feature KD",
        napa_vq::build,
    ),
    (
        "pass",
        "PASS-style: exemplar-free; rotation classes, prototypes + Gaussian noise, feature KD",
        pass::build,
    ),
    (
        "lift",
        "LIFT: sparse AdamW on the principal entries of each weight (low-rank informed)",
        lift::build,
    ),
    (
        "kappatune",
        "KappaTune: train only the N weights of lowest condition number κ",
        kappatune::build,
    ),
    (
        "rift",
        "RiFT's fine-tuning step: train only the named modules, the rest frozen (start from adversarially trained weights: [start] checkpoint)",
        rift::build,
    ),
    (
        "lora",
        "LoRA: W = W₀ + (α/r)·A·B on frozen weights; O-LoRA's orthogonal subspaces per task",
        lora::build,
    ),
    (
        "block-expansion",
        "Control LLM: trainable parallel copies of residual blocks, blended, divergence loss",
        block_expansion::build,
    ),
];

pub fn build(name: &str, params: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    REGISTRY
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, b)| b(params))
        .unwrap_or_else(|| {
            Err(err!(
                "unknown strategy '{name}'; available: {}",
                REGISTRY.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
            ))
        })
}

/// Parses a strategy's parameters, refusing unknown keys (each strategy's params struct
/// uses `#[serde(deny_unknown_fields)]`).
pub fn parse_params<T: serde::de::DeserializeOwned>(
    name: &str,
    v: &serde_json::Value,
) -> Result<T> {
    parse_keys("strategy", name, v)
}

/// Refuses a `null` among a section's free-form keys (a scenario kind's, a strategy's, an
/// adapter's): TOML has no null, so it was a NaN or an infinity, which JSON cannot hold and which would
/// otherwise read as a key not set.
pub fn finite(section: &str, keys: &serde_json::Map<String, serde_json::Value>) -> Result<()> {
    use serde_json::Value;
    fn null(path: String, v: &Value) -> Option<String> {
        match v {
            Value::Null => Some(path),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .find_map(|(i, v)| null(format!("{path}.{i}"), v)),
            Value::Object(o) => o.iter().find_map(|(k, v)| null(format!("{path}.{k}"), v)),
            _ => None,
        }
    }
    let key = keys
        .iter()
        .find_map(|(k, v)| null(format!("{section}.{k}"), v));
    key.map_or(Ok(()), |key| {
        Err(err!(
            "{key} is not a finite number (nan and inf are refused)"
        ))
    })
}

/// [`parse_params`] for any method kind (`what`: "strategy", "adapter"): the message names
/// the kind, the method and the failing key.
pub fn parse_keys<T: serde::de::DeserializeOwned>(
    what: &str,
    name: &str,
    v: &serde_json::Value,
) -> Result<T> {
    let v = if v.is_null() {
        serde_json::json!({})
    } else {
        v.clone()
    };
    serde_json::from_value(v.clone()).map_err(|e| {
        // serde's message does not say which key: where every key has a default, the first
        // key that fails on its own is the one to name.
        let defaults = serde_json::from_value::<T>(serde_json::json!({})).is_ok();
        let key = v.as_object().filter(|_| defaults).and_then(|m| {
            m.iter()
                .find(|(k, x)| {
                    let one = serde_json::json!({ k.as_str(): x });
                    serde_json::from_value::<T>(one).is_err()
                })
                .map(|(k, _)| k.clone())
        });
        match key {
            Some(k) => err!("{what} {name}: {k}: {e}"),
            None => err!("{what} {name}: {e}"),
        }
    })
}

/// Refuses `key` when it is set (`set`) but has no effect (`why`: when it has none).
pub(crate) fn no_effect(name: &str, key: &str, set: bool, why: &str) -> Result<()> {
    match set {
        true => Err(err!(
            "strategy {name}: {key} has no effect {why}; remove it"
        )),
        false => Ok(()),
    }
}

/// Refuses `key = v` outside `lo..=hi` (`what`: where the bounds come from).
pub(crate) fn in_range(
    name: &str,
    key: &str,
    v: usize,
    lo: usize,
    hi: usize,
    what: &str,
) -> Result<()> {
    let range = match hi {
        usize::MAX => format!("must be at least {lo}"),
        _ if hi < lo => "fits nothing".into(),
        _ => format!("must be in [{lo}, {hi}]"),
    };
    match (lo..=hi).contains(&v) {
        true => Ok(()),
        false if what.is_empty() => Err(err!("strategy {name}: {key} = {v} {range}")),
        false => Err(err!("strategy {name}: {key} = {v} {range} ({what})")),
    }
}

/// The current task's own training examples, as (task, train index).
pub fn task_examples(cx: &Ctx) -> Vec<(usize, usize)> {
    cx.scenario.tasks[cx.task]
        .train
        .iter()
        .map(|&i| (cx.task, i))
        .collect()
}

/// A memory of `value` examples (`key`) that must hold one `what` for each class of the run.
pub(crate) fn check_per_class(
    name: &str,
    key: &str,
    value: usize,
    s: &Setup,
    what: &str,
) -> Result<()> {
    let classes: std::collections::BTreeSet<_> =
        s.scenario.tasks.iter().flat_map(|t| &t.classes).collect();
    let c = classes.len();
    in_range(
        name,
        key,
        value,
        c,
        usize::MAX,
        &format!("one {what}for each of {c} classes"),
    )
}

/// `from-task` of the strategies that begin later: a task of the scenario.
pub(crate) fn check_from_task(name: &str, from: usize, s: &Setup) -> Result<()> {
    let t = s.scenario.tasks.len();
    in_range(
        name,
        "from-task",
        from,
        0,
        t.saturating_sub(1),
        &format!("{t} tasks, counted from 0"),
    )
}

/// Helper for strategies keeping named host tensors between tasks.
pub fn tensors_to_map(t: &[(String, Vec<usize>, Vec<f32>)]) -> BTreeMap<String, Vec<f32>> {
    t.iter().map(|(n, _, v)| (n.clone(), v.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15, item 11: the note for Task-IL methods appears in Class-IL over disjoint tasks
    /// only (not in Task-IL, Domain-IL or a SCoLe stream scored on all classes), and not for
    /// replay methods.
    #[test]
    fn task_il_methods_in_class_il_get_a_note() {
        let build = |kind: &str| {
            crate::scenario::ScenarioConfig::new(kind, "blobs")
                .with("tasks", 5)
                .build(None)
                .expect(kind)
        };
        let cil = build("class-incremental");
        let note = scenario_note("ewc", &cil).expect("a note");
        assert!(note.contains("1/T = 20.0%"), "{note}");
        assert!(scenario_note("lwf", &cil).expect("lwf").contains("distils"));
        assert_eq!(scenario_note("er", &cil), None);
        assert_eq!(scenario_note("ewc", &build("task-incremental")), None);
        assert_eq!(scenario_note("ewc", &build("permuted")), None);
        assert_eq!(scenario_note("si", &build("scole")), None);
    }

    /// One source of truth for a strategy's keys: the parameters it lists (`engram
    /// strategies`, a checkpoint's settings) are exactly the keys it accepts, and building it
    /// from them gives the same parameters; a key it does not list is refused.
    #[test]
    fn listed_parameters_are_the_accepted_keys() {
        for (name, _, build) in REGISTRY {
            let listed = build(&serde_json::Value::Null).expect(name).params();
            let keys = listed.as_object().expect("a table");
            let again = build(&listed).map_err(|e| format!("{name}: {e}"));
            assert_eq!(again.expect("listed keys build").params(), listed, "{name}");
            for key in keys.keys() {
                assert!(!key.contains('_'), "{name}: {key} is not kebab-case");
            }
            let mut unknown = keys.clone();
            unknown.insert("penalty-convention".into(), "half".into());
            assert!(
                build(&serde_json::Value::Object(unknown)).is_err(),
                "{name}"
            );
        }
    }
}
