//! Running a run file: build its scenario, train its model with its strategy (checkpointing
//! after each task, resuming on request) and write `results.json` in the shape the report
//! reads (`engram_report::results::RunResults`). `engram train`, the demo and the
//! continual-learning suite all go through [`run_config`] or [`train_on`]; a run file with
//! phases (a curriculum) through [`run_curriculum`]. Every run keeps an event log as it
//! trains ([`events`]).

pub mod events;

use crate::config::{CurriculumConfig, RunConfig};
use crate::curriculum::CurriculumOut;
use crate::data::{DataFile, Meta};
use crate::metrics::{AccuracyMatrix, Costs, Summary};
use crate::scenario::Scenario;
use crate::train::{Event, RunOutput, Trainer};
use crate::{Error, Result, err};
use events::{EventLog, Header, Logged};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// How [`run_config`] treats data and an existing checkpoint.
#[derive(Clone, Debug, Default)]
pub struct RunOptions<'a> {
    /// Where the data sets are (default: the system packages' locations).
    pub data_dir: Option<&'a Path>,
    /// Continue from the run's last checkpoint.
    pub resume: bool,
    /// Discard an existing checkpoint and start over.
    pub overwrite: bool,
    /// Stop after this many tasks (the checkpoint lets a resumed run finish).
    pub stop_after: Option<usize>,
    /// Write the strategy's masks or importance here (safetensors) after the run.
    pub export_masks: Option<&'a Path>,
    /// Run only what is missing: a run whose `results.json` is there is done (its results
    /// returned, nothing loaded or touched; results made with other settings are an error
    /// listing them, see [`finished`]); a run with a checkpoint resumes it; else it starts.
    /// Excludes `resume` and `overwrite`.
    pub if_needed: bool,
}

/// Runs one configuration into `dir` (`results.json`, `checkpoint/`, the event log
/// `events.jsonl`) and returns the results JSON; `None` if stopped early by `stop_after`.
pub fn run_config(
    cfg: &RunConfig,
    dir: &Path,
    opts: &RunOptions,
    on: &mut dyn FnMut(Event),
) -> Result<Option<Value>> {
    run_config_with(cfg, dir, opts, &mut |l| on(l.event))
}

/// The lock file of a run folder, held by the process running it with `--if-needed`.
pub const LOCK: &str = ".lock";

