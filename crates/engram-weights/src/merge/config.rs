//! mergekit YAML configurations (`engram merge CONFIG.yml`).
//!
//! Accepted: `merge_method`, `base_model`, `models` (each `model` and `parameters`), global
//! `parameters`, `dtype` (recorded; engram always computes in f32), `out_dtype`; parameter
//! values as scalars or booleans, per-layer gradients (lists of numbers) and filter lists
//! (`[{filter: ..., value: ...}, {value: ...}]`). engram extensions: `trim_scope`
//! (`tensor` | `model`) and `seed`. Any other key is an error that names it: a silently
//! ignored key would produce a different model than the user asked for.

use super::params::{ParamSource, ParamValue};
use super::{MergeMethod, TrimScope};
use engram_ckpt::DType;
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
        .map(|v| model_path(v, dir, "base_model"))
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
                    "model" => path = Some(model_path(v, dir, &format!("models[{i}].model"))?),
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

fn model_path(v: &Value, dir: &Path, what: &str) -> Res<PathBuf> {
    let s = v.as_str().ok_or_else(|| format!("{what} must be a path"))?;
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
