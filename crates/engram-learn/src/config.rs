//! Run files (`engram train --config run.toml`): scenario, model, strategy and its parameters,
//! optimizer, epochs, seed. Unknown keys and impossible values are errors that name them.

use crate::model::ModelConfig;
use crate::scenario::ScenarioConfig;
use crate::strategy::finite;
use crate::train::TrainConfig;
use crate::{Result, err};
use serde_json::Value;

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
    /// Start from trained weights instead of a fresh network (`[start]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<StartConfig>,
}

/// `[start]`: the run begins from the weights of `checkpoint` (a safetensors file holding
/// every parameter of `[model]` by name, as engram's checkpoints and `engram bench robust`'s
/// models do) at task `task` (the tasks before it taken as learned). RiFT's fine-tuning step
/// (strategy `rift`) starts this way from an adversarially trained model.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StartConfig {
    pub checkpoint: std::path::PathBuf,
    #[serde(default)]
    pub task: usize,
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
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every setting that does not need the data (before any is loaded): the run's
    /// name (a folder name), the scenario's keys, the model's sizes, the training settings
    /// and the strategy's parameters.
    pub fn validate(&self) -> Result<()> {
        finite("scenario", &self.scenario.params)?;
        finite("strategy", &self.strategy.params)?;
        self.scenario.check()?;
        self.model.check()?;
        self.train.validate()?;
        if let Some(st) = &self.start
            && st.checkpoint.as_os_str().is_empty()
        {
            return Err(err!("start.checkpoint is empty"));
        }
        // Build the strategy once to validate its parameters.
        crate::strategy::build(
            &self.strategy.name,
            &serde_json::Value::Object(self.strategy.params.clone()),
        )?;
        // The one check for a user's string that becomes a file or folder name.
        Ok(engram_ckpt::names::plain_name("name", &self.run_name())?)
    }

    /// The run file with every default filled in (the scenario's, the strategy's parameters,
    /// the name): what a checkpoint records, so that the same settings written differently
    /// resume and different ones do not.
    pub fn normalized(&self) -> Result<RunConfig> {
        let strategy = crate::strategy::build(
            &self.strategy.name,
            &Value::Object(self.strategy.params.clone()),
        )?;
        let Value::Object(params) = strategy.params() else {
            return Err(err!(
                "strategy {}: parameters are not a table",
                self.strategy.name
            ));
        };
        Ok(RunConfig {
            name: Some(self.run_name()),
            scenario: self.scenario.normalized()?,
            strategy: StrategyConfig {
                name: self.strategy.name.clone(),
                params,
            },
            ..self.clone()
        })
    }

    /// The run's name, also its folder's name (checked by [`RunConfig::validate`]).
    pub fn run_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}-{}-seed{}",
                self.strategy.name, self.scenario.kind, self.scenario.dataset, self.seed
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = r#"
name = "t"
[scenario]
kind = "permuted"
dataset = "blobs"
[model]
kind = "mlp"
hidden = [8]
[train.optimizer]
lr = 0.01
"#;

    /// Every setting is checked when the run file is read, before any data is loaded, with
    /// an error naming the key.
    #[test]
    fn run_files_are_checked_before_any_data_is_loaded() {
        assert!(RunConfig::parse_toml(RUN).is_ok());
        let long = format!("name = \"{}\"", "x".repeat(201));
        for (from, to, key) in [
            ("name = \"t\"", "name = \"../x\"", "name '../x'"),
            ("name = \"t\"", "name = \"/abs\"", "name '/abs'"),
            ("name = \"t\"", "name = \"a\\u0000b\"", "control character"),
            ("name = \"t\"", "name = \"..\"", "name '..'"),
            ("name = \"t\"", "name = \"\"", "name '' is empty"),
            ("name = \"t\"", &long, "200 bytes"),
            ("hidden = [8]", "hidden = [1000000000000]", "model.hidden"),
            (
                "[scenario]",
                "[scenario]\ntasks = 1000000",
                "tasks = 1000000",
            ),
            ("[scenario]", "[scenario]\nvalidation = nan", "validation"),
            ("lr = 0.01", "lr = nan", "lr"),
            (
                "[train.optimizer]",
                "[strategy]\nname = \"ewc\"\nlambda = nan\n[train.optimizer]",
                "strategy.lambda is not a finite",
            ),
            (
                "[train.optimizer]",
                "[strategy]\nname = \"l2\"\nlambda = -inf\n[train.optimizer]",
                "strategy.lambda is not a finite",
            ),
            (
                "kind = \"permuted\"",
                "kind = \"scole\"\nskew = nan",
                "scenario.skew is not a finite",
            ),
            (
                "kind = \"permuted\"",
                "kind = \"scole\"\nclass-weights = [1, 1, inf]",
                "scenario.class-weights.2",
            ),
            (
                "kind = \"permuted\"",
                "kind = \"rotated\"\nmax-angle = nan",
                "scenario.max-angle",
            ),
            (
                "[scenario]",
                "[scenario]\nblobs = { separation = nan }",
                "separation",
            ),
            ("lr = 0.01", "lr = inf", "lr"),
            ("lr = 0.01", "lr = -0.01", "lr"),
            ("lr = 0.01", "lr = 0.01\nmomentum = nan", "momentum"),
            (
                "lr = 0.01",
                "lr = 0.01\nweight-decay = -inf",
                "weight-decay",
            ),
            ("lr = 0.01", "lr = 0.01\neps = 0.0", "eps"),
            ("lr = 0.01", "lr = 0.01\nbetas = [0.9, nan]", "betas"),
            (
                "lr = 0.01",
                "lr = 0.01\nschedule = { step = { every = 1, gamma = nan } }",
                "gamma",
            ),
            (
                "[train.optimizer]",
                "[train]\nepochs = 1000000000\n[train.optimizer]",
                "train.epochs",
            ),
            (
                "[train.optimizer]",
                "[train]\niterations = 18446744073709551615\n[train.optimizer]",
                "train.iterations",
            ),
            // A key without effect for the settings around it.
            (
                "lr = 0.01",
                "lr = 0.01\nmomentum = 0.5",
                "momentum has no effect",
            ),
            (
                "[train.optimizer]",
                "[train]\nepochs = 2\niterations = 5\n[train.optimizer]",
                "train.epochs has no effect",
            ),
            (
                "[train.optimizer]",
                "[strategy]\nname = \"lora\"\north-lambda = 1.0\n[train.optimizer]",
                "orth-lambda has no effect",
            ),
        ] {
            let text = RUN.replacen(from, to, 1);
            let e = RunConfig::parse_toml(&text).map_or_else(|e| e.to_string(), |_| "ok".into());
            assert!(e.contains(key), "{to}: {e}");
        }
    }

    /// The same settings written differently normalize to the same settings; different ones
    /// stay different.
    #[test]
    fn normalized_settings_compare_equal_when_the_same() {
        let norm = |t: &str| {
            let c = RunConfig::parse_toml(t).expect(t);
            serde_json::to_value(c.normalized().expect(t)).expect("json")
        };
        let base = norm(RUN);
        for (from, to) in [
            ("[scenario]", "[scenario]\nvalidation = 0.0"),
            ("[scenario]", "[scenario]\ntasks = 5\nseed = 0"),
            (
                "dataset = \"blobs\"",
                "dataset = \"blobs\"\nblobs = { classes = 10 }",
            ),
            ("name = \"t\"", "name = \"t\"\nseed = 0"),
            ("lr = 0.01", "lr = 0.01\nschedule = \"constant\""),
        ] {
            assert_eq!(norm(&RUN.replacen(from, to, 1)), base, "{to}");
        }
        let l2 = RUN.replacen("[model]", "[strategy]\nname = \"l2\"\n[model]", 1);
        let l2x = l2.replacen(
            "name = \"l2\"",
            "name = \"l2\"\nlambda = 1.0\nparams = []",
            1,
        );
        assert_eq!(norm(&l2), norm(&l2x));
        assert_ne!(norm(&l2), base);
        let other = RUN.replacen("[scenario]", "[scenario]\nvalidation = 0.1", 1);
        assert_ne!(norm(&other), base);
    }
}
