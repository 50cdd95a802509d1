//! The results of one continual-learning run, as plain data. engram-learn writes this shape
//! (its `metrics::Summary` is the `summary` object); engram-report reads it without
//! depending on engram-learn.
//!
//! ```json
//! {
//!   "name": "ewc-split-mnist-s0", "strategy": "ewc", "scenario": "split-mnist",
//!   "eval_mode": "class-il", "seed": 0,
//!   "tasks": ["0/1", "2/3"],
//!   "accuracy": [[99.1, 0.0], [60.2, 98.7]],
//!   "task_il_accuracy": [[99.1, 50.3], [93.0, 98.9]] | null,
//!   "baseline": [50.1, 49.8] | null,
//!   "summary": {"acc": 79.45, "aia": 89.3, "forgetting": 38.9, "bwt": -38.9, "fwt": null,
//!               "min_accuracy": 60.2, "ece": 12.0, "time_per_task_s": [3.1, 3.3],
//!               "time_total_s": 6.4, "peak_memory_bytes": 123456, "state_bytes": 4096, ...},
//!   "all_class_curve": [12.0, 15.5, ...] | null,
//!   "ece_curve": [3.1, 9.8] | null, "ece_matrix": [[3.1, 40.2], [20.5, 4.0]] | null,
//!   "notes": ["..."],
//!   "params": {"lambda": 100.0, ...}
//! }
//! ```
//!
//! Accuracies are percent; `accuracy[k][i]` is the accuracy on task `i` after training task
//! `k` (the upper triangle included). Every field but `accuracy` may be omitted. A long
//! stream evaluated on all classes only (SCoLe) may leave `accuracy` empty (`[]`) and give
//! `all_class_curve` instead; its `tasks` then need not match the matrix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One run: a strategy on a scenario with one seed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunResults {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub strategy: String,
    #[serde(default)]
    pub scenario: String,
    /// `task-il`, `class-il`, `domain-il`.
    #[serde(default)]
    pub eval_mode: String,
    #[serde(default)]
    pub seed: u64,
    /// Task names; may be empty (then tasks are numbered from 1).
    #[serde(default)]
    pub tasks: Vec<String>,
    /// T × T accuracy matrix in the run's `eval_mode`, percent.
    pub accuracy: Vec<Vec<f64>>,
    /// The same matrix in Task-IL, when the run measured both.
    #[serde(default)]
    pub task_il_accuracy: Option<Vec<Vec<f64>>>,
    /// Accuracy of the randomly initialised model on each task (FWT's b_i).
    #[serde(default)]
    pub baseline: Option<Vec<f64>>,
    #[serde(default)]
    pub summary: RunSummary,
    /// Accuracy on all classes along a long stream (SCoLe), one point per evaluation.
    #[serde(default)]
    pub all_class_curve: Option<Vec<f64>>,
    /// ECE (15 bins, percent) after each task over the test sets of the tasks seen so far.
    #[serde(default)]
    pub ece_curve: Option<Vec<f64>>,
    /// ECE[k][i] on task i's test set after task k (like `accuracy`).
    #[serde(default)]
    pub ece_matrix: Option<Vec<Vec<f64>>>,
    /// Notes on how to read the run (e.g. a Task-IL method run in Class-IL).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The run's parameters (free form).
    #[serde(default)]
    pub params: Value,
}

/// The derived metrics of a run (percent; seconds; bytes). Undefined metrics are `null`.
/// Fields this crate does not know are kept in `extra` and written back unchanged.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    #[serde(default)]
    pub acc: Option<f64>,
    #[serde(default)]
    pub aia: Option<f64>,
    #[serde(default)]
    pub forgetting: Option<f64>,
    #[serde(default)]
    pub bwt: Option<f64>,
    #[serde(default)]
    pub fwt: Option<f64>,
    #[serde(default)]
    pub min_accuracy: Option<f64>,
    #[serde(default)]
    pub ece: Option<f64>,
    #[serde(default)]
    pub time_per_task_s: Vec<f64>,
    #[serde(default)]
    pub time_total_s: Option<f64>,
    #[serde(default)]
    pub peak_memory_bytes: Option<u64>,
    #[serde(default)]
    pub state_bytes: Option<u64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl RunSummary {
    /// Total training time: `time_total_s`, or the sum of `time_per_task_s`.
    pub fn total_time_s(&self) -> Option<f64> {
        self.time_total_s.or_else(|| {
            (!self.time_per_task_s.is_empty()).then(|| self.time_per_task_s.iter().sum())
        })
    }
}

