//! LoRA adapters from Python, as `engram lora extract|apply|merge` run them: the same requests
//! (engram_weights::lora::request), the report `--json` prints returned as a dict.

use crate::{Bar, arg_err, engram_err, to_py};
use engram_weights::lora::request::{
    ApplyRequest, ExtractRequest, RecombineRequest, adapter_weights, check_merge_method,
    stage_expanded,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::PathBuf;

/// Module-name globs: a comma-separated string (as the CLI takes them) or a list.
fn patterns(v: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Vec<String>> {
    let Some(v) = v else {
        return Ok(Vec::new());
    };
    if let Ok(s) = v.extract::<String>() {
        return Ok(s.split(',').map(str::to_string).collect());
    }
    v.extract::<Vec<String>>()
        .map_err(|_| arg_err(format!("{what} must be a string or a list of strings")))
}

/// `engram lora extract --base B --model FT -r RANK -o OUT --json`.
#[pyfunction]
#[pyo3(signature = (base, model, rank, out, *, targets=None, exclude=None, alpha=None,
    dtype=None, exact_below=None, power_iters=4, oversample=10, seed=0, progress=false,
    command=None))]
#[allow(clippy::too_many_arguments)]
pub fn lora_extract(
    py: Python<'_>,
    base: PathBuf,
    model: PathBuf,
    rank: usize,
    out: PathBuf,
    targets: Option<&Bound<'_, PyAny>>,
    exclude: Option<&Bound<'_, PyAny>>,
    alpha: Option<f64>,
    dtype: Option<String>,
    exact_below: Option<usize>,
    power_iters: usize,
    oversample: usize,
    seed: u64,
    progress: bool,
    command: Option<String>,
) -> PyResult<Py<PyAny>> {
    let req = ExtractRequest {
        targets: patterns(targets, "targets")?,
        exclude: patterns(exclude, "exclude")?,
        alpha,
        dtype,
        exact_below,
        power_iters,
        oversample,
        seed,
        ..ExtractRequest::new(base, model, rank)
    };
    req.options().map_err(|e| arg_err(e.to_string()))?;
    let cmd = crate::command(command, "lora_extract");
    let done = py
        .detach(|| {
            let bar = Bar::new(progress, 0, "extract");
            let r = req.run(&out, &cmd, &|n| bar.set_length(n), &|n| bar.inc(n));
            bar.finish();
            r
        })
        .map_err(engram_err)?;
    to_py(py, &done)
}

/// `engram lora apply --base B --adapter A --dtype DT -o OUT --json`.
#[pyfunction]
#[pyo3(signature = (base, adapter, out, dtype, *, multiplier=1.0, progress=false,
    command=None))]
#[allow(clippy::too_many_arguments)]
pub fn lora_apply(
    py: Python<'_>,
    base: PathBuf,
    adapter: PathBuf,
    out: PathBuf,
    dtype: String,
    multiplier: f64,
    progress: bool,
    command: Option<String>,
) -> PyResult<Py<PyAny>> {
    let req = ApplyRequest {
        base,
        adapter,
        dtype,
        multiplier,
    };
    req.options().map_err(|e| arg_err(e.to_string()))?;
    let cmd = crate::command(command, "lora_apply");
    let done = py
        .detach(|| {
            let bar = Bar::new(progress, 0, "apply");
            let r = req.run(&out, &cmd, &|n| bar.set_length(n), &|n| bar.inc(n));
            bar.finish();
            r
        })
        .map_err(engram_err)?;
    to_py(py, &done)
}

/// `engram lora merge --base B ADAPTERS... -o OUT --json`: with `rank`, one adapter by SVD;
/// with `method`, a model merged over the adapters' task vectors (the keyword arguments of
/// `engram.merge`'s quick form).
#[pyfunction]
#[pyo3(signature = (base, adapters, out, *, rank=None, dtype="f32".to_string(), method=None,
    weights=None, density=None, lambda_=None, params=None, seed=None, out_dtype=None,
    progress=false, command=None))]
#[allow(clippy::too_many_arguments)]
pub fn lora_merge(
    py: Python<'_>,
    base: PathBuf,
    adapters: Vec<PathBuf>,
    out: PathBuf,
    rank: Option<usize>,
    dtype: String,
    method: Option<String>,
    weights: Option<Vec<f64>>,
    density: Option<f64>,
    lambda_: Option<f64>,
    params: Option<&Bound<'_, PyDict>>,
    seed: Option<u64>,
    out_dtype: Option<String>,
    progress: bool,
    command: Option<String>,
) -> PyResult<Py<PyAny>> {
    if adapters.is_empty() {
        return Err(arg_err("adapters: give at least one adapter folder"));
    }
    let cmd = crate::command(command, "lora_merge");
    if let Some(rank) = rank {
        let given = [
            ("method", method.is_some()),
            ("density", density.is_some()),
            ("lambda_", lambda_.is_some()),
            ("params", params.is_some()),
            ("seed", seed.is_some()),
            ("out_dtype", out_dtype.is_some()),
        ];
        if let Some((k, _)) = given.iter().find(|(_, g)| *g) {
            return Err(arg_err(format!(
                "{k}= belongs to a merge over the adapters' task vectors (method=); rank= \
                 recombines them into one adapter"
            )));
        }
        if rank == 0 {
            return Err(arg_err("rank must be at least 1"));
        }
        engram_ckpt::DType::parse_float(&dtype).map_err(arg_err)?;
        let req = RecombineRequest {
            base,
            adapters,
            rank,
            weights: weights.unwrap_or_default(),
            dtype,
        };
        adapter_weights(&req.weights, req.adapters.len()).map_err(|e| arg_err(e.to_string()))?;
        let done = py.detach(|| req.run(&out, &cmd)).map_err(engram_err)?;
        return to_py(py, &done);
    }
    let Some(method) = method else {
        return Err(arg_err(
            "give method= (a merge over task vectors) or rank= (one adapter by SVD)",
        ));
    };
    if dtype != "f32" {
        return Err(arg_err(
            "dtype= is the recombined adapter's (rank=); a merged model's is out_dtype=",
        ));
    }
    adapter_weights(weights.as_deref().unwrap_or_default(), adapters.len())
        .map_err(|e| arg_err(e.to_string()))?;
    check_merge_method(&method).map_err(|e| arg_err(e.to_string()))?;
    // The merge's own checks before any file is written.
    let q = crate::opts::QuickMerge {
        density,
        lambda: lambda_,
        t: None,
        params: crate::opts::param_values(params)?,
        weights: weights.clone().unwrap_or_default(),
        trim_scope: None,
        seed,
        out_dtype: out_dtype.clone(),
    };
    crate::opts::quick_config(&method, Some(base.clone()), adapters.clone(), &q)?;
    // The expanded models live while the merge runs (`stage` removes them when dropped).
    let (stage, expanded) = py
        .detach(|| stage_expanded(&base, &adapters, &out, &cmd))
        .map_err(engram_err)?;
    let res = crate::files::merge(
        py,
        None,
        Some(out),
        Some(method),
        Some(base),
        Some(expanded),
        density,
        weights,
        lambda_,
        None,
        params,
        None,
        seed,
        out_dtype,
        // Tensors no adapter changes are in no expanded model: the base's are kept.
        true,
        true,
        None,
        progress,
        Some(cmd),
    );
    drop(stage);
    res
}
