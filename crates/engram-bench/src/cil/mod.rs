//! `engram bench cil`: exemplar-free class-incremental learning at our scale (B8 in
//! BENCHMARKS.md). Card: shared/methods/replay_distillation.md ("NAPA-VQ").
//!
//! The half-base protocol: 4 base classes, then 3 increments of 2, on Fashion-MNIST and on
//! the 10k MNIST digits; the CNN (conv 32, conv 64, dense 64: 64-dimensional features);
//! Adam lr 1e-3 with weight decay 2e-4 (NAPA-VQ's), batch 64, 4 epochs on the base task and
//! 2 per increment (the card: 10 and 5; cut to fit three seeds of a dozen arms on two data
//! sets in about an hour on two cores); 1 200 training images per task (the base task's 4
//! classes share them), 500 test images per class (MNIST digits have fewer: all of them).
//! Arms:
//!
//! | arm | strategy | memory |
//! |---|---|---|
//! | naive | fine-tuning | none |
//! | lwf | LwF (α 1, T 2) | none (previous network) |
//! | pass | PASS-style: rotations, prototypes + Gaussian noise, feature KD | prototypes |
//! | napa-vq | NAPA-VQ (k = 3) | CVs, prototypes, graph |
//! | napa-vq-random | NAPA-VQ, augmentation with random neighbours (ablation) | same |
//! | icarl | iCaRL, 200 exemplars | 200 images |
//! | er-equal | ER with as many uint8 images as NAPA-VQ's prototypes take bytes | 13 images |
//! | er-200 | ER with 200 exemplars (upper reference) | 200 images |
//! | napa-vq-raw | NAPA-VQ predicting by raw distances, as it trains | as napa-vq |
//! | napa-vq-sched, napa-vq-random-sched | NAPA-VQ and its ablation with the reference's CV schedule (StepLR(20, 0.1) over 100 epochs) scaled to each task: ×0.1 after each fifth of its steps | as napa-vq |
//! | pass-tuned, napa-vq-tuned, napa-vq-random-tuned | the same with hyperparameters chosen on validation | |
//!
//! The `-tuned` arms: at this budget (a few epochs, no step schedules) the papers' rates are
//! not a given, so NAPA-VQ's CV rate (5, 0.5, 0.05) and the later-task factor on the rates
//! (0.1, 1; PASS-style gets the same factor grid) are chosen by AIA on a validation split
//! (10 % of each task's training images, seed 0, Fashion-MNIST; `OUT/tuning.json`), never on
//! test; the ablation runs at NAPA-VQ's choice. `--no-tune` leaves them out.
//! Metrics (percent, mean ± sd over seeds 0, 1, 2): the accuracy over all classes seen after
//! each stage, weighting each task's accuracy by its test images (the base task holds twice
//! the classes of an increment); average incremental accuracy (AIA, the mean of those over
//! the 4 stages); last accuracy (after the last stage); average forgetting (per task, the
//! best earlier accuracy minus the last, averaged over the first 3 tasks); and the memory
//! each strategy states (`state_bytes`).
//!
//! The card's claim is judged per data set: NAPA-VQ beats PASS-style by ≥ 2 points of AIA
//! with lower forgetting, and the random-neighbour ablation loses part of that gain, each
//! difference outside the seeds' spread (every seed's paired difference of the same sign).
//! The other arms run at the papers' defaults.
//!
//! Output (`--out`, default `bench-out/cil`, `bench-out/cil-quick` with `--quick`):
//! `runs/<data>-<arm>-s<seed>/` per run (read back when rerun with the same settings; an
//! interrupted run resumes from its last task's checkpoint), `results.json` and
//! `report/index.html`, committed together.

pub mod page;

