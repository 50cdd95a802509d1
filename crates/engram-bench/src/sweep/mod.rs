//! Sweeps: a grid of runs planned into run folders with stable ids, a local runner with
//! bounded concurrency, scripts for Slurm / GNU parallel / Ray, and status. (Issue 24.)
//!
//! engram schedules nothing itself: a sweep is a folder RUNS/ of run folders RUNS/<id>/, each
//! with its complete run file, and a jobs file RUNS/jobs.txt with one complete `engram train
//! ... --if-needed` command per run, run from RUNS/. A run is done exactly when its
//! RUNS/<id>/results.json exists (written atomically by the run), so every engine (the local
//! runner, a Slurm array, GNU parallel, Ray) can run the lines in any order, any number of
//! times: a done run is skipped, an interrupted one resumes from its checkpoint.
//!
//! - [`plan`]: the sweep file expanded into run folders, ids, `sweep.json`, `jobs.txt`;
//! - [`runner`]: the local runner (bounded concurrency, logs, retries, live table);
//! - [`emit`]: the scripts for Slurm, GNU parallel and Ray;
//! - [`status`]: where a sweep stands (done, running, failed, started, pending).

pub mod emit;
pub mod plan;
pub mod runner;
pub mod status;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};
use std::path::Path;

/// The plan of a sweep, in RUNS/.
pub const SWEEP_JSON: &str = "sweep.json";
/// One complete command per line, run from RUNS/.
pub const JOBS: &str = "jobs.txt";
/// The run id of each line of [`JOBS`], same order (for scripts that log or skip per run).
pub const IDS: &str = "ids.txt";
/// A run's run file, in RUNS/<id>/.
pub const RUN_FILE: &str = "run.toml";
/// A run's results: the run is done exactly when this exists.
pub const RESULTS: &str = "results.json";
/// Written by `engram sweep run` at its end: the status of every run.
pub const STATUS_JSON: &str = "status.json";

/// One planned run, as `sweep.json` records it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PlannedRun {
    /// Its folder's name: 16 hex digits of SHA-256 over its run file, engram's version, seed.
    pub id: String,
    /// The seed (top-level `seed` of its run file).
    pub seed: u64,
    /// Its grid point: each grid key and the value this run takes.
    pub point: Map<String, Value>,
}

/// `RUNS/sweep.json`: what was planned, from which sweep file, by which engram.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Plan {
    /// engram's version that planned it (part of every run id).
    pub engram_version: String,
    /// The sweep's `name`, if it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// The sweep file, absolute.
    pub sweep_file: String,
    /// The sweep file's text.
    pub sweep_text: String,
    /// The program at the start of every jobs line.
    pub program: String,
    /// `--threads` of every jobs line.
    pub threads_per_run: usize,
    pub runs: Vec<PlannedRun>,
}

impl PlannedRun {
    /// The grid point as `key=value` pairs (strings bare, tables as compact JSON).
    pub fn point_text(&self) -> String {
        let mut parts: Vec<String> = self
            .point
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => format!("{k}={s}"),
                v => format!("{k}={v}"),
            })
            .collect();
        parts.push(format!("seed={}", self.seed));
        parts.join(" ")
    }
}

/// Reads RUNS/sweep.json and checks that RUNS/jobs.txt and RUNS/ids.txt match it.
pub fn read_plan(runs: &Path) -> Result<Plan> {
    let f = runs.join(SWEEP_JSON);
    let text = std::fs::read_to_string(&f).with_context(|| {
        format!(
            "cannot read {} (plan a sweep into {} with `engram sweep plan SWEEP.toml -o {}`)",
            f.display(),
            runs.display(),
            runs.display()
        )
    })?;
    let plan: Plan = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a sweep plan written by engram", f.display()))?;
    for r in &plan.runs {
        if !plan::is_id(&r.id) {
            bail!("{}: run id {:?} is not 16 hex digits", f.display(), r.id);
        }
    }
    Ok(plan)
}

/// The lines of RUNS/jobs.txt, checked against the plan: one per run, in its order, each
/// naming its run's folder.
pub fn read_jobs(runs: &Path, plan: &Plan) -> Result<Vec<String>> {
    let f = runs.join(JOBS);
    let text =
        std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
    let lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.len() != plan.runs.len() {
        bail!(
            "{}: {} lines for the {} runs of {}; plan the sweep again",
            f.display(),
            lines.len(),
            plan.runs.len(),
            runs.join(SWEEP_JSON).display()
        );
    }
    for (k, (l, r)) in lines.iter().zip(&plan.runs).enumerate() {
        if !l.contains(&format!("{}/{RUN_FILE}", r.id)) {
            bail!(
                "{} line {}: does not run {}/{RUN_FILE}; plan the sweep again",
                f.display(),
                k + 1,
                r.id
            );
        }
    }
    Ok(lines)
}

/// `s` as one word of a POSIX shell command line (quoted only where needed).
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// A time as `YYYY-MM-DDTHH:MM:SSZ` (UTC), from seconds since the Unix epoch.
pub fn utc(secs: u64) -> String {
    // Days to civil date (Howard Hinnant's algorithm).
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// Seconds since the Unix epoch, now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_leaves_plain_words_and_quotes_the_rest() {
        assert_eq!(quote("abc/run.toml"), "abc/run.toml");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
        assert_eq!(quote("$HOME"), "'$HOME'");
    }

    #[test]
    fn utc_matches_known_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}
