//! `engram bench cl`: the continual-learning suite (B3 in BENCHMARKS.md).
//!
//! Every registered strategy (naive and joint included, `probe` left out) on:
//!
//! | scenario           | data          | kind                       | tasks | train/task  | test/class | epochs | batch | model |
//! |--------------------|---------------|----------------------------|-------|-------------|------------|--------|-------|-------|
//! | `split-fmnist-cil` | Fashion-MNIST | class-incremental, 2/task  | 5     | 3000        | 500        | 2      | 128   | MLP   |
//! | `split-fmnist-cil` | Fashion-MNIST | class-incremental, 2/task  | 5     | 1500        | 200        | 1      | 32    | CNN   |
//! | `split-fmnist-til` | Fashion-MNIST | task-incremental, 2/task   | 5     | 3000        | 500        | 2      | 128   | MLP   |
//! | `split-fmnist-til` | Fashion-MNIST | task-incremental, 2/task   | 5     | 1500        | 200        | 1      | 32    | CNN   |
//! | `permuted-fmnist`  | Fashion-MNIST | permuted (domain-IL)       | 10    | 2000        | 200        | 1      | 128   | MLP   |
//! | `rotated-fmnist`   | Fashion-MNIST | rotated 0..180° (domain-IL)| 5     | 3000        | 200        | 1      | 128   | MLP   |
//! | `scole-fmnist`     | Fashion-MNIST | SCoLe, 2 classes/task      | 200   | 256         | 100        | 1      | 64    | MLP   |
//! | `split-mnist-cil`  | MNIST digits  | class-incremental, 2/task  | 5     | all (~1.7k) | all (~150) | 2      | 128   | MLP   |
//!
//! MLP: 784-400-400-10; CNN: the small CNN (conv 32, conv 64, dense 128). Optimizer Adam, lr
//! 0.001, for every run (also SCoLe, where SGD at 0.01 lets EWC's growing penalty blow up).
//! Seeds 0, 1, 2; the seed also seeds the scenario (subsamples, permutations, SCoLe stream).
//! Replay memory: 200 examples for every method that keeps one (`er`, `der`, `der++`, `ider`:
//! `buffer = 200`; `kd-wa`: `exemplars = 200`), recorded in each run's parameters and in the
//! suite's `settings`. EWC and online EWC estimate the Fisher on `samples = 200` examples per
//! task (the CNN computes per-example gradients one at a time). Left out of SCoLe, with the
//! reason in `results.json` (`skipped`): `ewc` (one Fisher and one penalty term per task:
//! 6.5 s per task at task 80 and 1.2 GB; `online-ewc` is EWC for streams) and `joint`
//! (cumulative: about T/2 = 100 times a naive run).
//!
//! Hyperparameters are chosen once, on validation, never on test: the MLP split settings
//! above with seed 0, 10% of the training examples carved out (`Scenario::carve_validation`)
//! and a tuning copy of the scenario (`Scenario::validation_view`) whose test set is that
//! validation split. The score is the final average accuracy (ACC) there. The regularizers
//! and LwF (`ewc`, `online-ewc`, `si`, `l2`, `classp`, `lwf`) are tuned on Split
//! Fashion-MNIST **task-incremental**, where they act (in class-incremental they all sit near
//! naive's 20% and the grid would pick noise); DER and DER++ on **class-incremental**. Grids
//! ([`GRID`]): ewc and online-ewc λ ∈ {100, 1000, 10000}; si c ∈ {0.1, 1, 10}; l2 λ ∈
//! {0.1, 1, 10}; classp lr ∈ {0.01, 0.2} × threshold ∈ {0, 1e-6, 1e-4} (the default threshold
//! 0.5 on g² stops every update of a batch-mean loss); lwf α ∈ {0.5, 1, 2}; der α ∈
//! {0.1, 0.3, 1}; der++ α ∈ {0.1, 0.3} (β = 0.5). The chosen values are used on every
//! scenario; the other strategies (er, kd-wa, ider) run with their defaults. Grid, scores and
//! choices are in `results.json` (`tuning`) and `tuning.json`.
//!
//! Budget (release build, `--threads 2` on the 2-core machine, measured while another job
//! shared it), seconds per run at seed 0: MLP split class-IL naive 2.9, joint 7.3, ewc 5.2,
//! der++ 6.3, kd-wa 3.9, ider 8.7; CNN split naive 8.8, ewc 21.4; permuted naive 5.2, ewc 9.4;
//! rotated naive 3.0, ewc 4.6; split MNIST naive 1.5, ewc 3.2; SCoLe (200 tasks) naive 14.4,
//! online-ewc 56, ider 30.6, der++ 19.0, kd-wa 21.7, lwf 10.0. Predicted full suite (310 runs
//! and 26 tuning runs): about 48 minutes (MLP splits 2 × 200 s, CNN splits 2 × 560 s, permuted
//! 300 s, rotated 165 s, MNIST 90 s, SCoLe 690 s, tuning 110 s).
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
//! `--quick`: one seed, every strategy, tiny budgets (a few hundred examples per task, 3
//! permuted and rotated tasks, a 20-task SCoLe stream): a smoke check of about 3 minutes.

