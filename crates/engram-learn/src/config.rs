//! Run files (`engram train --config run.toml`): scenario, model, strategy and its parameters,
//! optimizer, epochs, seed. Unknown keys and impossible values are errors that name them.

use crate::model::ModelConfig;
use crate::scenario::ScenarioConfig;
use crate::train::TrainConfig;
use crate::{Result, err};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RunConfig {
    /// Name of the run (default: strategy and scenario).
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub seed: u64,
    pub scenario: ScenarioConfig,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub strategy: StrategyConfig,
    #[serde(default)]
    pub train: TrainConfig,
}

/// `[strategy]`: `name` plus the strategy's own parameters (checked by the strategy).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct StrategyConfig {
    pub name: String,
    #[serde(flatten)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

impl Default for StrategyConfig {
    fn default() -> Self {
        StrategyConfig {
            name: "naive".into(),
            params: Default::default(),
        }
    }
}

impl RunConfig {
    pub fn parse_toml(text: &str) -> Result<RunConfig> {
        let cfg: RunConfig = toml::from_str(text).map_err(|e| err!("{e}"))?;
        cfg.train.validate()?;
        // Build the strategy once to validate its parameters.
        crate::strategy::build(
            &cfg.strategy.name,
            &serde_json::Value::Object(cfg.strategy.params.clone()),
        )?;
        Ok(cfg)
    }

    pub fn run_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}-{}-seed{}",
                self.strategy.name, self.scenario.kind, self.scenario.dataset, self.seed
            )
        })
    }
}
