//! Studies in parts (`engram bench hypernet`, `engram bench ignorance`): what a part is
//! given ([`Ctx`]), what it returns ([`PartOut`], its claims as [`Verdict`]s), and the one
//! runner that checks the parts asked for, runs them, judges and commits `results.json` and
//! the report in one switch ([`run_parts`]).

use crate::Progress;
use crate::machine::commit_report;
use anyhow::{Context, Result, bail};
use engram_report::html::Page;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What a part is given.
pub struct Ctx<'a> {
    pub quick: bool,
    /// The seeds asked for (`--seeds`), or None for the part's default.
    pub seeds: Option<&'a [u64]>,
    /// Where finished units of work are cached.
    pub runs: PathBuf,
    pub data_dir: Option<&'a Path>,
}

impl Ctx<'_> {
    /// The seeds to run: those asked for, else `default` (`quick`: its first `quick_n`).
    pub fn seeds_or(&self, default: &[u64], quick_n: usize) -> Vec<u64> {
        match self.seeds {
            Some(s) => s.to_vec(),
            None if self.quick => default.iter().copied().take(quick_n).collect(),
            None => default.to_vec(),
        }
    }
}

impl Ctx<'_> {
    /// Each seed's unit of work of part `part`: read back from `runs/<part>-seed<seed>.json`
    /// when its key (`unit`, the part's `settings`, the seed) is equal, else made by `make`
    /// and stored there.
    pub fn per_seed<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        part: &str,
        unit: u32,
        settings: &impl Serialize,
        seeds: &[u64],
        mut make: impl FnMut(u64) -> Result<T>,
    ) -> Result<Vec<T>> {
        if seeds.is_empty() {
            bail!("{part}: no seeds to run");
        }
        let mut out = Vec::with_capacity(seeds.len());
        for &seed in seeds {
            let path = self.runs.join(format!("{part}-seed{seed}.json"));
            let key = json!({"unit": unit, "settings": settings, "seed": seed});
            if let Some(r) = crate::machine::cached::<T>(&path, &key) {
                out.push(r);
                continue;
            }
            let r = make(seed).with_context(|| format!("{part} seed {seed}"))?;
            crate::machine::store(&path, &key, &r)?;
            out.push(r);
        }
        Ok(out)
    }
}

/// One claim of the card judged on this run's numbers (`holds`: None when it cannot be judged,
/// e.g. one seed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub part: String,
    pub claim: String,
    pub holds: Option<bool>,
    pub detail: String,
}

/// A part's results: its JSON (read by [`page`]), its verdicts, and text for stdout.
pub struct PartOut {
    pub results: Value,
    pub verdicts: Vec<Verdict>,
    pub text: String,
}

/// A study: its name in `results.json` (`engram_bench_<name>`), its card, its parts in order.
pub struct Study<'a> {
    pub name: &'a str,
    pub card: &'a str,
    pub parts: &'a [&'a str],
}

/// Runs one part by name.
pub type PartFn<'a> = dyn FnMut(&str, &Ctx, &mut dyn FnMut(Progress)) -> Result<PartOut> + 'a;

/// What the command line asked of a study in parts (`engram bench hypernet`, `ignorance`,
/// `binary`).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Output folder (default `bench-out/<study>`, or `bench-out/<study>-quick`).
    pub out: Option<PathBuf>,
    /// Seeds (default: each part's own; `quick`: fewer).
    pub seeds: Vec<u64>,
    /// Small data and short training: the pipeline end to end, not the study's numbers.
    pub quick: bool,
    /// Parts to run (default all).
    pub parts: Vec<String>,
    pub data_dir: Option<PathBuf>,
    /// The command line, recorded.
    pub command: String,
}

impl Options {
    /// The output folder: the one asked for, else `bench-out/<study>` (`-quick` in quick mode).
    pub fn out(&self, study: &str) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from(match self.quick {
                true => format!("bench-out/{study}-quick"),
                false => format!("bench-out/{study}"),
            })
        })
    }
}

