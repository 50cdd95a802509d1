//! The weight-space commands on checkpoint files, as `engram inspect`, `merge`, `tall`,
//! `consensus`, `compress`, `extract`, `quantize` and `analyze` run them: same checks, same
//! library call, the report the command prints with `--json` returned as a dict.

use crate::opts::{self, QuickMerge, finite, opt_float_dtype};
use crate::{Bar, arg_err, engram_err, to_py};
use engram_bench::analyze::{AnalyzeOptions, Plan};
use engram_bench::inspect as report;
use engram_bench::{open_model as open, open_models as open_all};
use engram_ckpt::Model;
use engram_weights::compress::{MaskCoding, extract_task, write_bundle};
use engram_weights::merge::config;
use engram_weights::merge::engine::run_merge;
use engram_weights::quant::model::{Options, quantize_model};
use engram_weights::quant::{Scope, Spec, by_name};
use engram_weights::spelling::Spelling;
use engram_weights::tall::Tall;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde_json::{Value, json};
use std::borrow::Cow;
use std::path::{Path, PathBuf};

fn paths(files: &[PathBuf]) -> Vec<String> {
    files.iter().map(|p| p.display().to_string()).collect()
}

/// `engram inspect PATH --json`.
#[pyfunction]
#[pyo3(signature = (path, *, stats=false, check_finite=false, progress=false))]
pub fn inspect(
    py: Python<'_>,
    path: PathBuf,
    stats: bool,
    check_finite: bool,
    progress: bool,
) -> PyResult<Py<PyAny>> {
    let doc = py
        .detach(|| {
            let bar = Bar::new(progress && (stats || check_finite), 0, "scanning");
            let r = inspect_report(&path, stats, check_finite, &bar);
            bar.finish();
            r
        })
        .map_err(engram_err)?;
    to_py(py, &doc)
}

/// The report of `engram inspect PATH --json`; with `check_finite`, NaN or infinite values are
/// an error naming the tensors (the CLI prints the report first).
fn inspect_report(
    path: &Path,
    stats: bool,
    check_finite: bool,
    bar: &Bar,
) -> anyhow::Result<Value> {
    if engram_ckpt::gguf::is_gguf_path(path) {
        report::refuse_gguf_scan(path, stats, check_finite)?;
        let f = engram_ckpt::gguf::GgufFile::open(path)?;
        return Ok(report::gguf_json(path, &f));
    }
    let model = Model::open(path)?;
    let scan = if stats || check_finite {
        model.verify()?;
        Some(report::scan(&model, stats, &|n| bar.inc(n))?)
    } else {
        None
    };
    let bad = report::non_finite(scan.as_deref());
    if check_finite && !bad.is_empty() {
        anyhow::bail!(report::non_finite_error(&model, path, &bad, &as_is));
    }
    let groups = report::groups(&model);
    Ok(report::to_json(
        &model,
        &groups,
        scan.as_deref(),
        stats,
        &bad,
    ))
}

/// A tensor name in a message as it is (the CLI escapes it for a terminal).
fn as_is(s: &str) -> Cow<'_, str> {
    Cow::Borrowed(s)
}

/// The merge config: a path, YAML text (a string with a line break) or a dict; its text,
/// the folder relative model paths resolve from, the guard that keeps the file an input,
/// and what the CLI records as its inputs.
type ConfigText = (
    String,
    PathBuf,
    Option<engram_ckpt::commit::OpenInput>,
    Vec<PathBuf>,
);

fn config_text(cfg: &Bound<'_, PyAny>) -> PyResult<ConfigText> {
    if cfg.is_instance_of::<PyDict>() {
        // JSON is YAML: the dict is read by the same parser as a config file.
        let text = serde_json::to_string(&crate::from_py(cfg)?).map_err(engram_err)?;
        return Ok((text, PathBuf::from("."), None, Vec::new()));
    }
    if let Ok(s) = cfg.downcast::<PyString>() {
        let s = s.to_str()?;
        if s.contains('\n') {
            return Ok((s.to_string(), PathBuf::from("."), None, Vec::new()));
        }
    }
    let path: PathBuf = cfg.extract()?;
    let (bytes, guard) =
        engram_ckpt::commit::read_input(&path, "a merge config", 1 << 20).map_err(engram_err)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| engram_err(anyhow::anyhow!("{}: not UTF-8 text", path.display())))?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    Ok((text, dir, Some(guard), vec![path]))
}