use crate::cl::{fmt_s, run_one};
use crate::machine::{Spread, read_json, spread, write_json};
use crate::{Progress, error_chain};
use anyhow::{Context, Result, bail};
use engram_learn::config::RunConfig;
use engram_report::results::RunResults;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Settings of `engram bench cil`.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub quick: bool,
    pub out: Option<PathBuf>,
    /// Seeds (default 0, 1, 2; 0 with `quick`).
    pub seeds: Vec<u64>,
    /// Data sets (default: fashion-mnist and mnist; fashion-mnist with `quick`).
    pub datasets: Vec<String>,
    /// Arms by label (default: all).
    pub arms: Vec<String>,
    /// Leave out the `-tuned` arms and their validation runs.
    pub no_tune: bool,
    pub data_dir: Option<PathBuf>,
    pub command: String,
}

impl Options {
    pub fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from(if self.quick {
                "bench-out/cil-quick"
            } else {
                "bench-out/cil"
            })
        })
    }
}

/// Feature width of the study's CNN, classes of the data sets, bytes of one uint8 image.
const FEATURES: usize = 64;
const CLASSES: usize = 10;
const IMAGE_BYTES: usize = 28 * 28;

/// ER's buffer at NAPA-VQ's prototype bytes: 10 classes × 4 rotations × 64 f32 features =
/// 10 240 bytes, in 784-byte uint8 images (the card's ≈ 13).
pub fn equal_bytes_buffer() -> usize {
    (CLASSES * 4 * FEATURES * 4) / IMAGE_BYTES
}

/// An arm: (label, strategy, parameters, what it is).
pub type Arm = (&'static str, &'static str, Value, &'static str);

/// The arms; `tuned` holds the parameters chosen on validation for the `-tuned` arms (those
/// arms are left out when it is empty).
pub fn arms(tuned: &BTreeMap<String, Value>) -> Vec<Arm> {
    let mut v = vec![
        ("naive", "naive", json!({}), "fine-tuning (lower bound)"),
        ("lwf", "lwf", json!({}), "LwF, α = 1, T = 2"),
        (
            "pass",
            "pass",
            json!({}),
            "PASS-style: rotations, prototypes + Gaussian noise, feature KD",
        ),
        ("napa-vq", "napa-vq", json!({}), "NAPA-VQ, k = 3"),
        (
            "napa-vq-random",
            "napa-vq",
            json!({"random-neighbours": true}),
            "NAPA-VQ, prototypes mixed with random CVs (ablation)",
        ),
        (
            "napa-vq-raw",
            "napa-vq",
            json!({"normalized-test": false}),
            "NAPA-VQ, predicting by raw distances (as trained)",
        ),
        (
            "napa-vq-sched",
            "napa-vq",
            json!({"cv-schedule": "step"}),
            "NAPA-VQ, the reference's CV step schedule scaled to each task",
        ),
        (
            "napa-vq-random-sched",
            "napa-vq",
            json!({"cv-schedule": "step", "random-neighbours": true}),
            "the ablation with that schedule",
        ),
        (
            "icarl",
            "icarl",
            json!({"memory": 200}),
            "iCaRL, 200 herding exemplars, nearest mean",
        ),
        (
            "er-equal",
            "er",
            json!({"buffer": equal_bytes_buffer()}),
            "ER at NAPA-VQ's prototype bytes",
        ),
        (
            "er-200",
            "er",
            json!({"buffer": 200}),
            "ER, 200 exemplars (upper reference)",
        ),
    ];
    let with = |base: Value, extra: Option<&Value>| {
        let mut m = base.as_object().cloned().unwrap_or_default();
        for (k, x) in extra.and_then(Value::as_object).into_iter().flatten() {
            m.insert(k.clone(), x.clone());
        }
        Value::Object(m)
    };
    if let (Some(p), Some(n)) = (tuned.get("pass"), tuned.get("napa-vq")) {
        v.push((
            "pass-tuned",
            "pass",
            with(json!({}), Some(p)),
            "PASS-style, later-lr-factor chosen on validation",
        ));
        v.push((
            "napa-vq-tuned",
            "napa-vq",
            with(json!({}), Some(n)),
            "NAPA-VQ, cv-lr and later-lr-factor chosen on validation",
        ));
        v.push((
            "napa-vq-random-tuned",
            "napa-vq",
            with(json!({"random-neighbours": true}), Some(n)),
            "the ablation at NAPA-VQ's chosen values",
        ));
    }
    v
}

/// The validation grid of the `-tuned` arms: (strategy, points). Each point is scored by AIA
/// on a validation split (10 % of each task's training images, seed 0, Fashion-MNIST); PASS
/// gets the same later-rate choice NAPA-VQ gets.
pub fn grid() -> Vec<(&'static str, Vec<Value>)> {
    let mut napa = Vec::new();
    for cv in [5.0, 0.5, 0.05] {
        for f in [0.1, 1.0] {
            napa.push(json!({"cv-lr": cv, "later-lr-factor": f}));
        }
    }
    vec![
        (
            "pass",
            vec![
                json!({"later-lr-factor": 0.1}),
                json!({"later-lr-factor": 1.0}),
            ],
        ),
        ("napa-vq", napa),
    ]
}

/// The study's sizes.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Settings {
    pub base_classes: usize,
    pub increments: usize,
    pub classes_per_increment: usize,
    pub train_per_task: usize,
    pub test_per_class: Option<usize>,
    pub first_task_epochs: usize,
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub model: String,
}