/// Runs the parts asked for (all when none), each through `part`, in the study's order of
/// asking; writes `results.json` (`engram_bench_<name>` 1, `command`, `quick`, `machine`,
/// one object per part, `verdicts`, `wall_s`) and the page `render` makes of it.
pub fn run_parts(
    study: &Study,
    asked: &Options,
    part: &mut PartFn,
    render: fn(&Value) -> Result<String>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Value> {
    let out = asked.out(study.name);
    let parts: Vec<String> = match asked.parts.is_empty() {
        true => study.parts.iter().map(|s| s.to_string()).collect(),
        false => asked.parts.to_vec(),
    };
    for p in &parts {
        if !study.parts.contains(&p.as_str()) {
            bail!(
                "--parts: unknown part '{p}'; parts are {}",
                study.parts.join(", ")
            );
        }
    }
    crate::machine::check_out_dir(&out, "--out")?;
    let runs = out.join("runs");
    std::fs::create_dir_all(&runs)?;
    let cx = Ctx {
        quick: asked.quick,
        seeds: (!asked.seeds.is_empty()).then_some(asked.seeds.as_slice()),
        runs,
        data_dir: asked.data_dir.as_deref(),
    };
    let t0 = Instant::now();
    let mut doc = json!({
        "command": &asked.command,
        "quick": asked.quick,
        "machine": crate::machine::describe(),
    });
    doc[format!("engram_bench_{}", study.name)] = json!(1);
    let mut verdicts = Vec::new();
    for p in &parts {
        progress(Progress::Message(format!("{}: part {p}", study.name)));
        let r = part(p, &cx, progress)?;
        progress(Progress::Output(r.text));
        doc[p.as_str()] = r.results;
        verdicts.extend(r.verdicts);
    }
    doc["verdicts"] = serde_json::to_value(&verdicts)?;
    doc["wall_s"] = json!(t0.elapsed().as_secs_f64());
    progress(Progress::Output(render_claims(study.card, &verdicts)));
    let html = render(&doc)?;
    progress(Progress::Output(commit_report(&out, &doc, &html)?));
    Ok(doc)
}

/// Verdicts as text, under the name of the card they judge (shared with other studies).
pub fn render_claims(card: &str, v: &[Verdict]) -> String {
    let mut s = format!("\nclaims (card: {card})\n");
    for x in v {
        let h = match x.holds {
            Some(true) => "holds",
            Some(false) => "does not hold",
            None => "not judged",
        };
        s += &format!("  [{}] {}: {h} ({})\n", x.part, x.claim, x.detail);
    }
    s
}

/// The table of the card's claims judged (`doc["verdicts"]`), when there are any (shared with
/// other studies' pages).
pub fn claims(p: &mut Page, doc: &Value) -> Result<()> {
    let verdicts: Vec<Verdict> = serde_json::from_value(doc["verdicts"].clone())?;
    if !verdicts.is_empty() {
        p.heading("Claims");
        let rows: Vec<Vec<String>> = verdicts
            .iter()
            .map(|v| {
                vec![
                    v.part.clone(),
                    v.claim.clone(),
                    match v.holds {
                        Some(true) => "holds",
                        Some(false) => "does not hold",
                        None => "not judged",
                    }
                    .into(),
                    v.detail.clone(),
                ]
            })
            .collect();
        p.table(&["part", "claim", "verdict", "measured"], &rows);
    }
    Ok(())
}

/// A study's page as far as its parts' sections: the title, the card, the command, the time
/// (and a word on quick mode), then the claims judged.
pub fn page(title: &str, card: &str, doc: &Value) -> Result<Page> {
    let mut p = Page::new(title);
    let quick = doc["quick"].as_bool().unwrap_or(false);
    p.para(&format!(
        "Card: {card}. Command: {}. {:.0} s.{}",
        doc["command"].as_str().unwrap_or(""),
        doc["wall_s"].as_f64().unwrap_or(0.0),
        if quick {
            " Quick mode: a smoke check, not the benchmark's numbers."
        } else {
            ""
        }
    ));
    claims(&mut p, doc)?;
    Ok(p)
}