/// `engram merge CONFIG -o OUT --json` or the quick form `engram merge --method M --base B
/// MODELS -o OUT --json`.
#[pyfunction]
#[pyo3(signature = (config=None, out=None, *, method=None, base=None, models=None, density=None,
    weights=None, lambda_=None, t=None, params=None, trim_scope=None, seed=None, out_dtype=None,
    allow_missing=false, check_finite=false, shard_size=None, progress=false, command=None))]
#[allow(clippy::too_many_arguments)]
pub fn merge(
    py: Python<'_>,
    config: Option<&Bound<'_, PyAny>>,
    out: Option<PathBuf>,
    method: Option<String>,
    base: Option<PathBuf>,
    models: Option<Vec<PathBuf>>,
    density: Option<f64>,
    weights: Option<Vec<f64>>,
    lambda_: Option<f64>,
    t: Option<f64>,
    params: Option<&Bound<'_, PyDict>>,
    trim_scope: Option<String>,
    seed: Option<u64>,
    out_dtype: Option<String>,
    allow_missing: bool,
    check_finite: bool,
    shard_size: Option<&Bound<'_, PyAny>>,
    progress: bool,
    command: Option<String>,
) -> PyResult<Py<PyAny>> {
    let Some(out) = out else {
        return Err(arg_err("give the output with out="));
    };
    let q = QuickMerge {
        density,
        lambda: lambda_,
        t,
        params: opts::param_values(params)?,
        weights: weights.unwrap_or_default(),
        trim_scope,
        seed,
        out_dtype,
    };
    // An int or a size string, read by the CLI's reader of --shard-size (0 is refused).
    let shard = match shard_size {
        None => None,
        Some(s) if s.is_instance_of::<pyo3::types::PyBool>() => {
            return Err(arg_err(
                "shard_size: give a size in bytes or a string such as '2GB'",
            ));
        }
        Some(s) => {
            let text = match s.extract::<i128>() {
                Ok(n) => n.to_string(),
                Err(_) => s.extract::<String>()?,
            };
            Some(
                engram_bench::units::parse_bytes(&text)
                    .map_err(|e| arg_err(format!("shard_size: {e:#}")))?,
            )
        }
    };
    let (cfg, _guard, inputs) = match (config, method) {
        (Some(_), Some(_)) => {
            return Err(arg_err(
                "give a config, or method= with base= and models=, not both",
            ));
        }
        (Some(c), None) => {
            let (text, dir, guard, inputs) = config_text(c)?;
            let shown = inputs
                .first()
                .map_or("the config".into(), |p| p.display().to_string());
            let flag = q
                .given()
                .or(base.is_some().then_some("base"))
                .or(models.is_some().then_some("models"));
            if let Some(flag) = flag {
                return Err(arg_err(format!(
                    "{flag}= belongs to the quick form (method= with models=); with a config, write it in {shown}"
                )));
            }
            let cfg = config::parse(&text, &dir)
                .map_err(|e| engram_err(anyhow::anyhow!("{shown}: {e}")))?;
            let out_dtype = q.out_dtype.as_deref();
            let cfg = config::with_flags(cfg, &shown, out_dtype, q.seed, Spelling::Keywords)
                .map_err(arg_err)?;
            (cfg, guard, inputs)
        }
        (None, Some(m)) => {
            let models = models.unwrap_or_default();
            let cfg = opts::quick_config(&m, base, models.clone(), &q)?;
            (cfg, None, models)
        }
        (None, None) => {
            return Err(arg_err(
                "give a mergekit YAML config, or method= with base= and models=",
            ));
        }
    };
    let params = json!({
        "method": cfg.method.name(), "base": cfg.base, "models": cfg.models,
        "trim_scope": cfg.scope, "seed": cfg.seed, "inputs": inputs,
    });
    let md = engram_ckpt::provenance(&crate::command(command, "merge"), &params);
    let rep = py
        .detach(|| -> anyhow::Result<_> {
            let base = cfg.base.as_deref().map(open).transpose()?;
            let models = open_all(&cfg.models)?;
            let req = cfg
                .request(base.as_ref(), &models)
                .with_allow_missing(allow_missing)
                .with_check_finite(check_finite)
                .with_max_shard_bytes(shard);
            let bar = Bar::new(progress, req.total_params(), cfg.method.name());
            let rep = run_merge(&req, &out, &md, &|n| bar.inc(n));
            bar.finish();
            Ok(rep?)
        })
        .map_err(engram_err)?;
    to_py(py, &rep)
}