use crate::Ctx;
use anyhow::{Context, Result, bail};
use engram_learn::config::RunConfig;
use engram_report::report::MeanSpread;
use engram_report::results::RunResults;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct ClArgs {
    /// Tiny budgets and one seed: a smoke check of a few minutes.
    #[arg(long)]
    pub quick: bool,
    /// Suite folder (default: bench-out/cl, or bench-out/cl-quick with --quick).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Strategies (default: every registered one but probe).
    #[arg(long, value_delimiter = ',')]
    pub strategies: Vec<String>,
    /// Scenarios, by key or key:model (default: all): split-fmnist-cil, split-fmnist-til,
    /// permuted-fmnist, rotated-fmnist, scole-fmnist, split-mnist-cil.
    #[arg(long, value_delimiter = ',')]
    pub scenarios: Vec<String>,
    /// Seeds (default: 0,1,2; 0 with --quick).
    #[arg(long, value_delimiter = ',')]
    pub seeds: Vec<u64>,
    /// Use the strategies' default hyperparameters instead of tuning on validation.
    #[arg(long)]
    pub no_tune: bool,
    /// Run again the runs that failed in an earlier invocation.
    #[arg(long)]
    pub retry_failed: bool,
    /// Where the data sets are (default: the system packages' locations).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

/// One scenario with one model: everything a run needs but the strategy and the seed.
#[derive(Clone, Debug, serde::Serialize)]
struct Spec {
    key: &'static str,
    model: &'static str,
    /// The `[scenario]` table (TOML lines, without `seed`).
    scenario: String,
    epochs: usize,
    batch: usize,
    /// Predicted seconds of a naive run (for the ETA).
    cost_s: f64,
}

impl Spec {
    fn label(&self) -> String {
        format!("{} {}", self.key, self.model)
    }
}

fn specs(quick: bool) -> Vec<Spec> {
    let split = |kind: &str, data: &str, tpt: Option<usize>, tpc: Option<usize>| {
        let mut s =
            format!("kind = \"{kind}\"\ndataset = \"{data}\"\ntasks = 5\nclasses-per-task = 2\n");
        if let Some(n) = tpt {
            s += &format!("train-per-task = {n}\n");
        }
        if let Some(n) = tpc {
            s += &format!("test-per-class = {n}\n");
        }
        s
    };
    let domain = |kind: &str, tasks: usize, tpt: usize, tpc: usize| {
        format!(
            "kind = \"{kind}\"\ndataset = \"fashion-mnist\"\ntasks = {tasks}\ntrain-per-task = {tpt}\ntest-per-class = {tpc}\n"
        )
    };
    let scole = |tasks: usize, tpt: usize, tpc: usize| {
        format!(
            "kind = \"scole\"\ndataset = \"fashion-mnist\"\ntasks = {tasks}\nclasses-per-task = 2\ntrain-per-task = {tpt}\ntest-per-class = {tpc}\n"
        )
    };
    let spec = |key, model, scenario, epochs, batch, cost_s| Spec {
        key,
        model,
        scenario,
        epochs,
        batch,
        cost_s,
    };
    if quick {
        return vec![
            spec(
                "split-fmnist-cil",
                "mlp",
                split("class-incremental", "fashion-mnist", Some(300), Some(50)),
                1,
                64,
                0.5,
            ),
            spec(
                "split-fmnist-cil",
                "cnn",
                split("class-incremental", "fashion-mnist", Some(150), Some(20)),
                1,
                64,
                1.5,
            ),
            spec(
                "split-fmnist-til",
                "mlp",
                split("task-incremental", "fashion-mnist", Some(300), Some(50)),
                1,
                64,
                0.5,
            ),
            spec(
                "split-fmnist-til",
                "cnn",
                split("task-incremental", "fashion-mnist", Some(150), Some(20)),
                1,
                64,
                1.5,
            ),
            spec(
                "permuted-fmnist",
                "mlp",
                domain("permuted", 3, 300, 30),
                1,
                64,
                0.5,
            ),
            spec(
                "rotated-fmnist",
                "mlp",
                domain("rotated", 3, 300, 30),
                1,
                64,
                0.5,
            ),
            spec("scole-fmnist", "mlp", scole(20, 64, 20), 1, 32, 1.0),
            spec(
                "split-mnist-cil",
                "mlp",
                split("class-incremental", "mnist", Some(300), Some(50)),
                1,
                64,
                0.5,
            ),
        ];
    }
    vec![
        spec(
            "split-fmnist-cil",
            "mlp",
            split("class-incremental", "fashion-mnist", Some(3000), Some(500)),
            2,
            128,
            3.0,
        ),
        spec(
            "split-fmnist-cil",
            "cnn",
            split("class-incremental", "fashion-mnist", Some(1500), Some(200)),
            1,
            32,
            9.0,
        ),
        spec(
            "split-fmnist-til",
            "mlp",
            split("task-incremental", "fashion-mnist", Some(3000), Some(500)),
            2,
            128,
            3.0,
        ),
        spec(
            "split-fmnist-til",
            "cnn",
            split("task-incremental", "fashion-mnist", Some(1500), Some(200)),
            1,
            32,
            9.0,
        ),
        spec(
            "permuted-fmnist",
            "mlp",
            domain("permuted", 10, 2000, 200),
            1,
            128,
            5.2,
        ),
        spec(
            "rotated-fmnist",
            "mlp",
            domain("rotated", 5, 3000, 200),
            1,
            128,
            3.0,
        ),
        spec("scole-fmnist", "mlp", scole(200, 256, 100), 1, 64, 14.0),
        spec(
            "split-mnist-cil",
            "mlp",
            split("class-incremental", "mnist", None, None),
            2,
            128,
            1.5,
        ),
    ]
}

/// Relative cost of a strategy against naive (calibrated on the MLP split runs).
fn strategy_factor(s: &str) -> f64 {
    match s {
        "joint" => 2.5,
        "ewc" | "online-ewc" => 2.0,
        "si" | "l2" | "classp" | "lwf" => 1.2,
        "er" | "der" | "der++" | "kd-wa" => 1.7,
        "ider" => 2.5,
        _ => 1.0,
    }
}

/// Predicted seconds of the runs of `specs` × `strategies` × `seeds` (the ETA's model).
fn predicted_seconds(specs: &[Spec], strategies: &[String], seeds: usize) -> f64 {
    specs
        .iter()
        .map(|s| s.cost_s * strategies.iter().map(|t| strategy_factor(t)).sum::<f64>())
        .sum::<f64>()
        * seeds as f64
}

/// Why a strategy is left out of a scenario, if it is.
fn skip_reason(spec: &Spec, strategy: &str) -> Option<&'static str> {
    // Separate-mode EWC keeps one Fisher and one anchor per task and adds one penalty term per
    // task to every step: memory and per-step time grow with the stream (measured: 6.5 s per
    // task at task 80 of a SCoLe stream, 1.2 GB), i.e. 20+ minutes per seed for a few hundred
    // tasks. Online EWC (one running Fisher) is the EWC of long streams.
    // Joint (cumulative) trains at task k on the union of tasks 1..k: Σ_k k·n examples, about
    // T/2 = 100 times a naive run on a 200-task stream.
    match (spec.key, strategy) {
        ("scole-fmnist", "ewc") => Some(
            "separate-mode EWC's memory and per-step time grow with the number of tasks; \
             online-ewc covers EWC on the long stream",
        ),
        ("scole-fmnist", "joint") => Some(
            "cumulative joint retrains on every earlier task at each task: about T/2 = 100 \
             times a naive run on the long stream",
        ),
        _ => None,
    }
}

