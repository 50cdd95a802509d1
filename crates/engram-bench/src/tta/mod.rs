//! `engram bench tta`: continual test-time adaptation on a long corruption stream (card:
//! /work/shared/methods/test_time.md, CoTTA, "Small-scale experiment in engram").
//!
//! Setup: a BN-CNN (conv 16 → conv 32, each with BatchNorm, 64 hidden units, about 57k
//! parameters) trained for 3 epochs on clean Fashion-MNIST (Adam 1e-3, batch 128; 10 % of the
//! training set held out, on which CoTTA's threshold AP is calibrated: the 5 % quantile of the
//! source's confidence minus 0.05, the authors' rule for a new data set). The stream: FMNIST-C,
//! the 15 corruptions at severity 5 in CoTTA's order, `test-per-class` test images per class
//! per domain (200: 2 000 images, 10 batches of 200), the sequence repeated for 10 rounds.
//! Seeds vary the test subsample, the corruption draws and the image order (one source model).
//!
//! Arms: Source, BN-adapt, TENT (continual), CoTTA, and CoTTA's ablations (no restore, no
//! augmentation averaging, N = 8 augmentations). Negative control: one round of the
//! class-sorted (Dirichlet δ = 0.1) stream for Source, BN-adapt, TENT and CoTTA.
//!
//! Measured: the error of every domain of every round, per run; per-round means; round-1 and
//! last-round means. The card's criteria are judged seed by seed (a claim "holds" when it
//! holds in every seed, which is what "outside the seeds' spread" means here), with the
//! means ± sd beside. Also the source's error on every corruption at every severity (the
//! generator's 15 × 5 grid), with non-monotone severities flagged.
//!
//! Output under `--out`: `results.json` and `report/index.html` (one atomic switch), and
//! `runs/*.json`, one per finished run, read back by a later invocation with the same
//! settings (a long run resumes where it stopped).

pub mod page;
pub mod verdicts;

use crate::Progress;
use anyhow::{Result, anyhow, bail};
use engram_learn::adapt::run::{SourceConfig, make_source};
use engram_learn::adapt::stream::{self, Order, Rendered, StreamConfig};
use engram_learn::adapt::{Source, build};
use engram_learn::data::Split;
use engram_learn::data::corrupt::Corruption;
use engram_learn::model::ModelConfig;
use engram_learn::scenario::Common;
use engram_learn::scenario::corruption::corruption_stream;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Instant;

/// Settings of `engram bench tta`.
#[derive(Clone, Debug)]
pub struct Options {
    pub out: PathBuf,
    /// First seed; seeds `seed .. seed + seeds`.
    pub seed: u64,
    /// Number of seeds (default 3; `quick` 1).
    pub seeds: Option<usize>,
    /// A small, fast version: 2 rounds, 20 test images per class, batch 100, a source trained
    /// 1 epoch on 10 000 images: the pipeline end to end, not the benchmark's numbers.
    pub quick: bool,
    /// Rounds of the 15-corruption sequence (default 10; `quick` 2).
    pub rounds: Option<usize>,
    /// Test images per class per domain (default 200; `quick` 20).
    pub test_per_class: Option<usize>,
    /// Arms to run (default all); names as in the results.
    pub arms: Vec<String>,
    /// Leave out the class-sorted control.
    pub no_control: bool,
    pub data_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            out: "bench-out/tta".into(),
            seed: 0,
            seeds: None,
            quick: false,
            rounds: None,
            test_per_class: None,
            arms: Vec::new(),
            no_control: false,
            data_dir: None,
        }
    }
}

/// One arm: an adapter with its parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Arm {
    pub name: String,
    pub adapter: String,
    pub params: Value,
}

pub fn all_arms() -> Vec<Arm> {
    let arm = |name: &str, adapter: &str, params: Value| Arm {
        name: name.into(),
        adapter: adapter.into(),
        params,
    };
    vec![
        arm("source", "source", json!({})),
        arm("bn-adapt", "bn-adapt", json!({})),
        arm("tent", "tent", json!({})),
        arm("cotta", "cotta", json!({})),
        arm("cotta, no restore", "cotta", json!({"restore": 0.0})),
        arm(
            "cotta, no augmentation averaging",
            "cotta",
            json!({"augment": false}),
        ),
        arm("cotta, N = 8", "cotta", json!({"augmentations": 8})),
    ]
}