/// `engram tall --base B MODELS --json [--reconstruct DIR]`: the masks' statistics.
#[pyfunction]
#[pyo3(signature = (base, models, *, tasks=None, lambda_=None, lambdas=None, tau="sum".to_string(),
    density=None, reconstruct=None, progress=false, command=None))]
#[allow(clippy::too_many_arguments)]
pub fn tall(
    py: Python<'_>,
    base: PathBuf,
    models: Vec<PathBuf>,
    tasks: Option<Vec<String>>,
    lambda_: Option<f32>,
    lambdas: Option<Vec<f32>>,
    tau: String,
    density: Option<f64>,
    reconstruct: Option<PathBuf>,
    progress: bool,
    command: Option<String>,
) -> PyResult<Py<PyAny>> {
    let o = opts::tall_options(base, models, tasks, lambda_, lambdas, tau, density)?;
    let command = crate::command(command, "tall");
    let stats = py
        .detach(|| -> anyhow::Result<_> {
            let (base, models) = (open(&o.base)?, open_all(&o.models)?);
            let tall = o.tall(&base, &models)?;
            let bar = Bar::new(progress, base.param_count(), "masks");
            let stats = tall.stats(&|n| bar.inc(n));
            bar.finish();
            let stats = stats?;
            if let Some(dir) = &reconstruct {
                let md = engram_ckpt::provenance(&command, &o.params_json());
                let tau_dtype = base.float_dtype();
                let staged = engram_ckpt::Staged::new(dir)?;
                for (i, t) in tall.tasks.iter().enumerate() {
                    let bar = Bar::new(progress, base.param_count(), t);
                    let r = tall.write_model(
                        &staged.path().join(t),
                        None,
                        &md,
                        &|n| bar.inc(n),
                        &Tall::reconstruct_kernel(i, tau_dtype),
                    );
                    bar.finish();
                    r?;
                }
                staged.commit(&|n| tall.tasks.iter().any(|t| t == n))?;
            }
            Ok(stats)
        })
        .map_err(engram_err)?;
    to_py(py, &stats)
}

/// `engram consensus --base B MODELS -o OUT --json`.
#[pyfunction]
#[pyo3(signature = (base, models, out, *, k=2, alpha=1.0, out_dtype=None, tasks=None,
    lambda_=None, lambdas=None, tau="sum".to_string(), density=None, progress=false, command=None))]
#[allow(clippy::too_many_arguments)]
pub fn consensus(
    py: Python<'_>,
    base: PathBuf,
    models: Vec<PathBuf>,
    out: PathBuf,
    k: usize,
    alpha: f32,
    out_dtype: Option<String>,
    tasks: Option<Vec<String>>,
    lambda_: Option<f32>,
    lambdas: Option<Vec<f32>>,
    tau: String,
    density: Option<f64>,
    progress: bool,
    command: Option<String>,
) -> PyResult<Py<PyAny>> {
    let alpha = finite("alpha", alpha)?;
    opts::consensus_k(k, models.len())?;
    let out_dtype = opt_float_dtype(out_dtype.as_deref())?;
    let o = opts::tall_options(base, models, tasks, lambda_, lambdas, tau, density)?;
    let mut params = o.params_json();
    params["k"] = k.into();
    params["alpha"] = alpha.into();
    let md = engram_ckpt::provenance(&crate::command(command, "consensus"), &params);
    let files = py
        .detach(|| -> anyhow::Result<_> {
            let (base, models) = (open(&o.base)?, open_all(&o.models)?);
            let tall = o.tall(&base, &models)?;
            let bar = Bar::new(progress, base.param_count(), "consensus");
            let files = tall.write_model(
                &out,
                out_dtype,
                &md,
                &|n| bar.inc(n),
                &Tall::consensus_kernel(k, alpha),
            );
            bar.finish();
            Ok(files?)
        })
        .map_err(engram_err)?;
    to_py(py, &json!({"params": params, "files": files}))
}

