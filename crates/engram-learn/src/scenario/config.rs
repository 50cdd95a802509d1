//! Building a scenario from a config ([`ScenarioConfig`], kebab-case keys), e.g. in JSON:
//!
//! ```json
//! {"kind": "class-incremental", "dataset": "fashion-mnist", "tasks": 5,
//!  "classes-per-task": 2, "seed": 0, "train-per-task": 2000, "validation": 0.1}
//! ```
//!
//! `dataset` is a name (`fashion-mnist`, `mnist`, `blobs`) or a table declaring the user's
//! own files (`{ kind = "npz", path = "data.npz" }`, see `crate::data::user` for every key);
//! a run file's relative paths are taken from its folder ([`ScenarioConfig::resolve`]).
//!
//! Keys every kind shares (`kind`, `dataset`, `seed`, `train-per-task`, `test-per-class`,
//! `validation`, `blobs`) are fields here; every other key belongs to the kind, whose file
//! declares them with their defaults and the builder (a [`Kind`] in [`REGISTRY`]). One rule
//! for all: a key the kind does not know is an error, as is an impossible value (e.g. 6
//! tasks of 2 classes on 10 classes), with a message that says why.

use std::path::Path;

use super::{Common, Scenario, ScenarioError, invalid};
use crate::data::user::UserSource;
use crate::data::{BlobsConfig, DataSource, DatasetSpec, Split};
use serde_json::{Map, Value};

/// A kind's own keys parsed, checked and returned with defaults filled in.
pub type ParamsFn = fn(&Map<String, Value>) -> Result<Value, ScenarioError>;

/// A kind's builder: the data, its own keys and the shared options to a scenario.
pub type BuildFn = fn(Split, &Map<String, Value>, &Common) -> Result<Scenario, ScenarioError>;

/// A scenario kind: its name, a one-line summary, its own keys (parsed, checked and returned
/// with defaults filled in, before any data is loaded) and its builder.
pub struct Kind {
    pub name: &'static str,
    pub summary: &'static str,
    pub params: ParamsFn,
    pub build: BuildFn,
}

/// Every scenario kind. Adding one is one file and one line here.
pub const REGISTRY: &[Kind] = &[
    super::class_incremental::CLASS_INCREMENTAL,
    super::class_incremental::TASK_INCREMENTAL,
    super::domain::PERMUTED,
    super::domain::ROTATED,
    super::scole::SCOLE,
    super::joint::JOINT,
    super::corruption::CORRUPTION,
    super::domains::DOMAINS,
];

