//! One candidate of `engram evolve`: a point of [0, 1]ⁿ turned into a mergekit config, and
//! the job that evaluates it (`engram evolve eval DIR`: merge, score, record).
//!
//! A candidate's folder holds `candidate.yml` (a mergekit config `engram merge` loads) and,
//! once evaluated, `score.json`, written atomically as the job's last act: a folder with
//! `score.json` is done. The merged model goes to `DIR/model/` and is removed after scoring
//! unless it is asked to stay.

use super::command::run_score;
use super::config::EvolveConfig;
use anyhow::{Context, Result, anyhow, bail};
use engram_weights::merge::config as merge_config;
use engram_weights::merge::engine::run_merge;
use engram_weights::merge::params::{ParamSource, ParamValue};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// The candidate's mergekit config.
pub const CONFIG_FILE: &str = "candidate.yml";
/// The done file: the score and what produced it.
pub const SCORE_FILE: &str = "score.json";
/// The run's settings in the output folder (two levels above a candidate).
pub const SETTINGS_FILE: &str = "settings.json";
/// Where the merged model goes inside the candidate's folder.
pub const MODEL_DIR: &str = "model";

/// What `engram evolve` records in its output folder for the jobs and for a rerun.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSettings {
    pub engram_evolve: u32,
    pub config: EvolveConfig,
    /// The folder the score command runs in (where `engram evolve` was started).
    pub cwd: PathBuf,
}

/// A candidate's result (`score.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub score: f64,
    /// The candidate's config as evaluated.
    pub candidate: String,
    pub merge_seconds: f64,
    pub score_seconds: f64,
}

/// Reflects `x` into [0, 1] (x, 2 − x, x − 2, ...): the repair of a sample outside the
/// box, continuous and the identity inside it.
pub fn mirror(x: f64) -> f64 {
    let t = x.rem_euclid(2.0);
    if t > 1.0 { 2.0 - t } else { t }
}

/// The value of coordinate `u` ∈ [0, 1] within [min, max].
fn scale(min: f64, max: f64, u: f64) -> f64 {
    min + (max - min) * u
}

/// The per-model values of `genome` (in [0, 1], ordered model, parameter, layer group) and
/// the fixed global parameters, as the merge takes them: a scalar per model and parameter,
/// or with several layer groups mergekit's gradient list over depth.
pub fn param_source(cfg: &EvolveConfig, genome: &[f64]) -> ParamSource {
    let g = cfg.layer_groups;
    let mut at = 0;
    let per_model = cfg
        .models
        .iter()
        .map(|_| {
            cfg.search
                .iter()
                .map(|s| {
                    let vals: Vec<f64> = genome[at..at + g]
                        .iter()
                        .map(|&u| scale(s.min, s.max, u))
                        .collect();
                    at += g;
                    let v = if g == 1 {
                        ParamValue::Scalar(vals[0])
                    } else {
                        ParamValue::Gradient(vals)
                    };
                    (s.name.clone(), v)
                })
                .collect::<BTreeMap<_, _>>()
        })
        .collect();
    let global = cfg
        .parameters
        .iter()
        .map(|(k, &v)| (k.clone(), ParamValue::Scalar(v)))
        .collect();
    ParamSource { global, per_model }
}

fn num(v: f64) -> Value {
    Value::Number(v.into())
}

