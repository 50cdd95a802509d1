//! One training stage outside a continual-learning run (a study's pre-training, a linear
//! probe, a fine-tune, a phase of a curriculum): the trainer with a strategy that starts from
//! given weights, freezes the tensors whose names match given patterns, optionally pulls the
//! others toward an anchor, and hands back the trained weights.
//!
//! A frozen tensor keeps its value bit for bit: its gradient is dropped after every backward
//! pass, so the optimizer (and its weight decay) never visits it (`fused.rs`), and a frozen
//! tensor that takes no gradient at all (BatchNorm's running statistics, which a forward pass
//! in training updates) is set back to its starting value at the end of each task, before
//! the trainer evaluates.

use super::trainer::seeded_net;
use super::{Event, RunOutput, Start, TrainConfig, Trainer};
use crate::model::params::{drop_grad, name_matches, param_infos, set_params, untracked_names};
use crate::model::{ModelConfig, Net};
use crate::scenario::Scenario;
use crate::strategy::parts::penalty::{Quadratic, Term};
use crate::strategy::{Batch, Ctx as StrategyCtx, Strategy};
use crate::{Result, err};
use burn::optim::GradientsParams;
use burn::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

pub type Values = BTreeMap<String, Vec<f32>>;

/// A quadratic anchor added to a stage's loss: (λ/2)·Σ_i w_i·(θ_i − a_i)² over the anchored
/// tensors (the half convention of the l2 and ewc strategies, whose penalty code it shares:
/// `strategy/parts/penalty.rs`), so that its gradient is λ·w·(θ − a).
#[derive(Clone, Debug, Default)]
pub struct Anchor {
    /// λ ≥ 0.
    pub lambda: f64,
    /// The anchor a, by name (usually the weights the stage starts from).
    pub values: Values,
    /// Per-value weights w by name (EWC's diagonal Fisher); `None`: w ≡ 1 (an L2 anchor).
    pub weights: Option<Values>,
    /// Name patterns of the anchored tensors ([`name_matches`]; empty: every tensor). Frozen
    /// tensors and tensors without a gradient are never anchored (they cannot move,
    /// [`anchorable`]); with λ > 0, patterns that leave no tensor to anchor are an error.
    pub params: Vec<String>,
}

/// How a stage starts, what it holds fixed and what it is pulled toward.
#[derive(Clone, Debug, Default)]
pub struct StageOptions {
    /// The weights to start from (every parameter by name); `None`: a fresh seeded network.
    pub init: Option<Values>,
    /// Name patterns of the frozen tensors ([`name_matches`]: a glob with `*`, else a name
    /// prefix).
    pub frozen: Vec<String>,
    pub anchor: Option<Anchor>,
}

/// What a stage hands back.
#[derive(Clone, Debug)]
pub struct StageOut {
    /// The trained weights, every parameter by name.
    pub values: Values,
    /// What the trainer measured on the stage's scenario.
    pub output: RunOutput,
    /// The names of the tensors that were held fixed.
    pub frozen: Vec<String>,
    /// The number of values the optimizer could change.
    pub trainable: usize,
}

/// Whether an anchor with name patterns `anchored` (empty: every tensor) pulls the tensor
/// `name` in a stage that freezes the tensors matching `frozen`: only a tensor that matches,
/// takes a gradient (is not in `untracked`) and is not frozen can move, so only such a
/// tensor is anchored.
pub fn anchorable(
    name: &str,
    untracked: &BTreeSet<String>,
    frozen: &[String],
    anchored: &[String],
) -> bool {
    !untracked.contains(name)
        && !frozen.iter().any(|f| name_matches(f, name))
        && (anchored.is_empty() || anchored.iter().any(|f| name_matches(f, name)))
}

/// The error of an anchor with `lambda` > 0 that [`anchorable`] leaves no tensor to pull.
pub fn no_anchorable(lambda: f64, anchored: &[String], frozen: &[String]) -> crate::Error {
    let list = |v: &[String]| {
        let q: Vec<String> = v.iter().map(|p| format!("'{p}'")).collect();
        format!("[{}]", q.join(", "))
    };
    let which = match anchored.is_empty() {
        true => String::new(),
        false => format!(" anchor.params {} match", list(anchored)),
    };
    err!(
        "anchor.lambda = {lambda} anchors nothing: every tensor{which} is frozen (freeze {}) \
         or takes no gradient",
        list(frozen)
    )
}

struct Stage {
    frozen: Vec<String>,
    anchor: Option<Anchor>,
    quad: Quadratic,
    /// Set up at the first task: the starting values of frozen tensors without a gradient,
    /// restored after each task.
    restore: Option<Values>,
}