impl RunResults {
    /// Number of tasks T of the accuracy matrix (0 for a run with an all-class curve only).
    pub fn num_tasks(&self) -> usize {
        self.accuracy.len()
    }

    /// Number of tasks in the sequence: the task names, or the matrix size.
    pub fn sequence_len(&self) -> usize {
        self.tasks.len().max(self.num_tasks())
    }

    /// Task names, numbered from 1 where `tasks` is empty.
    pub fn task_labels(&self) -> Vec<String> {
        if self.tasks.len() == self.num_tasks() {
            self.tasks.clone()
        } else {
            (1..=self.num_tasks()).map(|i| i.to_string()).collect()
        }
    }

    /// A display name: `name`, or `strategy/scenario/seed`.
    pub fn display_name(&self) -> String {
        if self.name.is_empty() {
            format!("{}/{}/seed {}", self.strategy, self.scenario, self.seed)
        } else {
            self.name.clone()
        }
    }

    /// Checks the shapes: square accuracy matrices of T = `tasks.len()` (when given), a
    /// baseline of T values, finite numbers. The error names the run and the field.
    pub fn validate(&self) -> Result<(), String> {
        let who = self.display_name();
        let t = self.num_tasks();
        if t == 0 {
            // A long stream evaluated on all classes only (no T x T matrix): the curve is
            // the result.
            if self.all_class_curve.as_ref().is_none_or(|c| c.is_empty()) {
                return Err(format!(
                    "run {who}: accuracy matrix is empty and there is no all_class_curve"
                ));
            }
            if let Some(m) = self.task_il_accuracy.as_ref().filter(|m| !m.is_empty()) {
                check_matrix(&who, "task_il_accuracy", m, m.len())?;
            }
            if let Some(c) = &self.all_class_curve {
                check_finite(&who, "all_class_curve", c)?;
            }
            return self.check_calibration(&who, 0);
        }
        if !self.tasks.is_empty() && self.tasks.len() != t {
            return Err(format!(
                "run {who}: {} task names for a {t}x{t} accuracy matrix",
                self.tasks.len()
            ));
        }
        check_matrix(&who, "accuracy", &self.accuracy, t)?;
        if let Some(m) = &self.task_il_accuracy {
            check_matrix(&who, "task_il_accuracy", m, t)?;
        }
        if let Some(b) = &self.baseline {
            if b.len() != t {
                return Err(format!(
                    "run {who}: baseline has {} values, expected {t}",
                    b.len()
                ));
            }
            check_finite(&who, "baseline", b)?;
        }
        if let Some(c) = &self.all_class_curve {
            check_finite(&who, "all_class_curve", c)?;
        }
        self.check_calibration(&who, t)
    }

    /// ECE values are percentages: one per task (`ece_curve`, as long as the sequence), the
    /// matrix T x T like `accuracy` (none for a stream without one, `t` = 0).
    fn check_calibration(&self, who: &str, t: usize) -> Result<(), String> {
        let percent = |field: &str, xs: &[f64]| match xs
            .iter()
            .find(|x| !(x.is_finite() && (0.0..=100.0).contains(*x)))
        {
            Some(x) => Err(format!(
                "run {who}: {field} holds {x}, not a percentage in [0, 100]"
            )),
            None => Ok(()),
        };
        if let Some(c) = &self.ece_curve {
            let n = match self.sequence_len() {
                0 => self.all_class_curve.as_ref().map_or(0, Vec::len),
                n => n,
            };
            if c.len() != n {
                return Err(format!(
                    "run {who}: ece_curve has {} values for a sequence of {n} tasks",
                    c.len()
                ));
            }
            percent("ece_curve", c)?;
        }
        if let Some(m) = &self.ece_matrix {
            if t == 0 {
                return Err(format!("run {who}: ece_matrix without an accuracy matrix"));
            }
            check_matrix(who, "ece_matrix", m, t)?;
            for row in m {
                percent("ece_matrix", row)?;
            }
        }
        Ok(())
    }
}

fn check_matrix(who: &str, field: &str, m: &[Vec<f64>], t: usize) -> Result<(), String> {
    if m.len() != t {
        return Err(format!(
            "run {who}: {field} has {} rows, expected {t}",
            m.len()
        ));
    }
    for (k, row) in m.iter().enumerate() {
        if row.len() != t {
            return Err(format!(
                "run {who}: {field} row {k} has {} values, expected {t} (the matrix is T x T)",
                row.len()
            ));
        }
        check_finite(who, field, row)?;
    }
    Ok(())
}

