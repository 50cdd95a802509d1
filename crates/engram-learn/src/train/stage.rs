//! One training stage outside a continual-learning run (a study's pre-training, a linear
//! probe, a fine-tune): the trainer with a strategy that starts from given weights, freezes
//! the tensors under given name prefixes and hands back the trained weights.

use super::{Event, TrainConfig, Trainer};
use crate::model::params::{drop_grad, load_params, param_infos};
use crate::model::{ModelConfig, Net};
use crate::scenario::Scenario;
use crate::strategy::{Ctx as StrategyCtx, Strategy};
use crate::{Result, err};
use burn::optim::GradientsParams;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

pub type Values = BTreeMap<String, Vec<f32>>;

struct Stage {
    init: Option<Values>,
    /// Parameter-name prefixes whose gradients are dropped (the optimizer leaves them).
    frozen: Vec<String>,
    result: Arc<Mutex<Option<Values>>>,
}

impl Strategy for Stage {
    fn name(&self) -> &'static str {
        "study-stage"
    }

    fn before_task(&mut self, _cx: &StrategyCtx, net: Net) -> Result<Net> {
        match &self.init {
            Some(v) => load_params(net, v),
            None => Ok(net),
        }
    }

    fn after_backward(&mut self, _cx: &StrategyCtx, net: &Net, grads: &mut GradientsParams) {
        for p in param_infos(net) {
            if self.frozen.iter().any(|f| p.name.starts_with(f.as_str())) {
                drop_grad(grads, &p);
            }
        }
    }

    fn after_task(&mut self, _cx: &StrategyCtx, net: Net) -> Result<Net> {
        let values = crate::model::params::named_values(&net);
        if let Ok(mut r) = self.result.lock() {
            *r = Some(values);
        }
        Ok(net)
    }
}

/// Trains `model` on every task of `scenario` from `init` (or a fresh seeded network) with
/// the tensors under the `frozen` name prefixes fixed; returns the trained weights by name.
pub fn run_stage(
    scenario: &Scenario,
    model: &ModelConfig,
    train: TrainConfig,
    seed: u64,
    init: Option<Values>,
    frozen: Vec<String>,
    on: &mut dyn FnMut(Event),
) -> Result<Values> {
    let result = Arc::new(Mutex::new(None));
    let stage = Stage {
        init,
        frozen,
        result: result.clone(),
    };
    let mut trainer = Trainer::new(scenario, model.clone(), train, seed, Box::new(stage));
    trainer.run(on)?;
    let v = result
        .lock()
        .map_err(|_| err!("a training thread panicked"))?
        .take();
    v.ok_or_else(|| err!("training produced no weights"))
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
}