/// Creates `dir` and takes its lock file ([`LOCK`]) without waiting: another process
/// running the same run is an error.
fn lock_run(dir: &Path) -> Result<std::fs::File> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let p = dir.join(LOCK);
    if let Ok(m) = p.symlink_metadata()
        && !m.file_type().is_file()
    {
        return Err(err!(
            "{} is {}, not the run's lock file; remove it",
            shown(&p),
            engram_ckpt::file::kind_of(&m)
        ));
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .map_err(|e| Error::io(&p, e))?;
    match f.try_lock() {
        Ok(()) => Ok(f),
        Err(std::fs::TryLockError::WouldBlock) => Err(err!(
            "{}: another engram process is running this run now (it holds {}); wait for it \
             to end",
            shown(dir),
            shown(&p)
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io(&p, e)),
    }
}

/// [`run_config`], handing the caller each event with the run's step count across tasks, as
/// the event log records it (a TensorBoard writer needs it).
pub fn run_config_with(
    cfg: &RunConfig,
    dir: &Path,
    opts: &RunOptions,
    on: &mut dyn FnMut(Logged),
) -> Result<Option<Value>> {
    let started = std::time::Instant::now();
    cfg.validate()?;
    let ckpt = dir.join("checkpoint");
    let results_file = dir.join("results.json");
    // Held until the run returns: with --if-needed (the lines of a sweep, which an engine
    // may start twice) a second process on the same run is refused, not run beside the first.
    let mut _lock = None;
    if opts.if_needed {
        if opts.resume || opts.overwrite {
            return Err(err!("--if-needed excludes --resume and --overwrite"));
        }
        _lock = Some(lock_run(dir)?);
        if let Some(done) = finished(cfg, dir)? {
            return Ok(Some(done));
        }
    }
    // With --if-needed, a checkpoint is resumed as with --resume.
    let resume = opts.resume || opts.if_needed;
    if ckpt.join("state.json").exists() && !resume && !opts.overwrite {
        return Err(err!(
            "{} holds a checkpoint of this run: pass --resume to continue it or --overwrite to start over",
            engram_ckpt::names::esc(&dir.display().to_string())
        ));
    }
    // Outputs that would replace an input (the run file) are refused before anything runs.
    for p in [&ckpt, &results_file, &dir.join(events::FILE)] {
        engram_ckpt::commit::refuse_input(p)?;
    }
    events::check(dir)?;
    if let Some(p) = opts.export_masks {
        check_export(cfg, p, dir)?;
    }
    let data = cfg.scenario.source()?.load(opts.data_dir)?;
    let files = data.files.clone();
    let meta = data.meta.clone();
    let scenario = cfg.scenario.build_with(data)?;
    let done = opts.stop_after.is_none_or(|n| n >= scenario.tasks.len());
    let export = opts.export_masks.filter(|_| done);
    let settings = settings(cfg, &files)?;
    // An earlier run's checkpoint and results go once the new run can start (the trainer's
    // checks passed), not before: a run refused at its start leaves them as they were.
    let discard = match opts.overwrite {
        true => vec![ckpt.clone(), results_file.clone()],
        false => Vec::new(),
    };
    let run = Run {
        checkpoint_dir: Some(ckpt),
        stop_after: opts.stop_after,
        export_masks: export,
        discard,
    };
    let mut log = EventLog::new(
        dir,
        Header {
            name: cfg.run_name(),
            strategy: cfg.strategy.name.clone(),
            scenario: scenario.name.clone(),
        },
        started,
    );
    let written = train(cfg, &scenario, settings, run, &mut |e| on(log.record(e))).and_then(
        |out| match done {
            true => write_results(cfg, &scenario, &out, &files, &meta, &results_file).map(Some),
            false => Ok(None),
        },
    );
    match written {
        Err(e) => {
            log.fail(&e);
            Err(e)
        }
        Ok(results) => {
            log.finish(done).map_err(|e| match done {
                true => err!("{e} (the run finished and wrote its results)"),
                false => e,
            })?;
            Ok(results)
        }
    }
}

/// Writes a finished run's `results.json`; returns its JSON.
fn write_results(
    cfg: &RunConfig,
    scenario: &Scenario,
    out: &RunOutput,
    files: &[DataFile],
    meta: &Meta,
    results_file: &Path,
) -> Result<Value> {
    let mut results = results_json(cfg, scenario, out)?;
    results["data"] = serde_json::to_value(files).map_err(|e| err!("{e}"))?;
    // The names behind the ids of a user's data set: text labels (CSV) and domains.
    if !meta.classes.is_empty() {
        results["classes"] = json!(meta.classes);
    }
    if let Some(d) = &meta.domains {
        results["domains"] = json!(d.names);
    }
    if let Some(dir) = results_file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let text = serde_json::to_string_pretty(&results).map_err(|e| err!("{e}"))? + "\n";
    engram_ckpt::write_atomic(results_file, text.as_bytes())?;
    Ok(results)
}

/// The results of `cfg`'s finished run in `dir` (its `results.json`), or `None` when there
/// are none. Results recorded with other settings are an error listing every difference: the
/// run file's settings with every default filled in ([`RunConfig::normalized`]) are compared
/// with those of the run file the results record, as a checkpoint's are when resuming. The
/// data are not read, so their checksums are not compared (a resumed run compares them).
pub fn finished(cfg: &RunConfig, dir: &Path) -> Result<Option<Value>> {
    let Some((path, results, old)) = recorded::<RunConfig>(dir, "run file")? else {
        return Ok(None);
    };
    same_settings(&path, &old.normalized()?, &cfg.normalized()?)?;
    Ok(Some(results))
}

/// [`finished`] for a curriculum, whose `results.json` records its normalized run file.
pub fn curriculum_finished(cfg: &CurriculumConfig, dir: &Path) -> Result<Option<Value>> {
    let Some((path, results, old)) = recorded::<CurriculumConfig>(dir, "curriculum")? else {
        return Ok(None);
    };
    same_settings(&path, &old.normalized()?, &cfg.normalized()?)?;
    Ok(Some(results))
}

/// `dir/results.json`, its JSON and the run file it records (`params.config`, a `what`).
fn recorded<T: serde::de::DeserializeOwned>(
    dir: &Path,
    what: &str,
) -> Result<Option<(PathBuf, Value, T)>> {
    let Some((path, results)) = read_results(dir)? else {
        return Ok(None);
    };
    let old = results
        .pointer("/params/config")
        .cloned()
        .ok_or_else(|| err!("no params.config"))
        .and_then(|v| serde_json::from_value(v).map_err(|e| err!("{e}")))
        .map_err(|e| {
            err!(
                "{}: records no {what} this engram reads ({e}); start over with --overwrite",
                shown(&path)
            )
        })?;
    Ok(Some((path, results, old)))
}

/// `dir/results.json` and its JSON, if there is one.
fn read_results(dir: &Path) -> Result<Option<(PathBuf, Value)>> {
    let path = dir.join("results.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&path, e)),
    };
    let v = serde_json::from_slice(&bytes)
        .map_err(|e| err!("{}: not valid results JSON: {e}", shown(&path)))?;
    Ok(Some((path, v)))
}

/// Refuses results (at `path`) recorded with settings `old` for a run with settings `new`.
fn same_settings<T: serde::Serialize>(path: &Path, old: &T, new: &T) -> Result<()> {
    let value = |v: &T| serde_json::to_value(v).map_err(|e| err!("{e}"));
    let mut diff = Vec::new();
    crate::train::checkpoint::differences(
        String::new(),
        Some(&value(old)?),
        Some(&value(new)?),
        &mut diff,
    );
    if diff.is_empty() {
        return Ok(());
    }
    Err(err!(
        "{}: the finished run's settings differ from the run file's (key: results -> now):\n  \
         {}\nrename the run, or start over with --overwrite",
        shown(path),
        diff.join("\n  ")
    ))
}

/// A path as error messages show it.
fn shown(p: &Path) -> String {
    engram_ckpt::names::esc(&p.display().to_string()).into_owned()
}

/// Runs a curriculum ([`crate::curriculum`]) into `dir`: each phase's weights in
/// `phase-<phase>.safetensors` ([`phase_file`]), the last phase's in `model.safetensors`,
/// and `results.json` ([`curriculum_json`], with the data files read); returns the results
/// JSON. The folder is built beside `dir` and switched into place whole
/// ([`engram_ckpt::Staged`]): a run killed or failed leaves the earlier outputs as they were,
/// and a finished run leaves only its own outputs, none of an earlier curriculum's (a phase
/// file of a phase no longer in the run file goes). Other files in `dir` are kept. A
/// curriculum has no checkpoints; it is run again whole. Its event log (`events.jsonl`, not
/// staged: it is written as the run goes) starts anew with each run.
pub fn run_curriculum(
    cfg: &CurriculumConfig,
    dir: &Path,
    data_dir: Option<&Path>,
    on: &mut dyn FnMut(usize, Event),
) -> Result<Value> {
    run_curriculum_with(cfg, dir, data_dir, &mut |l| {
        on(l.phase.unwrap_or(0), l.event)
    })
}

/// [`run_curriculum`], handing the caller each event with its phase and the step count
/// across phases, as the event log records them.
pub fn run_curriculum_with(
    cfg: &CurriculumConfig,
    dir: &Path,
    data_dir: Option<&Path>,
    on: &mut dyn FnMut(Logged),
) -> Result<Value> {
    let started = std::time::Instant::now();
    cfg.validate()?;
    engram_ckpt::commit::refuse_input(&dir.join(events::FILE))?;
    events::check(dir)?;
    // Checked before training: the folder can be made and replaces no input.
    let staged = engram_ckpt::Staged::new(dir)?;
    let (scenarios, files) = crate::curriculum::load_scenarios(cfg, data_dir)?;
    let names: Vec<&str> = scenarios.iter().map(|s| s.name.as_str()).collect();
    let mut log = EventLog::new(
        dir,
        Header {
            name: cfg.run_name(),
            strategy: "curriculum".into(),
            scenario: names.join(", "),
        },
        started,
    );
    let written = curriculum_phases(cfg, &scenarios, &files, staged, &mut |k, e| {
        log.set_phase(k, &cfg.phases[k].name);
        on(log.record(e))
    });
    match written {
        Err(e) => {
            log.fail(&e);
            Err(e)
        }
        Ok(results) => {
            log.finish(true)
                .map_err(|e| err!("{e} (the run finished and wrote its results)"))?;
            Ok(results)
        }
    }
}

/// Trains a curriculum's phases and switches its outputs into place.
fn curriculum_phases(
    cfg: &CurriculumConfig,
    scenarios: &[Scenario],
    files: &[DataFile],
    staged: engram_ckpt::Staged,
    on: &mut dyn FnMut(usize, Event),
) -> Result<Value> {
    let out = crate::curriculum::run_phases_from(cfg, scenarios, None, on)
        .map_err(|e| err!("run {}: {e}", cfg.run_name()))?;
    let mut results = curriculum_json(cfg, &out)?;
    results["data"] = serde_json::to_value(files).map_err(|e| err!("{e}"))?;
    let meta = |phase: &str| {
        [
            ("run".to_string(), cfg.run_name()),
            ("phase".to_string(), phase.to_string()),
        ]
        .into_iter()
        .collect()
    };
    let save = |file: &str, p: &crate::curriculum::PhaseOut| {
        let path = staged.path().join(file);
        crate::model::io::save_values(&path, &p.weights, &out.shapes, &meta(&p.name))
    };
    for p in &out.phases {
        save(&phase_file(&p.name), p)?;
    }
    if let Some(last) = out.phases.last() {
        save("model.safetensors", last)?;
    }
    let text = serde_json::to_string_pretty(&results).map_err(|e| err!("{e}"))? + "\n";
    engram_ckpt::write_atomic(&staged.path().join("results.json"), text.as_bytes())?;
    staged.commit(&curriculum_output)?;
    Ok(results)
}

/// The name of phase `phase`'s weights in a curriculum's folder. Top-level, not in a
/// subfolder: the switch keeps a subfolder's old files that the new one does not replace,
/// while it drops the top-level phase files of an earlier run (`curriculum_output`).
pub fn phase_file(phase: &str) -> String {
    format!("phase-{phase}.safetensors")
}

/// Whether `name`, at the top of a run's folder, is an output of an earlier curriculum that a
/// new one replaces or removes: its phase files, and the `phases/` folder of the layout
/// before [`phase_file`].
fn curriculum_output(name: &str) -> bool {
    name == "phases" || (name.starts_with("phase-") && name.ends_with(".safetensors"))
}

/// A curriculum's results JSON (docs/json.md, `engram train` with `[[phase]]`).
pub fn curriculum_json(cfg: &CurriculumConfig, out: &CurriculumOut) -> Result<Value> {
    let phases: Vec<Value> = out
        .phases
        .iter()
        .enumerate()
        .map(|(r, p)| {
            let k = out.first + r;
            let c = &cfg.phases[k];
            let t = cfg.phase_train(k)?;
            Ok(json!({
                "name": p.name,
                "scenario": p.scenario,
                "epochs": t.iterations.is_none().then_some(t.epochs),
                "lr": t.optimizer.lr,
                "freeze": c.freeze,
                "frozen": p.frozen,
                "trainable_values": p.trainable,
                "anchor": c.anchor,
                "seconds": p.seconds,
                "accuracy": p.accuracy,
            }))
        })
        .collect::<Result<_>>()?;
    let names: Vec<&str> = cfg.phases.iter().map(|p| p.name.as_str()).collect();
    Ok(json!({
        "engram_curriculum": 1,
        "name": cfg.run_name(),
        "seed": cfg.seed,
        "phases": names,
        "curriculum": {
            "first": out.first,
            "phases": phases,
            "accuracy": out.accuracy(),
            "baseline": out.baseline,
            "model_params": out.params,
        },
        "params": {"config": cfg.normalized()?},
    }))
}

/// Trains `cfg`'s model and strategy on an already built `scenario` (`cfg.scenario` is not
/// consulted); checkpoints in `checkpoint_dir` if given, and resumes from it if the
/// checkpoint was made with the same run file. With `export_masks`, writes the strategy's
/// masks or importance (`Strategy::masks`) there as safetensors after the run.
pub fn train_on(
    cfg: &RunConfig,
    scenario: &Scenario,
    checkpoint_dir: Option<PathBuf>,
    stop_after: Option<usize>,
    export_masks: Option<&Path>,
    on: &mut dyn FnMut(Event),
) -> Result<RunOutput> {
    let settings = settings(cfg, &[])?;
    if let Some(p) = export_masks {
        check_export(cfg, p, Path::new(""))?;
    }
    let run = Run {
        checkpoint_dir,
        stop_after,
        export_masks,
        discard: Vec::new(),
    };
    train(cfg, scenario, settings, run, on)
}

/// Where a run checkpoints, when it stops, where its masks go, and the outputs of an earlier
/// run it replaces (removed once the run passed its start checks).
struct Run<'a> {
    checkpoint_dir: Option<PathBuf>,
    stop_after: Option<usize>,
    export_masks: Option<&'a Path>,
    discard: Vec<PathBuf>,
}