impl Stage {
    fn frozen(&self, name: &str) -> bool {
        self.frozen.iter().any(|f| name_matches(f, name))
    }

    /// At the first task: which frozen tensors to restore, and the anchor's slots.
    fn set_up(&mut self, net: &Net) -> Result<()> {
        let untracked = untracked_names(net);
        let infos = param_infos(net);
        let values = crate::model::params::named_values(net);
        self.restore = Some(
            values
                .iter()
                .filter(|(n, _)| untracked.contains(*n) && self.frozen(n))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect(),
        );
        let Some(a) = &self.anchor else {
            return Ok(());
        };
        let slots: Vec<_> = infos
            .iter()
            .filter(|p| anchorable(&p.name, &untracked, &self.frozen, &a.params))
            .collect();
        if a.lambda > 0.0 && slots.is_empty() {
            return Err(no_anchorable(a.lambda, &a.params, &self.frozen));
        }
        let get = |what: &str, m: &Values, name: &str, numel: usize| -> Result<Vec<f32>> {
            match m.get(name) {
                Some(v) if v.len() == numel => Ok(v.clone()),
                Some(v) => Err(err!(
                    "anchor {what} of {name}: {} values for {numel}",
                    v.len()
                )),
                None => Err(err!("anchor {what}: no values for {name}")),
            }
        };
        let mut term = Term::default();
        let mut w = Vec::new();
        for p in &slots {
            term.anchor
                .push(get("values", &a.values, &p.name, p.numel())?);
            if let Some(ws) = &a.weights {
                w.push(get("weights", ws, &p.name, p.numel())?);
            }
        }
        term.weight = a.weights.is_some().then_some(w);
        self.quad.set_slots(
            slots.iter().map(|p| p.name.clone()).collect(),
            slots.iter().map(|p| p.shape.clone()).collect(),
        );
        if !slots.is_empty() {
            self.quad.terms.push(term);
        }
        Ok(())
    }
}

impl Strategy for Stage {
    fn name(&self) -> &'static str {
        "study-stage"
    }

    fn before_task(&mut self, _cx: &StrategyCtx, net: Net) -> Result<Net> {
        if self.restore.is_none() {
            self.set_up(&net)?;
        }
        Ok(net)
    }

    fn loss(
        &mut self,
        cx: &StrategyCtx,
        net: &Net,
        _batch: &Batch,
        _logits: Tensor<2>,
        loss: Tensor<1>,
    ) -> Tensor<1> {
        match &self.anchor {
            Some(a) if a.lambda > 0.0 => self.quad.add_to(loss, net, cx.device, a.lambda / 2.0),
            _ => loss,
        }
    }

    fn after_backward(&mut self, _cx: &StrategyCtx, net: &Net, grads: &mut GradientsParams) {
        if self.frozen.is_empty() {
            return;
        }
        for p in param_infos(net) {
            if self.frozen(&p.name) {
                drop_grad(grads, &p);
            }
        }
    }

    fn after_task(&mut self, _cx: &StrategyCtx, net: Net) -> Result<Net> {
        match &self.restore {
            Some(r) if !r.is_empty() => set_params(net, r),
            _ => Ok(net),
        }
    }

    fn trainable(&self, net: &Net) -> Option<usize> {
        let untracked = untracked_names(net);
        Some(
            param_infos(net)
                .iter()
                .filter(|p| !untracked.contains(&p.name) && !self.frozen(&p.name))
                .map(|p| p.numel())
                .sum(),
        )
    }

    fn state_bytes(&self) -> u64 {
        4 * self.quad.floats() as u64
    }
}

/// The weights a stage without `init` weights starts from, by name: the trainer's seeded
/// network ([`seeded_net`]) for the stage's strategy.
pub fn fresh_values(scenario: &Scenario, model: &ModelConfig, seed: u64) -> Result<Values> {
    let stage = Stage {
        frozen: Vec::new(),
        anchor: None,
        quad: Quadratic::default(),
        restore: None,
    };
    let ad = Device::flex().autodiff();
    let net = seeded_net(model, scenario, seed, stage.feedback_input(), &ad)?;
    Ok(crate::model::params::named_values(&net))
}

/// Trains `model` on every task of `scenario` from `init` (or a fresh seeded network) with
/// the tensors matching the `frozen` name patterns fixed (name prefixes, or globs with `*`);
/// returns the trained weights by name.
pub fn run_stage(
    scenario: &Scenario,
    model: &ModelConfig,
    train: TrainConfig,
    seed: u64,
    init: Option<Values>,
    frozen: Vec<String>,
    on: &mut dyn FnMut(Event),
) -> Result<Values> {
    let opts = StageOptions {
        init,
        frozen,
        anchor: None,
    };
    run_stage_with(scenario, model, train, seed, opts, on).map(|o| o.values)
}