fn path_value(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

/// The mergekit YAML of `genome`: loadable by `engram merge` (and mergekit, for the methods
/// both have), every path absolute.
pub fn yaml(cfg: &EvolveConfig, genome: &[f64]) -> String {
    let params = param_source(cfg, genome);
    let mut top = Mapping::new();
    top.insert("merge_method".into(), cfg.merge_method.clone().into());
    if let Some(b) = &cfg.base_model {
        top.insert("base_model".into(), path_value(b));
    }
    let models: Vec<Value> = cfg
        .models
        .iter()
        .zip(&params.per_model)
        .map(|(m, p)| {
            let mut e = Mapping::new();
            e.insert("model".into(), path_value(m));
            let mut pm = Mapping::new();
            for (k, v) in p {
                let v = match v {
                    ParamValue::Scalar(x) => num(*x),
                    ParamValue::Gradient(g) => Value::Sequence(g.iter().map(|&x| num(x)).collect()),
                    _ => unreachable!("evolve writes scalars and gradients only"),
                };
                pm.insert(k.clone().into(), v);
            }
            e.insert("parameters".into(), Value::Mapping(pm));
            Value::Mapping(e)
        })
        .collect();
    top.insert("models".into(), Value::Sequence(models));
    if !cfg.parameters.is_empty() {
        let g: Mapping = cfg
            .parameters
            .iter()
            .map(|(k, &v)| (k.clone().into(), num(v)))
            .collect();
        top.insert("parameters".into(), Value::Mapping(g));
    }
    if let Some(d) = &cfg.dtype {
        top.insert("out_dtype".into(), d.clone().into());
    }
    if cfg.method().random() {
        top.insert("seed".into(), Value::Number(cfg.seed.into()));
    }
    serde_yaml_ng::to_string(&Value::Mapping(top)).expect("a YAML mapping serializes")
}

/// The output folder a candidate folder belongs to (`OUT/gen-G/cand-I`).
fn run_dir(cand: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(cand)?;
    abs.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .ok_or_else(|| {
            anyhow!(
                "{} is not a candidate folder (OUT/gen-G/cand-I)",
                cand.display()
            )
        })
}

/// Reads the settings `engram evolve` recorded in `out`.
pub fn read_settings(out: &Path) -> Result<RunSettings> {
    let p = out.join(SETTINGS_FILE);
    let v = crate::machine::read_json(&p)?;
    serde_json::from_value(v).with_context(|| {
        format!(
            "{} is not the settings of an engram evolve run",
            p.display()
        )
    })
}

/// Reads a candidate's `score.json`, if it is there.
pub fn read_scored(cand: &Path) -> Result<Option<Scored>> {
    let p = cand.join(SCORE_FILE);
    if !p.exists() {
        return Ok(None);
    }
    let v = crate::machine::read_json(&p)?;
    let s: Scored = serde_json::from_value(v)
        .with_context(|| format!("{} is not a candidate's score", p.display()))?;
    if !s.score.is_finite() {
        bail!(
            "{}: the score {} is not a finite number",
            p.display(),
            s.score
        );
    }
    Ok(Some(s))
}

/// The job of one candidate: merges `cand/candidate.yml` into `cand/model/`, runs the run's
/// score command on it, writes `cand/score.json`, and removes the model unless `keep_model`.
/// Returns the score. Messages go to stderr (the job's log).
pub fn eval(cand: &Path, keep_model: bool) -> Result<Scored> {
    let out = run_dir(cand)?;
    let settings = read_settings(&out)?;
    let cfg_path = cand.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&cfg_path)
        .with_context(|| format!("cannot read {}", cfg_path.display()))?;
    let t0 = Instant::now();
    let mc =
        merge_config::parse(&text, cand).map_err(|e| anyhow!("{}: {e}", cfg_path.display()))?;
    let base = mc.base.as_deref().map(crate::open_model).transpose()?;
    let models = mc
        .models
        .iter()
        .map(|p| crate::open_model(p))
        .collect::<Result<Vec<_>>>()?;
    let model_dir = std::path::absolute(cand.join(MODEL_DIR))?;
    let md = engram_ckpt::provenance(
        "engram evolve eval",
        &serde_json::json!({"candidate": cand, "config": text}),
    );
    run_merge(
        &mc.request(base.as_ref(), &models),
        &model_dir,
        &md,
        &|_| {},
    )
    .with_context(|| format!("merging {}", cfg_path.display()))?;
    drop((base, models));
    let merge_seconds = t0.elapsed().as_secs_f64();
    let t1 = Instant::now();
    let score = run_score(
        &settings.config.score,
        &model_dir,
        &settings.cwd,
        std::time::Duration::from_secs(settings.config.timeout_s),
    );
    let score_seconds = t1.elapsed().as_secs_f64();
    if !keep_model {
        std::fs::remove_dir_all(&model_dir)
            .with_context(|| format!("removing {}", model_dir.display()))?;
    }
    let scored = Scored {
        score: score?,
        candidate: text,
        merge_seconds,
        score_seconds,
    };
    crate::machine::write_json(&cand.join(SCORE_FILE), &scored)?;
    Ok(scored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evolve::config::parse;

    #[test]
    fn mirror_reflects_into_the_unit_interval() {
        for (x, want) in [
            (0.3, 0.3),
            (1.0, 1.0),
            (1.2, 0.8),
            (-0.25, 0.25),
            (2.5, 0.5),
            (-1.5, 0.5),
            (3.75, 0.25),
        ] {
            assert!((mirror(x) - want).abs() < 1e-12, "{x}: {}", mirror(x));
        }
    }

    /// The candidate's YAML is a mergekit config that engram's merge reads back with the
    /// values of the genome (bounds scaled; gradients with layer groups), bit for bit.
    #[test]
    fn a_genome_becomes_a_mergekit_config_that_merge_reads_back() {
        let d = tempfile::tempdir().unwrap();
        for m in ["base", "a", "b"] {
            std::fs::create_dir(d.path().join(m)).unwrap();
        }
        let text = "merge_method: dare_ties\nbase_model: base\nmodels: [a, {model: b}]\nparameters: {lambda: 0.9}\nsearch:\n  weight: [0.0, 2.0]\n  density: [0.2, 1.0]\n  layer_groups: 2\nscore: echo {model}\nseed: 5\n";
        let cfg = parse(text, &d.path().join("evolve.yml")).unwrap();
        assert_eq!(cfg.dimensions(), 8);
        assert_eq!(cfg.population, 10);
        assert_eq!(cfg.coordinate_names()[3], "models[0].density[1]");
        let genome = [0.1, 0.7, 0.0, 1.0, 0.123456789, 0.5, 0.25, 0.75];
        let y = yaml(&cfg, &genome);
        let mc = merge_config::parse(&y, d.path()).unwrap();
        assert_eq!(mc.method.name(), "dare_ties");
        assert_eq!(mc.seed, Some(5));
        assert!(mc.base.as_ref().unwrap().is_absolute());
        let (pm, g) = mc
            .params
            .resolve(mc.method.params(), "model.layers.1.w", 1.0);
        assert_eq!(g.get("lambda"), Some(0.9));
        assert_eq!(pm[0].get("weight"), Some(2.0 * 0.7));
        assert_eq!(pm[0].get("density"), Some(1.0));
        assert_eq!(pm[1].get("weight"), Some(2.0 * 0.5));
        assert_eq!(pm[1].get("density"), Some(0.2 + 0.8 * 0.75));
        let (pm, _) = mc
            .params
            .resolve(mc.method.params(), "model.layers.0.w", 0.0);
        assert_eq!(pm[1].get("weight"), Some(2.0 * 0.123456789));
    }
}
