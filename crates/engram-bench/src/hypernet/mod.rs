//! `engram bench hypernet` (B10): networks that write networks. Card:
//! shared/methods/hypernetworks.md.
//!
//! - **Task-conditioned hypernetworks** (`tasks`, see [`tasks`]): the chunked-MLP hypernetwork
//!   (von Oswald et al.) and the LSTM (dependency-preserving) hypernetwork at one parameter
//!   budget, with the card's options (a) and (b), against EWC and SI on the target MLP, on
//!   Split Fashion-MNIST (Task-IL, with HNET+ENT's Class-IL) and Permuted Fashion-MNIST.
//! - **HY-WU** (`hywu`, see [`hywu`]): instance-conditioned LoRA generation against one shared
//!   LoRA on 4 conflicting label permutations, joint and sequential, with the shared LoRA's
//!   cross-task gradient cosines.
//! - **KNOW** (`know`, see [`know`]): weight nowcasting against naive and linear
//!   extrapolation, 5 seeds.
//!
//! Output under `--out` (default `bench-out/hypernet`, or `bench-out/hypernet-quick`): `runs/`
//! (one JSON per finished unit of work, read back by a later invocation with the same
//! settings), `results.json` and `report/index.html` (one atomic switch).

pub mod hywu;
pub mod know;
pub mod page;
pub mod tasks;

use crate::Progress;
use crate::machine::commit_report;
pub use crate::machine::{cached, store};
use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings of `engram bench hypernet`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Output folder (default `bench-out/hypernet`, or `bench-out/hypernet-quick`).
    pub out: Option<PathBuf>,
    /// Seeds (default 0, 1, 2, and 0–4 for KNOW; `quick` 0, and 0, 1 for KNOW).
    pub seeds: Vec<u64>,
    /// Small data and few steps: the pipeline end to end, not the benchmark's numbers.
    pub quick: bool,
    /// Parts to run: tasks, hywu, know (default all).
    pub parts: Vec<String>,
    pub data_dir: Option<PathBuf>,
    /// The command line, recorded.
    pub command: String,
}

pub const PARTS: [&str; 3] = ["tasks", "hywu", "know"];

impl Options {
    pub fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from(match self.quick {
                true => "bench-out/hypernet-quick",
                false => "bench-out/hypernet",
            })
        })
    }
}

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

/// Runs the study; returns `results.json`'s document.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let parts: Vec<String> = match o.parts.is_empty() {
        true => PARTS.iter().map(|s| s.to_string()).collect(),
        false => o.parts.clone(),
    };
    for p in &parts {
        if !PARTS.contains(&p.as_str()) {
            bail!(
                "--parts: unknown part '{p}'; parts are {}",
                PARTS.join(", ")
            );
        }
    }
    let out = o.out();
    crate::machine::check_out_dir(&out, "--out")?;
    let runs = out.join("runs");
    std::fs::create_dir_all(&runs)?;
    let cx = Ctx {
        quick: o.quick,
        seeds: (!o.seeds.is_empty()).then_some(o.seeds.as_slice()),
        runs,
        data_dir: o.data_dir.as_deref(),
    };
    let t0 = Instant::now();
    let mut doc = json!({
        "engram_bench_hypernet": 1,
        "command": o.command,
        "quick": o.quick,
        "machine": crate::machine::describe(),
    });
    let mut verdicts = Vec::new();
    for p in &parts {
        progress(Progress::Message(format!("hypernet: part {p}")));
        let r = match p.as_str() {
            "tasks" => tasks::run(&cx, progress)?,
            "hywu" => hywu::run(&cx, progress)?,
            _ => know::run(&cx, progress)?,
        };
        progress(Progress::Output(r.text));
        doc[p.as_str()] = r.results;
        verdicts.extend(r.verdicts);
    }
    doc["verdicts"] = serde_json::to_value(&verdicts)?;
    doc["wall_s"] = json!(t0.elapsed().as_secs_f64());
    progress(Progress::Output(render_verdicts(&verdicts)));
    let html = page::render(&doc)?;
    progress(Progress::Output(commit_report(&out, &doc, &html)?));
    Ok(doc)
}

/// The verdicts as text.
pub fn render_verdicts(v: &[Verdict]) -> String {
    let mut s = String::from("\nclaims (card: shared/methods/hypernetworks.md)\n");
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
