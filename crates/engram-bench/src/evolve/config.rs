//! `engram evolve`'s configuration: what is merged, which merge parameters are searched
//! within which bounds, and the command that scores a candidate (as mergekit-evolve's).
//!
//! ```yaml
//! merge_method: task_arithmetic    # any engram merge method with per-model weight/density
//! base_model: base/                # paths: from the current folder, else the config's
//! models: [ft-a/, ft-b/]           # or [{model: ft-a/}, ...]
//! parameters: {lambda: 1.0}        # fixed global merge parameters (optional)
//! search:
//!   weight: [0.0, 1.5]             # each model's weight, within these bounds
//!   density: [0.1, 1.0]            # each model's density (methods that trim; optional)
//!   layer_groups: 1                # values per model and parameter over depth (mergekit's
//!                                  # gradient list; 1: one value for all layers)
//! score:
//!   command: "engram study merge8-score --study m8 {model}"   # or a list: argv, no shell
//!   maximize: true                 # false: lower is better
//!   timeout: 3600                  # seconds per candidate
//! population: 10                   # default 4 + ⌊3 ln n⌋ (n: searched values)
//! generations: 10
//! sigma0: 0.25                     # initial step, in units of the bounds' width
//! seed: 0
//! dtype: float32                   # the candidates' output dtype (default: the base's)
//! ```
//!
//! `score` may also be just the command (a string or a list). Any other key is an error that
//! names it.

use anyhow::{Result, anyhow, bail};
use engram_ckpt::DType;
use engram_weights::merge::{MergeMethod, get, registry};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The parameters `search` may name, in genome order.
pub const SEARCHABLE: [&str; 2] = ["weight", "density"];

/// How the score command is run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    /// A command line for `sh -c`; `{model}` becomes the shell-quoted model path.
    Shell(String),
    /// argv run directly; `{model}` inside any argument becomes the model path.
    Argv(Vec<String>),
}

/// A searched parameter and its bounds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Searched {
    pub name: String,
    pub min: f64,
    pub max: f64,
}

/// A checked configuration, with absolute model paths. Everything except `generations`
/// decides the candidates, so a rerun continues a run only if all of it is equal.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvolveConfig {
    pub merge_method: String,
    pub base_model: Option<PathBuf>,
    pub models: Vec<PathBuf>,
    /// Fixed global merge parameters.
    pub parameters: BTreeMap<String, f64>,
    pub search: Vec<Searched>,
    pub layer_groups: usize,
    pub score: Command,
    pub maximize: bool,
    pub timeout_s: u64,
    pub population: usize,
    pub generations: usize,
    pub sigma0: f64,
    pub seed: u64,
    /// Output dtype of the candidates, by name.
    pub dtype: Option<String>,
}

const TOP_KEYS: &[&str] = &[
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "search",
    "score",
    "population",
    "generations",
    "sigma0",
    "seed",
    "dtype",
];

/// Default generations when neither the config nor a flag says.
pub const DEFAULT_GENERATIONS: usize = 10;
/// Default initial step, in units of each bound's width.
pub const DEFAULT_SIGMA0: f64 = 0.25;
/// Default time a candidate's score command may take.
pub const DEFAULT_TIMEOUT_S: u64 = 3600;

impl EvolveConfig {
    pub fn method(&self) -> &'static dyn MergeMethod {
        get(&self.merge_method).expect("checked at parse")
    }

    /// Searched values: models × searched parameters × layer groups.
    pub fn dimensions(&self) -> usize {
        self.models.len() * self.search.len() * self.layer_groups
    }

    /// The name of each genome coordinate, e.g. `models[2].weight` or `models[2].weight[1]`.
    pub fn coordinate_names(&self) -> Vec<String> {
        let mut names = Vec::new();
        for i in 0..self.models.len() {
            for s in &self.search {
                for g in 0..self.layer_groups {
                    names.push(if self.layer_groups == 1 {
                        format!("models[{i}].{}", s.name)
                    } else {
                        format!("models[{i}].{}[{g}]", s.name)
                    });
                }
            }
        }
        names
    }
}

/// Reads and checks the configuration in `text` (from `path`); relative model paths are
/// looked up in the current folder, then in the config's.
pub fn parse(text: &str, path: &Path) -> Result<EvolveConfig> {
    let label = path.display().to_string();
    parse_inner(text, path.parent().unwrap_or(Path::new("."))).map_err(|e| anyhow!("{label}: {e}"))
}

