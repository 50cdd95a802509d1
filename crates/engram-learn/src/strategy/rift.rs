//! RiFT's fine-tuning step: train only the chosen modules (normally the lowest-MRC one) on
//! clean data, every other parameter frozen.
//! Paper: Improving Generalization of Adversarial Training via Robust Critical Fine-Tuning
//! (arXiv 2308.02533); card: shared/methods/robustness_safety.md, "RiFT", step 4.
//!
//! `modules` names modules by parameter-name prefix (`conv2` trains `conv2.weight` and
//! `conv2.bias`; a full name trains that parameter alone); each must match at least one
//! parameter of the network. The choice of module (module robust criticality on a held-out
//! adversarial set) and the interpolation θ(α) = α·θ_FT + (1 − α)·θ_AT are in
//! `crate::robust::rift`; the run starts from the adversarially trained weights
//! (`Trainer::start`). The reference's optimizer (SGD, momentum 0.9, lr 1e-3, weight decay
//! 5e-4, lr ×0.1 halfway) is the run's `[train]`. Frozen parameters get no gradient, so the
//! optimizer (weight decay included) leaves them alone.

use super::parts::body::{keep_grads, values_of};
use super::{Ctx, Setup, Strategy, parse_params};
use crate::model::Net;
use crate::model::params::param_infos;
use crate::{Result, err};
use burn::optim::GradientsParams;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Module prefixes (or parameter names) to fine-tune (required; the default, none, is
    /// refused when the run starts).
    #[serde(default)]
    pub modules: Vec<String>,
}

pub struct Rift {
    p: Params,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("rift", v)?;
    if let Some(m) = p.modules.iter().find(|m| m.is_empty()) {
        return Err(err!("strategy rift: modules has an empty name {m:?}"));
    }
    Ok(Box::new(Rift { p }))
}

/// Whether parameter `name` belongs to module `m` (the parameter itself, or under `m.`).
fn belongs(name: &str, m: &str) -> bool {
    name == m || name.strip_prefix(m).is_some_and(|r| r.starts_with('.'))
}

impl Rift {
    fn trains(&self, name: &str) -> bool {
        self.p.modules.iter().any(|m| belongs(name, m))
    }
}

impl Strategy for Rift {
    fn name(&self) -> &'static str {
        "rift"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn check(&self, s: &Setup) -> Result<()> {
        if self.p.modules.is_empty() {
            return Err(err!(
                "strategy rift: modules is empty; name the module(s) to fine-tune, e.g. [\"conv2\"]"
            ));
        }
        let names: Vec<String> = param_infos(s.net).into_iter().map(|p| p.name).collect();
        for m in &self.p.modules {
            if !names.iter().any(|n| belongs(n, m)) {
                return Err(err!(
                    "strategy rift: modules: the network has no module {m}; its parameters: {}",
                    names.join(", ")
                ));
            }
        }
        Ok(())
    }

    fn after_backward(&mut self, _cx: &Ctx, net: &Net, grads: &mut GradientsParams) {
        keep_grads(net, grads, |n| self.trains(n));
    }

    fn trainable(&self, net: &Net) -> Option<usize> {
        Some(values_of(net, |n| self.trains(n)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::model::params::named_values;
    use crate::strategy::parts::testutil::blobs;
    use crate::train::{Start, TrainConfig, Trainer};

    /// Only the named module moves; everything else keeps its bytes (weight decay too).
    #[test]
    fn only_the_named_module_trains() {
        let s = blobs("class-incremental", 1);
        let model = ModelConfig::Mlp { hidden: vec![8, 8] };
        let train = TrainConfig {
            epochs: 2,
            batch_size: 16,
            optimizer: crate::optim::OptimConfig {
                momentum: 0.9,
                weight_decay: 5e-4,
                ..crate::optim::OptimConfig::new(crate::optim::OptimKind::Sgd, 0.05)
            },
            ..Default::default()
        };
        let naive = crate::strategy::build("naive", &serde_json::Value::Null).unwrap();
        let (_, net0) = Trainer::new(&s, model.clone(), train.clone(), 1, naive)
            .run_net(&mut |_| {})
            .unwrap();
        let before = named_values(&net0);
        let module = before
            .keys()
            .find(|k| k.ends_with(".weight"))
            .and_then(|k| k.strip_suffix(".weight"))
            .unwrap()
            .to_string();
        let st = build(&serde_json::json!({ "modules": [module.clone()] })).unwrap();
        let mut t = Trainer::new(&s, model.clone(), train.clone(), 2, st);
        t.start = Some(Start {
            task: 0,
            values: before.clone(),
        });
        let (out, net) = t.run_net(&mut |_| {}).unwrap();
        let after = named_values(&net);
        for (k, v) in &before {
            let moved = after[k] != *v;
            assert_eq!(moved, belongs(k, &module), "{k}");
        }
        assert!(out.trainable_values.unwrap() > 0);
        // Unknown modules and empty lists are refused.
        let bad = build(&serde_json::json!({ "modules": ["nope"] })).unwrap();
        let e = Trainer::new(&s, model, train, 2, bad)
            .check()
            .unwrap_err()
            .to_string();
        assert!(e.contains("no module nope"), "{e}");
        let none = build(&serde_json::json!({ "modules": [] })).unwrap();
        let e = Trainer::new(
            &s,
            ModelConfig::Mlp { hidden: vec![8] },
            TrainConfig::default(),
            2,
            none,
        )
        .check()
        .unwrap_err()
        .to_string();
        assert!(e.contains("modules is empty"), "{e}");
        assert!(!belongs("conv20.weight", "conv2") && belongs("conv2.bias", "conv2"));
    }
}
