//! `engram evolve`'s search loop: CMA-ES over [0, 1]ⁿ, one folder per candidate, every
//! generation's candidates evaluated as jobs of the sweep runner, a rerun continuing where the
//! last stopped.
//!
//! Resume: the strategy's state is a function of the seed and the scores told so far
//! (generation g draws from its own keyed stream), so a rerun replays the recorded
//! generations from their `score.json` files and evaluates only what is missing. A candidate
//! folder whose config differs from the one the replay computes is an error: the folder
//! belongs to another search.
//!
//! Bounds: a sample outside [0, 1]ⁿ is mirrored into it ([`mirror`]), evaluated there, and
//! the mirrored point is what the strategy is told (the repair is kept, "Lamarckian").

use super::candidate::{
    CONFIG_FILE, RunSettings, SCORE_FILE, SETTINGS_FILE, mirror, read_scored, read_settings, yaml,
};
use super::cmaes::Cmaes;
use super::config::{self, EvolveConfig};
use crate::Progress;
use crate::sweep::runner::{Job, RunnerOptions, run_jobs};
use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings of `engram evolve`.
#[derive(Clone, Debug)]
pub struct Options {
    pub config: PathBuf,
    pub out: PathBuf,
    /// Overrides of the config's values.
    pub generations: Option<usize>,
    pub population: Option<usize>,
    pub seed: Option<u64>,
    /// The runner's concurrency, threads per job and retries.
    pub runner: RunnerOptions,
    /// Keep each candidate's merged model (`cand/model/`).
    pub keep_models: bool,
    /// The engram binary the jobs run (`ENGRAM evolve eval DIR`).
    pub exe: PathBuf,
}

/// One evaluated candidate, as `evolve.json` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct CandidateRecord {
    /// `gen-G/cand-I`.
    pub id: String,
    /// The point in [0, 1]ⁿ (after mirroring).
    pub genome: Vec<f64>,
    /// The merge parameters: one value (or one per layer group) per coordinate name.
    pub values: Vec<f64>,
    pub score: f64,
}

/// One generation.
#[derive(Clone, Debug, Serialize)]
pub struct GenerationRecord {
    pub generation: usize,
    pub candidates: Vec<CandidateRecord>,
    /// The generation's best candidate.
    pub best: String,
    pub best_score: f64,
    /// The strategy's step size and mean after this generation.
    pub sigma: f64,
    pub mean: Vec<f64>,
}

/// `evolve.json`.
#[derive(Clone, Debug, Serialize)]
pub struct EvolveResults {
    pub engram_evolve: u32,
    pub config: PathBuf,
    pub settings: EvolveConfig,
    pub dimensions: usize,
    /// What each genome coordinate sets, e.g. `models[2].weight`.
    pub coordinates: Vec<String>,
    pub generations: Vec<GenerationRecord>,
    pub best: CandidateRecord,
    /// The best candidate's mergekit config, also in `best.yml`.
    pub best_config: String,
    pub evaluations: usize,
    /// Candidates evaluated by this invocation (the others were done already).
    pub evaluated_now: usize,
    pub seconds: f64,
}

/// The summary file.
pub const RESULTS_FILE: &str = "evolve.json";
/// The best candidate's mergekit config.
pub const BEST_FILE: &str = "best.yml";
/// Largest config read.
const CONFIG_LIMIT: u64 = 1 << 20;

/// Reads the config and applies the overrides.
pub fn load_config(o: &Options) -> Result<EvolveConfig> {
    let (bytes, _guard) =
        engram_ckpt::commit::read_input(&o.config, "an evolve config", CONFIG_LIMIT)?;
    let text =
        String::from_utf8(bytes).map_err(|_| anyhow!("{}: not UTF-8 text", o.config.display()))?;
    let mut cfg = config::parse(&text, &o.config)?;
    if let Some(g) = o.generations {
        if g == 0 {
            bail!("--generations must be at least 1");
        }
        cfg.generations = g;
    }
    if let Some(p) = o.population {
        if p < 2 {
            bail!("--population must be at least 2");
        }
        cfg.population = p;
    }
    if let Some(s) = o.seed {
        cfg.seed = s;
    }
    Ok(cfg)
}

