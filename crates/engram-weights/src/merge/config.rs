//! mergekit YAML configurations (`engram merge CONFIG.yml`).
//!
//! Accepted: `merge_method`, `base_model`, `models` (each `model` and `parameters`), global
//! `parameters`, `dtype` (recorded; engram always computes in f32), `out_dtype`; parameter
//! values as scalars or booleans, per-layer gradients (lists of numbers) and filter lists
//! (`[{filter: ..., value: ...}, {value: ...}]`). engram extensions: `trim_scope`
//! (`tensor` | `model`) and `seed`. Any other key is an error that names it: a silently
//! ignored key would produce a different model than the user asked for.

use super::params::{ParamSource, ParamValue};
use super::request::MergeRequest;
use super::{MergeMethod, TrimScope};
use crate::spelling::Spelling;
use engram_ckpt::{DType, Model};
use serde_yaml_ng::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct MergeConfig {
    pub method: &'static dyn MergeMethod,
    pub base: Option<PathBuf>,
    pub models: Vec<PathBuf>,
    pub params: ParamSource,
    pub out_dtype: Option<DType>,
    pub scope: TrimScope,
    /// `None`: not given (seed 0).
    pub seed: Option<u64>,
}

impl std::fmt::Debug for dyn MergeMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

type Res<T> = Result<T, String>;

const TOP_KEYS: &[&str] = &[
    "merge_method",
    "base_model",
    "models",
    "parameters",
    "dtype",
    "out_dtype",
    "trim_scope",
    "seed",
];

/// Parses a config; `dir` resolves relative model paths that do not exist from the
/// current folder.
pub fn parse(text: &str, dir: &Path) -> Res<MergeConfig> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("invalid YAML: {e}"))?;
    parse_value(doc, dir, &BTreeMap::new())
}

/// [`parse`] of a config already read as YAML. A model reference that is a key of `outputs`
/// (the name of an earlier stage of a multi-stage config, [`super::stages`]) is that stage's
/// output path, which need not exist yet; every other reference resolves as in [`parse`].
pub fn parse_value(
    doc: Value,
    dir: &Path,
    outputs: &BTreeMap<String, PathBuf>,
) -> Res<MergeConfig> {
    let Value::Mapping(top) = doc else {
        return Err("the config must be a YAML mapping".into());
    };
    let mut top_map = BTreeMap::new();
    for (k, v) in top {
        let k = key_str(&k)?;
        if !TOP_KEYS.contains(&k.as_str()) {
            return Err(unsupported_top(&k));
        }
        top_map.insert(k, v);
    }
    let method_name = top_map
        .get("merge_method")
        .and_then(Value::as_str)
        .ok_or("missing 'merge_method'")?;
    let method = super::get(method_name).ok_or_else(|| {
        format!(
            "unknown merge_method '{method_name}'; engram supports: {}",
            super::registry()
                .iter()
                .map(|m| m.name())
                .collect::<Vec<_>>()
                .join(", ")
        )
    })?;
    let base = top_map
        .get("base_model")
        .map(|v| model_path(v, dir, outputs, "base_model"))
        .transpose()?;
    let mut models = Vec::new();
    let mut per_model = Vec::new();
    if let Some(list) = top_map.get("models") {
        let Value::Sequence(list) = list else {
            return Err("'models' must be a list".into());
        };
        for (i, entry) in list.iter().enumerate() {
            let Value::Mapping(e) = entry else {
                return Err(format!("models[{i}] must be a mapping with 'model'"));
            };
            let mut path = None;
            let mut params = BTreeMap::new();
            for (k, v) in e {
                match key_str(k)?.as_str() {
                    "model" => {
                        path = Some(model_path(v, dir, outputs, &format!("models[{i}].model"))?)
                    }
                    "parameters" => params = parse_params(v, &format!("models[{i}].parameters"))?,
                    other => {
                        return Err(format!(
                            "models[{i}]: unsupported key '{other}' (engram accepts 'model' and 'parameters')"
                        ));
                    }
                }
            }
            let path = path.ok_or_else(|| format!("models[{i}] has no 'model'"))?;
            // mergekit skips the base when it is listed among the models of a method that
            // works on task vectors; its delta is zero and it must not count in normalization.
            if method.needs_base() && base.as_ref().is_some_and(|b| same_path(b, &path)) {
                if let Some(k) = params.keys().next() {
                    return Err(format!(
                        "models[{i}].parameters.{k} has no effect: the entry is the base_model (its delta is zero); remove it"
                    ));
                }
                continue;
            }
            models.push(path);
            per_model.push(params);
        }
    }
    let global = match top_map.get("parameters") {
        Some(v) => parse_params(v, "parameters")?,
        None => BTreeMap::new(),
    };
    let out_dtype = top_map
        .get("out_dtype")
        .map(|v| dtype(v, "out_dtype"))
        .transpose()?;
    if let Some(v) = top_map.get("dtype") {
        dtype(v, "dtype")?;
    }
    let scope = match top_map.get("trim_scope").map(|v| v.as_str()) {
        None | Some(Some("tensor")) => TrimScope::Tensor,
        Some(Some("model")) => {
            if !method.trims_by_magnitude() {
                return Err(format!(
                    "trim_scope: model applies to magnitude-trimming methods; {} does not trim by magnitude",
                    method.name()
                ));
            }
            TrimScope::Model
        }
        Some(_) => return Err("trim_scope must be 'tensor' or 'model'".into()),
    };
    let seed = top_map
        .get("seed")
        .map(|v| v.as_u64().ok_or("seed must be a non-negative integer"))
        .transpose()?;
    check_effect(
        method,
        base.is_some(),
        seed.is_some(),
        ["base_model", "seed"],
    )?;
    // Checked here too (the plan checks every request), so that a bad value is reported
    // before any model is opened.
    let params = ParamSource { global, per_model };
    let names: Vec<String> = models.iter().map(|m| m.display().to_string()).collect();
    params.validate(method, &names)?;
    Ok(MergeConfig {
        method,
        base,
        models,
        params,
        out_dtype,
        scope,
        seed,
    })
}