fn parse_inner(text: &str, dir: &Path) -> Result<EvolveConfig> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| anyhow!("invalid YAML: {e}"))?;
    let Value::Mapping(top) = doc else {
        bail!("the config must be a YAML mapping");
    };
    let mut m = BTreeMap::new();
    for (k, v) in top {
        let k = k
            .as_str()
            .ok_or_else(|| anyhow!("config keys must be strings, found {k:?}"))?
            .to_string();
        if !TOP_KEYS.contains(&k.as_str()) {
            bail!(
                "unknown key '{k}' (engram evolve reads: {})",
                TOP_KEYS.join(", ")
            );
        }
        m.insert(k, v);
    }
    let name = m
        .get("merge_method")
        .ok_or_else(|| anyhow!("missing 'merge_method'"))?
        .as_str()
        .ok_or_else(|| anyhow!("merge_method must be a name"))?;
    let method = get(name).ok_or_else(|| {
        anyhow!(
            "merge_method: unknown method '{name}'; engram supports: {}",
            registry()
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let base_model = m
        .get("base_model")
        .map(|v| model_path(v, dir, "base_model"))
        .transpose()?;
    if method.needs_base() && base_model.is_none() {
        bail!("missing 'base_model': {name} merges task vectors against a base");
    }
    if !method.needs_base() && base_model.is_some() {
        bail!("base_model has no effect: {name} takes no base");
    }
    let models = match m.get("models") {
        Some(Value::Sequence(list)) if !list.is_empty() => list
            .iter()
            .enumerate()
            .map(|(i, e)| match e {
                Value::Mapping(mm) => {
                    if let Some((k, _)) = mm.iter().find(|(k, _)| k.as_str() != Some("model")) {
                        bail!(
                            "models[{i}]: unsupported key {k:?} (the searched parameters come from 'search'; fixed ones go in the global 'parameters')"
                        );
                    }
                    let v = mm
                        .get("model")
                        .ok_or_else(|| anyhow!("models[{i}] has no 'model'"))?;
                    model_path(v, dir, &format!("models[{i}].model"))
                }
                v => model_path(v, dir, &format!("models[{i}]")),
            })
            .collect::<Result<Vec<_>>>()?,
        Some(_) => bail!("'models' must be a non-empty list of model paths"),
        None => bail!("missing 'models'"),
    };
    let parameters = match m.get("parameters") {
        None => BTreeMap::new(),
        Some(Value::Mapping(p)) => p
            .iter()
            .map(|(k, v)| {
                let k = k
                    .as_str()
                    .ok_or_else(|| anyhow!("parameters: keys must be names"))?;
                let v = match v {
                    Value::Bool(b) => f64::from(u8::from(*b)),
                    v => v
                        .as_f64()
                        .ok_or_else(|| anyhow!("parameters.{k} must be a number or a boolean"))?,
                };
                Ok((k.to_string(), v))
            })
            .collect::<Result<_>>()?,
        Some(_) => bail!("'parameters' must be a mapping of fixed global merge parameters"),
    };
    let (search, layer_groups) = search(m.get("search"), method)?;
    let (score, maximize, timeout_s) = score(m.get("score"))?;
    let count = |key: &str, min: u64| -> Result<Option<usize>> {
        m.get(key)
            .map(|v| match v.as_u64() {
                Some(n) if n >= min && n <= 1_000_000 => Ok(n as usize),
                _ => bail!("{key} must be a whole number from {min} to 1000000, got {v:?}"),
            })
            .transpose()
    };
    let population = count("population", 2)?;
    let generations = count("generations", 1)?.unwrap_or(DEFAULT_GENERATIONS);
    let sigma0 = match m.get("sigma0") {
        None => DEFAULT_SIGMA0,
        Some(v) => match v.as_f64() {
            Some(s) if s > 0.0 && s <= 1.0 => s,
            _ => bail!(
                "sigma0 must be a number in (0, 1] (a share of each bound's width), got {v:?}"
            ),
        },
    };
    let seed = match m.get("seed") {
        None => 0,
        Some(v) => v
            .as_u64()
            .ok_or_else(|| anyhow!("seed must be a non-negative integer, got {v:?}"))?,
    };
    let dtype = match m.get("dtype") {
        None => None,
        Some(v) => {
            let s = v
                .as_str()
                .ok_or_else(|| anyhow!("dtype must be a name such as float32"))?;
            match DType::parse(s) {
                Some(d) if d.is_float() => Some(s.to_string()),
                _ => bail!("dtype: '{s}' is not a float dtype (float32, float16, bfloat16, ...)"),
            }
        }
    };
    let mut cfg = EvolveConfig {
        merge_method: name.to_string(),
        base_model,
        models,
        parameters,
        search,
        layer_groups,
        score,
        maximize,
        timeout_s,
        population: 0,
        generations,
        sigma0,
        seed,
        dtype,
    };
    cfg.population =
        population.unwrap_or_else(|| super::cmaes::default_population(cfg.dimensions()));
    // The fixed parameters and the bounds are checked as the merge will check them: the
    // genome maps linearly to the bounds, so its two corners span every value.
    let names: Vec<String> = cfg.models.iter().map(|p| p.display().to_string()).collect();
    for corner in [0.0, 1.0] {
        super::candidate::param_source(&cfg, &vec![corner; cfg.dimensions()])
            .validate(method, &names)
            .map_err(|e| anyhow!("{e}"))?;
    }
    Ok(cfg)
}

/// `search`: the searched parameters with their bounds, and the layer groups.
fn search(v: Option<&Value>, method: &dyn MergeMethod) -> Result<(Vec<Searched>, usize)> {
    let Some(Value::Mapping(s)) = v else {
        bail!(
            "missing 'search' (a mapping such as {{weight: [0.0, 1.0], density: [0.1, 1.0], layer_groups: 1}})"
        );
    };
    let mut groups = 1;
    let mut found = BTreeMap::new();
    for (k, v) in s {
        let k = k.as_str().unwrap_or_default();
        match k {
            "layer_groups" => {
                groups = match v.as_u64() {
                    Some(n) if (1..=64).contains(&n) => n as usize,
                    _ => {
                        bail!("search.layer_groups must be a whole number from 1 to 64, got {v:?}")
                    }
                }
            }
            k if SEARCHABLE.contains(&k) => {
                let spec = method.params().iter().find(|p| p.name == k && p.per_model);
                if spec.is_none() {
                    bail!(
                        "search.{k}: {} takes no per-model '{k}' (its parameters: {})",
                        method.name(),
                        method
                            .params()
                            .iter()
                            .map(|p| p.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                }
                let bounds = match v {
                    Value::Sequence(b) if b.len() == 2 => (b[0].as_f64(), b[1].as_f64()),
                    _ => (None, None),
                };
                let (Some(min), Some(max)) = bounds else {
                    bail!("search.{k} must be bounds [min, max], got {v:?}");
                };
                if !(min.is_finite() && max.is_finite() && min < max) {
                    bail!("search.{k}: bounds [{min}, {max}] must be finite with min < max");
                }
                found.insert(k.to_string(), (min, max));
            }
            other => bail!(
                "search: unknown key '{other}' (engram evolve searches {} and takes layer_groups)",
                SEARCHABLE.join(", ")
            ),
        }
    }
    let search: Vec<Searched> = SEARCHABLE
        .iter()
        .filter_map(|n| {
            found.get(*n).map(|&(min, max)| Searched {
                name: n.to_string(),
                min,
                max,
            })
        })
        .collect();
    if search.is_empty() {
        bail!("search names no parameter: give weight and/or density with bounds");
    }
    Ok((search, groups))
}

/// `score`: the command, whether higher is better, the timeout.
fn score(v: Option<&Value>) -> Result<(Command, bool, u64)> {
    let command = |v: &Value| -> Result<Command> {
        match v {
            Value::String(s) if !s.trim().is_empty() => Ok(Command::Shell(s.clone())),
            Value::Sequence(l) if !l.is_empty() => l
                .iter()
                .map(|a| {
                    a.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| anyhow!("score.command: every argument must be a string"))
                })
                .collect::<Result<Vec<_>>>()
                .map(Command::Argv),
            _ => bail!("score.command must be a command line or a list of arguments"),
        }
    };
    let (cmd, maximize, timeout) = match v {
        None => bail!("missing 'score': the command that prints a candidate's score"),
        Some(Value::Mapping(m)) => {
            let mut cmd = None;
            let (mut maximize, mut timeout) = (true, DEFAULT_TIMEOUT_S);
            for (k, v) in m {
                match k.as_str().unwrap_or_default() {
                    "command" => cmd = Some(command(v)?),
                    "maximize" => {
                        maximize = v
                            .as_bool()
                            .ok_or_else(|| anyhow!("score.maximize must be true or false"))?
                    }
                    "timeout" => {
                        timeout = match v.as_u64() {
                            Some(t) if t >= 1 => t,
                            _ => bail!("score.timeout must be whole seconds, at least 1"),
                        }
                    }
                    other => bail!(
                        "score: unknown key '{other}' (engram evolve reads command, maximize, timeout)"
                    ),
                }
            }
            (
                cmd.ok_or_else(|| anyhow!("score has no 'command'"))?,
                maximize,
                timeout,
            )
        }
        Some(v) => (command(v)?, true, DEFAULT_TIMEOUT_S),
    };
    let mentions = match &cmd {
        Command::Shell(s) => s.contains("{model}"),
        Command::Argv(a) => a.iter().any(|s| s.contains("{model}")),
    };
    if !mentions {
        bail!("score.command never mentions {{model}} (where the candidate's merged model is)");
    }
    Ok((cmd, maximize, timeout))
}

/// A model path: from the current folder if it exists there, else from `dir`; absolute.
fn model_path(v: &Value, dir: &Path, what: &str) -> Result<PathBuf> {
    let s = v.as_str().ok_or_else(|| anyhow!("{what} must be a path"))?;
    let p = [PathBuf::from(s), dir.join(s)]
        .into_iter()
        .find(|p| p.exists())
        .ok_or_else(|| {
            anyhow!(
                "{what}: '{s}' not found (looked in the current folder and in {})",
                dir.display()
            )
        })?;
    Ok(std::path::absolute(&p)?)
}