/// Arms run only when named in `--arms`: CoTTA with the reference's CIFAR-10 threshold
/// (AP 0.92), under which the augmentation gate opens far more often than under the
/// calibrated one (each open step costs N more teacher passes).
pub fn extra_arms() -> Vec<Arm> {
    vec![Arm {
        name: "cotta, AP 0.92".into(),
        adapter: "cotta".into(),
        params: json!({"ap": 0.92}),
    }]
}

/// The arms of the class-sorted control.
const CONTROL: [&str; 4] = ["source", "bn-adapt", "tent", "cotta"];

/// The settings a run used (recorded; finished runs are reused only under equal settings).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub seeds: Vec<u64>,
    pub dataset: String,
    pub model: ModelConfig,
    pub source: SourceConfig,
    /// Training examples the source sees (a seeded subsample when set).
    pub source_train: Option<usize>,
    pub corruptions: Vec<String>,
    pub severity: u8,
    pub rounds: usize,
    pub control_rounds: usize,
    pub test_per_class: usize,
    pub batch: usize,
    pub dirichlet: f64,
    pub arms: Vec<Arm>,
    pub control: bool,
}

/// One (stream, arm, seed) run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    /// `iid` or `class-sorted`.
    pub stream: String,
    pub arm: String,
    pub seed: u64,
    /// Error (percent) of every domain, in stream order (rounds × corruptions).
    pub errors: Vec<f64>,
    /// Mean error of each round.
    pub round_means: Vec<f64>,
    /// The adapter's own counters (CoTTA: steps and steps whose augmentation gate opened).
    pub stats: Value,
    pub seconds: f64,
}

pub use crate::machine::{Spread, spread};

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ArmSummary {
    pub stream: String,
    pub arm: String,
    pub round1: Spread,
    pub last_round: Spread,
    /// Last round minus round 1, per seed.
    pub rise: Spread,
    pub all_rounds: Spread,
    /// Per-round means over seeds.
    pub round_curve: Vec<f64>,
    /// Per-domain means over seeds, in stream order.
    pub domain_curve: Vec<f64>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub claim: String,
    /// `holds`, `does not hold`, `mixed` (seeds disagree) or `not run`.
    pub verdict: String,
    pub evidence: String,
}

/// The source's error on every corruption and severity.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Grid {
    pub clean_error: f64,
    pub corruptions: Vec<String>,
    /// errors[c][s − 1], percent.
    pub errors: Vec<Vec<f64>>,
    /// Corruptions whose error is not non-decreasing in severity.
    pub non_monotone: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TtaResults {
    pub settings: Settings,
    pub source_clean_accuracy: Option<f64>,
    pub confidence_q05: Option<f64>,
    pub ap: Option<f64>,
    pub source_seconds: f64,
    pub grid: Grid,
    pub runs: Vec<RunResult>,
    pub summary: Vec<ArmSummary>,
    pub verdicts: Vec<Verdict>,
    pub seconds: f64,
}

pub const MAX_SEEDS: usize = 100;
pub const MAX_ROUNDS: usize = 100;