/// `engram compress --base B MODELS -o BUNDLE --json`.
#[pyfunction]
#[pyo3(signature = (base, models, out, *, tau_dtype=None, mask_coding="packed".to_string(),
    tasks=None, lambda_=None, lambdas=None, tau="sum".to_string(), density=None, progress=false,
    command=None))]
#[allow(clippy::too_many_arguments)]
pub fn compress(
    py: Python<'_>,
    base: PathBuf,
    models: Vec<PathBuf>,
    out: PathBuf,
    tau_dtype: Option<String>,
    mask_coding: String,
    tasks: Option<Vec<String>>,
    lambda_: Option<f32>,
    lambdas: Option<Vec<f32>>,
    tau: String,
    density: Option<f64>,
    progress: bool,
    command: Option<String>,
) -> PyResult<Py<PyAny>> {
    let o = opts::tall_options(base, models, tasks, lambda_, lambdas, tau, density)?;
    let tau_dtype = opt_float_dtype(tau_dtype.as_deref())?;
    let coding = MaskCoding::parse(&mask_coding).map_err(|e| arg_err(e.to_string()))?;
    let md = engram_ckpt::provenance(&crate::command(command, "compress"), &o.params_json());
    let rep = py
        .detach(|| -> anyhow::Result<_> {
            let (base, models) = (open(&o.base)?, open_all(&o.models)?);
            let tau_dtype = tau_dtype.unwrap_or_else(|| base.float_dtype());
            let tall = o.tall(&base, &models)?;
            let bar = Bar::new(progress, base.param_count(), "compress");
            let rep = write_bundle(&tall, &out, tau_dtype, coding, &md, &|n| bar.inc(n));
            bar.finish();
            Ok(rep?)
        })
        .map_err(engram_err)?;
    to_py(py, &rep)
}

/// `engram extract BUNDLE --task T -o OUT`: the files written.
#[pyfunction]
#[pyo3(signature = (bundle, task, out, *, progress=false, command=None))]
pub fn extract(
    py: Python<'_>,
    bundle: PathBuf,
    task: String,
    out: PathBuf,
    progress: bool,
    command: Option<String>,
) -> PyResult<Vec<String>> {
    let md = engram_ckpt::provenance(
        &crate::command(command, "extract"),
        &json!({"bundle": bundle, "task": task}),
    );
    let files = py
        .detach(|| {
            let bar = Bar::new(progress, 0, "extract");
            let r = extract_task(&bundle, &task, &out, &md, &|n| bar.inc(n));
            bar.finish();
            r
        })
        .map_err(engram_err)?;
    Ok(paths(&files))
}

/// The quantizer and its settings from the keyword arguments, checked as `engram quantize`
/// checks its flags.
#[allow(clippy::too_many_arguments)]
pub(crate) fn quant_spec(
    method: &str,
    bits: u32,
    scope: Option<&str>,
    group: Option<usize>,
    asym: bool,
    scale_dtype: &str,
    grid: bool,
) -> PyResult<(&'static dyn engram_weights::quant::Quantizer, Spec)> {
    let q = by_name(method).map_err(arg_err)?;
    if !["f32", "f16"].contains(&scale_dtype) {
        return Err(arg_err(format!(
            "scale_dtype '{scale_dtype}': use f32 or f16"
        )));
    }
    let scope_flag = match (scope, group) {
        (Some(s), _) => s,
        (None, Some(_)) => "group",
        (None, None) => "channel",
    };
    let scope = Scope::parse(scope_flag, group).map_err(arg_err)?;
    let spec = Spec {
        bits,
        scope,
        symmetric: !asym,
        scale_f16: scale_dtype == "f16",
        grid,
    };
    spec.check().map_err(arg_err)?;
    q.check(&spec).map_err(arg_err)?;
    if grid && q.name() != "power" {
        return Err(arg_err("grid applies to method='power' only"));
    }
    Ok((q, spec))
}

