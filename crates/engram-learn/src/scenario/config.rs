//! Building a scenario from a config ([`ScenarioConfig`], kebab-case keys, unknown keys
//! refused), e.g. in JSON:
//!
//! ```json
//! {"kind": "class-incremental", "dataset": "fashion-mnist", "tasks": 5,
//!  "classes-per-task": 2, "seed": 0, "train-per-task": 2000, "validation": 0.1}
//! ```
//!
//! Defaults: class-/task-incremental: 2 classes per task and as many tasks as fit
//! (⌊C / K⌋), natural class order; permuted and rotated: 5 tasks, rotated over [0, 180]
//! degrees; scole: 500 tasks of 2 classes, uniform; joint: 1 task. Options that mean nothing
//! for the chosen kind are refused rather than ignored, and impossible values (e.g. 6 tasks
//! of 2 classes on 10 classes) are errors that say why.

use std::path::Path;

use super::{
    ClassDistribution, Common, Scenario, ScenarioError, ScoleConfig, SplitTasks, class_incremental,
    invalid, joint, permuted, rotated, scole, task_incremental,
};
use crate::data::{BlobsConfig, DataSource, Split};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScenarioKind {
    ClassIncremental,
    TaskIncremental,
    Permuted,
    Rotated,
    Scole,
    Joint,
}