/// Refuses, before the run, `--export-masks PATH` with a strategy that has no masks, or a
/// PATH that is an input of the run or inside its folder `dir` (its results, its checkpoint).
fn check_export(cfg: &RunConfig, path: &Path, dir: &Path) -> Result<()> {
    let name = &cfg.strategy.name;
    let strategy = crate::strategy::build(name, &Value::Object(cfg.strategy.params.clone()))?;
    if !strategy.has_masks() {
        return Err(err!(
            "strategy {name} has no masks or importance to export (--export-masks)"
        ));
    }
    if !dir.as_os_str().is_empty() && resolved(path).starts_with(resolved(dir)) {
        return Err(err!(
            "--export-masks {} is inside the run's folder {}, beside its results and checkpoint; \
             write it elsewhere",
            engram_ckpt::names::esc(&path.display().to_string()),
            engram_ckpt::names::esc(&dir.display().to_string())
        ));
    }
    Ok(engram_ckpt::commit::refuse_input(path)?)
}

/// `p` made absolute, with the part of it that exists resolved (symlinks, `..`).
fn resolved(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut rest = Vec::new();
    let mut base = abs.as_path();
    loop {
        if let Ok(c) = base.canonicalize() {
            return rest.iter().rev().fold(c, |a, n| a.join(n));
        }
        match (base.parent(), base.file_name()) {
            (Some(up), Some(n)) => {
                rest.push(n.to_os_string());
                base = up;
            }
            _ => return abs,
        }
    }
}

