//! `engram sweep plan`: a sweep file (a base run file, a grid of settings, seeds) expanded into
//! one run folder per run, each with its complete run file and a stable id, plus the jobs file.
//!
//! The id of a run is the first 16 hex digits of SHA-256 over its run file in canonical form
//! (keys sorted, without `name`), engram's version and its seed: the same settings give the
//! same id wherever and whenever they are planned, so planning again is a no-op for the runs
//! that exist and a run done once is never run again.

use super::{IDS, JOBS, Plan, PlannedRun, RUN_FILE, SWEEP_JSON, quote, read_plan};
use anyhow::{Context, Result, bail};
use engram_learn::config::RunFile;
use engram_learn::data::UserData;
use serde_json::Map;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use toml::{Table, Value};

/// Most runs one sweep may plan: each is a folder and a line; a bigger grid is more likely a
/// mistake (one list too many) than a plan, and can be split into several sweeps.
pub const MAX_RUNS: usize = 10_000;

/// The keys of a sweep file.
const KEYS: [&str; 4] = ["name", "base", "seeds", "grid"];

/// Settings of `engram sweep plan`.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// The sweep file (TOML).
    pub sweep: PathBuf,
    /// The sweep folder RUNS/.
    pub out: PathBuf,
    /// The program at the start of every jobs line (default: this process's executable).
    pub program: Option<String>,
    /// `--threads` of every jobs line.
    pub threads_per_run: usize,
    /// Plan into a folder that holds another sweep's plan (its run folders are kept).
    pub force: bool,
}

/// What [`plan`] did.
#[derive(Clone, Debug)]
pub struct Planned {
    pub plan: Plan,
    /// Runs whose folder was made now (the others existed: same id, same run file).
    pub new_runs: usize,
    /// Runs already done (their results exist).
    pub done: usize,
}

/// One expanded run: its record and its run file's text.
pub struct Expanded {
    pub run: PlannedRun,
    pub text: String,
}

