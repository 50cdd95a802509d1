//! `engram bench cl`: the continual-learning suite (B3 in BENCHMARKS.md).
//!
//! Every registered strategy (naive and joint included, `probe` and `rift` left out) on:
//!
//! | scenario           | data          | kind                       | tasks | train/task  | test/class | epochs | batch | model |
//! |--------------------|---------------|----------------------------|-------|-------------|------------|--------|-------|-------|
//! | `split-fmnist-cil` | Fashion-MNIST | class-incremental, 2/task  | 5     | 3000        | 500        | 2      | 128   | MLP   |
//! | `split-fmnist-cil` | Fashion-MNIST | class-incremental, 2/task  | 5     | 1500        | 200        | 1      | 32    | CNN   |
//! | `split-fmnist-til` | Fashion-MNIST | task-incremental, 2/task   | 5     | 3000        | 500        | 2      | 128   | MLP   |
//! | `split-fmnist-til` | Fashion-MNIST | task-incremental, 2/task   | 5     | 1500        | 200        | 1      | 32    | CNN   |
//! | `split-fmnist-til` | Fashion-MNIST | task-incremental, 2/task   | 5     | 3000        | 500        | 2      | 128   | ResMLP |
//! | `permuted-fmnist`  | Fashion-MNIST | permuted (domain-IL)       | 10    | 2000        | 200        | 1      | 128   | MLP   |
//! | `rotated-fmnist`   | Fashion-MNIST | rotated 0..180° (domain-IL)| 5     | 3000        | 200        | 1      | 128   | MLP   |
//! | `scole-fmnist`     | Fashion-MNIST | SCoLe, 2 classes/task      | 200   | 256         | 100        | 1      | 64    | MLP   |
//! | `split-mnist-cil`  | MNIST digits  | class-incremental, 2/task  | 5     | all (~1.7k) | all (~150) | 2      | 128   | MLP   |
//!
//! MLP: 784-400-400-10; CNN: the small CNN (conv 32, conv 64, dense 128); ResMLP: 784 → 256,
//! two residual blocks 256 → 512 → 256, head. Optimizer Adam, lr
//! 0.001, for every run (also SCoLe, where SGD at 0.01 lets EWC's growing penalty blow up).
//! Seeds 0, 1, 2; the seed also seeds the scenario (subsamples, permutations, SCoLe stream).
//! Replay memory: 200 examples for every method that keeps one (`er`, `der`, `der++`, `ider`,
//! `gem`, `a-gem`, `er-ace`: `buffer = 200`; `kd-wa`: `exemplars = 200`; `icarl`, `gdumb`:
//! `memory = 200`), recorded in each run's parameters and in the suite's `settings`. The
//! exemplar-free `napa-vq` and `pass` run on the class-incremental splits only. EWC and online EWC estimate the Fisher on `samples = 200` examples per
//! task (the CNN computes per-example gradients one at a time). Left out of SCoLe, with the
//! reason in `results.json` (`skipped`): `ewc` (one Fisher and one penalty term per task, so
//! memory and step time grow with the stream; `online-ewc` is EWC for streams), `gem` (one
//! gradient per earlier task at every step; `a-gem` is GEM for streams) and `joint`
//! (cumulative: about T/2 = 100 times a naive run).
//!
//! Hyperparameters are chosen once, on validation, never on test: the MLP split settings
//! above with seed 0, 10% of the training examples carved out (`Scenario::carve_validation`)
//! and a tuning copy of the scenario (`Scenario::validation_view`) whose test set is that
//! validation split. The score is the final average accuracy (ACC) there. The regularizers
//! and LwF (`ewc`, `online-ewc`, `si`, `l2`, `classp`, `lwf`) are tuned on Split
//! Fashion-MNIST **task-incremental**, where they act (in class-incremental they all sit near
//! naive's 20% and the grid would pick noise); DER and DER++ on **class-incremental**. Grids
//! ([`GRID`](suite::GRID)): ewc and online-ewc λ ∈ {100, 1000, 10000}; si c ∈ {0.1, 1, 10};
//! l2 λ ∈ {0.1, 1, 10}; classp lr ∈ {0.01, 0.2} × per-weight threshold ∈ {0, 1e-6, 1e-5,
//! 1e-4} (its default is 0, the reference code's effective behaviour; the reference's 0.5
//! applied per weight to g² stops nearly every update of a batch-mean loss); lwf α ∈
//! {0.5, 1, 2}; der α ∈ {0.1, 0.3, 1}; der++ α ∈ {0.1, 0.3} (β = 0.5). The chosen values are
//! used on every scenario; the other strategies (er, kd-wa, ider) run with their defaults.
//! Grid, scores and choices are in `results.json` (`tuning`) and `tuning.json`.
//!
//! Output (`--out`, default `bench-out/cl`; `bench-out/cl-quick` with `--quick`):
//! `runs/<scenario>-<model>-<strategy>-s<seed>/results.json` per finished run, `tuning.json`,
//! `results.json` (all runs, tuning, settings, skipped and failed runs) and
//! `report/index.html`. The report groups by "scenario model" (e.g. `split-fmnist-cil cnn`).
//! An interrupted suite resumes: finished runs are read back, a partial one continues from its
//! last per-task checkpoint, tuning points already scored are kept. A run whose settings
//! changed since it was written is run again. A run that fails (e.g. a diverging loss) is
//! recorded in its `error.json` and skipped by later invocations unless `--retry-failed`.
//!
//! Selective fine-tuning (`lift`, `kappatune`, `lora`, `block-expansion`) runs with
//! `from-task = 1`: the first task trains every parameter, later tasks only what the method
//! chooses (KappaTune: `n = 1` of the networks' two or three weight matrices). Block expansion
//! needs residual blocks and runs only on the `resmlp` model (Split Fashion-MNIST
//! task-incremental, width 256, two blocks of 512), where every other strategy runs too but
//! IDER (its feedback input exists for the MLP, CNN and ViT only).
//!
//! `--quick`: one seed, every strategy, tiny budgets (a few hundred examples per task, 3
//! permuted and rotated tasks, a 20-task SCoLe stream): a smoke check of a few minutes.

