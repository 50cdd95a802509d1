//! Run files (`engram train --config run.toml`): scenario, model, strategy and its parameters,
//! optimizer, epochs, seed; or a curriculum of phases ([`CurriculumConfig`]). Unknown keys
//! and impossible values are errors that name them.

use crate::model::ModelConfig;
use crate::scenario::ScenarioConfig;
use crate::strategy::finite;
use crate::strategy::parts::fisher::Estimator;
use crate::train::TrainConfig;
use crate::train::trainer::MAX_EPOCHS;
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
        Self::parse_toml_in(text, None)
    }

    /// Reads a run file found in folder `dir` (see [`RunFile::parse_toml_in`]).
    pub fn parse_toml_in(text: &str, dir: Option<&std::path::Path>) -> Result<RunConfig> {
        let mut cfg: RunConfig = toml::from_str(text).map_err(|e| err!("{e}"))?;
        if let Some(d) = dir.map(base_dir) {
            cfg.scenario.resolve(&d);
        }
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

/// A run file as `engram train` reads it: one continual-learning run, or a curriculum of
/// phases (a file with `[[phase]]` tables, see [`CurriculumConfig`]).
#[derive(Clone, Debug)]
pub enum RunFile {
    Run(Box<RunConfig>),
    Curriculum(Box<CurriculumConfig>),
}

impl RunFile {
    /// Reads a run file: a curriculum when it has a top-level `phase` key, else a run (read
    /// exactly as [`RunConfig::parse_toml`] reads it).
    pub fn parse_toml(text: &str) -> Result<RunFile> {
        Self::parse_toml_in(text, None)
    }

    /// Reads a run file found in folder `dir`: relative paths of the user's data sets
    /// (`dataset = { kind = ..., path = ... }`, in `[scenario]` or each phase's `scenario`)
    /// are taken from `dir`, made absolute (`None`: left relative, to the working directory),
    /// so that a run file and its data move together and a resume from another working
    /// directory reads the same files.
    pub fn parse_toml_in(text: &str, dir: Option<&std::path::Path>) -> Result<RunFile> {
        let phases = toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("phase"));
        match phases {
            true => {
                CurriculumConfig::parse_toml_in(text, dir).map(|c| RunFile::Curriculum(Box::new(c)))
            }
            false => RunConfig::parse_toml_in(text, dir).map(|c| RunFile::Run(Box::new(c))),
        }
    }
}

/// A run file's folder, absolute where it can be (`""`, a file in the working directory, is
/// the working directory).
fn base_dir(dir: &std::path::Path) -> std::path::PathBuf {
    let d = match dir.as_os_str().is_empty() {
        true => std::path::Path::new("."),
        false => dir,
    };
    d.canonicalize().unwrap_or_else(|_| d.to_path_buf())
}

/// Most phases a curriculum may have (the accuracy matrix is phases × phases).
pub const MAX_PHASES: usize = 1000;

/// A curriculum (`[[phase]]`): one model trained through phases in order, each phase on its
/// own scenario with its own frozen tensors, learning rate, epochs and an optional anchor to
/// the weights at the end of the phase before. Phases replace the top-level `[scenario]`,
/// `[strategy]` and `[start]` of a run file; `[model]` and `[train]` (batch size, optimizer,
/// epochs and learning rate unless a phase sets its own) serve every phase.
///
/// ```toml
/// seed = 0
/// [model]
/// kind = "mlp"
/// hidden = [64]
/// [[phase]]
/// name = "a"
/// scenario = { kind = "joint", dataset = "fashion-mnist" }
/// epochs = 2
/// [[phase]]
/// name = "b"
/// scenario = { kind = "joint", dataset = "mnist" }
/// lr = 1e-4
/// freeze = ["fc.0.*"]
/// anchor = { kind = "l2", lambda = 100.0 }
/// ```
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct CurriculumConfig {
    /// Name of the run, also its folder's (default: `curriculum-<phase names>-seed<seed>`).
    #[serde(default)]
    pub name: Option<String>,
    /// The fresh network's seed, and every phase's batch order.
    #[serde(default)]
    pub seed: u64,
    #[serde(default)]
    pub model: ModelConfig,
    #[serde(default)]
    pub train: TrainConfig,
    #[serde(rename = "phase")]
    pub phases: Vec<PhaseConfig>,
}

/// One `[[phase]]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct PhaseConfig {
    /// Unique among the phases; also the file name of the phase's weights.
    pub name: String,
    /// The phase's data: a scenario table as a run file's `[scenario]`; the phase trains
    /// through every task of it.
    pub scenario: ScenarioConfig,
    /// Epochs per task of the phase's scenario (default: `train.epochs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epochs: Option<usize>,
    /// Learning rate (default: `train.optimizer.lr`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Name patterns of the tensors held fixed (`layers.0.*`, `*.bias`; a pattern without
    /// `*` is a name prefix, `fc.0.`); each must match a parameter of the model.
    #[serde(default)]
    pub freeze: Vec<String>,
    /// Pulls the weights toward those at the end of the phase before (not on the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<AnchorConfig>,
}