pub fn settings(quick: bool) -> Settings {
    Settings {
        base_classes: 4,
        increments: 3,
        classes_per_increment: 2,
        train_per_task: if quick { 300 } else { 1200 },
        test_per_class: Some(if quick { 50 } else { 500 }),
        first_task_epochs: if quick { 2 } else { 4 },
        epochs: if quick { 1 } else { 2 },
        batch: 64,
        lr: 1e-3,
        weight_decay: 2e-4,
        model: "cnn, channels [32, 64], hidden 64".into(),
    }
}

/// The run file of one run.
pub fn make_config(
    st: &Settings,
    data: &str,
    strategy: &str,
    params: &Value,
    seed: u64,
    name: &str,
) -> Result<RunConfig> {
    let tpc = st
        .test_per_class
        .map_or(String::new(), |n| format!("test-per-class = {n}\n"));
    let text = format!(
        "name = \"{name}\"\nseed = {seed}\n[scenario]\nkind = \"class-incremental\"\ndataset = \"{data}\"\n\
         tasks = {}\nbase-classes = {}\nclasses-per-task = {}\ntrain-per-task = {}\n{tpc}seed = {seed}\n\
         [model]\nkind = \"cnn\"\nchannels = [32, 64]\nhidden = {FEATURES}\n[strategy]\nname = \"{strategy}\"\n\
         [train]\nepochs = {}\nfirst-task-epochs = {}\nbatch-size = {}\n[train.optimizer]\nkind = \"adam\"\n\
         lr = {}\nweight-decay = {}\n",
        st.increments + 1,
        st.base_classes,
        st.classes_per_increment,
        st.train_per_task,
        st.epochs,
        st.first_task_epochs,
        st.batch,
        st.lr,
        st.weight_decay,
    );
    let mut cfg =
        RunConfig::parse_toml(&text).map_err(|e| anyhow::anyhow!("config of {name}: {e}"))?;
    cfg.strategy.params = params.as_object().cloned().unwrap_or_default();
    engram_learn::strategy::build(strategy, params).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
    Ok(cfg)
}

/// The measures of one run.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Run {
    pub data: String,
    pub arm: String,
    pub seed: u64,
    /// Accuracy over all classes seen after each stage (test-image weighted), percent.
    pub stages: Vec<f64>,
    pub aia: f64,
    pub last: f64,
    pub forgetting: f64,
    pub state_bytes: u64,
    pub seconds: f64,
    /// The accuracy matrix a[k][i] (Class-IL over the classes seen).
    pub accuracy: Vec<Vec<f64>>,
}