/// [`train_on`] with the `settings` checkpoints record and compare.
fn train(
    cfg: &RunConfig,
    scenario: &Scenario,
    settings: Value,
    run: Run,
    on: &mut dyn FnMut(Event),
) -> Result<RunOutput> {
    let strategy = crate::strategy::build(
        &cfg.strategy.name,
        &Value::Object(cfg.strategy.params.clone()),
    )?;
    let export_masks = run.export_masks;
    let start = match &cfg.start {
        Some(st) => Some(crate::train::Start {
            task: st.task,
            values: crate::model::io::read_values(&st.checkpoint)
                .map_err(|e| err!("start.checkpoint: {e}"))?,
        }),
        None => None,
    };
    let mut trainer = Trainer {
        start,
        checkpoint_dir: run.checkpoint_dir,
        stop_after: run.stop_after,
        settings,
        ..Trainer::new(
            scenario,
            cfg.model.clone(),
            cfg.train.clone(),
            cfg.seed,
            strategy,
        )
    };
    if !run.discard.is_empty() {
        // The earlier run's outputs go only once this one can start.
        trainer.check()?;
        for p in &run.discard {
            let gone = match p.is_dir() {
                true => std::fs::remove_dir_all(p),
                false => std::fs::remove_file(p),
            };
            match gone {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(Error::io(p, e)),
                _ => {}
            }
        }
    }
    let out = trainer
        .run(on)
        .map_err(|e| err!("run {}: {e}", cfg.run_name()))?;
    if let Some(path) = export_masks {
        let masks = trainer.strategy.masks();
        if masks.is_empty() {
            return Err(err!(
                "strategy {} has no masks or importance to export",
                cfg.strategy.name
            ));
        }
        let values = masks
            .iter()
            .map(|(n, _, v)| (n.clone(), v.clone()))
            .collect();
        let shapes = masks
            .iter()
            .map(|(n, s, _)| (n.clone(), s.clone()))
            .collect();
        let meta = [
            ("run".to_string(), cfg.run_name()),
            ("strategy".to_string(), cfg.strategy.name.clone()),
            (
                "engram.kind".to_string(),
                trainer.strategy.masks_kind().to_string(),
            ),
            // engram-learn stores a Linear weight as burn does, [in, out]: a PyTorch
            // nn.Linear's weight is the transpose.
            ("engram.layout".to_string(), "engram".to_string()),
        ]
        .into_iter()
        .collect();
        crate::model::io::save_values(path, &values, &shapes, &meta)?;
    }
    Ok(out)
}

