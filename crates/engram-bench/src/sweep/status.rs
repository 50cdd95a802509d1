//! `engram sweep status`: where each run of a sweep folder stands, from its files alone, so
//! that it reads the same whichever engine ran the runs.
//!
//! done: results.json exists; running: the local runner holds its lock; failed: its last
//! attempt under the local runner failed; started: a checkpoint exists (an interrupted run, or
//! one another engine is running); pending: none of these.

use super::runner::{ATTEMPTS, LOCK, LOG};
use super::{RESULTS, read_plan};
use anyhow::Result;
use serde_json::{Value, json};
use std::path::Path;

/// The states, in the order the counts list them.
pub const STATES: [&str; 5] = ["done", "running", "failed", "started", "pending"];

/// Whether another process holds the lock file `p`.
fn locked(p: &Path) -> bool {
    let Ok(f) = std::fs::File::open(p) else {
        return false;
    };
    matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

/// The state of the run folder `dir`, its results (if done) and its attempts.
fn state(dir: &Path) -> (&'static str, Option<Value>, Vec<Value>) {
    let attempts: Vec<Value> = std::fs::read(dir.join(ATTEMPTS))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v["attempts"].as_array().cloned())
        .unwrap_or_default();
    if let Ok(b) = std::fs::read(dir.join(RESULTS)) {
        return ("done", serde_json::from_slice(&b).ok(), attempts);
    }
    // The local runner's lock, or that of `engram train --if-needed` run by another engine.
    if locked(&dir.join(LOCK)) || locked(&dir.join(engram_learn::run::LOCK)) {
        return ("running", None, attempts);
    }
    if attempts
        .last()
        .is_some_and(|a| a["ok"] == Value::Bool(false))
    {
        return ("failed", None, attempts);
    }
    if dir.join("checkpoint").exists() {
        return ("started", None, attempts);
    }
    ("pending", None, attempts)
}

/// The status of the sweep folder `runs` as JSON: counts per state and one entry per run
/// (id, seed, grid point, state, attempts, final accuracy when done, log).
pub fn status(runs: &Path) -> Result<Value> {
    let plan = read_plan(runs)?;
    let mut counts = serde_json::Map::new();
    for s in STATES {
        counts.insert(s.into(), 0.into());
    }
    let mut list = Vec::new();
    for r in &plan.runs {
        let dir = runs.join(&r.id);
        let (st, results, attempts) = state(&dir);
        if let Some(c) = counts.get_mut(st) {
            *c = (c.as_u64().unwrap_or(0) + 1).into();
        }
        let acc = results.as_ref().and_then(|v| v["summary"]["acc"].as_f64());
        let error = attempts
            .last()
            .filter(|_| st == "failed")
            .and_then(|a| a["error"].as_str().map(str::to_string));
        list.push(json!({
            "id": r.id,
            "seed": r.seed,
            "point": r.point,
            "state": st,
            "attempts": attempts.len(),
            "acc": acc,
            "error": error,
            "log": dir.join(LOG).display().to_string(),
        }));
    }
    counts.insert("total".into(), plan.runs.len().into());
    Ok(json!({
        "sweep": plan.name,
        "sweep_file": plan.sweep_file,
        "runs_dir": runs.display().to_string(),
        "counts": counts,
        "runs": list,
    }))
}

/// The status as text: the counts, then one line per run.
pub fn render(status: &Value) -> String {
    let c = &status["counts"];
    let mut s = format!(
        "{} runs: {}\n",
        c["total"],
        STATES
            .iter()
            .map(|k| format!("{} {k}", c[k]))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for r in status["runs"].as_array().into_iter().flatten() {
        let acc = r["acc"]
            .as_f64()
            .map_or("-".to_string(), |a| format!("{a:.2}"));
        let point: Vec<String> = r["point"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| match v {
                Value::String(x) => format!("{k}={x}"),
                v => format!("{k}={v}"),
            })
            .chain(std::iter::once(format!("seed={}", r["seed"])))
            .collect();
        s += &format!(
            "{}  {:<8} ACC {:>6}  {}",
            r["id"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            acc,
            point.join(" ")
        );
        if let Some(e) = r["error"].as_str() {
            s += &format!(
                "  ({} attempts, {e}; log {})",
                r["attempts"],
                r["log"].as_str().unwrap_or("")
            );
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::{Plan, PlannedRun, SWEEP_JSON};

    #[test]
    fn states_come_from_the_run_folders() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        let ids = [
            "0000000000000001",
            "0000000000000002",
            "0000000000000003",
            "0000000000000004",
            "0000000000000005",
        ];
        let plan = Plan {
            engram_version: "0".into(),
            name: None,
            sweep_file: "s.toml".into(),
            sweep_text: String::new(),
            program: "engram".into(),
            threads_per_run: 1,
            runs: ids
                .iter()
                .map(|id| PlannedRun {
                    id: id.to_string(),
                    seed: 0,
                    point: Default::default(),
                })
                .collect(),
        };
        crate::machine::write_json(&d.join(SWEEP_JSON), &plan).unwrap();
        for id in ids {
            std::fs::create_dir_all(d.join(id)).unwrap();
        }
        std::fs::write(
            d.join(ids[0]).join(RESULTS),
            r#"{"summary": {"acc": 42.5}}"#,
        )
        .unwrap();
        let lock = std::fs::File::create(d.join(ids[1]).join(LOCK)).unwrap();
        lock.lock().unwrap();
        std::fs::write(
            d.join(ids[2]).join(ATTEMPTS),
            r#"{"attempts": [{"ok": false, "error": "exit status 1"}]}"#,
        )
        .unwrap();
        std::fs::create_dir_all(d.join(ids[3]).join("checkpoint")).unwrap();
        // An unlocked lock file left by a killed runner is not running.
        std::fs::write(d.join(ids[4]).join(LOCK), "").unwrap();
        let s = status(d).unwrap();
        let states: Vec<&str> = s["runs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["state"].as_str().unwrap())
            .collect();
        assert_eq!(states, ["done", "running", "failed", "started", "pending"]);
        assert_eq!(s["runs"][0]["acc"], 42.5);
        assert_eq!(s["counts"]["total"], 5);
        let text = render(&s);
        assert!(
            text.starts_with("5 runs: 1 done, 1 running, 1 failed, 1 started, 1 pending"),
            "{text}"
        );
        assert!(text.contains("exit status 1"), "{text}");
    }
}