/// A base for a method that takes none, or a seed for a method that draws no random numbers,
/// would be ignored: an error naming the setting (`keys`: how the user gave base and seed).
pub fn check_effect(
    method: &dyn super::MergeMethod,
    base: bool,
    seed: bool,
    keys: [&str; 2],
) -> Result<(), String> {
    let m = method.name();
    match (base && !method.needs_base(), seed && !method.random()) {
        (true, _) => Err(format!("{} has no effect: {m} takes no base", keys[0])),
        (_, true) => Err(format!(
            "{} has no effect: {m} is deterministic (only dare_* and della* draw random numbers)",
            keys[1]
        )),
        _ => Ok(()),
    }
}

fn unsupported_top(k: &str) -> String {
    let why = match k {
        "slices" => "layer slicing (passthrough/frankenmerges) is not supported by engram",
        "tokenizer_source" | "tokenizer" | "chat_template" => {
            "engram does not rebuild tokenizers; side files come from the base model"
        }
        _ => "not a key engram knows",
    };
    format!("unsupported config key '{k}': {why}")
}

fn key_str(k: &Value) -> Res<String> {
    k.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("config keys must be strings, found {k:?}"))
}

fn same_path(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

fn model_path(
    v: &Value,
    dir: &Path,
    outputs: &BTreeMap<String, PathBuf>,
    what: &str,
) -> Res<PathBuf> {
    let s = v.as_str().ok_or_else(|| format!("{what} must be a path"))?;
    if let Some(p) = outputs.get(s) {
        return Ok(p.clone());
    }
    if s.contains('+') && !Path::new(s).exists() {
        return Err(format!(
            "{what}: '{s}' looks like a model+LoRA reference, which engram does not support"
        ));
    }
    let p = PathBuf::from(s);
    if p.exists() {
        return Ok(p);
    }
    let rel = dir.join(s);
    if rel.exists() {
        return Ok(rel);
    }
    Err(format!(
        "{what}: '{s}' not found (looked in the current folder and in {}); engram reads local model folders and files only, never a hub",
        dir.display()
    ))
}

fn dtype(v: &Value, what: &str) -> Res<DType> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("{what} must be a string"))?;
    match DType::parse(s) {
        Some(d) if d.is_float() => Ok(d),
        _ => Err(format!(
            "{what}: '{s}' is not a float dtype (float32, float16, bfloat16, ...)"
        )),
    }
}

fn parse_params(v: &Value, what: &str) -> Res<BTreeMap<String, ParamValue>> {
    let Value::Mapping(m) = v else {
        return Err(format!("{what} must be a mapping"));
    };
    let mut out = BTreeMap::new();
    for (k, val) in m {
        let k = key_str(k)?;
        out.insert(k.clone(), param_value(val, &format!("{what}.{k}"))?);
    }
    Ok(out)
}

