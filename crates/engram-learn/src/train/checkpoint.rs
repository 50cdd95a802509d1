//! Checkpoints after each task: the model and the strategy's tensors as safetensors (through
//! engram-ckpt), then `state.json` naming them, written last and atomically. A run killed at
//! any point resumes from the last complete checkpoint; files of older checkpoints are removed
//! only after the new `state.json` is in place.
//!
//! `state.json` also records the run's settings (the run file as JSON, with the data files'
//! checksums): resuming with other settings is an error that lists every difference.
//! Checkpoints written before settings were recorded cannot be checked, so they are refused
//! too (start over with `--overwrite`). On load, the files `state.json` names must be this
//! checkpoint's own (`task-K.model.safetensors` in the same folder), `completed` must fit the
//! run, and the safetensors files must pass their checksums ([`engram_ckpt::Model::verify`]).

use super::trainer::RunOutput;
use crate::scenario::{EvalPlan, Scenario};
use crate::strategy::State;
use crate::{Error, Result, err};
use engram_ckpt::{DType, ModelWriter, TensorSpec, WriteOptions, write_atomic};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub struct Saved {
    /// Tasks completed.
    pub completed: usize,
    pub output: RunOutput,
    pub model_path: PathBuf,
    pub strategy_path: Option<PathBuf>,
    pub strategy_json: serde_json::Value,
    /// The optimizer state carried across tasks (`reset-optimizer = false`), if any.
    pub optimizer_path: Option<PathBuf>,
    pub optimizer_json: serde_json::Value,
}

impl Saved {
    pub fn new(completed: usize, output: RunOutput) -> Saved {
        Saved {
            completed,
            output,
            model_path: PathBuf::new(),
            strategy_path: None,
            strategy_json: serde_json::Value::Null,
            optimizer_path: None,
            optimizer_json: serde_json::Value::Null,
        }
    }

    pub fn strategy_state(&self) -> Result<State> {
        read_state(self.strategy_path.as_deref(), &self.strategy_json)
    }

    /// The optimizer state the run carries across tasks (empty when it resets it).
    pub fn optimizer_state(&self) -> Result<State> {
        read_state(self.optimizer_path.as_deref(), &self.optimizer_json)
    }
}

/// A state from its tensor file (if any) and its JSON.
fn read_state(path: Option<&Path>, json: &Value) -> Result<State> {
    let mut tensors = Vec::new();
    if let Some(p) = path {
        let m = engram_ckpt::Model::open(p)?;
        for t in m.tensors() {
            tensors.push((t.name().to_string(), t.shape().to_vec(), t.to_f32()?));
        }
    }
    Ok(State {
        tensors,
        json: json.clone(),
    })
}

/// Writes `state`'s tensors to `dir/name` (none when it has no tensors): the file's name.
fn write_state(dir: &Path, name: String, state: &State) -> Result<Option<String>> {
    if state.tensors.is_empty() {
        return Ok(None);
    }
    let specs = state
        .tensors
        .iter()
        .map(|(n, s, _)| TensorSpec::new(n.clone(), DType::F32, s))
        .collect();
    let w = ModelWriter::create(&dir.join(&name), specs, &WriteOptions::default())?;
    for (n, _, v) in &state.tensors {
        w.write_f32(n, v)?;
    }
    w.finish(&[])?;
    Ok(Some(name))
}

#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    completed: usize,
    model: String,
    strategy: Option<String>,
    strategy_json: serde_json::Value,
    /// The optimizer state carried across tasks (`reset-optimizer = false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    optimizer: Option<String>,
    #[serde(default, skip_serializing_if = "Value::is_null")]
    optimizer_json: Value,
    output: RunOutput,
    /// The run's settings (absent in checkpoints of older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    settings: Option<Value>,
}