impl ScenarioKind {
    pub fn name(self) -> &'static str {
        match self {
            ScenarioKind::ClassIncremental => "class-incremental",
            ScenarioKind::TaskIncremental => "task-incremental",
            ScenarioKind::Permuted => "permuted",
            ScenarioKind::Rotated => "rotated",
            ScenarioKind::Scole => "scole",
            ScenarioKind::Joint => "joint",
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ScenarioConfig {
    pub kind: ScenarioKind,
    /// `fashion-mnist`, `mnist` or `blobs`.
    pub dataset: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<usize>,
    /// class-/task-incremental and scole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes_per_task: Option<usize>,
    #[serde(default)]
    pub seed: u64,
    /// Cap on each task's training examples (seeded subsample per task); for scole this is
    /// the `max_train_per_task` cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_per_task: Option<usize>,
    /// Cap on the test examples per class (one seeded subsample).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_per_class: Option<usize>,
    /// class-/task-incremental: seeded class order instead of the natural one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shuffle_classes: Option<bool>,
    /// rotated: the last task's angle in degrees (default 180).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_angle: Option<f32>,
    /// scole: SCoLe's `entropy_decrease` power (0 = uniform).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skew: Option<f64>,
    /// scole: explicit class weights, one per class (instead of `skew`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_weights: Option<Vec<f64>>,
    /// scole: after half the tasks, only the first half of the classes is drawn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgetting: Option<bool>,
    /// Share of the training examples carved out for validation, in [0, 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation: Option<f32>,
    /// Parameters of the synthetic data set (only with `dataset = "blobs"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blobs: Option<BlobsConfig>,
}

impl ScenarioConfig {
    /// A config with every option at its default.
    pub fn new(kind: ScenarioKind, dataset: impl Into<String>) -> ScenarioConfig {
        ScenarioConfig {
            kind,
            dataset: dataset.into(),
            tasks: None,
            classes_per_task: None,
            seed: 0,
            train_per_task: None,
            test_per_class: None,
            shuffle_classes: None,
            max_angle: None,
            skew: None,
            class_weights: None,
            forgetting: None,
            validation: None,
            blobs: None,
        }
    }

    pub fn from_json(text: &str) -> Result<ScenarioConfig, ScenarioError> {
        serde_json::from_str(text)
            .map_err(|e| ScenarioError::Invalid(format!("scenario config: {e}")))
    }

    /// The data set this config names.
    pub fn source(&self) -> Result<DataSource, ScenarioError> {
        let src = DataSource::from_name(&self.dataset)?;
        Ok(match (src, &self.blobs) {
            (DataSource::Blobs(_), Some(b)) => DataSource::Blobs(b.clone()),
            (src, None) => src,
            (_, Some(_)) => {
                return invalid(format!(
                    "scenario config: `blobs` parameters given for dataset {}",
                    self.dataset
                ));
            }
        })
    }

    /// Checks everything that does not need the data (run before loading it).
    pub fn check(&self) -> Result<(), ScenarioError> {
        use ScenarioKind::*;
        let kind = self.kind;
        self.source()?;
        let refuse = |field: &str, allowed: &[ScenarioKind], given: bool| {
            if given && !allowed.contains(&kind) {
                invalid(format!(
                    "scenario config: `{field}` has no meaning for kind {}",
                    kind.name()
                ))
            } else {
                Ok(())
            }
        };
        refuse(
            "classes-per-task",
            &[ClassIncremental, TaskIncremental, Scole],
            self.classes_per_task.is_some(),
        )?;
        refuse(
            "shuffle-classes",
            &[ClassIncremental, TaskIncremental],
            self.shuffle_classes.is_some(),
        )?;
        refuse("max-angle", &[Rotated], self.max_angle.is_some())?;
        refuse("skew", &[Scole], self.skew.is_some())?;
        refuse("class-weights", &[Scole], self.class_weights.is_some())?;
        refuse("forgetting", &[Scole], self.forgetting.is_some())?;
        if self.skew.is_some() && self.class_weights.is_some() {
            return invalid("scenario config: give `skew` or `class-weights`, not both");
        }
        match self.tasks {
            Some(0) => return invalid("scenario config: tasks must be at least 1"),
            Some(t) if kind == Joint && t != 1 => {
                return invalid(format!("scenario config: joint has 1 task, not {t}"));
            }
            _ => {}
        }
        if self.classes_per_task == Some(0) {
            return invalid("scenario config: classes-per-task must be at least 1");
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
        if let Some(a) = self.max_angle.filter(|a| !a.is_finite()) {
            return invalid(format!("scenario config: max-angle = {a}"));
        }
        if let Some(s) = self.skew.filter(|s| !s.is_finite() || *s < 0.0) {
            return invalid(format!("scenario config: skew = {s} must be >= 0"));
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
        use ScenarioKind::*;
        self.check()?;
        let common = Common {
            seed: self.seed,
            train_per_task: self.train_per_task,
            test_per_class: self.test_per_class,
        };
        let c = data.train.num_classes;
        let mut s = match self.kind {
            ClassIncremental | TaskIncremental => {
                let k = self.classes_per_task.unwrap_or(2);
                let cfg = SplitTasks {
                    tasks: self.tasks.unwrap_or(c / k),
                    classes_per_task: k,
                    shuffle_classes: self.shuffle_classes.unwrap_or(false),
                };
                if self.kind == ClassIncremental {
                    class_incremental(data, &cfg, &common)?
                } else {
                    task_incremental(data, &cfg, &common)?
                }
            }
            Permuted => permuted(data, self.tasks.unwrap_or(5), &common)?,
            Rotated => rotated(
                data,
                self.tasks.unwrap_or(5),
                self.max_angle.unwrap_or(180.0),
                &common,
            )?,
            Scole => {
                let distribution = match (&self.class_weights, self.skew) {
                    (Some(w), _) => ClassDistribution::Weights(w.clone()),
                    (None, Some(e)) if e > 0.0 => ClassDistribution::EntropyDecrease(e),
                    _ => ClassDistribution::Uniform,
                };
                let cfg = ScoleConfig {
                    tasks: self.tasks.unwrap_or(500),
                    classes_per_task: self.classes_per_task.unwrap_or(2),
                    distribution,
                    forgetting: self.forgetting.unwrap_or(false),
                };
                scole(data, &cfg, &common)?
            }
            Joint => joint(data, &common)?,
        };
        if let Some(v) = self.validation {
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
        ok(ScenarioConfig::from_json(&text))
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