/// `engram quantize MODEL -o OUT --bits B --json`.
#[pyfunction]
#[pyo3(signature = (input, out, *, bits, method="rtn".to_string(), scope=None, group=None,
    asym=false, scale_dtype="f32".to_string(), grid=false, quantize_all=false, progress=false,
    command=None))]
#[allow(clippy::too_many_arguments)]
pub fn quantize(
    py: Python<'_>,
    input: PathBuf,
    out: PathBuf,
    bits: u32,
    method: String,
    scope: Option<String>,
    group: Option<usize>,
    asym: bool,
    scale_dtype: String,
    grid: bool,
    quantize_all: bool,
    progress: bool,
    command: Option<String>,
) -> PyResult<Py<PyAny>> {
    let (q, spec) = quant_spec(
        &method,
        bits,
        scope.as_deref(),
        group,
        asym,
        &scale_dtype,
        grid,
    )?;
    let params = json!({
        "source": input.display().to_string(),
        "method": q.name(),
        "bits": bits,
        "scope": spec.scope.name(),
        "symmetric": !asym,
        "scale_dtype": scale_dtype,
        "grid": grid,
        "quantize_all": quantize_all,
    });
    let opts = Options {
        spec,
        quantize_all,
        metadata: engram_ckpt::provenance(&crate::command(command, "quantize"), &params),
    };
    let doc = py
        .detach(|| -> anyhow::Result<_> {
            let model = open(&input)?;
            let bar = Bar::new(progress, model.data_bytes(), "quantize");
            let res = quantize_model(&model, q, &opts, &out, &|n| bar.inc(n));
            bar.finish();
            let (report, files) = res?;
            Ok(json!({"report": report, "files": files}))
        })
        .map_err(engram_err)?;
    to_py(py, &doc)
}

/// `engram analyze MODEL --json`: spectra, and LIFT masks with `lift_masks=FILE`.
#[pyfunction]
#[pyo3(signature = (path, *, values=false, max_dim=4096, max_values=1 << 26, top_k=32, seed=0,
    include=None, exclude=None, lift_masks=None, filter_rank=8, lift_rank=8, lift_exclude=None,
    progress=false, command=None))]
#[allow(clippy::too_many_arguments)]
pub fn analyze(
    py: Python<'_>,
    path: PathBuf,
    values: bool,
    max_dim: usize,
    max_values: usize,
    top_k: usize,
    seed: u64,
    include: Option<Vec<String>>,
    exclude: Option<Vec<String>>,
    lift_masks: Option<PathBuf>,
    filter_rank: usize,
    lift_rank: usize,
    lift_exclude: Option<Vec<String>>,
    progress: bool,
    command: Option<String>,
) -> PyResult<Py<PyAny>> {
    let a = AnalyzeOptions {
        values,
        max_dim,
        max_values,
        top_k,
        seed,
        include: include.unwrap_or_default(),
        exclude: exclude.unwrap_or_default(),
        lift_masks,
        filter_rank,
        lift_rank,
        lift_exclude: lift_exclude.unwrap_or_default(),
        ..AnalyzeOptions::new(path.display().to_string())
    };
    a.check(Spelling::Keywords)
        .map_err(|e| arg_err(e.to_string()))?;
    let command = crate::command(command, "analyze");
    let doc = py
        .detach(|| {
            let model = open(&path)?;
            analyze_report(&model, &a, &command, progress)
        })
        .map_err(engram_err)?;
    to_py(py, &doc)
}

/// The report of `engram analyze --json` over `model` (spectra, and the LIFT masks written
/// with provenance `command`), with a bar over the model's parameters.
pub(crate) fn analyze_report(
    model: &Model,
    a: &AnalyzeOptions,
    command: &str,
    progress: bool,
) -> anyhow::Result<Value> {
    let started = std::time::Instant::now();
    let bar = Bar::new(progress, model.param_count(), "analyzing");
    let r = Plan::new(model, a, command).and_then(|p| p.run(started, &|n| bar.inc(n)));
    bar.finish();
    let mut an = r?;
    an.finish_masks(a)?;
    Ok(an.to_json(model, a))
}