/// A phase's `anchor`: (λ/2)·Σ_i w_i·(θ_i − θ*_i)² added to its loss, θ* the weights at the
/// end of the phase before, in the half convention of the l2 and ewc strategies (gradient
/// λ·w·(θ − θ*); a paper writing λ·‖θ − θ*‖² means λ_engram = 2·λ_paper).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum AnchorConfig {
    /// w ≡ 1.
    L2(L2Anchor),
    /// w the diagonal Fisher of θ* on the phase before's training data (the mean over its
    /// tasks of each task's Fisher, `strategy/parts/fisher.rs`).
    Ewc(EwcAnchor),
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct L2Anchor {
    pub lambda: f64,
    /// Name patterns of the anchored tensors (empty: every tensor not frozen).
    #[serde(default)]
    pub params: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EwcAnchor {
    pub lambda: f64,
    /// The Fisher estimator (as the ewc strategy's `fisher`; default exact).
    #[serde(default = "default_fisher")]
    pub fisher: Estimator,
    /// Training examples of each task of the phase before that the Fisher is estimated on
    /// (default 1000).
    #[serde(default = "default_fisher_samples")]
    pub fisher_samples: usize,
    /// Rows per Fisher pass (default 128).
    #[serde(default = "default_fisher_batch")]
    pub fisher_batch: usize,
    #[serde(default)]
    pub params: Vec<String>,
}

fn default_fisher() -> Estimator {
    Estimator::Exact
}
fn default_fisher_samples() -> usize {
    1000
}
fn default_fisher_batch() -> usize {
    128
}

impl AnchorConfig {
    pub fn lambda(&self) -> f64 {
        match self {
            AnchorConfig::L2(a) => a.lambda,
            AnchorConfig::Ewc(a) => a.lambda,
        }
    }

    /// The anchored tensors' name patterns (empty: all).
    pub fn params(&self) -> &[String] {
        match self {
            AnchorConfig::L2(a) => &a.params,
            AnchorConfig::Ewc(a) => &a.params,
        }
    }
}

impl CurriculumConfig {
    /// Reads a curriculum run file and checks it ([`CurriculumConfig::validate`]).
    pub fn parse_toml(text: &str) -> Result<CurriculumConfig> {
        Self::parse_toml_in(text, None)
    }

    /// Reads a curriculum run file found in folder `dir` (see [`RunFile::parse_toml_in`]).
    pub fn parse_toml_in(text: &str, dir: Option<&std::path::Path>) -> Result<CurriculumConfig> {
        let table: toml::Table = toml::from_str(text).map_err(|e| err!("{e}"))?;
        for (key, why) in [
            ("scenario", "each phase names its own scenario"),
            ("strategy", "phases train with their own freeze and anchor"),
            ("start", "a curriculum starts from a fresh network"),
        ] {
            if table.contains_key(key) {
                return Err(err!(
                    "a run file with [[phase]] has no top-level `{key}`: {why}"
                ));
            }
        }
        let mut cfg: CurriculumConfig = toml::from_str(text).map_err(|e| err!("{e}"))?;
        if let Some(d) = dir.map(base_dir) {
            for p in &mut cfg.phases {
                p.scenario.resolve(&d);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every setting that does not need the data, with messages naming the phase
    /// (`phase[1] 'b'`) and the key. Freeze and anchor patterns are checked against the
    /// model's parameter names once it is built (`curriculum`).
    pub fn validate(&self) -> Result<()> {
        if self.phases.is_empty() {
            return Err("phase: a curriculum needs at least one [[phase]]".into());
        }
        if self.phases.len() > MAX_PHASES {
            return Err(err!(
                "phase: {} phases are more than the limit of {MAX_PHASES}",
                self.phases.len()
            ));
        }
        self.model.check()?;
        if self.train.first_task_epochs.is_some() {
            return Err(
                "train.first-task-epochs has no effect in a curriculum: set a phase's epochs"
                    .into(),
            );
        }
        self.train.validate()?;
        if self.train.device != crate::backend::Compute::Cpu {
            return Err(err!(
                "train.device = {:?}: curricula train on the CPU only (a run file without \
                 [[phase]] tables trains on a GPU)",
                self.train.device.name()
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        for (k, p) in self.phases.iter().enumerate() {
            engram_ckpt::names::plain_name(&format!("phase[{k}].name"), &p.name)?;
            if !seen.insert(p.name.as_str()) {
                return Err(err!(
                    "phase[{k}].name '{}' is the name of an earlier phase",
                    p.name
                ));
            }
            let at = format!("phase[{k}] '{}'", p.name);
            finite(&format!("phase[{k}].scenario"), &p.scenario.params)?;
            p.scenario.check().map_err(|e| err!("{at}: {e}"))?;
            match p.epochs {
                Some(_) if self.train.iterations.is_some() => {
                    return Err(err!(
                        "{at}: epochs has no effect when train.iterations is set; remove one"
                    ));
                }
                Some(e) if e == 0 || e > MAX_EPOCHS => {
                    return Err(err!("{at}: epochs = {e} must be in [1, {MAX_EPOCHS}]"));
                }
                _ => {}
            }
            if let Some(lr) = p.lr.filter(|lr| !(lr.is_finite() && *lr > 0.0)) {
                return Err(err!("{at}: lr = {lr} must be a positive finite number"));
            }
            self.phase_train(k)?
                .validate()
                .map_err(|e| err!("{at}: {e}"))?;
            if let Some(i) = p.freeze.iter().position(String::is_empty) {
                return Err(err!("{at}: freeze[{i}] is empty"));
            }
            let Some(a) = &p.anchor else { continue };
            if k == 0 {
                return Err(err!(
                    "{at}: anchor on the first phase: there is no phase before it to anchor to"
                ));
            }
            let lambda = a.lambda();
            if !(lambda.is_finite() && lambda >= 0.0) {
                return Err(err!(
                    "{at}: anchor.lambda = {lambda} must be a finite number >= 0"
                ));
            }
            if let Some(i) = a.params().iter().position(String::is_empty) {
                return Err(err!("{at}: anchor.params[{i}] is empty"));
            }
            if let AnchorConfig::Ewc(e) = a {
                if e.fisher_samples == 0 {
                    return Err(err!("{at}: anchor.fisher-samples must be at least 1"));
                }
                if e.fisher_batch == 0 {
                    return Err(err!("{at}: anchor.fisher-batch must be at least 1"));
                }
            }
        }
        Ok(engram_ckpt::names::plain_name("name", &self.run_name())?)
    }

    /// The training settings of phase `k`: `[train]` with the phase's epochs and learning
    /// rate.
    pub fn phase_train(&self, k: usize) -> Result<TrainConfig> {
        let p = self
            .phases
            .get(k)
            .ok_or_else(|| err!("no phase {k} in a curriculum of {}", self.phases.len()))?;
        let mut t = self.train.clone();
        if let Some(e) = p.epochs {
            t.epochs = e;
        }
        if let Some(lr) = p.lr {
            t.optimizer.lr = lr;
        }
        Ok(t)
    }

    /// The run file with every default filled in (the name, each phase's scenario, epochs
    /// and learning rate): what results.json records.
    pub fn normalized(&self) -> Result<CurriculumConfig> {
        let mut phases = Vec::with_capacity(self.phases.len());
        for (k, p) in self.phases.iter().enumerate() {
            let t = self.phase_train(k)?;
            phases.push(PhaseConfig {
                scenario: p.scenario.normalized()?,
                epochs: self.train.iterations.is_none().then_some(t.epochs),
                lr: Some(t.optimizer.lr),
                ..p.clone()
            });
        }
        Ok(CurriculumConfig {
            name: Some(self.run_name()),
            phases,
            ..self.clone()
        })
    }

    /// The run's name, also its folder's name (checked by [`CurriculumConfig::validate`]).
    pub fn run_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let names: Vec<&str> = self.phases.iter().map(|p| p.name.as_str()).collect();
            format!("curriculum-{}-seed{}", names.join("-"), self.seed)
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

    /// `train.device`: unknown names are refused; `cpu` is the default and leaves the
    /// normalized settings (and so run ids) as they were before the key existed; a GPU is
    /// refused by a build without the `gpu` feature and by curricula in any build.
    #[test]
    fn the_device_key_is_checked() {
        let with = |d: &str| {
            RUN.replacen(
                "[train.optimizer]",
                &format!("[train]\ndevice = \"{d}\"\n[train.optimizer]"),
                1,
            )
        };
        let e = RunConfig::parse_toml(&with("tpu")).unwrap_err().to_string();
        assert!(e.contains("tpu"), "{e}");
        let norm = |t: &str| {
            serde_json::to_value(RunConfig::parse_toml(t).unwrap().normalized().unwrap()).unwrap()
        };
        assert_eq!(norm(&with("cpu")), norm(RUN));
        assert!(!norm(RUN).to_string().contains("device"));
        let gpu = RunConfig::parse_toml(&with("gpu"));
        if cfg!(feature = "gpu") {
            assert!(
                norm(&with("gpu"))
                    .to_string()
                    .contains("\"device\":\"gpu\"")
            );
        } else {
            let e = gpu.unwrap_err().to_string();
            assert!(
                e.contains("train.device") && e.contains("--features gpu"),
                "{e}"
            );
        }
        let mut cur = CurriculumConfig::parse_toml(
            "[[phase]]\nname = \"a\"\nscenario = { kind = \"joint\", dataset = \"blobs\" }\n",
        )
        .unwrap();
        cur.train.device = crate::backend::Compute::Gpu;
        let e = cur.validate().unwrap_err().to_string();
        assert!(e.contains("train.device"), "{e}");
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
