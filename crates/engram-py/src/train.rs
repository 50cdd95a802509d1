//! `engram.train(run)`: one continual-learning run (or a curriculum) from a TOML run file, TOML
//! text or a dict of the same tables, as `engram train --config` runs it; returns results.json.

use crate::{arg_err, engram_err, to_py};
use engram_bench::bars::RunBars as Bars;
use engram_learn::config::RunFile;
use engram_learn::run::RunOptions;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use std::path::PathBuf;

/// Largest run file read (as the CLI).
const RUN_FILE_LIMIT: u64 = 1 << 20;

/// A run file's text as [`run_text`] reads it.
struct RunText {
    text: String,
    /// How errors name it.
    shown: String,
    /// The folder of the run file (its relative data paths start there); `None` for TOML
    /// text or a dict (the working directory).
    dir: Option<PathBuf>,
    /// The run file, held open for the run: no output of it may replace it.
    _input: Option<engram_ckpt::commit::OpenInput>,
}

/// The run's TOML text: a path (its text, held open for the run), TOML text (a string with a
/// line break), or a dict (written as TOML; a None value is refused, as TOML has no null).
fn run_text(run: &Bound<'_, PyAny>) -> PyResult<RunText> {
    let inline = |text: String| RunText {
        text,
        shown: "run".into(),
        dir: None,
        _input: None,
    };
    if run.is_instance_of::<PyDict>() {
        let v = crate::from_py(run)?;
        let text = toml::to_string(&v)
            .map_err(|e| arg_err(format!("run: cannot be written as TOML: {e}")))?;
        return Ok(inline(text));
    }
    if let Ok(s) = run.downcast::<PyString>() {
        let s = s.to_str()?;
        if s.contains('\n') {
            return Ok(inline(s.to_string()));
        }
    }
    let path: PathBuf = run.extract()?;
    let shown = path.display().to_string();
    let (bytes, input) =
        engram_ckpt::commit::read_input(&path, "a run file", RUN_FILE_LIMIT).map_err(engram_err)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| engram_err(anyhow::anyhow!("{shown}: not UTF-8 text")))?;
    Ok(RunText {
        text,
        shown,
        dir: path.parent().map(PathBuf::from),
        _input: Some(input),
    })
}

/// `engram train --config RUN --out OUT`: writes OUT/<run name>/ and returns its results.json
/// as a dict. `if_needed=True` (`--if-needed`): a run whose results.json is there returns it
/// without running; a run with a checkpoint resumes it; else it starts.
#[pyfunction]
#[pyo3(signature = (run, out=PathBuf::from("runs"), *, resume=false, overwrite=false,
    data_dir=None, export_masks=None, progress=false, if_needed=false))]
#[allow(clippy::too_many_arguments)]
pub fn train(
    py: Python<'_>,
    run: &Bound<'_, PyAny>,
    out: PathBuf,
    resume: bool,
    overwrite: bool,
    data_dir: Option<PathBuf>,
    export_masks: Option<PathBuf>,
    progress: bool,
    if_needed: bool,
) -> PyResult<Py<PyAny>> {
    if resume && overwrite {
        return Err(arg_err("give resume=True or overwrite=True, not both"));
    }
    if if_needed && (resume || overwrite) {
        return Err(arg_err(
            "if_needed=True excludes resume=True and overwrite=True",
        ));
    }
    let rt = run_text(run)?;
    let shown = &rt.shown;
    let parsed = RunFile::parse_toml_in(&rt.text, rt.dir.as_deref())
        .map_err(|e| engram_err(anyhow::anyhow!("{shown}: {e}")))?;
    let results = match parsed {
        RunFile::Run(cfg) => {
            let dir = out.join(cfg.run_name());
            py.detach(|| {
                let opts = RunOptions {
                    data_dir: data_dir.as_deref(),
                    resume,
                    overwrite,
                    stop_after: None,
                    export_masks: export_masks.as_deref(),
                    if_needed,
                };
                let bars = Bars::new(progress, &cfg.strategy.name);
                let r = engram_learn::run::run_config(&cfg, &dir, &opts, &mut |e| bars.on(e));
                bars.finish();
                r
            })
            .map_err(engram_err)?
        }
        RunFile::Curriculum(cfg) => {
            for (set, flag) in [(resume, "resume"), (export_masks.is_some(), "export_masks")] {
                if set {
                    return Err(arg_err(format!(
                        "{shown}: {flag}= does not apply to a run file with [[phase]] (a curriculum keeps no checkpoints or masks; it is run whole)"
                    )));
                }
            }
            let dir = out.join(cfg.run_name());
            if if_needed
                && let Some(r) =
                    engram_learn::run::curriculum_finished(&cfg, &dir).map_err(engram_err)?
            {
                return to_py(py, &r);
            }
            let r = py
                .detach(|| {
                    let bars = Bars::new(progress, "curriculum");
                    let r = engram_learn::run::run_curriculum(
                        &cfg,
                        &dir,
                        data_dir.as_deref(),
                        &mut |_, e| bars.on(e),
                    );
                    bars.finish();
                    r
                })
                .map_err(engram_err)?;
            Some(r)
        }
    };
    match results {
        Some(v) => to_py(py, &v),
        None => Ok(py.None()),
    }
}