/// The first top-level key in which two recorded settings differ (generations aside).
fn first_difference(a: &RunSettings, b: &RunSettings) -> Option<String> {
    let (Ok(Value::Object(x)), Ok(Value::Object(y))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        return Some("settings".into());
    };
    let flat = |m: &serde_json::Map<String, Value>| -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for (k, v) in m {
            match v {
                Value::Object(inner) if k == "config" => {
                    out.extend(inner.iter().map(|(k, v)| (k.clone(), v.clone())))
                }
                v => out.push((k.clone(), v.clone())),
            }
        }
        out
    };
    let (fx, fy) = (flat(&x), flat(&y));
    fx.iter()
        .zip(&fy)
        .find(|((ka, va), (kb, vb))| ka != "generations" && (ka != kb || va != vb))
        .map(|((k, _), _)| k.clone())
        .or_else(|| (fx.len() != fy.len()).then(|| "settings".into()))
}

/// Creates `out` or checks that it holds this search (any number of generations).
fn prepare_out(out: &Path, settings: &RunSettings) -> Result<()> {
    let marker = out.join(SETTINGS_FILE);
    if marker.exists() {
        let old = read_settings(out)?;
        if let Some(k) = first_difference(&old, settings) {
            bail!(
                "{} holds an evolve run with other settings ('{k}' differs); rerun with the same config and flags to continue it, or choose another -o",
                out.display()
            );
        }
    } else if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not an evolve run's folder (no {SETTINGS_FILE}); choose another -o",
            out.display()
        );
    }
    crate::machine::write_json(&marker, settings)
}

