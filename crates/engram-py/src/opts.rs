//! Keyword arguments read as engram-cli reads the matching flags (same defaults; the checks are
//! the library's, their messages with the Python names): float dtypes, the TALL options, a
//! merge's parameters.

use crate::arg_err;
use engram_ckpt::DType;
use engram_weights::merge::config;
use engram_weights::merge::params::ParamValue;
use engram_weights::spelling::Spelling;
use engram_weights::tall_options::TallOptions;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict};
use std::path::PathBuf;

/// A float dtype by name (`f32`, `bf16`, `f8_e4m3`, ...); integer and boolean types are refused.
pub fn float_dtype(s: &str) -> PyResult<DType> {
    DType::parse_float(s).map_err(arg_err)
}

pub fn opt_float_dtype(s: Option<&str>) -> PyResult<Option<DType>> {
    s.map(float_dtype).transpose()
}

/// A finite number for `name` (the CLI's clap parses these as f32 and the commands check them).
pub fn finite(name: &str, v: f32) -> PyResult<f32> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(arg_err(format!("{name} must be finite")))
    }
}

/// The TALL options (the CLI's `TallArgs`), checked before any model is read: `lambda_` and
/// `lambdas` exclude each other (the CLI's clap conflict), `tau` is one of sum, ta, ties; the
/// rest is the library's check.
pub fn tall_options(
    base: PathBuf,
    models: Vec<PathBuf>,
    tasks: Option<Vec<String>>,
    lambda: Option<f32>,
    lambdas: Option<Vec<f32>>,
    tau: String,
    density: Option<f64>,
) -> PyResult<TallOptions> {
    if models.is_empty() {
        return Err(arg_err("give at least one fine-tuned model"));
    }
    if lambda.is_some() && lambdas.is_some() {
        return Err(arg_err("give lambda_ or lambdas, not both"));
    }
    if !["sum", "ta", "ties"].contains(&tau.as_str()) {
        return Err(arg_err(format!("tau '{tau}': use sum, ta or ties")));
    }
    let o = TallOptions {
        base,
        models,
        tasks: tasks.unwrap_or_default(),
        lambda: lambda.unwrap_or(0.6),
        lambdas: lambdas.unwrap_or_default(),
        tau,
        density,
    };
    o.check(Spelling::Keywords).map_err(arg_err)?;
    Ok(o)
}

/// Consensus keeps the weights at least `k` of the `tasks` masks hold: `k` above the number
/// of tasks would keep none.
pub fn consensus_k(k: usize, tasks: usize) -> PyResult<()> {
    if k > tasks {
        return Err(arg_err(format!(
            "k={k} is more than the {tasks} task(s): no weight would be kept"
        )));
    }
    Ok(())
}

/// A merge's settings given as keyword arguments (the quick form of `engram merge`).
#[derive(Default)]
pub struct QuickMerge {
    pub density: Option<f64>,
    pub lambda: Option<f64>,
    pub t: Option<f64>,
    /// `params={name: value}` in the order given.
    pub params: Vec<(String, ParamValue)>,
    pub weights: Vec<f64>,
    pub trim_scope: Option<String>,
    pub seed: Option<u64>,
    pub out_dtype: Option<String>,
}

impl QuickMerge {
    /// Whether any setting of the quick form is given (refused with a config).
    pub fn given(&self) -> Option<&'static str> {
        [
            ("density", self.density.is_some()),
            ("weights", !self.weights.is_empty()),
            ("lambda_", self.lambda.is_some()),
            ("t", self.t.is_some()),
            ("params", !self.params.is_empty()),
            ("trim_scope", self.trim_scope.is_some()),
        ]
        .into_iter()
        .find(|(_, g)| *g)
        .map(|(k, _)| k)
    }
}

/// `params={name: number or bool}` as the merge's parameter values, in the dict's order.
pub fn param_values(params: Option<&Bound<'_, PyDict>>) -> PyResult<Vec<(String, ParamValue)>> {
    let Some(d) = params else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(d.len());
    for (k, v) in d.iter() {
        let k: String = k
            .extract()
            .map_err(|_| PyTypeError::new_err("params: the names must be strings"))?;
        let v = if v.is_instance_of::<PyBool>() {
            ParamValue::Bool(v.extract()?)
        } else {
            ParamValue::Scalar(v.extract().map_err(|_| {
                PyTypeError::new_err(format!(
                    "params['{k}']: give a number or a bool, not {}",
                    v.get_type()
                        .name()
                        .map_or_else(|_| "?".into(), |n| n.to_string())
                ))
            })?)
        };
        out.push((k, v));
    }
    Ok(out)
}

/// The merge of `models` onto `base` with `method` and the settings `q`, checked as the CLI's
/// quick form checks its flags (`engram merge --method ...`), before any model is opened.
pub fn quick_config(
    method: &str,
    base: Option<PathBuf>,
    models: Vec<PathBuf>,
    q: &QuickMerge,
) -> PyResult<config::MergeConfig> {
    let m = engram_weights::merge::get(method).ok_or_else(|| {
        let names: Vec<&str> = engram_weights::merge::registry()
            .iter()
            .map(|m| m.name())
            .collect();
        arg_err(format!(
            "unknown method '{method}'; use one of {}",
            names.join(", ")
        ))
    })?;
    let form = config::QuickForm {
        method: m,
        base,
        models,
        density: q.density,
        lambda: q.lambda,
        t: q.t,
        params: q
            .params
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.clone(), None))),
        weights: q.weights.clone(),
        trim_scope: q.trim_scope.clone(),
        seed: q.seed,
        out_dtype: q.out_dtype.clone(),
    };
    config::quick_config(form, Spelling::Keywords).map_err(arg_err)
}