pub mod suite;
pub mod tune;

use crate::machine::{read_json, write_json};
use crate::{Progress, error_chain, training_progress};
use anyhow::{Context, Result, bail};
use engram_report::report::MeanSpread;
use engram_report::results::RunResults;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;
use suite::{
    BUFFER, Spec, base_params, make_config, predicted_seconds, skip_reason, specs, strategy_factor,
};

/// Settings of `engram bench cl`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Tiny budgets and one seed: a smoke check of a few minutes.
    pub quick: bool,
    /// Suite folder (default: bench-out/cl, or bench-out/cl-quick with `quick`).
    pub out: Option<PathBuf>,
    /// Strategies (default: every registered one but probe and rift, a fine-tuning step that
    /// needs adversarially trained weights to start from).
    pub strategies: Vec<String>,
    /// Scenarios, by key or key:model (default: all).
    pub scenarios: Vec<String>,
    /// Seeds (default: 0,1,2; 0 with `quick`).
    pub seeds: Vec<u64>,
    /// Use the strategies' default hyperparameters instead of tuning on validation.
    pub no_tune: bool,
    /// Run again the runs that failed in an earlier invocation.
    pub retry_failed: bool,
    /// Where the data sets are (default: the system packages' locations).
    pub data_dir: Option<PathBuf>,
    /// The command line that started the suite, recorded in `results.json`.
    pub command: String,
}

impl Options {
    /// The suite folder.
    pub fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from(if self.quick {
                "bench-out/cl-quick"
            } else {
                "bench-out/cl"
            })
        })
    }
}

struct Job {
    spec: usize,
    strategy: String,
    seed: u64,
}

/// The strategies asked for, checked against the registry.
fn strategies(o: &Options) -> Result<Vec<String>> {
    let registry: Vec<String> = engram_learn::strategy::REGISTRY
        .iter()
        .map(|r| r.0.to_string())
        .filter(|n| n != "probe" && n != "rift")
        .collect();
    if o.strategies.is_empty() {
        return Ok(registry);
    }
    for s in &o.strategies {
        if !registry.contains(s) {
            bail!("unknown strategy '{s}'; available: {}", registry.join(", "));
        }
    }
    Ok(o.strategies.clone())
}