/// Runs (or continues) the search; writes `evolve.json` and `best.yml` after every
/// generation and returns the results.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<EvolveResults> {
    let t0 = Instant::now();
    let cfg = load_config(o)?;
    let settings = RunSettings {
        engram_evolve: 1,
        config: cfg.clone(),
        cwd: std::env::current_dir().context("the current folder")?,
    };
    crate::machine::check_out_dir(&o.out, "-o")?;
    // The jobs name their folders absolutely: the runner may start them anywhere.
    let out = std::path::absolute(&o.out)?;
    prepare_out(&out, &settings)?;
    let n = cfg.dimensions();
    let mut es = Cmaes::new(vec![0.5; n], cfg.sigma0, cfg.population, cfg.seed)
        .map_err(|e| anyhow!("{}: {e}", o.config.display()))?;
    let coordinates = cfg.coordinate_names();
    let mut generations: Vec<GenerationRecord> = Vec::new();
    let mut best: Option<(CandidateRecord, String)> = None;
    let mut evaluated_now = 0;
    let mut last = None;
    for g in 0..cfg.generations {
        let genomes: Vec<Vec<f64>> = es
            .ask()
            .into_iter()
            .map(|x| x.into_iter().map(mirror).collect())
            .collect();
        let gen_dir = out.join(format!("gen-{g}"));
        let mut texts = Vec::new();
        let mut jobs = Vec::new();
        for (i, u) in genomes.iter().enumerate() {
            let dir = gen_dir.join(format!("cand-{i}"));
            let text = yaml(&cfg, u);
            let cfg_file = dir.join(CONFIG_FILE);
            match std::fs::read_to_string(&cfg_file) {
                Ok(old) if old != text => bail!(
                    "{} is not the candidate this search computes at this point: {} belongs to another search",
                    cfg_file.display(),
                    out.display()
                ),
                Ok(_) => {}
                Err(_) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    engram_ckpt::write_atomic(&cfg_file, text.as_bytes())?;
                }
            }
            if read_scored(&dir)?.is_none() {
                let mut argv = vec![
                    o.exe.display().to_string(),
                    "evolve".into(),
                    "eval".into(),
                    dir.display().to_string(),
                ];
                if o.keep_models {
                    argv.push("--keep-models".into());
                }
                jobs.push(Job {
                    id: format!("gen-{g}/cand-{i}"),
                    dir: dir.clone(),
                    argv,
                    done_file: dir.join(SCORE_FILE),
                });
            }
            texts.push(text);
        }
        if !jobs.is_empty() {
            progress(Progress::Message(format!(
                "generation {}/{}: evaluating {} candidate(s)",
                g + 1,
                cfg.generations,
                jobs.len()
            )));
            run_jobs(&jobs, &o.runner)?;
            evaluated_now += jobs.len();
        }
        let mut candidates = Vec::new();
        for (i, (u, text)) in genomes.iter().zip(&texts).enumerate() {
            let dir = gen_dir.join(format!("cand-{i}"));
            let s = read_scored(&dir)?.ok_or_else(|| {
                anyhow!(
                    "candidate gen-{g}/cand-{i} was not evaluated: see {}; fix the cause and rerun to continue",
                    dir.join(crate::sweep::runner::LOG).display()
                )
            })?;
            if s.candidate != *text {
                bail!(
                    "{} scores another config than {CONFIG_FILE} beside it; remove it to evaluate again",
                    dir.join(SCORE_FILE).display()
                );
            }
            let values = u
                .iter()
                .enumerate()
                .map(|(k, &x)| {
                    let sp = &cfg.search[(k / cfg.layer_groups) % cfg.search.len()];
                    sp.min + (sp.max - sp.min) * x
                })
                .collect();
            candidates.push(CandidateRecord {
                id: format!("gen-{g}/cand-{i}"),
                genome: u.clone(),
                values,
                score: s.score,
            });
        }
        let f: Vec<f64> = candidates
            .iter()
            .map(|c| if cfg.maximize { -c.score } else { c.score })
            .collect();
        es.tell(&genomes, &f)
            .map_err(|e| anyhow!("generation {g}: {e}"))?;
        // The generation's best (ties: the first), then the best so far.
        let k = (0..f.len()).fold(0, |b, k| if f[k] < f[b] { k } else { b });
        let better = best.as_ref().is_none_or(|(b, _)| {
            if cfg.maximize {
                candidates[k].score > b.score
            } else {
                candidates[k].score < b.score
            }
        });
        if better {
            best = Some((candidates[k].clone(), texts[k].clone()));
        }
        generations.push(GenerationRecord {
            generation: g,
            best: candidates[k].id.clone(),
            best_score: candidates[k].score,
            candidates,
            sigma: es.sigma(),
            mean: es.mean().to_vec(),
        });
        let (b, text) = best.clone().expect("one generation done");
        progress(Progress::Message(format!(
            "generation {}/{}: best {} ({}); best so far {} ({}); sigma {:.3}",
            g + 1,
            cfg.generations,
            generations[g].best_score,
            generations[g].best,
            b.score,
            b.id,
            es.sigma()
        )));
        let results = EvolveResults {
            engram_evolve: 1,
            config: o.config.clone(),
            settings: cfg.clone(),
            dimensions: n,
            coordinates: coordinates.clone(),
            generations: generations.clone(),
            best: b.clone(),
            best_config: text.clone(),
            evaluations: generations.iter().map(|g| g.candidates.len()).sum(),
            evaluated_now,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let header = format!(
            "# engram evolve: the best of {} candidates ({}, score {}); merge it with `engram merge {BEST_FILE} -o OUT`\n",
            results.evaluations, b.id, b.score
        );
        engram_ckpt::write_atomic(&out.join(BEST_FILE), (header + &text).as_bytes())?;
        crate::machine::write_json(&out.join(RESULTS_FILE), &results)?;
        last = Some(results);
    }
    last.ok_or_else(|| anyhow!("no generation to run"))
}