fn settings(o: &Options) -> Result<Settings> {
    let seeds = o.seeds.unwrap_or(if o.quick { 1 } else { 3 });
    if seeds == 0 || seeds > MAX_SEEDS {
        bail!("--seeds {seeds}: must be 1 to {MAX_SEEDS}");
    }
    let rounds = o.rounds.unwrap_or(if o.quick { 2 } else { 10 });
    if rounds == 0 || rounds > MAX_ROUNDS {
        bail!("--rounds {rounds}: must be 1 to {MAX_ROUNDS}");
    }
    let test_per_class = o.test_per_class.unwrap_or(if o.quick { 20 } else { 200 });
    if test_per_class == 0 || test_per_class > 1000 {
        bail!(
            "--test-per-class {test_per_class}: must be 1 to 1000 (Fashion-MNIST has 1000 test \
             images per class)"
        );
    }
    let all: Vec<Arm> = all_arms().into_iter().chain(extra_arms()).collect();
    let arms = if o.arms.is_empty() {
        all_arms()
    } else {
        let mut v = Vec::new();
        let names: Vec<&str> = o.arms.iter().map(|a| a.trim()).collect();
        for (i, name) in names.iter().enumerate() {
            let Some(a) = all.iter().find(|a| a.name == *name) else {
                bail!(
                    "--arms: unknown arm `{name}` (known, separated by `;`: {})",
                    all.iter()
                        .map(|a| a.name.as_str())
                        .collect::<Vec<_>>()
                        .join("; ")
                );
            };
            if names[..i].contains(name) {
                bail!("--arms: `{name}` is given twice");
            }
            v.push(a.clone());
        }
        v
    };
    let seeds = (0..seeds as u64)
        .map(|i| {
            o.seed
                .checked_add(i)
                .ok_or_else(|| anyhow!("--seed: too large"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Settings {
        seeds,
        dataset: "fashion-mnist".into(),
        model: ModelConfig::BnCnn {
            channels: [16, 32],
            hidden: 64,
        },
        source: SourceConfig {
            epochs: if o.quick { 1 } else { 3 },
            ..SourceConfig::default()
        },
        source_train: o.quick.then_some(10_000),
        corruptions: Corruption::STREAM
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        severity: 5,
        rounds,
        control_rounds: 1,
        test_per_class,
        batch: if o.quick { 100 } else { 200 },
        dirichlet: 0.1,
        arms,
        control: !o.no_control,
    })
}

fn round_means(errors: &[f64], per_round: usize) -> Vec<f64> {
    errors
        .chunks(per_round.max(1))
        .map(|r| r.iter().sum::<f64>() / r.len().max(1) as f64)
        .collect()
}

/// The stream of `rounds` rounds for `seed`, rendered.
fn rendered(
    st: &Settings,
    data: &Split,
    seed: u64,
    severity: u8,
    rounds: usize,
) -> Result<Rendered> {
    let list: Vec<Corruption> = st
        .corruptions
        .iter()
        .map(|n| Corruption::from_name(n).ok_or_else(|| anyhow!("unknown corruption {n}")))
        .collect::<Result<_>>()?;
    let common = Common {
        seed,
        train_per_task: Some(1),
        test_per_class: Some(st.test_per_class),
    };
    let s = corruption_stream(data.clone(), &list, severity, rounds, &common)?;
    Ok(stream::render(&s))
}

#[allow(clippy::too_many_arguments)]
fn one_run(
    st: &Settings,
    r: &Rendered,
    source: &Source,
    arm: &Arm,
    seed: u64,
    order: Order,
    per_round: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunResult> {
    let t0 = Instant::now();
    let mut adapter = build(&arm.adapter, &arm.params)?;
    let cfg = StreamConfig {
        batch: st.batch,
        order,
        dirichlet: st.dirichlet,
        seed,
    };
    let label = order.name();
    let per_domain = r.y.first().map_or(0, |y| y.len().div_ceil(st.batch)) as u64;
    let total = per_domain * r.len() as u64;
    progress(Progress::Start {
        label: format!("{label}, {}, seed {seed}", arm.name),
        total,
    });
    let mut src = source.clone();
    src.seed = seed;
    let errors = stream::run(r, &src, adapter.as_mut(), &cfg, &mut |t, b, _| {
        progress(Progress::Advance {
            pos: t as u64 * per_domain + b as u64,
            total,
        })
    })?;
    progress(Progress::Finish);
    Ok(RunResult {
        stream: label.into(),
        arm: arm.name.clone(),
        seed,
        round_means: round_means(&errors, per_round),
        errors,
        stats: adapter.stats(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn summarize(runs: &[RunResult], stream: &str, arm: &str) -> Option<ArmSummary> {
    let rs: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.stream == stream && r.arm == arm)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let f = |g: &dyn Fn(&RunResult) -> f64| spread(&rs.iter().map(|r| g(r)).collect::<Vec<_>>());
    let first = |r: &RunResult| r.round_means.first().copied().unwrap_or(f64::NAN);
    let last = |r: &RunResult| r.round_means.last().copied().unwrap_or(f64::NAN);
    let mean_of = |len: usize, g: &dyn Fn(&RunResult) -> &[f64]| -> Vec<f64> {
        (0..len)
            .map(|i| rs.iter().map(|r| g(r)[i]).sum::<f64>() / rs.len() as f64)
            .collect()
    };
    Some(ArmSummary {
        stream: stream.into(),
        arm: arm.into(),
        round1: f(&first),
        last_round: f(&last),
        rise: f(&|r| last(r) - first(r)),
        all_rounds: f(&|r| r.errors.iter().sum::<f64>() / r.errors.len().max(1) as f64),
        round_curve: mean_of(rs[0].round_means.len(), &|r| &r.round_means),
        domain_curve: mean_of(rs[0].errors.len(), &|r| &r.errors),
    })
}

pub(crate) fn fmt(s: &Spread) -> String {
    format!("{:.1} ± {:.1}", s.mean, s.sd)
}

/// The source's error on every corruption at every severity (seed `seed`'s subsample).
fn grid(
    st: &Settings,
    data: &Split,
    source: &Source,
    seed: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<Grid> {
    let mut errors = vec![Vec::new(); st.corruptions.len()];
    progress(Progress::Start {
        label: "source error per corruption and severity".into(),
        total: 5,
    });
    let cfg = StreamConfig {
        batch: st.batch,
        seed,
        ..StreamConfig::default()
    };
    for sev in 1..=5u8 {
        let r = rendered(st, data, seed, sev, 1)?;
        let mut a = build("source", &Value::Null)?;
        let e = stream::run(&r, source, a.as_mut(), &cfg, &mut |_, _, _| {})?;
        for (c, v) in e.into_iter().enumerate() {
            errors[c].push(v);
        }
        progress(Progress::Advance {
            pos: sev as u64,
            total: 5,
        });
    }
    progress(Progress::Finish);
    let non_monotone = st
        .corruptions
        .iter()
        .zip(&errors)
        .filter(|(_, e)| e.windows(2).any(|w| w[1] < w[0]))
        .map(|(n, _)| n.clone())
        .collect();
    Ok(Grid {
        clean_error: f64::NAN,
        corruptions: st.corruptions.clone(),
        errors,
        non_monotone,
    })
}

fn run_file(o: &Options, stream: &str, arm: &str, seed: u64) -> PathBuf {
    let slug: String = arm
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    o.out
        .join("runs")
        .join(format!("{stream}-{slug}-seed{seed}.json"))
}

/// How the class-sorted order is drawn, recorded in its runs' keys (RoTTA's chunks since
/// issue 17's review; runs of an earlier order are not read back).
const CLASS_SORTED: &str = "rotta-label-dirichlet";

/// What a run's result depends on: the settings that shape the source, the stream and the
/// arm, the stream order, the seed. A finished run is read back when its key is equal, so
/// adding seeds or arms reuses the runs already made.
fn run_key(st: &Settings, order: Order, arm: &Arm, seed: u64) -> Value {
    let mut k = json!({
        "stream": order.name(),
        "seed": seed,
        "arm": arm,
        "source_seed": st.seeds[0],
        "dataset": st.dataset,
        "model": st.model,
        "source": st.source,
        "source_train": st.source_train,
        "corruptions": st.corruptions,
        "severity": st.severity,
        "test_per_class": st.test_per_class,
        "batch": st.batch,
    });
    match order {
        Order::Iid => k["rounds"] = st.rounds.into(),
        Order::ClassSorted => {
            k["rounds"] = st.control_rounds.into();
            k["dirichlet"] = st.dirichlet.into();
            k["order"] = CLASS_SORTED.into();
        }
    }
    k
}

/// Reads back a finished run whose key is `key` (files written before keys existed hold the
/// whole settings: their iid runs are read back when the key made from them is equal).
fn finished(
    path: &std::path::Path,
    key: &Value,
    domains: usize,
    per_round: usize,
) -> Option<RunResult> {
    // Only a plain file is opened (a FIFO would block), and only a run file's size is read.
    let meta = std::fs::symlink_metadata(path).ok()?;
    if !meta.is_file() || meta.len() > 1 << 24 {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let mut run: RunResult = serde_json::from_value(v.get("run")?.clone()).ok()?;
    if !run.errors.iter().all(|e| (0.0..=100.0).contains(e)) {
        return None;
    }
    // The round means are recomputed, never taken from the file.
    run.round_means = round_means(&run.errors, per_round);
    let stored = match (v.get("key"), v.get("settings")) {
        (Some(k), _) => k.clone(),
        (None, Some(old)) if run.stream == "iid" => {
            let old: Settings = serde_json::from_value(old.clone()).ok()?;
            let arm = old.arms.iter().find(|a| a.name == run.arm)?;
            run_key(&old, Order::Iid, arm, run.seed)
        }
        _ => return None,
    };
    let same = stored == *key
        && Some(run.stream.as_str()) == key["stream"].as_str()
        && Some(run.seed) == key["seed"].as_u64()
        && Some(run.arm.as_str()) == key["arm"]["name"].as_str()
        && run.errors.len() == domains;
    same.then_some(run)
}

/// Runs the benchmark; writes `results.json` and `report/index.html` under `o.out`.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let t0 = Instant::now();
    let st = settings(o)?;
    crate::machine::check_out_dir(&o.out, "--out")?;
    crate::machine::check_out_dir(&o.out.join("runs"), "--out")?;
    for f in ["results.json", "report/index.html"] {
        crate::machine::check_json_out(&o.out.join(f), "--out")?;
    }
    progress(Progress::Message("loading fashion-mnist".into()));
    let data = engram_learn::data::fashion_mnist::load(o.data_dir.as_deref())?;
    // The source trains on the clean training set (a seeded subsample in --quick).
    let mut train_data = data.clone();
    if let Some(n) = st.source_train {
        let mut keep: Vec<usize> = (0..data.train.len()).collect();
        engram_weights::rng::Rng::keyed(st.seeds[0], "tta-source-subsample", 0).shuffle(&mut keep);
        keep.truncate(n);
        keep.sort_unstable();
        train_data.train = data.train.subset(&keep);
    }
    progress(Progress::Start {
        label: format!("training the source ({} epochs)", st.source.epochs),
        total: 0,
    });
    let trained = make_source(&st.model, &st.source, &train_data, st.seeds[0], &mut |_| {})
        .map_err(|e| anyhow!("{e}"))?;
    progress(Progress::Finish);
    let source = trained.source;
    let ap = source.confidence_q05.map(|q| q - 0.05);
    progress(Progress::Message(format!(
        "source: clean test accuracy {:.1} %, 5 % confidence quantile {:.3} (AP {:.3}), {:.0} s",
        trained.clean_accuracy.unwrap_or(f64::NAN),
        source.confidence_q05.unwrap_or(f64::NAN),
        ap.unwrap_or(f64::NAN),
        trained.seconds
    )));
    let mut grid = grid(&st, &data, &source, st.seeds[0], progress)?;
    grid.clean_error = 100.0 - trained.clean_accuracy.unwrap_or(f64::NAN);
    let per_round = st.corruptions.len();
    let mut runs = Vec::new();
    let mut plan: Vec<(Order, usize, Vec<Arm>)> = vec![(Order::Iid, st.rounds, st.arms.clone())];
    if st.control {
        let arms: Vec<Arm> = st
            .arms
            .iter()
            .filter(|a| CONTROL.contains(&a.name.as_str()))
            .cloned()
            .collect();
        plan.push((Order::ClassSorted, st.control_rounds, arms));
    }
    for &seed in &st.seeds {
        for (order, rounds, arms) in &plan {
            let r = rendered(&st, &data, seed, st.severity, *rounds)?;
            for arm in arms {
                let name = order.name();
                let file = run_file(o, name, &arm.name, seed);
                let key = run_key(&st, *order, arm, seed);
                if let Some(done) = finished(&file, &key, r.len(), per_round) {
                    progress(Progress::Message(format!(
                        "{name}, {}, seed {seed}: read back from {}",
                        arm.name,
                        file.display()
                    )));
                    runs.push(done);
                    continue;
                }
                let res = one_run(&st, &r, &source, arm, seed, *order, per_round, progress)?;
                progress(Progress::Message(format!(
                    "{name}, {}, seed {seed}: round 1 {:.1} %, last round {:.1} % ({:.0} s)",
                    arm.name,
                    res.round_means.first().copied().unwrap_or(f64::NAN),
                    res.round_means.last().copied().unwrap_or(f64::NAN),
                    res.seconds
                )));
                crate::machine::write_json(&file, &json!({"key": key, "run": &res}))?;
                runs.push(res);
            }
        }
    }
    let mut summary = Vec::new();
    for (order, _, arms) in &plan {
        let name = order.name();
        summary.extend(arms.iter().filter_map(|a| summarize(&runs, name, &a.name)));
    }
    let verdicts = verdicts::verdicts(&runs, &st.seeds, st.rounds);
    let results = TtaResults {
        settings: st,
        source_clean_accuracy: trained.clean_accuracy,
        confidence_q05: source.confidence_q05,
        ap,
        source_seconds: trained.seconds,
        grid,
        runs,
        summary,
        verdicts,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let where_ = crate::machine::commit_report(&o.out, &results, &page::render(&results))?;
    progress(Progress::Output(format!(
        "{}{where_}",
        page::text(&results)
    )));
    Ok(serde_json::to_value(&results)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked() {
        let bad = |o: Options| {
            settings(&o)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(
            bad(Options {
                seeds: Some(0),
                ..Options::default()
            })
            .contains("--seeds")
        );
        assert!(
            bad(Options {
                rounds: Some(0),
                ..Options::default()
            })
            .contains("--rounds")
        );
        assert!(
            bad(Options {
                test_per_class: Some(5000),
                ..Options::default()
            })
            .contains("--test-per-class")
        );
        assert!(
            bad(Options {
                arms: vec!["cota".into()],
                ..Options::default()
            })
            .contains("cota")
        );
        assert!(
            bad(Options {
                arms: vec!["tent".into(), "tent".into()],
                ..Options::default()
            })
            .contains("twice")
        );
        let s = settings(&Options::default()).expect("defaults");
        assert_eq!(
            (s.rounds, s.seeds.len(), s.arms.len(), s.batch),
            (10, 3, 7, 200)
        );
        assert_eq!(s.corruptions.len(), 15);
    }

    #[test]
    fn finished_runs_are_read_back_only_under_their_key() {
        let d = tempfile::tempdir().expect("tempdir");
        let st = settings(&Options::default()).expect("defaults");
        let arm = &st.arms[2];
        let res = RunResult {
            stream: "iid".into(),
            arm: arm.name.clone(),
            seed: 1,
            errors: vec![1.0; 150],
            round_means: vec![1.0; 10],
            stats: Value::Null,
            seconds: 1.0,
        };
        let key = run_key(&st, Order::Iid, arm, 1);
        let f = d.path().join("r.json");
        crate::machine::write_json(&f, &json!({"key": key, "run": &res})).expect("write");
        assert!(finished(&f, &key, 150, 15).is_some());
        // Another seed, another arm, fewer domains, other settings: run again.
        assert!(finished(&f, &run_key(&st, Order::Iid, arm, 2), 150, 15).is_none());
        assert!(finished(&f, &run_key(&st, Order::Iid, &st.arms[3], 1), 150, 15).is_none());
        assert!(finished(&f, &key, 15, 15).is_none());
        let more = Settings {
            rounds: 11,
            ..st.clone()
        };
        assert!(finished(&f, &run_key(&more, Order::Iid, arm, 1), 150, 15).is_none());
        // More seeds or arms leave the key alone.
        let wider = Settings {
            seeds: vec![0, 1, 2, 3],
            arms: all_arms().into_iter().chain(extra_arms()).collect(),
            ..st.clone()
        };
        assert_eq!(run_key(&wider, Order::Iid, arm, 1), key);
        // An old file holding the whole settings: its iid runs are read back.
        crate::machine::write_json(&f, &json!({"settings": &st, "run": &res})).expect("write");
        assert!(finished(&f, &key, 150, 15).is_some());
        // Errors out of range are not read back; round means are recomputed.
        let mut bad = res.clone();
        bad.errors[3] = -1e308;
        crate::machine::write_json(&f, &json!({"key": key, "run": &bad})).expect("write");
        assert!(finished(&f, &key, 150, 15).is_none());
        let mut lying = res.clone();
        lying.round_means = vec![99.0; 10];
        crate::machine::write_json(&f, &json!({"key": key, "run": &lying})).expect("write");
        assert_eq!(
            finished(&f, &key, 150, 15).map(|r| r.round_means),
            Some(vec![1.0; 10])
        );
        crate::machine::write_json(&f, &json!({"settings": &st, "run": &res})).expect("write");
        let cs = RunResult {
            stream: "class-sorted".into(),
            ..res
        };
        crate::machine::write_json(&f, &json!({"settings": &st, "run": &cs})).expect("write");
        assert!(finished(&f, &run_key(&st, Order::ClassSorted, arm, 1), 150, 15).is_none());
        // Not a plain file: not opened.
        let dir = d.path().join("dir.json");
        std::fs::create_dir(&dir).expect("mkdir");
        assert!(finished(&dir, &key, 150, 15).is_none());
    }

    #[test]
    fn round_means_average_each_round() {
        assert_eq!(round_means(&[1.0, 3.0, 5.0, 7.0], 2), vec![2.0, 6.0]);
    }
}