/// The scenario/model pairs asked for (by key or key:model), out of `all`.
fn chosen_specs(o: &Options, all: &[Spec]) -> Result<Vec<Spec>> {
    if o.scenarios.is_empty() {
        return Ok(all.to_vec());
    }
    let hit = |s: &Spec, want: &str| s.key == want || format!("{}:{}", s.key, s.model) == want;
    for want in &o.scenarios {
        if !all.iter().any(|s| hit(s, want)) {
            bail!(
                "unknown scenario '{want}'; available: {}",
                all.iter()
                    .map(|s| format!("{}:{}", s.key, s.model))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(all
        .iter()
        .filter(|s| o.scenarios.iter().any(|w| hit(s, w)))
        .cloned()
        .collect())
}

/// Runs the suite (resuming an interrupted one in the same folder); writes `results.json` and
/// the report and returns the JSON. The table of strategies × scenarios goes to `Output`.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let start = Instant::now();
    let out = o.out();
    crate::machine::check_out_dir(&out, "--out")?;
    crate::machine::check_json_out(&out.join("results.json"), "--out")?;
    let strategies = strategies(o)?;
    let all_specs = specs(o.quick);
    let specs = chosen_specs(o, &all_specs)?;
    let seeds = if !o.seeds.is_empty() {
        o.seeds.clone()
    } else if o.quick {
        vec![0]
    } else {
        vec![0, 1, 2]
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let threads = rayon::current_num_threads();
    progress(Progress::Message(format!(
        "engram bench cl{}: {} scenario/model pairs × {} strategies × {} seeds = {} runs, {threads} threads; predicted {} (naive-cost model), folder {}",
        if o.quick { " --quick" } else { "" },
        specs.len(),
        strategies.len(),
        seeds.len(),
        specs.len() * strategies.len() * seeds.len(),
        fmt_s(predicted_seconds(&specs, &strategies, seeds.len())),
        out.display()
    )));

    // Hyperparameters on validation.
    let (chosen, tuning) = if o.no_tune {
        (BTreeMap::new(), Value::Null)
    } else {
        tune::tune(
            o.data_dir.as_deref(),
            &all_specs,
            &strategies,
            &out.join("tuning.json"),
            progress,
        )?
    };
    let params_of = |s: &str| {
        let mut p = base_params(s);
        for (k, v) in chosen.get(s).into_iter().flatten() {
            p.insert(k.clone(), json!(v));
        }
        p
    };

    let mut jobs: Vec<Job> = Vec::new();
    let mut skipped = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        for st in &strategies {
            if let Some(why) = skip_reason(spec, st) {
                skipped.push(json!({"scenario": spec.label(), "strategy": st, "reason": why}));
                progress(Progress::Message(format!(
                    "skipping {st} on {}: {why}",
                    spec.label()
                )));
                continue;
            }
            for &seed in &seeds {
                jobs.push(Job {
                    spec: i,
                    strategy: st.clone(),
                    seed,
                });
            }
        }
    }
    let weight = |j: &Job| specs[j.spec].cost_s * strategy_factor(&j.strategy);
    let total_weight: f64 = jobs.iter().map(weight).sum();
    let (mut done_weight, mut run_weight, mut run_secs) = (0.0, 0.0, 0.0);
    let mut results: Vec<RunResults> = Vec::new();
    let mut failed: Vec<Value> = Vec::new();
    let mut configs: BTreeMap<String, Value> = BTreeMap::new();
    for (n, job) in jobs.iter().enumerate() {
        let spec = &specs[job.spec];
        let name = format!("{}-{}-{}-s{}", spec.key, spec.model, job.strategy, job.seed);
        let params = params_of(&job.strategy);
        let cfg = make_config(spec, &job.strategy, &params, job.seed, &name)?;
        configs
            .entry(format!("{} / {}", spec.label(), job.strategy))
            .or_insert_with(|| json!({"scenario": cfg.scenario, "model": cfg.model, "train": cfg.train, "strategy": cfg.strategy}));
        let dir = out.join("runs").join(&name);
        let cfg_path = dir.join("suite-config.json");
        let cfg_json = serde_json::to_value(&cfg)?;
        let same = cfg_path.is_file() && read_json(&cfg_path).ok().as_ref() == Some(&cfg_json);
        if !same && dir.exists() {
            // Settings changed since this run was written (or it predates the suite): start over.
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        let w = weight(job);
        let label = format!(
            "[{}/{}] {} {} s{}",
            n + 1,
            jobs.len(),
            spec.label(),
            job.strategy,
            job.seed
        );
        let err_path = dir.join("error.json");
        if same && err_path.is_file() && !o.retry_failed {
            let e = read_json(&err_path)?;
            progress(Progress::Message(format!(
                "{label}: failed earlier ({}), skipped",
                e["error"]
            )));
            failed.push(e);
            done_weight += w;
            continue;
        }
        let res_path = dir.join("results.json");
        let (r, secs, fresh) = if same && res_path.is_file() {
            let r: RunResults = serde_json::from_value(read_json(&res_path)?)
                .with_context(|| format!("{} is not a run's results", res_path.display()))?;
            (Some(r), 0.0, false)
        } else {
            write_json(&cfg_path, &cfg_json)?;
            let _ = std::fs::remove_file(&err_path);
            let t = Instant::now();
            let r = run_one(&cfg, &dir, o.data_dir.as_deref(), progress);
            let secs = t.elapsed().as_secs_f64();
            match r {
                Ok(r) => (r, secs, true),
                Err(e) => {
                    let e = json!({"run": name, "error": error_chain(&e), "seconds": secs});
                    write_json(&err_path, &e)?;
                    progress(Progress::Message(format!(
                        "{label}: FAILED: {}",
                        e["error"]
                    )));
                    failed.push(e);
                    done_weight += w;
                    run_weight += w;
                    run_secs += secs;
                    continue;
                }
            }
        };
        let Some(mut r) = r else {
            bail!("run {name} stopped before its last task");
        };
        // Scenario and model in one label, so that the report groups MLP and CNN apart.
        r.scenario = spec.label();
        r.name = name.clone();
        if fresh {
            write_json(&res_path, &r)?;
        }
        done_weight += w;
        if fresh {
            run_weight += w;
            run_secs += secs;
        }
        let eta = if run_weight > 0.0 {
            (total_weight - done_weight) * run_secs / run_weight
        } else {
            (total_weight - done_weight) * 1.0
        };
        progress(Progress::Message(format!(
            "{label}: ACC {}{} ({}), elapsed {}, ETA {}",
            r.summary
                .acc
                .map_or_else(|| "-".into(), |v| format!("{v:.2}")),
            r.summary
                .forgetting
                .map_or_else(String::new, |v| format!(" forgetting {v:.2}")),
            if fresh {
                format!("{secs:.1} s")
            } else {
                "done earlier".into()
            },
            fmt_s(start.elapsed().as_secs_f64()),
            fmt_s(eta)
        )));
        results.push(r);
    }

    let strategy_params: BTreeMap<&String, Value> = strategies
        .iter()
        .map(|s| (s, Value::Object(params_of(s))))
        .collect();
    let doc = json!({
        "engram_bench_cl": 1,
        "command": o.command,
        "quick": o.quick,
        "threads": threads,
        "seeds": seeds,
        "strategies": strategies,
        "settings": {
            "scenarios": specs,
            "optimizer": {"kind": "adam", "lr": 0.001},
            "replay_buffer": BUFFER,
            "strategy_params": strategy_params,
            "runs": configs,
        },
        "tuning": tuning,
        "wall_s": start.elapsed().as_secs_f64(),
        "failed": failed,
        "skipped": skipped,
        "runs": results,
    });
    write_json(&out.join("results.json"), &doc)?;
    let report = out.join("report");
    let files = engram_report::report::write_report(&results, &report)
        .with_context(|| format!("writing the report in {}", report.display()))?;
    let mut text = render_text(&doc)?;
    text += &format!(
        "{} runs ({} failed) in {}; results: {}; report: {}\n",
        results.len(),
        failed_count(&doc),
        fmt_s(start.elapsed().as_secs_f64()),
        out.join("results.json").display(),
        files
            .first()
            .map(|f| f.display().to_string())
            .unwrap_or_default()
    );
    progress(Progress::Output(text));
    Ok(doc)
}

fn failed_count(doc: &Value) -> usize {
    doc["failed"].as_array().map_or(0, Vec::len)
}

/// One run of the suite into `dir` (resuming its checkpoint); `None` if it stopped early.
pub(crate) fn run_one(
    cfg: &engram_learn::config::RunConfig,
    dir: &Path,
    data_dir: Option<&Path>,
    progress: &mut dyn FnMut(Progress),
) -> Result<Option<RunResults>> {
    let opts = engram_learn::run::RunOptions {
        data_dir,
        resume: true,
        ..Default::default()
    };
    let r = engram_learn::run::run_config(
        cfg,
        dir,
        &opts,
        &mut training_progress(&cfg.strategy.name, progress),
    );
    progress(Progress::Finish);
    Ok(r?.map(serde_json::from_value).transpose()?)
}

/// The compact table of a suite's JSON: strategies × scenarios, ACC mean ± sd and forgetting,
/// then the tuning's choices.
pub fn render_text(doc: &Value) -> Result<String> {
    let results: Vec<RunResults> = serde_json::from_value(doc["runs"].clone())?;
    let cols: Vec<String> = doc["settings"]["scenarios"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            format!(
                "{} {}",
                s["key"].as_str().unwrap_or_default(),
                s["model"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let strategies: Vec<&str> = doc["strategies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut o = String::new();
    let w = 22;
    o += &format!("{:<12}", "ACC±sd F");
    for c in &cols {
        o += &format!(" {:>w$}", c);
    }
    o.push('\n');
    for st in strategies {
        o += &format!("{st:<12}");
        for c in &cols {
            let rs: Vec<&RunResults> = results
                .iter()
                .filter(|r| &r.scenario == c && r.strategy == st)
                .collect();
            let acc = MeanSpread::of(&rs.iter().filter_map(|r| r.summary.acc).collect::<Vec<_>>());
            let f = MeanSpread::of(
                &rs.iter()
                    .filter_map(|r| r.summary.forgetting)
                    .collect::<Vec<_>>(),
            );
            let cell = match acc {
                None => "-".to_string(),
                Some(m) => format!(
                    "{}{}",
                    m.format_with(|v| format!("{v:.1}")).replace(" ± ", "±"),
                    f.map_or_else(String::new, |f| format!(" F{:.1}", f.mean))
                ),
            };
            o += &format!(" {:>w$}", cell);
        }
        o.push('\n');
    }
    if let Value::Array(t) = &doc["tuning"] {
        for rec in t {
            o += &format!(
                "tuned {}: {} (validation ACC: {})\n",
                rec["strategy"].as_str().unwrap_or_default(),
                rec["chosen"],
                rec["grid"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|g| format!(
                        "{}→{}",
                        g["value"]
                            .as_object()
                            .into_iter()
                            .flatten()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(","),
                        g["valid_acc"]
                            .as_f64()
                            .map_or_else(|| "failed".into(), |v| format!("{v:.1}"))
                    ))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    Ok(o)
}

/// Seconds for people: `42s`, `3m05s`, `1h02m`.
pub(crate) fn fmt_s(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_selection() {
        assert_eq!(fmt_s(42.4), "42s");
        assert_eq!(fmt_s(185.0), "3m05s");
        assert_eq!(fmt_s(3720.0), "1h02m");
        assert_eq!(fmt_s(-1.0), "0s");
        let all = specs(true);
        let o = Options {
            scenarios: vec!["split-fmnist-cil".into(), "rotated-fmnist:mlp".into()],
            ..Options::default()
        };
        let got: Vec<String> = chosen_specs(&o, &all)
            .unwrap()
            .iter()
            .map(Spec::label)
            .collect();
        assert_eq!(
            got,
            [
                "split-fmnist-cil mlp",
                "split-fmnist-cil cnn",
                "rotated-fmnist mlp"
            ]
        );
        let bad = Options {
            scenarios: vec!["nope".into()],
            ..Options::default()
        };
        assert!(chosen_specs(&bad, &all).is_err());
        let bad = Options {
            strategies: vec!["nope".into()],
            ..Options::default()
        };
        assert!(strategies(&bad).is_err());
        let default = strategies(&Options::default()).unwrap();
        assert!(!default.contains(&"probe".to_string()) && !default.contains(&"rift".to_string()));
    }

    #[test]
    fn table_groups_runs_by_strategy_and_scenario() {
        let run = |strategy: &str, scenario: &str, acc: f64| {
            json!({"name": "r", "strategy": strategy, "scenario": scenario, "eval_mode": "class-il",
                   "seed": 0, "tasks": ["a", "b"], "accuracy": [[acc, 0.0], [acc, acc]],
                   "summary": {"acc": acc, "forgetting": 1.5}, "params": {}})
        };
        let doc = json!({
            "settings": {"scenarios": [{"key": "split-fmnist-cil", "model": "mlp"}]},
            "strategies": ["naive", "ewc"],
            "runs": [run("naive", "split-fmnist-cil mlp", 20.0), run("naive", "split-fmnist-cil mlp", 22.0)],
            "tuning": [{"strategy": "ewc", "chosen": {"lambda": 1000.0},
                        "grid": [{"value": {"lambda": 100.0}, "valid_acc": 50.0},
                                 {"value": {"lambda": 1000.0}, "valid_acc": null}]}],
        });
        let t = render_text(&doc).unwrap();
        let l: Vec<&str> = t.lines().collect();
        assert_eq!(
            l[0],
            format!("{:<12} {:>22}", "ACC±sd F", "split-fmnist-cil mlp")
        );
        assert!(
            l[1].starts_with("naive") && l[1].ends_with("21.0±1.4 F1.5"),
            "{}",
            l[1]
        );
        assert!(l[2].starts_with("ewc") && l[2].ends_with(" -"), "{}", l[2]);
        assert_eq!(
            l[3],
            "tuned ewc: {\"lambda\":1000.0} (validation ACC: lambda=100.0→50.0, lambda=1000.0→failed)"
        );
    }
}
