//! LoRA adapters from Python, as `engram lora extract|apply|merge` run them: the same requests
//! (engram_weights::lora::request), the report `--json` prints returned as a dict.

use crate::{Bar, arg_err, engram_err, to_py};
use engram_weights::lora::request::{
    ApplyRequest, ExtractRequest, RecombineRequest, adapter_weights, expand_adapters,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::path::{Path, PathBuf};

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
        if method.is_some() || density.is_some() || lambda_.is_some() || params.is_some() {
            return Err(arg_err(
                "rank= recombines the adapters into one; method=, density=, lambda_= and \
                 params= belong to a merge over their task vectors",
            ));
        }
        let req = RecombineRequest {
            base,
            adapters,
            rank,
            weights: weights.unwrap_or_default(),
            dtype,
        };
        let done = py.detach(|| req.run(&out, &cmd)).map_err(engram_err)?;
        return to_py(py, &done);
    }
    let Some(method) = method else {
        return Err(arg_err(
            "give method= (a merge over task vectors) or rank= (one adapter by SVD)",
        ));
    };
    adapter_weights(weights.as_deref().unwrap_or_default(), adapters.len())
        .map_err(|e| arg_err(e.to_string()))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let tmp = py
        .detach(|| -> anyhow::Result<_> {
            std::fs::create_dir_all(&parent)?;
            let tmp = tempfile::Builder::new()
                .prefix(".engram-lora-merge-")
                .tempdir_in(&parent)?;
            Ok(tmp)
        })
        .map_err(engram_err)?;
    let expanded = py
        .detach(|| expand_adapters(&base, &adapters, tmp.path(), &cmd))
        .map_err(engram_err)?;
    crate::files::merge(
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
    )
}