fn param_value(v: &Value, what: &str) -> Res<ParamValue> {
    match v {
        Value::Bool(b) => Ok(ParamValue::Bool(*b)),
        Value::Number(n) => n
            .as_f64()
            .map(ParamValue::Scalar)
            .ok_or_else(|| format!("{what}: {n} is not a number")),
        Value::Sequence(items) if items.iter().all(|i| matches!(i, Value::Number(_))) => {
            if items.is_empty() {
                return Err(format!("{what}: an empty gradient list"));
            }
            items
                .iter()
                .map(|i| i.as_f64().ok_or_else(|| format!("{what}: bad number")))
                .collect::<Res<Vec<_>>>()
                .map(ParamValue::Gradient)
        }
        Value::Sequence(items) => {
            let mut list = Vec::new();
            for (i, it) in items.iter().enumerate() {
                let Value::Mapping(m) = it else {
                    return Err(format!(
                        "{what}[{i}]: expected a number or {{filter, value}}"
                    ));
                };
                let mut filter = None;
                let mut value = None;
                for (k, x) in m {
                    match key_str(k)?.as_str() {
                        "filter" => {
                            filter = Some(
                                x.as_str()
                                    .ok_or_else(|| format!("{what}[{i}].filter must be a string"))?
                                    .to_string(),
                            )
                        }
                        "value" => value = Some(param_value(x, &format!("{what}[{i}].value"))?),
                        other => {
                            return Err(format!(
                                "{what}[{i}]: unsupported key '{other}' (use 'filter' and 'value')"
                            ));
                        }
                    }
                }
                list.push((
                    filter,
                    value.ok_or_else(|| format!("{what}[{i}] has no 'value'"))?,
                ));
            }
            Ok(ParamValue::Filtered(list))
        }
        other => Err(format!("{what}: unsupported value {other:?}")),
    }
}

/// A parameter given to the quick form: its name, its value, and how the user wrote it
/// (`--param lambda=0.5`) for the message that it is given twice, if the front end names it.
pub type GivenParam = (String, ParamValue, Option<String>);

/// The quick form of a merge (`engram merge --method ...`, `engram.merge(method=...)`): the
/// values as the user gave them, before any check.
pub struct QuickForm<P> {
    pub method: &'static dyn MergeMethod,
    pub base: Option<PathBuf>,
    pub models: Vec<PathBuf>,
    pub density: Option<f64>,
    pub lambda: Option<f64>,
    pub t: Option<f64>,
    /// Further parameters in the order given; read one by one after the models are checked,
    /// so that a front end may parse them lazily (its parse errors come in their turn).
    pub params: P,
    /// Per-model weights in model order (empty: none given).
    pub weights: Vec<f64>,
    /// `tensor` or `model`.
    pub trim_scope: Option<String>,
    pub seed: Option<u64>,
    /// A float dtype by name.
    pub out_dtype: Option<String>,
}

/// The merge the quick form `q` asks for, checked before any model is opened: each parameter
/// once, one weight per model, parameters the method takes, a base and a seed only where they
/// have an effect, `trim_scope` model only for magnitude-trimming methods, a base where the
/// method needs one. `spelling` names the options in the messages.
pub fn quick_config<P>(q: QuickForm<P>, spelling: Spelling) -> Res<MergeConfig>
where
    P: IntoIterator<Item = Res<GivenParam>>,
{
    let method = q.method;
    let name = method.name();
    if q.models.is_empty() {
        return Err("no models to merge".into());
    }
    // Each parameter once: `--lambda 0.4 --param lambda=0.5` or a repeated --param is an error.
    let flags = spelling == Spelling::Flags;
    let mut given: Vec<GivenParam> = [("density", q.density), ("lambda", q.lambda), ("t", q.t)]
        .into_iter()
        .filter_map(|(k, v)| {
            let shown = flags.then(|| spelling.name(k));
            Some((k.to_string(), ParamValue::Scalar(v?), shown))
        })
        .collect();
    for p in q.params {
        given.push(p?);
    }
    let mut global = BTreeMap::new();
    for (k, v, shown) in given {
        if global.insert(k.clone(), v).is_some() {
            let at = shown.map_or(String::new(), |s| format!("{s}: "));
            return Err(format!("{at}parameter '{k}' is given twice; give it once"));
        }
    }
    if !q.weights.is_empty() && q.weights.len() != q.models.len() {
        return Err(format!(
            "{} weights for {} models",
            q.weights.len(),
            q.models.len()
        ));
    }
    // Without weights no model has its own map: the merge gives each the global parameters.
    let per_model = q
        .weights
        .iter()
        .map(|w| BTreeMap::from([("weight".to_string(), ParamValue::Scalar(*w))]))
        .collect();
    // The library's one check of parameters (the plan repeats it), before models are opened.
    let params = ParamSource { global, per_model };
    let names: Vec<String> = q.models.iter().map(|m| m.display().to_string()).collect();
    params.validate(method, &names)?;
    check_effect(
        method,
        q.base.is_some(),
        q.seed.is_some(),
        [&spelling.name("base"), &spelling.name("seed")],
    )?;
    let scope = match q.trim_scope.as_deref() {
        None | Some("tensor") => TrimScope::Tensor,
        Some("model") => {
            if !method.trims_by_magnitude() {
                return Err(format!(
                    "{} applies to magnitude-trimming methods; {name} does not trim by magnitude",
                    spelling.set("trim_scope", "model")
                ));
            }
            TrimScope::Model
        }
        Some(s) => {
            return Err(format!(
                "{} '{s}': use tensor or model",
                spelling.name("trim_scope")
            ));
        }
    };
    if method.needs_base() && q.base.is_none() {
        return Err(format!("{name} needs {}", spelling.name("base")));
    }
    Ok(MergeConfig {
        method,
        base: q.base,
        models: q.models,
        params,
        out_dtype: q.out_dtype.as_deref().map(DType::parse_float).transpose()?,
        scope,
        seed: q.seed,
    })
}