/// Whether `s` is a run id: 16 lowercase hex digits.
pub fn is_id(s: &str) -> bool {
    s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// The id of a run: 16 hex digits of SHA-256 over its canonical run file, engram's version
/// and its seed.
pub fn run_id(canonical: &str, seed: u64) -> String {
    let mut h = Sha256::new();
    h.update(canonical.as_bytes());
    h.update([0]);
    h.update(env!("CARGO_PKG_VERSION").as_bytes());
    h.update([0]);
    h.update(seed.to_string().as_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The same value with every table's keys in sorted order (whatever order the TOML library
/// keeps), so that the same settings written in another order have the same canonical text.
fn sorted(v: Value) -> Value {
    match v {
        Value::Table(t) => Value::Table(sorted_table(t)),
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        v => v,
    }
}

fn sorted_table(t: Table) -> Table {
    let mut kv: Vec<(String, Value)> = t.into_iter().collect();
    kv.sort_by(|a, b| a.0.cmp(&b.0));
    kv.into_iter().map(|(k, v)| (k, sorted(v))).collect()
}

/// The grid's axes: dotted keys (written `"a.b" = [...]` or as nested tables) with their
/// lists of values, sorted by key.
fn axes(sweep: &str, grid: &Table) -> Result<Vec<(String, Vec<Value>)>> {
    fn walk(
        sweep: &str,
        prefix: &str,
        t: &Table,
        out: &mut Vec<(String, Vec<Value>)>,
    ) -> Result<()> {
        for (k, v) in t {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if key.split('.').any(|s| s.trim().is_empty()) {
                bail!("{sweep}: grid key {key:?} has an empty part");
            }
            match v {
                Value::Array(a) if a.is_empty() => {
                    bail!("{sweep}: grid key {key} has an empty list of values")
                }
                Value::Array(a) => out.push((key, a.clone())),
                Value::Table(t) => walk(sweep, &key, t, out)?,
                v => bail!(
                    "{sweep}: grid key {key} = {v}: a list of values expected ({key} = [{v}, ...])"
                ),
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(sweep, "", grid, &mut out)?;
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Sets the dotted `key` of `t` to `v`, making the tables on the way.
fn set(t: &mut Table, key: &str, v: Value) -> Result<(), String> {
    let parts: Vec<&str> = key.split('.').collect();
    let mut cur = t;
    for (i, p) in parts[..parts.len() - 1].iter().enumerate() {
        let entry = cur
            .entry(p.to_string())
            .or_insert_with(|| Value::Table(Table::new()));
        cur = match entry {
            Value::Table(t) => t,
            _ => {
                return Err(format!(
                    "{} is not a table in the run file, so {key} cannot be set",
                    parts[..=i].join(".")
                ));
            }
        };
    }
    cur.insert(parts[parts.len() - 1].to_string(), v);
    Ok(())
}

/// The value at the dotted `key` of `t`, if any.
fn get<'a>(t: &'a Table, key: &str) -> Option<&'a Value> {
    let mut parts = key.split('.');
    let mut v = t.get(parts.next()?)?;
    for p in parts {
        v = v.as_table()?.get(p)?;
    }
    Some(v)
}

/// Relative paths of a run file made absolute against `dir`: the files of the user's data
/// set tables (`dataset = { kind = "npz", path = ... }`, in `[scenario]` and in each
/// `[[phase]]`'s scenario, resolved by the data loader's own [`UserData::resolve`], so that
/// only its file keys change) and `[start] checkpoint`. A planned run file lives in
/// RUNS/<id>/, so paths written relative to the sweep file must not stay relative. A table
/// the loader does not read is left as written (the run file's check names it).
fn absolutize(t: &mut Table, dir: &Path) {
    fn scenario(t: &mut Table, dir: &Path) {
        let Some(Value::Table(s)) = t.get_mut("scenario") else {
            return;
        };
        let Some(d @ Value::Table(_)) = s.get_mut("dataset") else {
            return;
        };
        let Ok(mut u) = d.clone().try_into::<UserData>() else {
            return;
        };
        u.resolve(dir);
        if let Ok(v) = Value::try_from(&u) {
            *d = v;
        }
    }
    scenario(t, dir);
    if let Some(Value::Array(phases)) = t.get_mut("phase") {
        for p in phases {
            if let Value::Table(p) = p {
                scenario(p, dir);
            }
        }
    }
    if let Some(Value::Table(s)) = t.get_mut("start")
        && let Some(Value::String(c)) = s.get_mut("checkpoint")
        && Path::new(c).is_relative()
    {
        *c = dir.join(&*c).display().to_string();
    }
}

/// A folder as an absolute path (the current folder for an empty one).
fn abs_dir(p: Option<&Path>) -> Result<PathBuf> {
    let p = p
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    p.canonicalize()
        .with_context(|| format!("cannot resolve {}", p.display()))
}

/// The sweep file `path` (text `text`) expanded: its name and its runs in order (grid points
/// in key order, the last key fastest; seeds innermost).
pub fn expand(path: &Path, text: &str) -> Result<(Option<String>, Vec<Expanded>)> {
    let shown = path.display().to_string();
    let sweep: Table = toml::from_str(text).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
    for k in sweep.keys() {
        if !KEYS.contains(&k.as_str()) {
            bail!(
                "{shown}: unknown key {k:?} (a sweep file has {}; run-file settings go under \
                 [base] or [grid])",
                KEYS.join(", ")
            );
        }
    }
    let dir = abs_dir(path.parent())?;
    let name = match sweep.get("name") {
        None => None,
        Some(Value::String(s)) => {
            engram_ckpt::names::plain_name("name", s)
                .map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
            Some(s.clone())
        }
        Some(v) => bail!("{shown}: name = {v}: a string expected"),
    };
    let mut base = match sweep.get("base") {
        None => bail!(
            "{shown}: no base run file: give base = \"run.toml\" (relative to the sweep file) \
             or a [base] table"
        ),
        Some(Value::String(f)) => {
            let f = dir.join(f);
            let t = std::fs::read_to_string(&f)
                .with_context(|| format!("{shown}: cannot read base run file {}", f.display()))?;
            let mut base: Table =
                toml::from_str(&t).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
            absolutize(&mut base, &abs_dir(f.parent())?);
            base
        }
        Some(Value::Table(t)) => t.clone(),
        Some(v) => bail!("{shown}: base = {v}: a file name or a table expected"),
    };
    // The run's name is its id.
    base.remove("name");
    let seeds: Option<Vec<u64>> = match sweep.get("seeds") {
        None => None,
        Some(Value::Array(a)) if a.is_empty() => bail!("{shown}: seeds is an empty list"),
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|v| match v {
                    Value::Integer(i) if *i >= 0 => Ok(*i as u64),
                    v => bail!("{shown}: seeds: {v} is not a seed (an integer, 0 or more)"),
                })
                .collect::<Result<_>>()?,
        ),
        Some(v) => bail!("{shown}: seeds = {v}: a list of integers expected"),
    };
    if let Some(s) = &seeds
        && let Some(d) = s.iter().enumerate().find(|(i, x)| s[..*i].contains(x))
    {
        bail!("{shown}: seed {} is listed twice in seeds", d.1);
    }
    let axes = match sweep.get("grid") {
        None => Vec::new(),
        Some(Value::Table(g)) => axes(&shown, g)?,
        Some(v) => bail!("{shown}: grid = {v}: a table expected ([grid] with key = [values])"),
    };
    if seeds.is_some() && axes.iter().any(|(k, _)| k == "seed") {
        bail!("{shown}: both seeds and grid key seed set the seed; keep one");
    }
    let n_seeds = seeds.as_ref().map_or(1, Vec::len);
    let total = axes
        .iter()
        .try_fold(n_seeds, |n, (_, v)| n.checked_mul(v.len()))
        .filter(|&n| n <= MAX_RUNS);
    let Some(total) = total else {
        let sizes: Vec<String> = axes
            .iter()
            .map(|(k, v)| format!("{} {k}", v.len()))
            .chain(std::iter::once(format!("{n_seeds} seeds")))
            .collect();
        bail!(
            "{shown}: the grid makes more than {MAX_RUNS} runs ({}); split it into several sweeps",
            sizes.join(" × ")
        );
    };
    let mut out = Vec::with_capacity(total);
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut idx = vec![0usize; axes.len()];
    for _ in 0..total / n_seeds {
        let mut point = Map::new();
        let mut t = base.clone();
        for ((key, values), &i) in axes.iter().zip(&idx) {
            set(&mut t, key, values[i].clone())
                .map_err(|e| anyhow::anyhow!("{shown}: grid key {key}: {e}"))?;
            point.insert(key.clone(), serde_json::to_value(&values[i])?);
        }
        // A grid key sets a seed when it names it, or replaces a table holding it.
        let grid_sets = |path: &str| {
            axes.iter().zip(&idx).any(|((k, v), &i)| {
                k == path
                    || path
                        .strip_prefix(&format!("{k}."))
                        .is_some_and(|rest| match &v[i] {
                            Value::Table(t) => get(t, rest).is_some(),
                            _ => false,
                        })
            })
        };
        for s in seeds
            .clone()
            .map_or(vec![None], |s| s.into_iter().map(Some).collect())
        {
            let mut t = t.clone();
            if let Some(s) = s {
                for path in ["seed", "scenario.seed"] {
                    let has_table =
                        path == "seed" || t.get("scenario").is_some_and(Value::is_table);
                    if has_table && !grid_sets(path) {
                        set(&mut t, path, Value::Integer(s as i64))
                            .map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
                    }
                }
            }
            absolutize(&mut t, &dir);
            let seed = match t.get("seed") {
                None => 0,
                Some(Value::Integer(i)) if *i >= 0 => *i as u64,
                Some(v) => bail!("{shown}: seed = {v}: a seed is an integer, 0 or more"),
            };
            let canonical = toml::to_string(&sorted_table(t.clone()))
                .with_context(|| format!("{shown}: cannot write a run file"))?;
            let id = run_id(&canonical, seed);
            let run = PlannedRun {
                id: id.clone(),
                seed,
                point: point.clone(),
            };
            let what = run.point_text();
            if let Some(other) = seen.insert(id.clone(), what.clone()) {
                bail!(
                    "{shown}: two grid points make the same run (id {id}): [{other}] and [{what}]; \
                     remove the duplicate value"
                );
            }
            t.insert("name".into(), Value::String(id.clone()));
            let text = format!(
                "# engram sweep run {id} (engram {}): {}\n{}",
                env!("CARGO_PKG_VERSION"),
                // A comment line: a line break in a grid value must not end it.
                what.replace(char::is_control, " "),
                toml::to_string(&sorted_table(t))?
            );
            RunFile::parse_toml_in(&text, Some(&dir))
                .map_err(|e| anyhow::anyhow!("{shown}: run [{what}]: {e}"))?;
            out.push(Expanded { run, text });
        }
        // Next grid point: the last key fastest.
        for k in (0..idx.len()).rev() {
            idx[k] += 1;
            if idx[k] < axes[k].1.len() {
                break;
            }
            idx[k] = 0;
        }
    }
    Ok((name, out))
}

/// The jobs line of run `id`: run from RUNS/, the run lands in RUNS/<id>/.
pub fn job_line(program: &str, threads: usize, id: &str) -> String {
    format!(
        "{} --threads {threads} train --config {id}/{RUN_FILE} --out . --if-needed",
        quote(program)
    )
}

/// `engram sweep plan`: expands the sweep file and writes RUNS/<id>/run.toml for every run
/// (those that exist are left as they are), RUNS/jobs.txt, RUNS/ids.txt and RUNS/sweep.json,
/// each atomically, the plan last. Never removes anything.
pub fn plan(opts: &PlanOptions) -> Result<Planned> {
    if opts.threads_per_run == 0 {
        bail!("--threads-per-run must be at least 1");
    }
    let sweep = &opts.sweep;
    let text = std::fs::read_to_string(sweep)
        .with_context(|| format!("cannot read {}", sweep.display()))?;
    let (name, runs) = expand(sweep, &text)?;
    let out = &opts.out;
    if out.exists() && !out.is_dir() {
        bail!("{} exists and is not a folder", out.display());
    }
    if out.join(SWEEP_JSON).exists() {
        let old = read_plan(out)?;
        let mut a: Vec<&str> = old.runs.iter().map(|r| r.id.as_str()).collect();
        let mut b: Vec<&str> = runs.iter().map(|r| r.run.id.as_str()).collect();
        a.sort_unstable();
        b.sort_unstable();
        if a != b && !opts.force {
            let kept = a.iter().filter(|x| b.binary_search(x).is_ok()).count();
            bail!(
                "{} holds the plan of another sweep ({}: {} runs, {kept} of them in this one); \
                 plan into another folder, or pass --force to replace the plan (run folders and \
                 results are kept)",
                out.display(),
                old.sweep_file,
                old.runs.len()
            );
        }
    }
    let program = match &opts.program {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("locating the engram binary (give --engram)")?
            .display()
            .to_string(),
    };
    if program.contains('\n') {
        bail!("--engram {program:?}: a program name holds no line break");
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let (mut new_runs, mut done) = (0, 0);
    for e in &runs {
        let dir = out.join(&e.run.id);
        let f = dir.join(RUN_FILE);
        let results = dir.join(super::RESULTS).exists();
        done += usize::from(results);
        match std::fs::read(&f) {
            Ok(old) if old == e.text.as_bytes() || results => continue,
            Ok(_) => {}
            Err(_) => new_runs += 1,
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        engram_ckpt::write_atomic(&f, e.text.as_bytes())
            .with_context(|| format!("writing {}", f.display()))?;
    }
    let lines: String = runs
        .iter()
        .map(|e| job_line(&program, opts.threads_per_run, &e.run.id) + "\n")
        .collect();
    let ids: String = runs.iter().map(|e| e.run.id.clone() + "\n").collect();
    for (f, t) in [(JOBS, &lines), (IDS, &ids)] {
        engram_ckpt::write_atomic(&out.join(f), t.as_bytes())
            .with_context(|| format!("writing {}", out.join(f).display()))?;
    }
    let plan = Plan {
        engram_version: env!("CARGO_PKG_VERSION").into(),
        name,
        sweep_file: sweep
            .canonicalize()
            .unwrap_or_else(|_| sweep.clone())
            .display()
            .to_string(),
        sweep_text: text,
        program,
        threads_per_run: opts.threads_per_run,
        runs: runs.into_iter().map(|e| e.run).collect(),
    };
    crate::machine::write_json(&out.join(SWEEP_JSON), &plan)?;
    Ok(Planned {
        plan,
        new_runs,
        done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
seed = 1
[scenario]
kind = "class-incremental"
dataset = "blobs"
tasks = 2
classes-per-task = 2
[model]
kind = "mlp"
hidden = [8]
[strategy]
name = "naive"
[train]
iterations = 1
batch-size = 8
"#;

    fn sweep(dir: &Path, grid: &str) -> Result<(Option<String>, Vec<Expanded>)> {
        std::fs::write(dir.join("run.toml"), BASE).unwrap();
        let text = format!("base = \"run.toml\"\nseeds = [0, 1]\n{grid}");
        expand(&dir.join("sweep.toml"), &text)
    }

    #[test]
    fn grid_times_seeds_with_stable_ids() {
        let t = tempfile::tempdir().unwrap();
        let grid = "[grid]\n\"train.optimizer.lr\" = [0.01, 0.001]\nstrategy = [{ name = \"naive\" }, { name = \"ewc\", lambda = 10.0 }]\n";
        let (_, runs) = sweep(t.path(), grid).unwrap();
        assert_eq!(runs.len(), 8);
        let (_, again) = sweep(t.path(), grid).unwrap();
        let ids: Vec<&str> = runs.iter().map(|r| r.run.id.as_str()).collect();
        let ids2: Vec<&str> = again.iter().map(|r| r.run.id.as_str()).collect();
        assert_eq!(ids, ids2);
        assert!(ids.iter().all(|i| is_id(i)));
        let mut u = ids.clone();
        u.sort_unstable();
        u.dedup();
        assert_eq!(u.len(), 8);
        // Seeds innermost, the last grid key fastest; seeds set scenario.seed too.
        assert_eq!(runs[0].run.seed, 0);
        assert_eq!(runs[1].run.seed, 1);
        let r: Table = toml::from_str(&runs[1].text).unwrap();
        assert_eq!(get(&r, "scenario.seed"), Some(&Value::Integer(1)));
        assert_eq!(
            get(&r, "name"),
            Some(&Value::String(runs[1].run.id.clone()))
        );
        // Keys in order (strategy, then train.optimizer.lr fastest), seeds innermost.
        let r3: Table = toml::from_str(&runs[4].text).unwrap();
        assert_eq!(get(&r3, "strategy.lambda"), Some(&Value::Float(10.0)));
        assert_eq!(get(&r3, "train.optimizer.lr"), Some(&Value::Float(0.01)));
        // The same grid written as nested tables, keys in another order: the same runs.
        let nested = "[grid.train.optimizer]\nlr = [0.01, 0.001]\n[grid]\nstrategy = [{ name = \"naive\" }, { lambda = 10.0, name = \"ewc\" }]\n";
        let (_, n) = sweep(t.path(), nested).unwrap();
        assert_eq!(ids, n.iter().map(|r| r.run.id.as_str()).collect::<Vec<_>>());
    }

    #[test]
    fn ids_follow_settings_and_seed() {
        let c = "seed = 0\n[train]\nepochs = 1\n";
        assert_eq!(run_id(c, 0), run_id(c, 0));
        assert_ne!(run_id(c, 0), run_id(c, 1));
        assert_ne!(run_id(c, 0), run_id("seed = 0\n[train]\nepochs = 2\n", 0));
    }

    #[test]
    fn the_grid_may_set_the_scenario_seed() {
        let t = tempfile::tempdir().unwrap();
        let (_, runs) = sweep(t.path(), "[grid]\n\"scenario.seed\" = [7]\n").unwrap();
        for r in &runs {
            let v: Table = toml::from_str(&r.text).unwrap();
            assert_eq!(get(&v, "scenario.seed"), Some(&Value::Integer(7)));
            assert_eq!(get(&v, "seed"), Some(&Value::Integer(r.run.seed as i64)));
        }
    }

    #[test]
    fn bad_sweeps_are_refused_with_the_key_named() {
        let t = tempfile::tempdir().unwrap();
        let err = |grid: &str| {
            sweep(t.path(), grid)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let e = err("[grid]\n\"train.optimzer.lr\" = [0.1]\n");
        assert!(e.contains("optimzer"), "{e}");
        assert!(
            err("[grid]\n\"strategy.name\" = []\n").contains("strategy.name has an empty list")
        );
        assert!(err("[grid]\n\"strategy.name\" = \"ewc\"\n").contains("a list of values expected"));
        let e = err("[grid]\n\"strategy.name\" = [\"nope\"]\n");
        assert!(
            e.contains("strategy.name=nope") && e.contains("nope"),
            "{e}"
        );
        let e = err("[grid]\n\"train.optimizer.lr\" = [0.001, 1e-3]\n");
        assert!(e.contains("same run"), "{e}");
        let e = err("[grid]\n\"model.kind.x\" = [1]\n");
        assert!(e.contains("model.kind is not a table"), "{e}");
        let e = err("hyper = 1\n");
        assert!(e.contains("unknown key \"hyper\""), "{e}");
        let e = err(
            "[grid]\na = [1,2,3,4,5,6,7,8,9,10]\nb = [1,2,3,4,5,6,7,8,9,10]\nc = [1,2,3,4,5,6,7,8,9,10]\nd = [1,2,3,4,5,6,7,8,9,10]\n",
        );
        assert!(e.contains("more than 10000 runs"), "{e}");
    }

    #[test]
    fn relative_data_paths_become_absolute() {
        let mut t: Table = toml::from_str(
            "[scenario]\ndataset = { kind = \"npz\", path = \"d/x.npz\", layout = \"nhwc\", arrays = { x-train = \"xs\" } }\n[start]\ncheckpoint = \"/abs/m.safetensors\"\n",
        )
        .unwrap();
        absolutize(&mut t, Path::new("/data"));
        assert_eq!(
            get(&t, "scenario.dataset.path"),
            Some(&Value::String("/data/d/x.npz".into()))
        );
        assert_eq!(
            get(&t, "scenario.dataset.kind"),
            Some(&Value::String("npz".into()))
        );
        // Options that are strings but no files stay as written.
        assert_eq!(
            get(&t, "scenario.dataset.layout"),
            Some(&Value::String("nhwc".into()))
        );
        assert_eq!(
            get(&t, "scenario.dataset.arrays.x-train"),
            Some(&Value::String("xs".into()))
        );
        let mut d: Table = toml::from_str(
            "[scenario]\ndataset = { kind = \"npz\", domains = [\"a.npz\", \"/b.npz\"] }\n",
        )
        .unwrap();
        absolutize(&mut d, Path::new("/data"));
        let doms = get(&d, "scenario.dataset.domains").and_then(Value::as_array);
        let doms: Vec<String> = doms.into_iter().flatten().map(|v| v.to_string()).collect();
        assert!(
            doms.len() == 2 && doms[0].contains("/data/a.npz") && doms[1].contains("\"/b.npz"),
            "{doms:?}"
        );
        assert_eq!(
            get(&t, "start.checkpoint"),
            Some(&Value::String("/abs/m.safetensors".into()))
        );
    }
}