/// [`run_stage`] with every option: the weights to start from (loaded once, before the
/// first task), frozen tensors by name pattern and an anchor. Returns the trained weights
/// with what the trainer measured.
pub fn run_stage_with(
    scenario: &Scenario,
    model: &ModelConfig,
    train: TrainConfig,
    seed: u64,
    opts: StageOptions,
    on: &mut dyn FnMut(Event),
) -> Result<StageOut> {
    if let Some(a) = &opts.anchor
        && !(a.lambda.is_finite() && a.lambda >= 0.0)
    {
        return Err(err!("anchor lambda = {} must be finite and >= 0", a.lambda));
    }
    let patterns = opts.frozen.clone();
    let stage = Stage {
        frozen: opts.frozen,
        anchor: opts.anchor,
        quad: Quadratic::default(),
        restore: None,
    };
    let mut trainer = Trainer::new(scenario, model.clone(), train, seed, Box::new(stage));
    trainer.start = opts.init.map(|values| Start { task: 0, values });
    let (output, net) = trainer.run_net(on)?;
    let frozen = param_infos(&net)
        .into_iter()
        .map(|p| p.name)
        .filter(|n| patterns.iter().any(|f| name_matches(f, n)))
        .collect();
    Ok(StageOut {
        values: crate::model::params::named_values(&net),
        trainable: trainer.strategy.trainable(&net).unwrap_or(0),
        output,
        frozen,
    })
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::blobs::{BlobsConfig, generate};
    use crate::scenario::{Common, joint};

    #[test]
    fn frozen_tensors_keep_their_values_and_the_others_move() {
        let split = generate(&BlobsConfig::default()).unwrap();
        let s = joint(split, &Common::default()).unwrap();
        let model = ModelConfig::Mlp { hidden: vec![16] };
        let train = TrainConfig {
            epochs: 1,
            ..Default::default()
        };
        let first = run_stage(&s, &model, train.clone(), 1, None, vec![], &mut |_| {}).unwrap();
        let second = run_stage(
            &s,
            &model,
            train,
            2,
            Some(first.clone()),
            vec!["fc.1.".into()],
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(first["fc.1.weight"], second["fc.1.weight"]);
        assert_eq!(first["fc.1.bias"], second["fc.1.bias"]);
        assert_ne!(first["fc.0.weight"], second["fc.0.weight"]);
    }

    /// An anchor with λ > 0 on frozen tensors only is an error, not a silent no-op; with
    /// λ = 0 it is allowed.
    #[test]
    fn an_anchor_on_frozen_tensors_only_is_refused() {
        let split = generate(&BlobsConfig::default()).unwrap();
        let s = joint(split, &Common::default()).unwrap();
        let model = ModelConfig::Mlp { hidden: vec![16] };
        let train = TrainConfig {
            epochs: 1,
            ..Default::default()
        };
        let init = fresh_values(&s, &model, 1).unwrap();
        let opts = |lambda| StageOptions {
            init: Some(init.clone()),
            frozen: vec!["fc.1.".into()],
            anchor: Some(Anchor {
                lambda,
                values: init.clone(),
                weights: None,
                params: vec!["fc.1.*".into()],
            }),
        };
        let e = run_stage_with(&s, &model, train.clone(), 1, opts(1.0), &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "anchor.lambda = 1 anchors nothing: every tensor anchor.params ['fc.1.*'] \
                 match is frozen (freeze ['fc.1.'])"
            ),
            "{e}"
        );
        let out = run_stage_with(&s, &model, train, 1, opts(0.0), &mut |_| {}).unwrap();
        assert_eq!(out.values["fc.1.weight"], init["fc.1.weight"]);
    }

    /// A stage without `init` starts from the network [`fresh_values`] gives.
    #[test]
    fn fresh_values_are_the_trainers_starting_network() {
        let split = generate(&BlobsConfig::default()).unwrap();
        let s = joint(split, &Common::default()).unwrap();
        let model = ModelConfig::Mlp { hidden: vec![16] };
        let train = TrainConfig {
            epochs: 1,
            ..Default::default()
        };
        let init = fresh_values(&s, &model, 5).unwrap();
        let run = |init| run_stage(&s, &model, train.clone(), 5, init, vec![], &mut |_| {});
        assert_eq!(run(None).unwrap(), run(Some(init)).unwrap());
    }
}