/// Writes the checkpoint after `saved.completed` tasks; `settings` (the run's, `Null`: none)
/// are recorded for [`load_latest`] to compare.
pub fn save<M: burn::module::Module>(
    dir: &Path,
    saved: &Saved,
    net: &M,
    state: &State,
    optimizer: &State,
    settings: &Value,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let k = saved.completed;
    let model = format!("task-{k}.model.safetensors");
    crate::model::io::save(net, &dir.join(&model), &BTreeMap::new())?;
    let strategy = write_state(dir, format!("task-{k}.strategy.safetensors"), state)?;
    let optim_file = write_state(dir, format!("task-{k}.optimizer.safetensors"), optimizer)?;
    let file = StateFile {
        completed: k,
        model,
        strategy,
        strategy_json: state.json.clone(),
        optimizer: optim_file,
        optimizer_json: optimizer.json.clone(),
        output: saved.output.clone(),
        settings: (!settings.is_null()).then(|| settings.clone()),
    };
    let text = serde_json::to_vec_pretty(&file).map_err(|e| err!("{e}"))?;
    write_atomic(&dir.join("state.json"), &text)?;
    // Older checkpoints are no longer referenced.
    for old in 0..k {
        for suffix in ["model", "strategy", "optimizer"] {
            let _ = std::fs::remove_file(dir.join(format!("task-{old}.{suffix}.safetensors")));
        }
    }
    Ok(())
}

/// The last complete checkpoint in `dir`, if any, checked against the run that resumes it:
/// its `scenario`, the task it began at (`first`) and its `settings` (`Null`: not compared).
pub fn load_latest(
    dir: &Path,
    scenario: &Scenario,
    first: usize,
    settings: &Value,
) -> Result<Option<Saved>> {
    let path = dir.join("state.json");
    if !own_file(&path)? {
        return Ok(None);
    }
    let text = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let f: StateFile = serde_json::from_slice(&text)
        .map_err(|e| err!("{}: not a valid checkpoint state: {e}", path.display()))?;
    let bad = |msg: String| err!("{}: {msg}", path.display());
    let k = f.completed;
    let files = [
        ("model", Some(&f.model)),
        ("strategy", f.strategy.as_ref()),
        ("optimizer", f.optimizer.as_ref()),
    ];
    for (key, name) in files {
        let Some(name) = name else { continue };
        engram_ckpt::names::plain_name(key, name).map_err(|e| bad(e.to_string()))?;
        let want = format!("task-{k}.{key}.safetensors");
        if *name != want {
            return Err(bad(format!(
                "{key} '{name}' is not this checkpoint's file '{want}'"
            )));
        }
    }
    match (&f.settings, settings) {
        (_, Value::Null) => {}
        (None, _) => {
            return Err(bad(
                "the checkpoint records no run settings (an older engram wrote it), so resuming \
                 cannot be checked: start over with --overwrite"
                    .into(),
            ));
        }
        (Some(old), new) => {
            let mut diff = Vec::new();
            differences(String::new(), Some(old), Some(new), &mut diff);
            if !diff.is_empty() {
                return Err(bad(format!(
                    "the run's settings differ from those the checkpoint was made with \
                     (key: checkpoint -> now):\n  {}\nresume with the checkpoint's settings, or \
                     start over with --overwrite",
                    diff.join("\n  ")
                )));
            }
        }
    }
    let o = &f.output;
    let (tasks, rows) = (scenario.tasks.len(), o.seconds_per_task.len());
    let curve = match scenario.plan {
        EvalPlan::EveryTask => o.accuracy.len(),
        EvalPlan::AllClasses => o.all_class_curve.len(),
    };
    let full = |m: &Vec<Vec<f64>>| m.iter().all(|r| r.len() == tasks);
    if k == 0 || k > tasks || rows + first != k || curve != rows {
        return Err(bad(format!(
            "completed = {k} with {rows} tasks recorded does not fit this run of {tasks} tasks"
        )));
    }
    // Every recorded number must be one a run could have produced: percentages in [0, 100],
    // times finite and not negative, a baseline per task.
    let percent = |v: &f64| v.is_finite() && (0.0..=100.0).contains(v);
    let percents = o
        .accuracy
        .iter()
        .chain(&o.task_il_accuracy)
        .flatten()
        .chain(&o.baseline)
        .chain(&o.baseline_task_il)
        .chain(&o.all_class_curve)
        .chain(&o.current_task_curve)
        .chain(&o.ece_curve)
        .chain(o.ece_matrix.iter().flatten())
        .chain(std::iter::once(&o.ece));
    let mut percents = percents;
    if o.baseline.len() != tasks
        || o.baseline_task_il.len() != tasks
        || !percents.all(percent)
        || !o
            .seconds_per_task
            .iter()
            .all(|t| t.is_finite() && *t >= 0.0)
    {
        return Err(bad(
            "the recorded results are not ones a run produces (a baseline per task, percentages in [0, 100], times >= 0)".into(),
        ));
    }
    if o.ece_curve.is_empty() && rows > 0 {
        return Err(bad(
            "the checkpoint records no calibration per task (an engram before ECE after every \
             task wrote it): start over with --overwrite"
                .into(),
        ));
    }
    if o.eval_mode != format!("{:?}", scenario.eval)
        || !full(&o.accuracy)
        || !full(&o.task_il_accuracy)
        || !full(&o.ece_matrix)
        || o.ece_matrix.len() != o.accuracy.len()
        || o.ece_curve.len() != rows
    {
        return Err(bad(
            "the recorded accuracies do not fit this run's scenario".into(),
        ));
    }
    let model_path = dir.join(f.model);
    let strategy_path = f.strategy.map(|s| dir.join(s));
    let optimizer_path = f.optimizer.map(|s| dir.join(s));
    for p in std::iter::once(&model_path)
        .chain(&strategy_path)
        .chain(&optimizer_path)
    {
        if !own_file(p)? {
            return Err(err!("{}: missing from the checkpoint", p.display()));
        }
        let m = engram_ckpt::Model::open(p)?;
        if !m.metadata().contains_key(engram_ckpt::checksum::KEY) {
            return Err(err!(
                "{}: has no checksums ({}), which engram writes into every checkpoint file",
                p.display(),
                engram_ckpt::checksum::KEY
            ));
        }
        m.verify()?;
    }
    Ok(Some(Saved {
        completed: k,
        output: f.output,
        model_path,
        strategy_path,
        strategy_json: f.strategy_json,
        optimizer_path,
        optimizer_json: f.optimizer_json,
    }))
}

