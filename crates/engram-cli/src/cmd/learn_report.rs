//! `engram report RESULTS... -o DIR` and `engram strategies`.

use super::Ctx;
use anyhow::{Context, Result, bail};
use engram_report::results::RunResults;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// results.json files, or folders searched for them (recursively).
    #[arg(required = true)]
    pub results: Vec<PathBuf>,
    /// Output folder: index.html, results.csv, results.json.
    #[arg(short, long, default_value = "report")]
    pub out: PathBuf,
}

/// Collects the results.json files under `p`. Directory symlinks are followed only where they
/// stay inside the folder the user named, and no folder is visited twice (no loops).
fn find(p: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !p.is_dir() {
        out.push(p.to_path_buf());
        return Ok(());
    }
    let root = p
        .canonicalize()
        .with_context(|| format!("cannot read {}", p.display()))?;
    let mut seen = std::collections::HashSet::new();
    walk(p, &root, &mut seen, out)
}

fn walk(
    dir: &Path,
    root: &Path,
    seen: &mut std::collections::HashSet<PathBuf>,
    out: &mut Vec<PathBuf>,
) -> Result<()> {
    let canon = dir
        .canonicalize()
        .with_context(|| format!("cannot read {}", dir.display()))?;
    if !canon.starts_with(root) || !seen.insert(canon) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    // A report's own folder (index.html, results.csv, results.json) holds no run: its
    // results.json lists the runs of another report.
    let is_report = ["index.html", "results.csv"].iter().all(|n| {
        entries
            .iter()
            .any(|e| e.file_name().is_some_and(|f| f == *n))
    });
    for e in entries {
        if e.is_dir() {
            walk(&e, root, seen, out)?;
        } else if !is_report && e.file_name().is_some_and(|n| n == "results.json") {
            if !e.canonicalize().is_ok_and(|c| c.starts_with(root)) {
                bail!(
                    "{}: a symlink leading outside {}; refused",
                    e.display(),
                    root.display()
                );
            }
            out.push(e);
        }
    }
    Ok(())
}

/// The runs of the results.json files under `paths`, with each file's input registration
/// (held while the report is written, so that it cannot replace one of its inputs).
pub fn load_results(
    paths: &[PathBuf],
) -> Result<(Vec<RunResults>, Vec<engram_ckpt::commit::OpenInput>)> {
    let mut files = Vec::new();
    for p in paths {
        find(p, &mut files)?;
    }
    if files.is_empty() {
        bail!("no results.json found in {paths:?}");
    }
    let mut guards = Vec::new();
    let runs = files
        .iter()
        .map(|f| {
            let (text, guard) = engram_ckpt::commit::read_input(f, "a results.json file", 1 << 30)?;
            guards.push(guard);
            serde_json::from_slice(&text)
                .with_context(|| format!("{}: not an engram results file", f.display()))
        })
        .collect::<Result<Vec<RunResults>>>()?;
    Ok((runs, guards))
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let (runs, _inputs) = load_results(&a.results)?;
    let files = engram_report::report::write_report(&runs, &a.out)
        .with_context(|| format!("writing the report to {}", a.out.display()))?;
    if !ctx.quiet {
        println!(
            "report of {} runs: {}",
            runs.len(),
            files
                .first()
                .map(|f| f.display().to_string())
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// One line per strategy: name, summary, then its parameters with their defaults (set them
/// under `[strategy]` in a run file).
pub fn list_strategies() -> Result<()> {
    for (name, summary, build) in engram_learn::strategy::REGISTRY
        .iter()
        .filter(|r| r.0 != "probe")
    {
        let params = build(&serde_json::Value::Null)
            .map(|s| s.params())
            .map_err(|e| anyhow::anyhow!("strategy {name}: {e}"))?;
        let defaults = key_values(&params, "(no parameters)");
        println!("{name:<16} {summary}  [{defaults}]");
    }
    Ok(())
}

/// One line per scenario kind: name, summary, then its own keys with their defaults (set them
/// under `[scenario]` in a run file, beside `dataset`, `seed`, `train-per-task`,
/// `test-per-class`, `validation` and `blobs`).
pub fn list_scenarios() -> Result<()> {
    for k in engram_learn::scenario::REGISTRY {
        let params = (k.params)(&serde_json::Map::new())
            .map_err(|e| anyhow::anyhow!("scenario {}: {e}", k.name))?;
        let defaults = key_values(&params, "(no keys)");
        println!("{:<18} {}  [{defaults}]", k.name, k.summary);
    }
    Ok(())
}

/// `key=value` pairs of a JSON object on one line; `none` for an empty one.
pub(crate) fn key_values(v: &serde_json::Value, none: &str) -> String {
    match v.as_object() {
        Some(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        _ => none.to_string(),
    }
}