/// What a checkpoint records of a run, to refuse resuming it with other settings: the run
/// file as JSON and, under `data`, each data file's SHA-256 by file name (not by path, so
/// that a copy of the same data elsewhere resumes the run).
fn settings(cfg: &RunConfig, files: &[DataFile]) -> Result<Value> {
    let mut v = serde_json::to_value(cfg.normalized()?).map_err(|e| err!("{e}"))?;
    let data: serde_json::Map<String, Value> = files
        .iter()
        .map(|f| {
            let name = f.path.file_name().unwrap_or_default().to_string_lossy();
            (name.into_owned(), Value::from(f.sha256.clone()))
        })
        .collect();
    v["data"] = Value::Object(data);
    Ok(v)
}

/// A run's output as results JSON (the report's `RunResults` shape).
pub fn results_json(cfg: &RunConfig, s: &Scenario, out: &RunOutput) -> Result<Value> {
    let costs = Costs {
        time_per_task_s: out.seconds_per_task.clone(),
        peak_memory_bytes: Some(out.peak_memory_bytes),
        state_bytes: Some(out.strategy_state_bytes),
    };
    let summary = if out.accuracy.is_empty() {
        // All-class plans (long streams): no T × T matrix; the final all-class accuracy.
        json!({
            "acc": out.all_class_curve.last(),
            "ece": out.ece,
            "time_per_task_s": costs.time_per_task_s,
            "peak_memory_bytes": costs.peak_memory_bytes,
            "state_bytes": costs.state_bytes,
        })
    } else {
        let m = AccuracyMatrix::from_rows(&out.eval_mode, out.accuracy.clone())
            .and_then(|m| m.with_baseline(out.baseline.clone()))
            .map_err(|e| err!("{e}"))?;
        let mut v = serde_json::to_value(Summary::from(&m, Some(out.ece), costs))
            .map_err(|e| err!("{e}"))?;
        if let Ok(til) = AccuracyMatrix::from_rows("task-il", out.task_il_accuracy.clone()) {
            v["task_il_acc"] = til.final_accuracy().into();
        }
        v
    };
    let some = |v: &Vec<Vec<f64>>| (!v.is_empty()).then(|| v.clone());
    Ok(json!({
        "name": cfg.run_name(),
        "strategy": cfg.strategy.name,
        "scenario": s.name,
        "eval_mode": out.eval_mode,
        "seed": cfg.seed,
        "tasks": s.tasks.iter().map(|t| t.name.clone()).collect::<Vec<_>>(),
        "accuracy": out.accuracy,
        "task_il_accuracy": some(&out.task_il_accuracy),
        "baseline": (!out.baseline.is_empty() && !out.accuracy.is_empty()).then(|| out.baseline.clone()),
        "summary": summary,
        "all_class_curve": (!out.all_class_curve.is_empty()).then(|| out.all_class_curve.clone()),
        "ece_curve": (!out.ece_curve.is_empty()).then(|| out.ece_curve.clone()),
        "ece_matrix": some(&out.ece_matrix),
        "notes": crate::strategy::scenario_note(&cfg.strategy.name, s)
            .into_iter()
            .collect::<Vec<_>>(),
        "params": {"config": cfg.normalized()?, "model_params": out.params, "current_task_curve": out.current_task_curve},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = r#"
name = "t"
seed = 1
[model]
kind = "mlp"
hidden = [8]
[train]
epochs = 1
batch-size = 32
[[phase]]
name = "a"
scenario = { kind = "joint", dataset = "blobs", blobs = { seed = 1, classes = 2, dim = 16, train-per-class = 20, test-per-class = 10 } }
[[phase]]
name = "b"
scenario = { kind = "joint", dataset = "blobs", blobs = { seed = 2, classes = 2, dim = 16, train-per-class = 20, test-per-class = 10 } }
"#;

    fn listing(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// A rerun under the same name with other phases leaves its own outputs only: no phase
    /// file of the earlier run, no `phases/` folder of the earlier layout; the user's files
    /// stay.
    #[test]
    fn a_curriculum_rerun_with_other_phases_leaves_no_stale_phase_file() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("t");
        let run = |text: &str| {
            let cfg = CurriculumConfig::parse_toml(text).unwrap();
            run_curriculum(&cfg, &dir, None, &mut |_, _| {}).unwrap()
        };
        run(RUN);
        assert_eq!(
            listing(&dir),
            [
                "events.jsonl",
                "model.safetensors",
                "phase-a.safetensors",
                "phase-b.safetensors",
                "results.json"
            ]
        );
        std::fs::create_dir(dir.join("phases")).unwrap();
        std::fs::write(dir.join("phases/a.safetensors"), b"old layout").unwrap();
        std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
        let renamed = RUN
            .replace("name = \"a\"", "name = \"first\"")
            .replace("name = \"b\"", "name = \"second\"");
        let r = run(&renamed);
        assert_eq!(r["phases"], json!(["first", "second"]));
        assert_eq!(
            listing(&dir),
            [
                "events.jsonl",
                "model.safetensors",
                "notes.txt",
                "phase-first.safetensors",
                "phase-second.safetensors",
                "results.json"
            ]
        );
        let on_disk: Value =
            serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
        assert_eq!(on_disk["phases"], r["phases"]);
    }
}
