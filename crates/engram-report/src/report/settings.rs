//! A run's settings (`params`, free-form JSON) as readable `key = value` lines: nested keys
//! dotted, the settings every run of a section shares listed once, the rest per strategy.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::rank::Row;
use crate::results::RunResults;

/// Arrays longer than this print as a count (a curve is data, not a setting).
const MAX_LISTED: usize = 12;

/// `params` as sorted (dotted key, value) pairs. engram-learn nests the run file under
/// `config`: its keys lose that prefix (`train.optimizer.lr`, not `config.train.optimizer.lr`)
/// unless that would collide with another key. Strings print bare, `null` as `none`, short
/// arrays of plain values inline (`[256, 256]`), longer ones as their length.
pub fn flatten(params: &Value) -> Vec<(String, String)> {
    let mut out = BTreeMap::new();
    walk("", params, &mut out);
    let renamed: Vec<(String, String)> = out
        .iter()
        .map(|(k, v)| match k.strip_prefix("config.") {
            Some(short) if !out.contains_key(short) => (short.to_string(), v.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    let mut m: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in renamed {
        m.insert(k, v);
    }
    m.into_iter().collect()
}

fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, String>) {
    let key = |k: &str| {
        if prefix.is_empty() {
            k.to_string()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                walk(&key(k), v, out);
            }
        }
        Value::Array(a) if a.iter().any(|x| x.is_object() || x.is_array()) => {
            if a.len() > MAX_LISTED {
                out.insert(prefix.to_string(), format!("[{} items]", a.len()));
            } else {
                for (i, x) in a.iter().enumerate() {
                    walk(&key(&i.to_string()), x, out);
                }
            }
        }
        Value::Null if prefix.is_empty() => {}
        _ if prefix.is_empty() => {
            out.insert("value".into(), plain(v));
        }
        _ => {
            out.insert(prefix.to_string(), plain(v));
        }
    }
}

/// A leaf: a plain value, an empty object, or an array of plain values.
fn plain(v: &Value) -> String {
    match v {
        Value::Null => "none".into(),
        Value::String(s) if s.is_empty() => "\"\"".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.len() > MAX_LISTED => format!("[{} values]", a.len()),
        Value::Array(a) => format!("[{}]", a.iter().map(plain).collect::<Vec<_>>().join(", ")),
        Value::Object(_) => "{}".into(),
        v => v.to_string(),
    }
}

/// The settings of a section: what every run shares, then per row what is its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub common: Vec<(String, String)>,
    /// (row label, its own settings), in the rows' order; rows with none are left out.
    pub own: Vec<(String, Vec<(String, String)>)>,
}

/// Keys that name a run rather than set it: its name (shown with its figures) and its seed
/// (the tables count the seeds).
const IDENTITY: [&str; 2] = ["name", "seed"];

/// Splits the settings of `rows`' runs into those common to every run and those of each row.
/// A row whose seeds disagree on a key shows the values it takes ("varies across seeds").
pub fn section_settings(results: &[RunResults], rows: &[&Row]) -> Settings {
    let per_run: Vec<Vec<BTreeMap<String, String>>> = rows
        .iter()
        .map(|row| {
            row.group
                .runs
                .iter()
                .filter_map(|&i| results.get(i))
                .map(|r| {
                    flatten(&r.params)
                        .into_iter()
                        .filter(|(k, _)| !IDENTITY.contains(&k.as_str()))
                        .collect()
                })
                .collect()
        })
        .collect();
    let all: Vec<&BTreeMap<String, String>> = per_run.iter().flatten().collect();
    let keys: BTreeSet<&String> = all.iter().flat_map(|m| m.keys()).collect();
    let common: Vec<(String, String)> = keys
        .iter()
        .filter_map(|k| {
            let first = all.first()?.get(*k)?;
            all.iter()
                .all(|m| m.get(*k) == Some(first))
                .then(|| ((*k).clone(), first.clone()))
        })
        .collect();
    let is_common = |k: &str| common.iter().any(|(c, _)| c == k);
    let own = rows
        .iter()
        .zip(&per_run)
        .filter_map(|(row, runs)| {
            let keys: BTreeSet<&String> = runs.iter().flat_map(|m| m.keys()).collect();
            let pairs: Vec<(String, String)> = keys
                .into_iter()
                .filter(|k| !is_common(k))
                .map(|k| {
                    let mut values: Vec<&str> = runs
                        .iter()
                        .map(|m| m.get(k).map_or("(not set)", String::as_str))
                        .collect();
                    values.dedup();
                    let distinct: BTreeSet<&str> = values.iter().copied().collect();
                    let v = if distinct.len() == 1 {
                        values[0].to_string()
                    } else if distinct.len() <= 3 && distinct.iter().all(|v| v.len() <= 40) {
                        format!("varies across seeds: {}", values.join(" / "))
                    } else {
                        "varies across seeds".into()
                    };
                    (k.clone(), v)
                })
                .collect();
            (!pairs.is_empty()).then(|| (row.label(), pairs))
        })
        .collect();
    Settings { common, own }
}