/// Replay memory of every method that keeps one.
const BUFFER: usize = 200;

/// The strategies' fixed parameters in this suite (before tuning).
fn base_params(strategy: &str) -> serde_json::Map<String, Value> {
    let v = match strategy {
        "er" | "der" | "der++" | "ider" => json!({"buffer": BUFFER}),
        "kd-wa" => json!({"exemplars": BUFFER}),
        "ewc" | "online-ewc" => json!({"samples": 200}),
        _ => json!({}),
    };
    match v {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// A grid: (strategy, knobs, points (one value per knob), scenario key it is tuned on).
type Grid = (
    &'static str,
    &'static [&'static str],
    &'static [&'static [f64]],
    &'static str,
);

/// Strategy → the chosen (knob, value) pairs.
type Chosen = BTreeMap<String, Vec<(String, f64)>>;

const GRID: &[Grid] = &[
    (
        "ewc",
        &["lambda"],
        &[&[100.0], &[1000.0], &[10000.0]],
        "split-fmnist-til",
    ),
    (
        "online-ewc",
        &["lambda"],
        &[&[100.0], &[1000.0], &[10000.0]],
        "split-fmnist-til",
    ),
    ("si", &["c"], &[&[0.1], &[1.0], &[10.0]], "split-fmnist-til"),
    (
        "l2",
        &["lambda"],
        &[&[0.1], &[1.0], &[10.0]],
        "split-fmnist-til",
    ),
    (
        "classp",
        &["lr", "threshold"],
        &[
            &[0.01, 0.0],
            &[0.01, 1e-6],
            &[0.01, 1e-4],
            &[0.2, 0.0],
            &[0.2, 1e-6],
            &[0.2, 1e-4],
        ],
        "split-fmnist-til",
    ),
    (
        "lwf",
        &["alpha"],
        &[&[0.5], &[1.0], &[2.0]],
        "split-fmnist-til",
    ),
    (
        "der",
        &["alpha"],
        &[&[0.1], &[0.3], &[1.0]],
        "split-fmnist-cil",
    ),
    ("der++", &["alpha"], &[&[0.1], &[0.3]], "split-fmnist-cil"),
];