/// Stage accuracies, AIA, last accuracy and forgetting of a matrix `a` whose task `i` has
/// `n[i]` test images.
pub fn measures(a: &[Vec<f64>], n: &[usize]) -> (Vec<f64>, f64, f64, f64) {
    let t = a.len();
    let stages: Vec<f64> = (0..t)
        .map(|k| {
            let w: f64 = n[..=k].iter().map(|&v| v as f64).sum();
            (0..=k).map(|i| a[k][i] * n[i] as f64).sum::<f64>() / w.max(1.0)
        })
        .collect();
    let aia = stages.iter().sum::<f64>() / t.max(1) as f64;
    let last = stages.last().copied().unwrap_or(0.0);
    let forgetting = if t < 2 {
        0.0
    } else {
        (0..t - 1)
            .map(|i| (i..t - 1).map(|k| a[k][i]).fold(f64::MIN, f64::max) - a[t - 1][i])
            .sum::<f64>()
            / (t - 1) as f64
    };
    (stages, aia, last, forgetting)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ArmSummary {
    pub data: String,
    pub arm: String,
    pub what: String,
    pub seeds: usize,
    pub stages: Vec<Spread>,
    pub aia: Spread,
    pub last: Spread,
    pub forgetting: Spread,
    pub state_bytes: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub data: String,
    pub claim: String,
    /// Paired differences per seed.
    pub differences: Vec<f64>,
    pub measured: String,
    pub holds: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CilResults {
    pub engram_bench_cil: u32,
    pub command: String,
    pub quick: bool,
    pub seeds: Vec<u64>,
    pub settings: Settings,
    /// The `-tuned` arms' validation grid, scores and choices (`null` without them).
    pub tuning: Value,
    pub wall_s: f64,
    pub summary: Vec<ArmSummary>,
    pub verdicts: Vec<Verdict>,
    pub failed: Vec<Value>,
    pub runs: Vec<Run>,
}

/// Test images per task of `data` under the study's settings.
fn test_counts(st: &Settings, data: &str, data_dir: Option<&Path>) -> Result<Vec<usize>> {
    let cfg = make_config(st, data, "naive", &json!({}), 0, "counts")?;
    let split = cfg
        .scenario
        .source()
        .and_then(|s| s.load(data_dir).map_err(Into::into))
        .map_err(|e| anyhow::anyhow!("{data}: {e}"))?;
    let s = cfg
        .scenario
        .build_with(split)
        .map_err(|e| anyhow::anyhow!("{data}: {e}"))?;
    Ok(s.tasks.iter().map(|t| t.test.len()).collect())
}

/// Chooses the `-tuned` arms' parameters on validation (cached in `OUT/tuning.json` by the
/// run file of each point); returns the choices and the record.
fn tune(
    st: &Settings,
    o: &Options,
    out: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<(BTreeMap<String, Value>, Value)> {
    let path = out.join("tuning.json");
    let mut cache: serde_json::Map<String, Value> = read_json(&path)
        .ok()
        .and_then(|v| v["points"].as_object().cloned())
        .unwrap_or_default();
    let data = "fashion-mnist";
    let mut view: Option<(engram_learn::scenario::Scenario, Vec<usize>)> = None;
    let (mut chosen, mut record) = (BTreeMap::new(), Vec::new());
    for (strategy, points) in grid() {
        let mut best: Option<(f64, Value)> = None;
        for (i, point) in points.into_iter().enumerate() {
            let name = format!("tune-{strategy}-{i}");
            let cfg = make_config(st, data, strategy, &point, 0, &name)?;
            let fp = serde_json::to_value(&cfg)?;
            let hit = cache.get(&name).filter(|c| c["config"] == fp).cloned();
            let scored = match hit {
                Some(c) => c,
                None => {
                    if view.is_none() {
                        let mut s = cfg
                            .scenario
                            .build(o.data_dir.as_deref())
                            .map_err(|e| anyhow::anyhow!("tuning: {e}"))?;
                        s.carve_validation(0.1, 0)
                            .map_err(|e| anyhow::anyhow!("tuning: {e}"))?;
                        let v = s
                            .validation_view()
                            .map_err(|e| anyhow::anyhow!("tuning: {e}"))?;
                        let counts = v.tasks.iter().map(|t| t.test.len()).collect();
                        view = Some((v, counts));
                    }
                    let Some((v, counts)) = view.as_ref() else {
                        bail!("tuning: no validation split");
                    };
                    let t = Instant::now();
                    let res = engram_learn::run::train_on(
                        &cfg,
                        v,
                        None,
                        None,
                        None,
                        &mut crate::training_progress(strategy, progress),
                    );
                    progress(Progress::Finish);
                    let c = match res {
                        Ok(r) => {
                            let (_, aia, last, forgetting) = measures(&r.accuracy, counts);
                            json!({"config": fp, "valid_aia": aia, "valid_last": last,
                                   "valid_forgetting": forgetting,
                                   "seconds": t.elapsed().as_secs_f64()})
                        }
                        Err(e) => json!({"config": fp, "valid_aia": null,
                                         "error": e.to_string()}),
                    };
                    progress(Progress::Message(format!(
                        "tune {strategy} {point} (validation): AIA {}",
                        c["valid_aia"]
                            .as_f64()
                            .map_or("failed".into(), |a| format!("{a:.2}"))
                    )));
                    cache.insert(name.clone(), c.clone());
                    write_json(&path, &json!({"points": cache}))?;
                    c
                }
            };
            if let Some(a) = scored["valid_aia"].as_f64()
                && best.as_ref().is_none_or(|(b, _)| a > *b)
            {
                best = Some((a, point.clone()));
            }
            record.push(json!({"strategy": strategy, "point": point,
                               "valid_aia": scored["valid_aia"],
                               "valid_forgetting": scored["valid_forgetting"]}));
        }
        match best {
            Some((_, p)) => {
                chosen.insert(strategy.to_string(), p);
            }
            None => bail!("tuning {strategy}: every point failed"),
        }
    }
    let rec = json!({"data": data, "seed": 0, "validation": "10 % of each task's training images",
                     "score": "AIA", "points": record, "chosen": chosen});
    Ok((chosen, rec))
}

pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<CilResults> {
    let start = Instant::now();
    let out = o.out();
    crate::machine::check_out_dir(&out, "--out")?;
    let st = settings(o.quick);
    let seeds = match (&o.seeds[..], o.quick) {
        ([], true) => vec![0],
        ([], false) => vec![0, 1, 2],
        (s, _) => s.to_vec(),
    };
    let datasets: Vec<String> = match (&o.datasets[..], o.quick) {
        ([], true) => vec!["fashion-mnist".into()],
        ([], false) => vec!["fashion-mnist".into(), "mnist".into()],
        (d, _) => d.to_vec(),
    };
    for d in &datasets {
        if d != "fashion-mnist" && d != "mnist" {
            bail!("unknown data set '{d}'; available: fashion-mnist, mnist");
        }
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let wants_tuned = o.arms.is_empty() || o.arms.iter().any(|a| a.ends_with("-tuned"));
    let (tuned, tuning) = match wants_tuned && !o.no_tune {
        true => tune(&st, o, &out, progress)?,
        false => (BTreeMap::new(), Value::Null),
    };
    let all = arms(&tuned);
    for a in &o.arms {
        if !all.iter().any(|x| x.0 == a) {
            bail!(
                "unknown arm '{a}'; available: {}",
                all.iter().map(|x| x.0).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let chosen: Vec<_> = all
        .iter()
        .filter(|x| o.arms.is_empty() || o.arms.iter().any(|a| a == x.0))
        .collect();
    let total = datasets.len() * chosen.len() * seeds.len();
    progress(Progress::Message(format!(
        "engram bench cil{}: {} data sets × {} arms × {} seeds = {total} runs, folder {}",
        if o.quick { " --quick" } else { "" },
        datasets.len(),
        chosen.len(),
        seeds.len(),
        out.display()
    )));
    std::fs::create_dir_all(out.join("runs"))
        .with_context(|| format!("creating {}", out.display()))?;
    let (mut runs, mut failed) = (Vec::new(), Vec::new());
    let mut n = 0;
    for data in &datasets {
        let counts = test_counts(&st, data, o.data_dir.as_deref())?;
        for (arm, strategy, params, _) in &chosen {
            for &seed in &seeds {
                n += 1;
                let name = format!("{data}-{arm}-s{seed}");
                let label = format!("[{n}/{total}] {data} {arm} s{seed}");
                let cfg = make_config(&st, data, strategy, params, seed, &name)?;
                let dir = out.join("runs").join(&name);
                let cfg_path = dir.join("study-config.json");
                let cfg_json = serde_json::to_value(&cfg)?;
                let same = read_json(&cfg_path).ok().as_ref() == Some(&cfg_json);
                if !same && dir.exists() {
                    std::fs::remove_dir_all(&dir)
                        .with_context(|| format!("removing {}", dir.display()))?;
                }
                let res_path = dir.join("results.json");
                let t = Instant::now();
                let r: Result<RunResults> = if same && res_path.is_file() {
                    serde_json::from_value(read_json(&res_path)?)
                        .with_context(|| format!("{} is not a run's results", res_path.display()))
                } else {
                    write_json(&cfg_path, &cfg_json)?;
                    run_one(&cfg, &dir, o.data_dir.as_deref(), progress).and_then(|r| {
                        r.ok_or_else(|| anyhow::anyhow!("run {name} stopped before its last task"))
                    })
                };
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        let e = json!({"run": name, "error": error_chain(&e)});
                        progress(Progress::Message(format!(
                            "{label}: FAILED: {}",
                            e["error"]
                        )));
                        failed.push(e);
                        continue;
                    }
                };
                let (stages, aia, last, forgetting) = measures(&r.accuracy, &counts);
                let secs = r
                    .summary
                    .total_time_s()
                    .unwrap_or(t.elapsed().as_secs_f64());
                progress(Progress::Message(format!(
                    "{label}: AIA {aia:.2}, last {last:.2}, forgetting {forgetting:.2} ({}), elapsed {}",
                    fmt_s(secs),
                    fmt_s(start.elapsed().as_secs_f64())
                )));
                runs.push(Run {
                    data: data.clone(),
                    arm: arm.to_string(),
                    seed,
                    stages,
                    aia,
                    last,
                    forgetting,
                    state_bytes: r.summary.state_bytes.unwrap_or(0),
                    seconds: secs,
                    accuracy: r.accuracy.clone(),
                });
            }
        }
    }
    let summary = summarize(&runs, &datasets, &chosen);
    let mut verdicts = judge(&runs, &datasets, "");
    verdicts.extend(judge(&runs, &datasets, "-sched"));
    verdicts.extend(judge(&runs, &datasets, "-tuned"));
    let res = CilResults {
        engram_bench_cil: 1,
        command: o.command.clone(),
        quick: o.quick,
        seeds,
        settings: st,
        tuning,
        wall_s: start.elapsed().as_secs_f64(),
        summary,
        verdicts,
        failed,
        runs,
    };
    let html = page::render(&res);
    let wrote = crate::machine::commit_report(&out, &res, &html)?;
    progress(Progress::Output(render_text(&res) + &wrote));
    Ok(res)
}

fn summarize(runs: &[Run], datasets: &[String], arms: &[&Arm]) -> Vec<ArmSummary> {
    let mut out = Vec::new();
    for d in datasets {
        for (arm, _, _, what) in arms {
            let rs: Vec<&Run> = runs
                .iter()
                .filter(|r| &r.data == d && r.arm == *arm)
                .collect();
            if rs.is_empty() {
                continue;
            }
            let col =
                |f: &dyn Fn(&Run) -> f64| spread(&rs.iter().map(|r| f(r)).collect::<Vec<_>>());
            let t = rs[0].stages.len();
            out.push(ArmSummary {
                data: d.clone(),
                arm: arm.to_string(),
                what: what.to_string(),
                seeds: rs.len(),
                stages: (0..t).map(|k| col(&|r| r.stages[k])).collect(),
                aia: col(&|r| r.aia),
                last: col(&|r| r.last),
                forgetting: col(&|r| r.forgetting),
                state_bytes: rs.iter().map(|r| r.state_bytes).max().unwrap_or(0),
            });
        }
    }
    out
}

/// Paired per-seed differences `f(a) − f(b)` on data set `d` (seeds both arms ran).
fn paired(runs: &[Run], d: &str, a: &str, b: &str, f: fn(&Run) -> f64) -> Vec<f64> {
    let of = |arm: &str, seed: u64| {
        runs.iter()
            .find(|r| r.data == d && r.arm == arm && r.seed == seed)
    };
    runs.iter()
        .filter(|r| r.data == d && r.arm == a)
        .filter_map(|ra| of(b, ra.seed).map(|rb| f(ra) - f(rb)))
        .collect()
}

/// The card's claim, per data set, on the arms named with `suffix` (`""`: the papers'
/// hyperparameters; `"-tuned"`: chosen on validation).
fn judge(runs: &[Run], datasets: &[String], suffix: &str) -> Vec<Verdict> {
    let mut out = Vec::new();
    let fmt = |v: &[f64]| {
        let m = spread(v);
        format!("{:+.2} ± {:.2} ({} seeds)", m.mean, m.sd, v.len())
    };
    // PASS-style has no CVs: the schedule arms compare with its default arm.
    let pass_suffix = if suffix == "-sched" { "" } else { suffix };
    let (napa, pass, random) = (
        format!("napa-vq{suffix}"),
        format!("pass{pass_suffix}"),
        format!("napa-vq-random{suffix}"),
    );
    let at = match suffix {
        "" => " (the papers' hyperparameters)".to_string(),
        s => format!(" ({} arms)", s.trim_start_matches('-')),
    };
    for d in datasets {
        let gain = paired(runs, d, &napa, &pass, |r| r.aia);
        let forg = paired(runs, d, &napa, &pass, |r| r.forgetting);
        if !gain.is_empty() {
            let m = spread(&gain).mean;
            out.push(Verdict {
                data: d.clone(),
                claim: format!("NAPA-VQ beats PASS-style by ≥ 2 points of AIA, every seed{at}"),
                measured: format!("AIA NAPA-VQ − PASS {}", fmt(&gain)),
                holds: m >= 2.0 && gain.iter().all(|&g| g > 0.0),
                differences: gain.clone(),
            });
            out.push(Verdict {
                data: d.clone(),
                claim: format!("NAPA-VQ forgets less than PASS-style, every seed{at}"),
                measured: format!("forgetting NAPA-VQ − PASS {}", fmt(&forg)),
                holds: !forg.is_empty() && forg.iter().all(|&g| g < 0.0),
                differences: forg,
            });
        }
        let abl = paired(runs, d, &napa, &random, |r| r.aia);
        if !abl.is_empty() {
            let g = spread(&gain).mean;
            let a = spread(&abl).mean;
            out.push(Verdict {
                data: d.clone(),
                claim: format!(
                    "random neighbours lose part of NAPA-VQ's gain over PASS-style, every seed{at}"
                ),
                measured: format!(
                    "AIA NAPA-VQ − NAPA-VQ random {} (of a gain of {g:+.2})",
                    fmt(&abl)
                ),
                holds: g > 0.0 && a > 0.0 && abl.iter().all(|&v| v > 0.0),
                differences: abl,
            });
        }
    }
    out
}

pub fn render_text(r: &CilResults) -> String {
    let mut s = String::new();
    let mut data = String::new();
    for a in &r.summary {
        if a.data != data {
            data = a.data.clone();
            s += &format!(
                "\n{data}: {}+{}x{} classes\n{:<16} {:>14} {:>14} {:>14} {:>10}\n",
                r.settings.base_classes,
                r.settings.increments,
                r.settings.classes_per_increment,
                "arm",
                "AIA",
                "last",
                "forgetting",
                "memory B"
            );
        }
        let f = |m: &Spread| format!("{:.2} ± {:.2}", m.mean, m.sd);
        s += &format!(
            "{:<16} {:>14} {:>14} {:>14} {:>10}\n",
            a.arm,
            f(&a.aia),
            f(&a.last),
            f(&a.forgetting),
            a.state_bytes
        );
    }
    s += "\nThe card's claim (NAPA-VQ):\n";
    for v in &r.verdicts {
        s += &format!(
            "  [{}] {}: {}: {}\n",
            if v.holds { "holds" } else { "does not hold" },
            v.data,
            v.claim,
            v.measured
        );
    }
    if !r.failed.is_empty() {
        s += &format!("{} runs failed (see results.json)\n", r.failed.len());
    }
    s += &format!("{} runs in {}\n", r.runs.len(), fmt_s(r.wall_s));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stage accuracy weighs each task's accuracy by its test images; AIA averages stages;
    /// forgetting is the best earlier accuracy minus the last, over the earlier tasks.
    #[test]
    fn measures_weigh_tasks_by_their_test_images() {
        let a = vec![
            vec![90.0, 0.0, 0.0],
            vec![60.0, 80.0, 0.0],
            vec![30.0, 50.0, 100.0],
        ];
        let (stages, aia, last, f) = measures(&a, &[200, 100, 100]);
        assert_eq!(stages[0], 90.0);
        assert!((stages[1] - (60.0 * 2.0 + 80.0) / 3.0).abs() < 1e-9);
        assert!((stages[2] - (30.0 * 2.0 + 50.0 + 100.0) / 4.0).abs() < 1e-9);
        assert!((aia - stages.iter().sum::<f64>() / 3.0).abs() < 1e-9);
        assert_eq!(last, stages[2]);
        assert!((f - ((90.0 - 30.0) + (80.0 - 50.0)) / 2.0).abs() < 1e-9);
    }

    #[test]
    fn every_arm_builds_and_er_matches_the_prototype_bytes() {
        assert_eq!(equal_bytes_buffer(), 13);
        let st = settings(true);
        let tuned: BTreeMap<String, Value> = [
            ("pass".to_string(), json!({"later-lr-factor": 1.0})),
            (
                "napa-vq".to_string(),
                json!({"cv-lr": 0.5, "later-lr-factor": 1.0}),
            ),
        ]
        .into();
        let all = arms(&tuned);
        assert_eq!(all.len(), arms(&BTreeMap::new()).len() + 3);
        let random = all.iter().find(|a| a.0 == "napa-vq-random-tuned").unwrap();
        assert_eq!(
            random.2,
            json!({"random-neighbours": true, "cv-lr": 0.5, "later-lr-factor": 1.0})
        );
        for (strategy, points) in grid() {
            for p in points {
                make_config(&st, "fashion-mnist", strategy, &p, 0, "t").expect(strategy);
            }
        }
        for (label, strategy, params, _) in all {
            let cfg = make_config(&st, "fashion-mnist", strategy, &params, 0, label).expect(label);
            assert_eq!(cfg.strategy.name, strategy);
        }
    }

    /// The verdicts need every seed's paired difference on the claimed side.
    #[test]
    fn verdicts_need_every_seed() {
        let run = |arm: &str, seed, aia, forgetting| Run {
            data: "d".into(),
            arm: arm.into(),
            seed,
            stages: vec![],
            aia,
            last: 0.0,
            forgetting,
            state_bytes: 0,
            seconds: 0.0,
            accuracy: vec![],
        };
        let mut runs = vec![
            run("napa-vq", 0, 70.0, 10.0),
            run("napa-vq", 1, 71.0, 11.0),
            run("pass", 0, 66.0, 15.0),
            run("pass", 1, 68.0, 12.0),
            run("napa-vq-random", 0, 69.0, 0.0),
            run("napa-vq-random", 1, 70.5, 0.0),
        ];
        let v = judge(&runs, &["d".into()], "");
        assert!(v.iter().all(|v| v.holds), "{v:?}");
        assert!(judge(&runs, &["d".into()], "-tuned").is_empty());
        // Seed 1 forgets more with NAPA-VQ than with PASS: no longer every seed.
        runs[3].aia = 70.0;
        runs[1].forgetting = 13.0;
        let v = judge(&runs, &["d".into()], "");
        assert!(!v[1].holds);
        assert!((v[0].differences[1] - 1.0).abs() < 1e-9);
    }
}