fn check_finite(who: &str, field: &str, xs: &[f64]) -> Result<(), String> {
    match xs.iter().find(|x| !x.is_finite()) {
        Some(x) => Err(format!("run {who}: {field} holds a non-finite value {x}")),
        None => Ok(()),
    }
}

/// Parses results JSON: one run object or an array of runs; each is validated.
pub fn parse_results(text: &str) -> Result<Vec<RunResults>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("results JSON: {e}"))?;
    let runs: Vec<RunResults> = if v.is_array() {
        serde_json::from_value(v).map_err(|e| format!("results JSON: {e}"))?
    } else {
        vec![serde_json::from_value(v).map_err(|e| format!("results JSON: {e}"))?]
    };
    for r in &runs {
        r.validate()?;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learn_summary_shape_parses_and_round_trips() {
        // The shape engram-learn's metrics::Summary serializes to, including fields this
        // crate does not name.
        let text = r#"{"name":"r","strategy":"ewc","scenario":"split","eval_mode":"class-il",
            "seed":3,"tasks":["a","b"],"accuracy":[[90.0,5.0],[70.0,95.0]],
            "summary":{"eval_mode":"class-il","tasks":2,"acc":82.5,"aia":86.25,
              "average_accuracies":[90.0,82.5],"forgetting":20.0,"forgetting_per_task":[20.0],
              "bwt":-20.0,"fwt":null,"min_accuracy":70.0,"ece":null,
              "time_per_task_s":[1.0,2.0],"time_total_s":3.0,"peak_memory_bytes":1024,
              "state_bytes":null}}"#;
        let runs = parse_results(text).unwrap();
        let r = &runs[0];
        assert_eq!(r.summary.acc, Some(82.5));
        assert_eq!(r.summary.fwt, None);
        assert_eq!(r.summary.total_time_s(), Some(3.0));
        assert_eq!(r.summary.extra["tasks"], 2);
        assert!(r.params.is_null());
        let back = serde_json::to_value(r).unwrap();
        assert_eq!(back["summary"]["average_accuracies"][1], 82.5);
        let again: RunResults = serde_json::from_value(back).unwrap();
        assert_eq!(&again, r);
    }

    #[test]
    fn shapes_are_checked() {
        let ok = r#"[{"accuracy":[[1.0]]}]"#;
        let r = parse_results(ok).unwrap();
        assert_eq!(r[0].task_labels(), vec!["1"]);
        let ece = r#"{"accuracy":[[1.0,0.0],[2.0,3.0]],"ece_curve":[4.0,5.5],"ece_matrix":[[4.0,60.0],[7.0,5.0]]}"#;
        assert!(parse_results(ece).is_ok());
        // A stream with an all-class curve only.
        let curve = r#"{"accuracy":[],"tasks":["a","b","c"],"all_class_curve":[10.0,20.0]}"#;
        let r = parse_results(curve).unwrap();
        assert_eq!((r[0].num_tasks(), r[0].sequence_len()), (0, 3));
        for (bad, needle) in [
            (r#"{"accuracy":[]}"#, "empty"),
            (
                r#"{"accuracy":[],"all_class_curve":[]}"#,
                "no all_class_curve",
            ),
            (r#"{"accuracy":[[1.0,2.0],[3.0]]}"#, "row 1"),
            (r#"{"accuracy":[[1.0]],"tasks":["a","b"]}"#, "task names"),
            (r#"{"accuracy":[[1.0]],"baseline":[1.0,2.0]}"#, "baseline"),
            (
                r#"{"accuracy":[[1.0]],"task_il_accuracy":[[1.0],[2.0]]}"#,
                "task_il",
            ),
            (r#"{"strategy":"x"}"#, "accuracy"),
            (
                r#"{"accuracy":[[1.0,1.0],[2.0,2.0]],"ece_curve":[1.0]}"#,
                "ece_curve has 1 values",
            ),
            (
                r#"{"accuracy":[[1.0,1.0],[2.0,2.0]],"ece_matrix":[[1.0],[2.0,3.0]]}"#,
                "ece_matrix row 0",
            ),
            (
                r#"{"accuracy":[[1.0]],"ece_curve":[200.0]}"#,
                "not a percentage",
            ),
            (
                r#"{"accuracy":[[1.0]],"ece_matrix":[[-5.0]]}"#,
                "not a percentage",
            ),
            ("[1", "results JSON"),
        ] {
            let e = parse_results(bad).unwrap_err();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