fn model_toml(model: &str) -> &'static str {
    match model {
        "cnn" => "kind = \"cnn\"\nchannels = [32, 64]\nhidden = 128",
        _ => "kind = \"mlp\"\nhidden = [400, 400]",
    }
}

fn make_config(
    spec: &Spec,
    strategy: &str,
    params: &serde_json::Map<String, Value>,
    seed: u64,
    name: &str,
) -> Result<RunConfig> {
    let text = format!(
        "name = \"{name}\"\nseed = {seed}\n[scenario]\n{}seed = {seed}\n[model]\n{}\n[strategy]\nname = \"{strategy}\"\n[train]\nepochs = {}\nbatch-size = {}\n[train.optimizer]\nkind = \"adam\"\nlr = 0.001\n",
        spec.scenario,
        model_toml(spec.model),
        spec.epochs,
        spec.batch
    );
    let mut cfg =
        RunConfig::parse_toml(&text).map_err(|e| anyhow::anyhow!("suite config of {name}: {e}"))?;
    cfg.strategy.params = params.clone();
    engram_learn::strategy::build(strategy, &Value::Object(params.clone()))
        .map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    Ok(cfg)
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn fmt_s(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// Tuning: for each grid strategy, the chosen knob value (and the record of the search).
fn tune(
    ctx: &Ctx,
    a: &ClArgs,
    specs_all: &[Spec],
    strategies: &[String],
    path: &Path,
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
                            .build(a.data_dir.as_deref())
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
                    let res = super::train::train_on(ctx, &cfg, view, None, None)
                        .and_then(|out| super::train::to_results(&cfg, view, out));
                    let secs = t.elapsed().as_secs_f64();
                    let p = match res {
                        Ok(r) => json!({"fingerprint": fp, "valid_acc": r.summary.acc,
                                        "valid_forgetting": r.summary.forgetting, "seconds": secs}),
                        Err(e) => json!({"fingerprint": fp, "valid_acc": null,
                                        "error": super::util::error_chain(&e), "seconds": secs}),
                    };
                    if !ctx.quiet {
                        eprintln!(
                            "tune {strategy} {desc} on {key} (validation): ACC {} ({:.1} s)",
                            p["valid_acc"]
                                .as_f64()
                                .map_or_else(|| "failed".into(), |x| format!("{x:.2}")),
                            secs
                        );
                    }
                    scores.insert(id.clone(), p.clone());
                    super::util::write_json_file(path, &json!({"points": scores}))?;
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
                if !ctx.quiet {
                    eprintln!("tune {strategy}: every grid point failed; using the defaults");
                }
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

struct Job {
    spec: usize,
    strategy: String,
    seed: u64,
}

pub fn run(ctx: &Ctx, a: ClArgs) -> Result<()> {
    let start = Instant::now();
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from(if a.quick {
            "bench-out/cl-quick"
        } else {
            "bench-out/cl"
        })
    });
    let registry: Vec<String> = engram_learn::strategy::REGISTRY
        .iter()
        .map(|r| r.0.to_string())
        .filter(|n| n != "probe")
        .collect();
    let strategies = if a.strategies.is_empty() {
        registry.clone()
    } else {
        for s in &a.strategies {
            if !registry.contains(s) {
                bail!("unknown strategy '{s}'; available: {}", registry.join(", "));
            }
        }
        a.strategies.clone()
    };
    let all_specs = specs(a.quick);
    let specs: Vec<Spec> = if a.scenarios.is_empty() {
        all_specs.clone()
    } else {
        for want in &a.scenarios {
            if !all_specs
                .iter()
                .any(|s| s.key == want || format!("{}:{}", s.key, s.model) == *want)
            {
                bail!(
                    "unknown scenario '{want}'; available: {}",
                    all_specs
                        .iter()
                        .map(|s| format!("{}:{}", s.key, s.model))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
        }
        all_specs
            .iter()
            .filter(|s| {
                a.scenarios
                    .iter()
                    .any(|w| s.key == w || format!("{}:{}", s.key, s.model) == *w)
            })
            .cloned()
            .collect()
    };
    let seeds = if !a.seeds.is_empty() {
        a.seeds.clone()
    } else if a.quick {
        vec![0]
    } else {
        vec![0, 1, 2]
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let threads = rayon::current_num_threads();
    if !ctx.quiet {
        eprintln!(
            "engram bench cl{}: {} scenario/model pairs × {} strategies × {} seeds = {} runs, {threads} threads; predicted {} (naive-cost model), folder {}",
            if a.quick { " --quick" } else { "" },
            specs.len(),
            strategies.len(),
            seeds.len(),
            specs.len() * strategies.len() * seeds.len(),
            fmt_s(predicted_seconds(&specs, &strategies, seeds.len())),
            out.display()
        );
    }

    // Hyperparameters on validation.
    let (chosen, tuning) = if a.no_tune {
        (BTreeMap::new(), Value::Null)
    } else {
        tune(ctx, &a, &all_specs, &strategies, &out.join("tuning.json"))?
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
                if !ctx.quiet {
                    eprintln!("skipping {st} on {}: {why}", spec.label());
                }
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
        if same && err_path.is_file() && !a.retry_failed {
            let e = read_json(&err_path)?;
            if !ctx.quiet {
                eprintln!("{label}: failed earlier ({}), skipped", e["error"]);
            }
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
            super::util::write_json_file(&cfg_path, &cfg_json)?;
            let _ = std::fs::remove_file(&err_path);
            let t = Instant::now();
            let r =
                super::train::run_config(ctx, &cfg, &dir, a.data_dir.as_deref(), true, false, None);
            let secs = t.elapsed().as_secs_f64();
            match r {
                Ok(r) => (r, secs, true),
                Err(e) => {
                    let e = json!({"run": name, "error": super::util::error_chain(&e), "seconds": secs});
                    super::util::write_json_file(&err_path, &e)?;
                    if !ctx.quiet {
                        eprintln!("{label}: FAILED: {}", e["error"]);
                    }
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
            super::util::write_json_file(&res_path, &r)?;
        }
        done_weight += w;
        if fresh {
            run_weight += w;
            run_secs += secs;
        }
        if !ctx.quiet {
            let eta = if run_weight > 0.0 {
                (total_weight - done_weight) * run_secs / run_weight
            } else {
                (total_weight - done_weight) * 1.0
            };
            eprintln!(
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
            );
        }
        results.push(r);
    }

    let strategy_params: BTreeMap<&String, Value> = strategies
        .iter()
        .map(|s| (s, Value::Object(params_of(s))))
        .collect();
    let doc = json!({
        "engram_bench_cl": 1,
        "command": ctx.command_line,
        "quick": a.quick,
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
    super::util::write_json_file(&out.join("results.json"), &doc)?;
    let report = out.join("report");
    let files = engram_report::report::write_report(&results, &report)
        .with_context(|| format!("writing the report in {}", report.display()))?;

    // The compact table: strategies × scenarios, ACC mean ± sd and forgetting.
    let mut o = String::new();
    let cols: Vec<String> = specs.iter().map(Spec::label).collect();
    let w = 22;
    super::util::out!(o, "{:<12}", "ACC±sd F");
    for c in &cols {
        super::util::out!(o, " {:>w$}", c);
    }
    super::util::outln!(o);
    for st in &strategies {
        super::util::out!(o, "{st:<12}");
        for c in &cols {
            let rs: Vec<&RunResults> = results
                .iter()
                .filter(|r| &r.scenario == c && &r.strategy == st)
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
            super::util::out!(o, " {:>w$}", cell);
        }
        super::util::outln!(o);
    }
    if let Value::Array(t) = &tuning {
        for rec in t {
            super::util::outln!(
                o,
                "tuned {}: {} (validation ACC: {})",
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
    super::util::outln!(
        o,
        "{} runs ({} failed) in {}; results: {}; report: {}",
        results.len(),
        failed.len(),
        fmt_s(start.elapsed().as_secs_f64()),
        out.join("results.json").display(),
        files
            .first()
            .map(|f| f.display().to_string())
            .unwrap_or_default()
    );
    super::util::emit(&o)?;
    Ok(())
}