/// A config file's merge (`cfg`, read from `label`) with the front end's output dtype and
/// seed, which apply unless the config sets them too (both: an error), and a seed only for a
/// method that draws random numbers.
pub fn with_flags(
    mut cfg: MergeConfig,
    label: &str,
    out_dtype: Option<&str>,
    seed: Option<u64>,
    spelling: Spelling,
) -> Res<MergeConfig> {
    let out_dtype = out_dtype.map(DType::parse_float).transpose()?;
    for (key, given, in_config) in [
        ("out_dtype", out_dtype.is_some(), cfg.out_dtype.is_some()),
        ("seed", seed.is_some(), cfg.seed.is_some()),
    ] {
        if given && in_config {
            return Err(format!(
                "{} is given and {label} sets it too; give it once",
                spelling.given(key)
            ));
        }
    }
    check_effect(
        cfg.method,
        false,
        seed.is_some(),
        ["", &spelling.given("seed")],
    )?;
    cfg.out_dtype = cfg.out_dtype.or(out_dtype);
    cfg.seed = cfg.seed.or(seed);
    Ok(cfg)
}

impl MergeConfig {
    /// The request of this merge over the opened `base` and `models` (the files it names),
    /// with its parameters, trimming scope, seed (0 if none) and output dtype.
    pub fn request<'a>(&self, base: Option<&'a Model>, models: &'a [Model]) -> MergeRequest<'a> {
        MergeRequest::new(self.method, base, models.iter().collect())
            .with_params(self.params.clone())
            .with_scope(self.scope)
            .with_seed(self.seed.unwrap_or(0))
            .with_out_dtype(self.out_dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_mergekit_ties_config_and_names_bad_keys() {
        let dir = tempfile::tempdir().unwrap();
        for m in ["base", "a", "b"] {
            std::fs::create_dir(dir.path().join(m)).unwrap();
        }
        let cfg = r#"
merge_method: task_arithmetic
base_model: base
models:
  - model: base
  - model: a
    parameters:
      weight: [0.1, 0.5, 1.0]
  - model: b
    parameters:
      weight:
        - filter: self_attn
          value: 0.3
        - value: 0.7
parameters:
  normalize: true
  lambda: 0.8
dtype: bfloat16
out_dtype: float16
"#;
        let c = parse(cfg, dir.path()).unwrap();
        assert_eq!(c.method.name(), "task_arithmetic");
        assert_eq!(c.models.len(), 2, "the base listed among models is skipped");
        assert_eq!(c.out_dtype, Some(DType::F16));
        let (pm, g) = c
            .params
            .resolve(c.method.params(), "model.layers.3.self_attn.q", 0.5);
        assert_eq!(g.get("lambda"), Some(0.8));
        assert_eq!(pm[0].get("weight"), Some(0.5));
        assert_eq!(pm[1].get("weight"), Some(0.3));

        let bad = cfg.replace("lambda: 0.8", "lambda: 0.8\n  densty: 0.5");
        let e = parse(&bad, dir.path()).unwrap_err();
        assert!(e.contains("'densty'"), "{e}");
        for (from, to, want) in [
            (
                "lambda: 0.8",
                "lambda: .nan",
                "'lambda': NaN is not a finite",
            ),
            (
                "weight: [0.1, 0.5, 1.0]",
                "weight: [0.1, .inf]",
                "'weight' of model",
            ),
            (
                "normalize: true",
                "normalize: 2",
                "'normalize': 2 is not 0 or 1",
            ),
        ] {
            let e = parse(&cfg.replace(from, to), dir.path()).unwrap_err();
            assert!(e.contains(want), "{to}: {e}");
        }
        let e = parse(&format!("{cfg}\nslices: []\n"), dir.path()).unwrap_err();
        assert!(e.contains("'slices'"), "{e}");
        let e = parse(&cfg.replace("model: a", "model: nowhere"), dir.path()).unwrap_err();
        assert!(e.contains("'nowhere' not found"), "{e}");
        let e = parse(&cfg.replace("task_arithmetic", "frankenmerge"), dir.path()).unwrap_err();
        assert!(e.contains("unknown merge_method"), "{e}");
    }
}