/// The kind named `name`.
pub fn kind(name: &str) -> Result<&'static Kind, ScenarioError> {
    REGISTRY.iter().find(|k| k.name == name).ok_or_else(|| {
        ScenarioError::Invalid(format!(
            "unknown scenario kind '{name}'; available: {}",
            REGISTRY
                .iter()
                .map(|k| k.name)
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })
}

/// Parses a kind's own keys into its parameter struct (which refuses unknown keys).
pub fn parse_params<T: serde::de::DeserializeOwned>(
    kind: &str,
    m: &Map<String, Value>,
) -> Result<T, ScenarioError> {
    serde_json::from_value(Value::Object(m.clone()))
        .map_err(|e| ScenarioError::Invalid(format!("scenario {kind}: {e}")))
}

/// A kind's parameters, checked, back as JSON (with defaults) for the registry's `params`.
pub fn to_json<T: serde::Serialize>(p: &T) -> Result<Value, ScenarioError> {
    serde_json::to_value(p).map_err(|e| ScenarioError::Invalid(e.to_string()))
}

/// Most tasks a scenario may have: each holds its own example lists, and the accuracy matrix
/// is tasks × tasks.
pub const MAX_TASKS: usize = 10_000;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ScenarioConfig {
    /// A name from [`REGISTRY`].
    pub kind: String,
    /// `fashion-mnist`, `mnist`, `blobs`, or a table declaring the user's files.
    pub dataset: DatasetSpec,
    #[serde(default)]
    pub seed: u64,
    /// Cap on each task's training examples (seeded subsample per task); for scole this is
    /// the `max_train_per_task` cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_per_task: Option<usize>,
    /// Cap on the test examples per class (one seeded subsample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_per_class: Option<usize>,
    /// Share of the training examples carved out for validation, in [0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<f32>,
    /// Parameters of the synthetic data set (only with `dataset = "blobs"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs: Option<BlobsConfig>,
    /// The kind's own keys (`tasks`, `classes-per-task`, ...), checked by the kind.
    #[serde(flatten)]
    pub params: Map<String, Value>,
}

impl ScenarioConfig {
    /// A config with every option at its default.
    pub fn new(kind: impl Into<String>, dataset: impl Into<DatasetSpec>) -> ScenarioConfig {
        ScenarioConfig {
            kind: kind.into(),
            dataset: dataset.into(),
            seed: 0,
            train_per_task: None,
            test_per_class: None,
            validation: None,
            blobs: None,
            params: Map::new(),
        }
    }

    /// The same config with the kind's key `key` set to `value`.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> ScenarioConfig {
        self.params.insert(key.to_string(), value.into());
        self
    }

    pub fn from_json(text: &str) -> Result<ScenarioConfig, ScenarioError> {
        let c: ScenarioConfig = serde_json::from_str(text)
            .map_err(|e| ScenarioError::Invalid(format!("scenario config: {e}")))?;
        c.check()?;
        Ok(c)
    }

    /// The data set this config names (a user's table checked, without reading a file).
    pub fn source(&self) -> Result<DataSource, ScenarioError> {
        let src = match &self.dataset {
            DatasetSpec::Name(n) => DataSource::from_name(n)?,
            DatasetSpec::User(u) => {
                u.check()?;
                DataSource::User(Box::new(UserSource::new((**u).clone(), self.seed)))
            }
        };
        Ok(match (src, &self.blobs) {
            (DataSource::Blobs(_), Some(b)) => {
                b.check()?;
                DataSource::Blobs(b.clone())
            }
            (src, None) => src,
            (_, Some(_)) => {
                return invalid(format!(
                    "scenario config: `blobs` parameters given for dataset {}",
                    self.dataset
                ));
            }
        })
    }

    /// Takes the relative paths of a user's data set from `dir` (the run file's folder).
    pub fn resolve(&mut self, dir: &Path) {
        if let DatasetSpec::User(u) = &mut self.dataset {
            u.resolve(dir);
        }
    }

    /// The kind's parameters with their defaults (checked).
    pub fn kind_params(&self) -> Result<Value, ScenarioError> {
        (kind(&self.kind)?.params)(&self.params)
    }

    /// The config with every default filled in (the kind's keys, the blobs parameters, the
    /// data set's own name or the user's data table with its defaults; `validation = 0` as
    /// none), so that the same settings written
    /// differently compare equal (a checkpoint records this form).
    pub fn normalized(&self) -> Result<ScenarioConfig, ScenarioError> {
        let src = self.source()?;
        let Value::Object(params) = self.kind_params()? else {
            return invalid(format!(
                "scenario {}: parameters are not a table",
                self.kind
            ));
        };
        Ok(ScenarioConfig {
            dataset: match (&src, &self.dataset) {
                (DataSource::User(_), DatasetSpec::User(u)) => u.normalized().into(),
                _ => src.name().into(),
            },
            blobs: match src {
                DataSource::Blobs(b) => Some(b),
                _ => None,
            },
            validation: self.validation.filter(|v| *v > 0.0),
            params,
            ..self.clone()
        })
    }

    /// Checks everything that does not need the data (run before loading it).
    pub fn check(&self) -> Result<(), ScenarioError> {
        self.source()?;
        let tasks = self.kind_params()?.get("tasks").and_then(Value::as_u64);
        if let Some(t) = tasks.filter(|&t| t > MAX_TASKS as u64) {
            return invalid(format!(
                "scenario config: tasks = {t} is more than the limit of {MAX_TASKS}"
            ));
        }
        if self.train_per_task == Some(0) {
            return invalid("scenario config: train-per-task must be at least 1");
        }
        if self.test_per_class == Some(0) {
            return invalid("scenario config: test-per-class must be at least 1");
        }
        if let Some(v) = self.validation.filter(|v| !(0.0..1.0).contains(v)) {
            return invalid(format!(
                "scenario config: validation = {v} must be in [0, 1)"
            ));
        }
        Ok(())
    }

    /// Loads the data (`data_dir` searched first, see `crate::data`) and builds the scenario.
    pub fn build(&self, data_dir: Option<&Path>) -> Result<Scenario, ScenarioError> {
        self.check()?;
        let data = self.source()?.load(data_dir)?;
        self.build_with(data)
    }

    /// Builds the scenario on already loaded data (which should be the config's dataset).
    pub fn build_with(&self, data: Split) -> Result<Scenario, ScenarioError> {
        self.check()?;
        let common = Common {
            seed: self.seed,
            train_per_task: self.train_per_task,
            test_per_class: self.test_per_class,
        };
        let mut s = (kind(&self.kind)?.build)(data, &self.params, &common)?;
        if let Some(v) = self.validation.filter(|v| *v > 0.0) {
            s.carve_validation(v, self.seed)?;
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::ok;
    use super::super::{EvalMode, EvalPlan};
    use super::*;

    fn blobs_cfg(kind: &str, extra: &str) -> ScenarioConfig {
        let text = format!(
            r#"{{"kind": "{kind}", "dataset": "blobs",
                "blobs": {{"train-per-class": 30, "test-per-class": 5}}{extra}}}"#
        );
        // Parsed without checks, so that `build` meets the errors.
        ok(serde_json::from_str::<ScenarioConfig>(&text)
            .map_err(|e| ScenarioError::Invalid(e.to_string())))
    }

    fn err(c: &ScenarioConfig) -> String {
        match c.build(None) {
            Ok(_) => String::from("<no error>"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_kind_builds_from_json() {
        let cases = [
            ("class-incremental", "", 5, EvalMode::ClassIl),
            (
                "task-incremental",
                r#", "classes-per-task": 5"#,
                2,
                EvalMode::TaskIl,
            ),
            ("permuted", r#", "tasks": 3"#, 3, EvalMode::DomainIl),
            ("rotated", r#", "max-angle": 90"#, 5, EvalMode::DomainIl),
            (
                "scole",
                r#", "tasks": 40, "skew": 2"#,
                40,
                EvalMode::ClassIl,
            ),
            ("joint", "", 1, EvalMode::ClassIl),
        ];
        for (kind, extra, tasks, eval) in cases {
            let s = ok(blobs_cfg(kind, extra).build(None));
            assert_eq!(s.num_tasks(), tasks, "{kind}");
            assert_eq!(s.eval, eval, "{kind}");
            let plan = if kind == "scole" {
                EvalPlan::AllClasses
            } else {
                EvalPlan::EveryTask
            };
            assert_eq!(s.plan, plan, "{kind}");
        }
    }

    #[test]
    fn options_reach_the_scenario() {
        let c = blobs_cfg(
            "class-incremental",
            r#", "tasks": 4, "classes-per-task": 2, "seed": 9, "shuffle-classes": true,
               "train-per-task": 50, "test-per-class": 2, "validation": 0.2"#,
        );
        let s = ok(c.build(None));
        assert_eq!(s.seed, 9);
        assert_eq!(s.test.len(), 20);
        for t in &s.tasks {
            assert_eq!(t.train.len() + t.valid.len(), 50);
            assert!(!t.valid.is_empty());
        }
        assert_ne!(s.stream()[0], vec![0, 1]);
        // Same config, same scenario.
        let s2 = ok(c.build(None));
        assert_eq!(s.stream(), s2.stream());
        assert_eq!(s.tasks[3].valid, s2.tasks[3].valid);
        // Round trip through JSON.
        let text = match serde_json::to_string(&c) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(ok(ScenarioConfig::from_json(&text)), c);
    }

    #[test]
    fn impossible_values_are_clear_errors() {
        let e = err(&blobs_cfg("class-incremental", r#", "tasks": 6"#));
        assert!(e.contains("6 tasks of 2 classes need 12 classes"), "{e}");
        let e = err(&blobs_cfg("permuted", r#", "classes-per-task": 2"#));
        assert!(
            e.contains("classes-per-task") && e.contains("permuted"),
            "{e}"
        );
        let e = err(&blobs_cfg("scole", r#", "max-angle": 2"#));
        assert!(e.contains("max-angle"), "{e}");
        let e = err(&blobs_cfg("joint", r#", "tasks": 3"#));
        assert!(e.contains("joint"), "{e}");
        let e = err(&blobs_cfg("scole", r#", "skew": 1, "class-weights": [1]"#));
        assert!(e.contains("not both"), "{e}");
        let e = err(&blobs_cfg("scole", r#", "classes-per-task": 11"#));
        assert!(e.contains("11 classes per task"), "{e}");
        let e = err(&blobs_cfg("rotated", r#", "validation": 1.0"#));
        assert!(e.contains("validation"), "{e}");
        let e = err(&blobs_cfg("rotated", r#", "tasks": 0"#));
        assert!(e.contains("at least 1"), "{e}");
        let e = ScenarioConfig::from_json(r#"{"kind": "split", "dataset": "blobs"}"#);
        assert!(e.is_err_and(|e| e.to_string().contains("unknown scenario kind")));
        let mut c = blobs_cfg("joint", "");
        c.dataset = "mnist".into();
        assert!(err(&c).contains("blobs"));
        c.blobs = None;
        c.dataset = "cifar".into();
        assert!(err(&c).contains("unknown data set"));
    }

    #[test]
    fn unknown_keys_and_kinds_are_refused() {
        let e = ScenarioConfig::from_json(r#"{"kind": "joint", "dataset": "blobs", "taks": 1}"#);
        assert!(e.is_err_and(|e| e.to_string().contains("taks")));
        let e = ScenarioConfig::from_json(r#"{"kind": "split", "dataset": "blobs"}"#);
        assert!(e.is_err());
        let e = ScenarioConfig::from_json(r#"{"kind": "joint"}"#);
        assert!(e.is_err_and(|e| e.to_string().contains("dataset")));
        let e = ScenarioConfig::from_json(
            r#"{"kind": "joint", "dataset": "blobs", "blobs": {"clases": 3}}"#,
        );
        assert!(e.is_err());
    }
}
