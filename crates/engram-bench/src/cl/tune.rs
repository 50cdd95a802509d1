//! Hyperparameters chosen on validation, never on test: for each strategy with a grid
//! ([`GRID`]), every point is scored by the final average accuracy of a run on a tuning copy of
//! its scenario whose test set is a validation split carved from the training examples
//! (`Scenario::carve_validation`, `Scenario::validation_view`). Scores are kept in
//! `tuning.json` and reused while the settings that produced them are unchanged.

use super::suite::{Chosen, GRID, Spec, base_params, make_config};
use crate::machine::{read_json, write_json};
use crate::{Progress, error_chain, training_progress};
use anyhow::Result;
use engram_report::results::RunResults;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Tuning: for each grid strategy, the chosen knob value (and the record of the search).
pub fn tune(
    data_dir: Option<&Path>,
    specs_all: &[Spec],
    strategies: &[String],
    path: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(Chosen, Value)> {
    // Scores already measured with the same settings are kept.
    let mut scores: BTreeMap<String, Value> = BTreeMap::new();
    let fingerprint = |spec: &Spec| serde_json::to_value(spec).unwrap_or(Value::Null);
    if path.is_file() {
        let old = read_json(path)?;
        if let Some(pts) = old["points"].as_object() {
            for (k, v) in pts {
                scores.insert(k.clone(), v.clone());
            }
        }
    }
    let mut chosen = BTreeMap::new();
    let mut record = Vec::new();
    let mut views: BTreeMap<&str, engram_learn::scenario::Scenario> = BTreeMap::new();
    for &(strategy, knobs, points, key) in GRID {
        if !strategies.iter().any(|s| s == strategy) {
            continue;
        }
        let spec = specs_all
            .iter()
            .find(|s| s.key == key && s.model == "mlp")
            .ok_or_else(|| anyhow::anyhow!("no MLP spec for tuning scenario {key}"))?;
        let mut best: Option<(f64, Vec<(String, f64)>)> = None;
        let mut rows = Vec::new();
        for &values in points {
            let point: Vec<(String, f64)> = knobs
                .iter()
                .zip(values)
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            let desc = point
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            let id = format!("{key}/{strategy}/{desc}");
            let mut params = base_params(strategy);
            for (k, v) in &point {
                params.insert(k.clone(), json!(v));
            }
            let name = format!("tune-{key}-mlp-{strategy}-{desc}");
            let cfg = make_config(spec, strategy, &params, 0, &name)?;
            let fp = json!({"spec": fingerprint(spec), "config": cfg});
            let cached = scores.get(&id).filter(|p| p["fingerprint"] == fp).cloned();
            let scored = match cached {
                Some(p) => p,
                None => {
                    if !views.contains_key(key) {
                        let mut s = cfg
                            .scenario
                            .build(data_dir)
                            .map_err(|e| anyhow::anyhow!("tuning scenario {key}: {e}"))?;
                        s.carve_validation(0.1, 0)
                            .map_err(|e| anyhow::anyhow!("tuning scenario {key}: {e}"))?;
                        let view = s
                            .validation_view()
                            .map_err(|e| anyhow::anyhow!("tuning scenario {key}: {e}"))?;
                        views.insert(key, view);
                    }
                    let view = &views[key];
                    let t = Instant::now();
                    let res = score(&cfg, view, progress);
                    let secs = t.elapsed().as_secs_f64();
                    let p = match res {
                        Ok(r) => json!({"fingerprint": fp, "valid_acc": r.summary.acc,
                                        "valid_forgetting": r.summary.forgetting, "seconds": secs}),
                        Err(e) => json!({"fingerprint": fp, "valid_acc": null,
                                        "error": error_chain(&e), "seconds": secs}),
                    };
                    progress(Progress::Message(format!(
                        "tune {strategy} {desc} on {key} (validation): ACC {} ({:.1} s)",
                        p["valid_acc"]
                            .as_f64()
                            .map_or_else(|| "failed".into(), |x| format!("{x:.2}")),
                        secs
                    )));
                    scores.insert(id.clone(), p.clone());
                    write_json(path, &json!({"points": scores}))?;
                    p
                }
            };
            let acc = scored["valid_acc"].as_f64();
            if let Some(acc) = acc
                && best.as_ref().is_none_or(|(b, _)| acc > *b)
            {
                best = Some((acc, point.clone()));
            }
            let obj: serde_json::Map<String, Value> =
                point.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
            rows.push(json!({"value": obj, "valid_acc": acc, "error": scored.get("error")}));
        }
        let pick = match best {
            Some((_, p)) => p,
            None => {
                // Every point failed: keep the strategy's defaults and say so.
                progress(Progress::Message(format!(
                    "tune {strategy}: every grid point failed; using the defaults"
                )));
                Vec::new()
            }
        };
        let pick_obj: serde_json::Map<String, Value> =
            pick.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
        chosen.insert(strategy.to_string(), pick);
        record.push(json!({
            "strategy": strategy, "knob": knobs, "chosen": pick_obj, "tuned_on": format!("{key} mlp, seed 0, 10% validation"),
            "score": "final average accuracy (ACC) on the validation split", "grid": rows,
        }));
    }
    Ok((chosen, Value::Array(record)))
}

/// One tuning run of `cfg` on the validation view: its results (ACC, forgetting).
fn score(
    cfg: &engram_learn::config::RunConfig,
    view: &engram_learn::scenario::Scenario,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunResults> {
    let out = engram_learn::run::train_on(
        cfg,
        view,
        None,
        None,
        None,
        &mut training_progress(&cfg.strategy.name, progress),
    )?;
    progress(Progress::Finish);
    let r = engram_learn::run::results_json(cfg, view, &out)?;
    Ok(serde_json::from_value(r)?)
}