/// Whether the checkpoint file `path` is there, as a regular file of its own: a symlink
/// (which could lead out of the folder), a folder or a special file (a FIFO would block the
/// read) is refused before it is opened.
fn own_file(path: &Path) -> Result<bool> {
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(path, e)),
        Ok(m) if m.is_file() => Ok(true),
        Ok(_) => Err(err!(
            "{}: not a regular file (a symlink, a folder or a special file): a checkpoint's \
             files must be its own",
            path.display()
        )),
    }
}

/// Every leaf where `new` differs from `old`, as `key.path: old -> new` (`(not set)` for a
/// key only one side has).
pub(crate) fn differences(
    path: String,
    old: Option<&Value>,
    new: Option<&Value>,
    out: &mut Vec<String>,
) {
    let key = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            for k in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
                differences(key(k), a.get(k), b.get(k), out);
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                differences(key(&i.to_string()), Some(x), Some(y), out);
            }
        }
        _ if old != new => {
            let show = |v: Option<&Value>| v.map_or("(not set)".into(), Value::to_string);
            out.push(format!("{path}: {} -> {}", show(old), show(new)));
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::ScenarioConfig;
    use serde_json::json;

    /// Writes a `state.json` of `completed` tasks naming `model` and `strategy`, with
    /// `settings`, for a run of three tasks; returns what loading it says.
    fn load_err(
        completed: usize,
        model: &str,
        strategy: Option<&str>,
        settings: Option<Value>,
        now: &Value,
    ) -> String {
        load_err_with(completed, model, strategy, settings, now, &|_| {})
    }

    /// [`load_err`] with the recorded results changed by `tweak`.
    fn load_err_with(
        completed: usize,
        model: &str,
        strategy: Option<&str>,
        settings: Option<Value>,
        now: &Value,
        tweak: &dyn Fn(&mut RunOutput),
    ) -> String {
        let s = ScenarioConfig::new("class-incremental", "blobs")
            .with("tasks", 3)
            .build(None)
            .expect("scenario");
        let rows = completed.min(3);
        let f = StateFile {
            completed,
            model: model.into(),
            strategy: strategy.map(String::from),
            strategy_json: Value::Null,
            optimizer: None,
            optimizer_json: Value::Null,
            output: RunOutput {
                eval_mode: format!("{:?}", s.eval),
                accuracy: vec![vec![0.0; 3]; rows],
                ece_matrix: vec![vec![0.0; 3]; rows],
                ece_curve: vec![0.0; rows],
                seconds_per_task: vec![1.0; rows],
                baseline: vec![10.0; 3],
                baseline_task_il: vec![50.0; 3],
                ..Default::default()
            },
            settings,
        };
        let mut f = f;
        tweak(&mut f.output);
        let dir = tempfile::tempdir().expect("dir");
        let text = serde_json::to_vec(&f).expect("json");
        std::fs::write(dir.path().join("state.json"), text).expect("write");
        match load_latest(dir.path(), &s, 0, now) {
            Ok(_) => "<no error>".into(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn state_json_cannot_point_outside_its_folder_or_misstate_the_run() {
        let m1 = "task-1.model.safetensors";
        let cases = [
            (1, "../task-1.model.safetensors", None, "path separator"),
            (1, "/etc/passwd", None, "path separator"),
            (1, "..", None, "not a plain name"),
            (1, "", None, "is empty"),
            (1, "task-1.model.safetensors\0", None, "control character"),
            (
                1,
                "task-2.model.safetensors",
                None,
                "not this checkpoint's file",
            ),
            (1, m1, Some("../../x"), "strategy '../../x'"),
            (
                1,
                m1,
                Some("task-1.model.safetensors"),
                "strategy 'task-1.model",
            ),
            (0, "task-0.model.safetensors", None, "does not fit"),
            (4, "task-4.model.safetensors", None, "does not fit"),
        ];
        for (k, model, strategy, want) in cases {
            let e = load_err(k, model, strategy, None, &Value::Null);
            assert!(e.contains("state.json") && e.contains(want), "{model}: {e}");
        }
        // Recorded results no run produces: refused before anything trains.
        let tweaks: [&dyn Fn(&mut RunOutput); 5] = [
            &|o| o.baseline.clear(),
            &|o| o.baseline_task_il = vec![1.0; 99],
            &|o| o.accuracy[0][0] = -400.0,
            &|o| o.seconds_per_task[0] = -5.0,
            &|o| o.ece = 1e308,
        ];
        for t in tweaks {
            let e = load_err_with(1, m1, None, None, &Value::Null, t);
            assert!(e.contains("not ones a run produces"), "{e}");
        }
        // Well-formed, but the model file is not there.
        let e = load_err(1, m1, None, None, &Value::Null);
        assert!(e.contains(m1), "{e}");
    }

    #[test]
    fn changed_settings_are_listed_and_old_checkpoints_refused() {
        let m1 = "task-1.model.safetensors";
        let then = json!({"seed": 1, "train": {"optimizer": {"lr": 0.01}}, "hidden": [32]});
        let now = json!({"seed": 2, "train": {"optimizer": {"lr": 0.02}, "epochs": 3},
                         "hidden": [32, 8]});
        let e = load_err(1, m1, None, Some(then.clone()), &now);
        for want in [
            "seed: 1 -> 2",
            "train.optimizer.lr: 0.01 -> 0.02",
            "train.epochs: (not set) -> 3",
            "hidden: [32] -> [32,8]",
            "--overwrite",
        ] {
            assert!(e.contains(want), "{want}: {e}");
        }
        let e = load_err(1, m1, None, None, &now);
        assert!(e.contains("records no run settings"), "{e}");
        // The same settings get as far as the model file.
        let e = load_err(1, m1, None, Some(then.clone()), &then);
        assert!(!e.contains("settings") && e.contains(m1), "{e}");
    }
}