#[cfg(test)]
mod tests {
    use super::super::rank::sections;
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_params_flatten_to_dotted_keys() {
        let p = json!({
            "config": {
                "name": "r",
                "train": {"epochs": 2, "optimizer": {"kind": "adam", "lr": 0.001, "betas": [0.9, 0.999]}},
                "model": {"hidden": [256, 256], "extra": {}},
                "strategy": {"name": "ewc", "lambda": 100.0, "schedule": [], "note": "", "cap": null},
                "phases": [{"a": 1}, {"a": 2}]
            },
            "model_params": 4810,
            "current_task_curve": (0..50).collect::<Vec<_>>()
        });
        let f = flatten(&p);
        let get = |k: &str| f.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str());
        assert_eq!(get("train.optimizer.lr"), Some("0.001"));
        assert_eq!(get("train.optimizer.kind"), Some("adam"));
        assert_eq!(get("train.optimizer.betas"), Some("[0.9, 0.999]"));
        assert_eq!(get("model.hidden"), Some("[256, 256]"));
        assert_eq!(get("model.extra"), Some("{}"));
        assert_eq!(get("strategy.lambda"), Some("100.0"));
        assert_eq!(get("strategy.schedule"), Some("[]"));
        assert_eq!(get("strategy.note"), Some("\"\""));
        assert_eq!(get("strategy.cap"), Some("none"));
        assert_eq!(get("phases.1.a"), Some("2"));
        assert_eq!(get("model_params"), Some("4810"));
        assert_eq!(get("current_task_curve"), Some("[50 values]"));
        assert_eq!(get("name"), Some("r"));
        // Sorted by key, no raw JSON left.
        assert!(f.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(f.iter().all(|(_, v)| !v.contains('{') || v == "{}"));
        // A clash keeps the prefix.
        let clash = flatten(&json!({"config": {"lr": 1}, "lr": 2}));
        assert_eq!(
            clash,
            [
                ("config.lr".to_string(), "1".to_string()),
                ("lr".to_string(), "2".to_string())
            ]
        );
        assert!(flatten(&Value::Null).is_empty());
        assert_eq!(flatten(&json!(3)), [("value".to_string(), "3".to_string())]);
    }

    #[test]
    fn settings_split_into_common_and_own() {
        let run = |strategy: &str, seed: u64, params: Value| RunResults {
            name: format!("{strategy}-{seed}"),
            strategy: strategy.into(),
            scenario: "s".into(),
            eval_mode: "class-il".into(),
            seed,
            tasks: Vec::new(),
            accuracy: vec![vec![1.0]],
            task_il_accuracy: None,
            baseline: None,
            summary: Default::default(),
            all_class_curve: None,
            ece_curve: None,
            ece_matrix: None,
            notes: Vec::new(),
            params,
        };
        let results = vec![
            run(
                "ewc",
                0,
                json!({"config": {"name": "ewc-0", "seed": 0, "lr": 0.1, "scenario": {"seed": 3}, "strategy": {"name": "ewc", "lambda": 10}}}),
            ),
            run(
                "ewc",
                1,
                json!({"config": {"name": "ewc-1", "seed": 1, "lr": 0.1, "scenario": {"seed": 4}, "strategy": {"name": "ewc", "lambda": 10}}}),
            ),
            run(
                "naive",
                0,
                json!({"config": {"name": "naive-0", "seed": 0, "lr": 0.1, "strategy": {"name": "naive"}}}),
            ),
        ];
        // The seeds of one setting (scenario seeds included) are one group.
        let s = &sections(&results)[0];
        assert_eq!(s.ranked.len(), 2);
        let rows: Vec<&Row> = s.rows().collect();
        let st = section_settings(&results, &rows);
        assert_eq!(st.common, [("lr".to_string(), "0.1".to_string())]);
        assert_eq!(
            st.own,
            [
                (
                    "ewc".to_string(),
                    vec![
                        (
                            "scenario.seed".to_string(),
                            "varies across seeds: 3 / 4".to_string()
                        ),
                        ("strategy.lambda".to_string(), "10".to_string()),
                        ("strategy.name".to_string(), "ewc".to_string())
                    ]
                ),
                (
                    "naive (baseline)".to_string(),
                    vec![("strategy.name".to_string(), "naive".to_string())]
                )
            ]
        );
    }
}
