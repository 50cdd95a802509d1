//! `engram study scole`: knowledge accumulation over a long stream of recurring classes
//! (SCoLe; card: /work/shared/methods/theory.md, "SCoLe", small-scale experiment).
//!
//! Setup (the card's, at a budget two CPU cores run in about ten minutes: T = 500, 512
//! training examples per task, 100 test examples per class, 3 seeds, both data sets, 5 arms,
//! about 15 s a run; `--quick`: T = 40, 128 examples, 2 seeds, Fashion-MNIST, seconds): a SCoLe
//! stream of T tasks of K = 2 classes drawn uniformly (classes recur), each task a seeded
//! subsample of `train_per_task` training examples of its two classes (a recurring class
//! brings other examples), 1 epoch per task, batch 64, SGD lr 0.01, gradient-norm clipping at
//! 10, an MLP 784-256-256-C. After every task the test set of **every** class is evaluated
//! (`test_per_class` examples per class; classes not yet drawn included).
//!
//! Arms, each on the same stream and the same initial hidden layers per (data set, seed):
//! masking `none` vs `group` (the loss over the batch's classes, `train.masking`) × head
//! `linear` vs `weightnorm` (`model.head`), momentum 0; and momentum 0.9 for the plain arm
//! (none, linear). Nothing is tuned: every setting is the card's, so no validation split is
//! needed; the budget (T, examples per task, test examples) is the only choice made here.
//!
//! Measured per run: the all-class accuracy curve over t; "early" (mean over tasks
//! (T/10, T/5]) and "final" (mean over the last T/10 tasks) all-class accuracy; the
//! least-squares slope of the all-class accuracy against log10(t) from t = 10 on (points per
//! decade); per-class accuracy at log-spaced tasks with the number of times each class was
//! drawn; and the accuracy on classes not drawn yet, while there are any. The per-class
//! accuracies are measured by the study itself after each recorded task and checked against
//! the trainer's all-class accuracy (they must average to it).
//!
//! Claims judged (card, "Expected"): (1) the all-class curve rises (final > early, every
//! seed); (2) it rises more steeply with group masking (slope with group > without, every
//! seed, per head); and, reported beside it, whether group masking ends higher (final
//! accuracy, paired by seed). Output under `--out`: `results.json`, `report/index.html`, committed
//! together (one [`engram_ckpt::Staged`] switch).

pub mod page;

use crate::Progress;
use anyhow::{Result, anyhow, bail};
use engram_learn::data::{Split, fashion_mnist, mnist_digits};
use engram_learn::eval::logits_of;
use engram_learn::metrics::{ClassMask, masked_predictions};
use engram_learn::model::{Head, ModelConfig, Net};
use engram_learn::optim::{OptimConfig, OptimKind};
use engram_learn::scenario::config::MAX_TASKS;
use engram_learn::scenario::scole::{ScoleConfig, scole};
use engram_learn::scenario::{Common, Part, Scenario};
use engram_learn::strategy::{Ctx, Strategy};
use engram_learn::train::{Event, Masking, TrainConfig, Trainer};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Settings of `engram study scole`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Output folder: results.json and report/index.html.
    pub out: PathBuf,
    /// First seed; seeds `seed .. seed + seeds` (each seeds the stream, the subsamples, the
    /// initial weights and the batch order).
    pub seed: u64,
    /// Number of seeds (default 3; `quick` 2).
    pub seeds: Option<usize>,
    /// A small, fast version (T = 40, 128 examples per task, 30 test examples per class,
    /// Fashion-MNIST only): the pipeline end to end, not the study's numbers.
    pub quick: bool,
    /// Tasks in the stream (default 500, the card's T; `quick` 40).
    pub tasks: Option<usize>,
    /// Training examples per task (default 512; `quick` 128).
    pub train_per_task: Option<usize>,
    /// Test examples per class (default 100; `quick` 30).
    pub test_per_class: Option<usize>,
    /// Data sets: `fashion-mnist`, `mnist` (default both; `quick` fashion-mnist).
    pub datasets: Vec<String>,
    /// Leave out the momentum-0.9 arm.
    pub no_momentum: bool,
    /// Where the data sets are (default: the system packages' locations).
    pub data_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            out: "bench-out/scole".into(),
            seed: 0,
            seeds: None,
            quick: false,
            tasks: None,
            train_per_task: None,
            test_per_class: None,
            datasets: Vec::new(),
            no_momentum: false,
            data_dir: None,
        }
    }
}

/// The settings a run used (recorded in results.json).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub seeds: Vec<u64>,
    pub datasets: Vec<String>,
    pub tasks: usize,
    pub classes_per_task: usize,
    pub train_per_task: usize,
    pub test_per_class: usize,
    pub hidden: Vec<usize>,
    pub batch_size: usize,
    pub lr: f64,
    pub clip_grad_norm: f64,
    pub epochs_per_task: usize,
}

/// One arm: a training configuration compared across seeds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Arm {
    pub name: String,
    pub masking: Masking,
    pub head: Head,
    pub momentum: f64,
}

pub fn arms(momentum: bool) -> Vec<Arm> {
    let arm = |masking, head, momentum: f64| {
        let m = match masking {
            Masking::None => "none",
            Masking::Group => "group",
        };
        let h = match head {
            Head::Linear => "linear",
            Head::WeightNorm => "weightnorm",
        };
        let mut name = format!("masking {m}, {h} head");
        if momentum != 0.0 {
            name.push_str(&format!(", momentum {momentum}"));
        }
        Arm {
            name,
            masking,
            head,
            momentum,
        }
    };
    let mut v = vec![
        arm(Masking::None, Head::Linear, 0.0),
        arm(Masking::Group, Head::Linear, 0.0),
        arm(Masking::None, Head::WeightNorm, 0.0),
        arm(Masking::Group, Head::WeightNorm, 0.0),
    ];
    if momentum {
        v.push(arm(Masking::None, Head::Linear, 0.9));
    }
    v
}

/// One (data set, arm, seed) run.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    pub dataset: String,
    pub arm: String,
    pub seed: u64,
    /// All-class test accuracy (percent) after each task t = 1..T.
    pub all_class_curve: Vec<f64>,
    /// Accuracy on the current task's two classes (all logits) after each task.
    pub current_task_curve: Vec<f64>,
    pub early: f64,
    pub final_acc: f64,
    /// Least-squares slope of the all-class accuracy against log10(t), t ≥ 10 (points per
    /// decade).
    pub slope_per_decade: f64,
    /// Per recorded task t (1-based): the accuracy of each class and how often it had been
    /// drawn by then.
    pub per_class: Vec<PerClass>,
    /// Mean accuracy on the classes not drawn yet, over the tasks where there were any
    /// (`None`: every class was drawn in the first task).
    pub not_yet_drawn_acc: Option<f64>,
    /// Tasks until every class had been drawn.
    pub tasks_to_cover: Option<usize>,
    pub seconds: f64,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct PerClass {
    pub t: usize,
    pub accuracy: Vec<f64>,
    pub draws: Vec<usize>,
}

pub use crate::machine::{Spread, spread};

/// An arm's summary over seeds on one data set.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ArmSummary {
    pub dataset: String,
    pub arm: String,
    pub early: Spread,
    pub final_acc: Spread,
    pub slope_per_decade: Spread,
    pub not_yet_drawn_acc: Option<Spread>,
    /// The curve's mean over seeds, task by task.
    pub mean_curve: Vec<f64>,
    /// Mean per-class accuracy by how often the class had been drawn (bins 1, 2, 3–4, 5–8,
    /// ...), pooled over recorded tasks, classes and seeds: (bin's lower bound, accuracy, n).
    pub by_draws: Vec<(usize, f64, usize)>,
}

/// A claim of the card and what the numbers say.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    pub claim: String,
    pub dataset: String,
    /// `holds`, `does not hold` or `mixed` (seeds disagree).
    pub verdict: String,
    pub evidence: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ScoleResults {
    pub settings: Settings,
    pub arms: Vec<Arm>,
    pub runs: Vec<RunResult>,
    pub summary: Vec<ArmSummary>,
    pub verdicts: Vec<Verdict>,
    pub seconds: f64,
}

/// Most seeds a study runs (each seed is five runs per data set).
pub const MAX_SEEDS: usize = 100;

/// Most training examples per task before the data are read: the size of either data set's
/// training set (the data's own limit, two classes' examples, is checked once loaded).
pub const MAX_TRAIN_PER_TASK: usize = 60_000;

/// Most test examples per class before the data are read: the size of either data set's test
/// set (the data's own limit, the smallest class, is checked once loaded).
pub const MAX_TEST_PER_CLASS: usize = 10_000;

fn settings(o: &Options) -> Result<Settings> {
    let seeds = o.seeds.unwrap_or(if o.quick { 2 } else { 3 });
    if seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    if seeds > MAX_SEEDS {
        bail!("--seeds {seeds} is more than the limit of {MAX_SEEDS}");
    }
    let datasets = if !o.datasets.is_empty() {
        o.datasets.clone()
    } else if o.quick {
        vec!["fashion-mnist".into()]
    } else {
        vec!["fashion-mnist".into(), "mnist".into()]
    };
    for (i, d) in datasets.iter().enumerate() {
        if !["fashion-mnist", "mnist"].contains(&d.as_str()) {
            bail!("--datasets: unknown data set `{d}` (known: fashion-mnist, mnist)");
        }
        if datasets[..i].contains(d) {
            bail!("--datasets: `{d}` is given twice (each data set is studied once)");
        }
    }
    let s = Settings {
        seeds: (0..seeds as u64)
            .map(|i| {
                o.seed
                    .checked_add(i)
                    .ok_or_else(|| anyhow!("--seed: too large"))
            })
            .collect::<Result<_>>()?,
        datasets,
        tasks: o.tasks.unwrap_or(if o.quick { 40 } else { 500 }),
        classes_per_task: 2,
        train_per_task: o.train_per_task.unwrap_or(if o.quick { 128 } else { 512 }),
        test_per_class: o.test_per_class.unwrap_or(if o.quick { 30 } else { 100 }),
        hidden: vec![256, 256],
        batch_size: 64,
        lr: 0.01,
        clip_grad_norm: 10.0,
        epochs_per_task: 1,
    };
    if s.tasks < 20 {
        bail!("--tasks must be at least 20 (the early window is tasks T/10..T/5)");
    }
    if s.tasks > MAX_TASKS {
        bail!("--tasks {} is more than the limit of {MAX_TASKS}", s.tasks);
    }
    if s.train_per_task == 0 {
        bail!("--train-per-task must be at least 1");
    }
    if s.train_per_task > MAX_TRAIN_PER_TASK {
        bail!(
            "--train-per-task {} is more than the limit of {MAX_TRAIN_PER_TASK} (a whole \
             training set)",
            s.train_per_task
        );
    }
    if s.test_per_class == 0 {
        bail!("--test-per-class must be at least 1");
    }
    if s.test_per_class > MAX_TEST_PER_CLASS {
        bail!(
            "--test-per-class {} is more than the limit of {MAX_TEST_PER_CLASS} (a whole test \
             set)",
            s.test_per_class
        );
    }
    Ok(s)
}

/// Refuses settings the data set `name` cannot hold: more training examples per task than
/// its two smallest classes have together (a task of those two would be capped), or more
/// test examples per class than its smallest class has.
fn check_data(s: &Settings, name: &str, data: &Split) -> Result<()> {
    let mut train = data.train.class_counts();
    train.sort_unstable();
    let k = s.classes_per_task;
    if train.len() < k {
        bail!("{name}: {} classes, tasks need {k}", data.train.num_classes);
    }
    let fewest: usize = train[..k].iter().sum();
    if s.train_per_task > fewest {
        bail!(
            "--train-per-task {} is more than {name} holds for a task of its {k} smallest \
             classes ({fewest} training examples); at most {fewest}",
            s.train_per_task
        );
    }
    let test = data.test.class_counts();
    if let Some((c, &n)) = test.iter().enumerate().min_by_key(|&(_, n)| *n)
        && s.test_per_class > n
    {
        bail!(
            "--test-per-class {} is more than {name} holds for class {c} ({n} test \
             examples); at most {n}",
            s.test_per_class
        );
    }
    Ok(())
}

fn train_config(s: &Settings, arm: &Arm) -> TrainConfig {
    TrainConfig {
        epochs: s.epochs_per_task,
        batch_size: s.batch_size,
        optimizer: OptimConfig {
            momentum: arm.momentum,
            clip_grad_norm: Some(s.clip_grad_norm),
            ..OptimConfig::new(OptimKind::Sgd, s.lr)
        },
        masking: arm.masking,
        ..TrainConfig::default()
    }
}

/// Tasks (0-based) after which per-class accuracies are recorded: every task while some
/// class is not drawn yet, then about 12 per decade, and the last.
fn record_at(s: &Scenario) -> Vec<bool> {
    let t_all = s.tasks.len();
    let cover = (0..t_all).find(|&t| s.class_draws(t).iter().all(|&n| n > 0));
    let mut at = vec![false; t_all];
    for (t, v) in at.iter_mut().enumerate() {
        let one = (t + 1) as f64;
        let grid = (one.log10() * 12.0).round() / 12.0;
        let prev = ((t as f64).max(1.0).log10() * 12.0).round() / 12.0;
        *v = cover.is_none_or(|c| t <= c) || t == 0 || grid > prev || t + 1 == t_all;
    }
    at
}

/// Per-class accuracies (percent) after a task (0-based), in the order recorded.
type ClassLog = Arc<Mutex<Vec<(usize, Vec<f64>)>>>;

/// Naive training that records per-class test accuracies after the chosen tasks (after
/// the trainer's own step, before its evaluation: the network it evaluates).
struct Recorder {
    at: Vec<bool>,
    log: ClassLog,
}

impl Strategy for Recorder {
    fn name(&self) -> &'static str {
        "naive"
    }

    fn after_task(&mut self, cx: &Ctx, net: Net) -> engram_learn::Result<Net> {
        if self.at.get(cx.task).copied().unwrap_or(false) {
            let s = cx.scenario;
            let ids: Vec<(usize, usize)> = s
                .all_classes_test_indices()
                .into_iter()
                .map(|i| (cx.task, i))
                .collect();
            let (lg, lb, c) = logits_of(&net, s, Part::Test, &ids, cx.device, 1000);
            // The argmax over every output, as the trainer's all-class accuracy takes it.
            let preds = masked_predictions(&lg, c, &ClassMask::all(c))
                .map_err(|e| engram_learn::Error::from(e.to_string()))?;
            let mut right = vec![0usize; c];
            let mut total = vec![0usize; c];
            for (&(best, _), &y) in preds.iter().zip(&lb) {
                total[y as usize] += 1;
                right[y as usize] += usize::from(best == y as usize);
            }
            let acc: Vec<f64> = (0..c)
                .map(|k| {
                    if total[k] == 0 {
                        f64::NAN
                    } else {
                        100.0 * right[k] as f64 / total[k] as f64
                    }
                })
                .collect();
            if let Ok(mut l) = self.log.lock() {
                l.push((cx.task, acc));
            }
        }
        Ok(net)
    }
}

fn window_mean(v: &[f64], from: usize, to: usize) -> f64 {
    let w = &v[from.min(v.len())..to.min(v.len())];
    if w.is_empty() {
        return f64::NAN;
    }
    w.iter().sum::<f64>() / w.len() as f64
}

/// Least-squares slope of y against log10(t) for t ≥ 10 (t = index + 1).
pub fn log_slope(curve: &[f64]) -> f64 {
    let pts: Vec<(f64, f64)> = curve
        .iter()
        .enumerate()
        .filter(|(i, _)| i + 1 >= 10)
        .map(|(i, &y)| (((i + 1) as f64).log10(), y))
        .collect();
    let n = pts.len() as f64;
    if pts.len() < 2 {
        return f64::NAN;
    }
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    sxy / sxx
}

fn one_run(
    s: &Scenario,
    st: &Settings,
    arm: &Arm,
    dataset: &str,
    seed: u64,
    progress: &mut dyn FnMut(Progress),
) -> Result<RunResult> {
    let t0 = Instant::now();
    let log = Arc::new(Mutex::new(Vec::new()));
    let strategy = Recorder {
        at: record_at(s),
        log: log.clone(),
    };
    let mut tr = Trainer::new(
        s,
        ModelConfig::mlp(st.hidden.clone(), arm.head),
        train_config(st, arm),
        seed,
        Box::new(strategy),
    );
    let total = s.tasks.len() as u64;
    progress(Progress::Start {
        label: format!("{dataset}, {}, seed {seed}", arm.name),
        total,
    });
    let out = tr.run(&mut |e| {
        if let Event::TaskEnd { task, .. } = e {
            progress(Progress::Advance {
                pos: task as u64 + 1,
                total,
            });
        }
    })?;
    progress(Progress::Finish);
    let curve = out.all_class_curve;
    let t_all = curve.len();
    if t_all != s.tasks.len() {
        bail!("{dataset}: {t_all} accuracies for {} tasks", s.tasks.len());
    }
    let log = log
        .lock()
        .map_err(|_| anyhow!("recorder poisoned"))?
        .clone();
    let c = s.num_outputs;
    let mut per_class = Vec::new();
    let mut not_yet = Vec::new();
    let mut counts = vec![0usize; c];
    for &y in &s.test.y {
        counts[y as usize] += 1;
    }
    for (task, acc) in log {
        let draws = s.class_draws(task);
        // The study's per-class accuracies average (weighted by test counts) to the
        // trainer's all-class accuracy: the trainer evaluated every class.
        let n: usize = counts.iter().sum();
        let pooled: f64 = (0..c)
            .filter(|&k| counts[k] > 0)
            .map(|k| acc[k] * counts[k] as f64)
            .sum::<f64>()
            / n as f64;
        if (pooled - curve[task]).abs() > 1e-6 {
            bail!(
                "{dataset}, {}, seed {seed}, task {task}: per-class accuracies give {pooled}, \
                 the trainer's all-class accuracy is {}",
                arm.name,
                curve[task]
            );
        }
        let undrawn: Vec<usize> = (0..c).filter(|&k| draws[k] == 0 && counts[k] > 0).collect();
        if !undrawn.is_empty() {
            let m: usize = undrawn.iter().map(|&k| counts[k]).sum();
            not_yet.push(
                undrawn
                    .iter()
                    .map(|&k| acc[k] * counts[k] as f64)
                    .sum::<f64>()
                    / m as f64,
            );
        }
        per_class.push(PerClass {
            t: task + 1,
            accuracy: acc,
            draws,
        });
    }
    let tasks_to_cover = (0..t_all)
        .find(|&t| s.class_draws(t).iter().all(|&n| n > 0))
        .map(|t| t + 1);
    Ok(RunResult {
        dataset: dataset.into(),
        arm: arm.name.clone(),
        seed,
        early: window_mean(&curve, t_all / 10, t_all / 5),
        final_acc: window_mean(&curve, t_all - t_all / 10, t_all),
        slope_per_decade: log_slope(&curve),
        all_class_curve: curve,
        current_task_curve: out.current_task_curve,
        per_class,
        not_yet_drawn_acc: (!not_yet.is_empty())
            .then(|| not_yet.iter().sum::<f64>() / not_yet.len() as f64),
        tasks_to_cover,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn summarize(runs: &[RunResult], dataset: &str, arm: &Arm) -> Option<ArmSummary> {
    let rs: Vec<&RunResult> = runs
        .iter()
        .filter(|r| r.dataset == dataset && r.arm == arm.name)
        .collect();
    if rs.is_empty() {
        return None;
    }
    let f = |g: fn(&RunResult) -> f64| spread(&rs.iter().map(|r| g(r)).collect::<Vec<_>>());
    let ny: Vec<f64> = rs.iter().filter_map(|r| r.not_yet_drawn_acc).collect();
    let t = rs[0].all_class_curve.len();
    let mean_curve = (0..t)
        .map(|i| rs.iter().map(|r| r.all_class_curve[i]).sum::<f64>() / rs.len() as f64)
        .collect();
    // Bins of draws: [1], [2], [3, 4], [5, 8], ...
    let mut bins: Vec<(usize, f64, usize)> = Vec::new();
    for r in &rs {
        for p in &r.per_class {
            for (k, &d) in p.draws.iter().enumerate() {
                if d == 0 || !p.accuracy[k].is_finite() {
                    continue;
                }
                let lo = if d <= 2 {
                    d
                } else {
                    (d - 1).next_power_of_two() / 2 + 1
                };
                match bins.iter_mut().find(|b| b.0 == lo) {
                    Some(b) => {
                        b.1 += p.accuracy[k];
                        b.2 += 1;
                    }
                    None => bins.push((lo, p.accuracy[k], 1)),
                }
            }
        }
    }
    bins.sort_by_key(|b| b.0);
    for b in &mut bins {
        b.1 /= b.2 as f64;
    }
    Some(ArmSummary {
        dataset: dataset.into(),
        arm: arm.name.clone(),
        early: f(|r| r.early),
        final_acc: f(|r| r.final_acc),
        slope_per_decade: f(|r| r.slope_per_decade),
        not_yet_drawn_acc: (!ny.is_empty()).then(|| spread(&ny)),
        mean_curve,
        by_draws: bins,
    })
}

fn fmt_spread(s: &Spread) -> String {
    format!("{:.1} ± {:.1} [{:.1}, {:.1}]", s.mean, s.sd, s.min, s.max)
}

/// The card's claims judged per data set from the runs (seed by seed).
fn verdicts(runs: &[RunResult], datasets: &[String], arms: &[Arm]) -> Vec<Verdict> {
    let judge = |n_ok: usize, n: usize| {
        if n_ok == n {
            "holds"
        } else if n_ok == 0 {
            "does not hold"
        } else {
            "mixed"
        }
    };
    let mut out = Vec::new();
    for d in datasets {
        let of = |arm: &str| -> Vec<&RunResult> {
            runs.iter()
                .filter(|r| &r.dataset == d && r.arm == arm)
                .collect()
        };
        // (1) Rising: final > early in every run of every arm.
        let mut ok = 0;
        let mut n = 0;
        let mut lines = Vec::new();
        for a in arms {
            let rs = of(&a.name);
            let up = rs.iter().filter(|r| r.final_acc > r.early).count();
            ok += up;
            n += rs.len();
            lines.push(format!(
                "{}: early {:.1} → final {:.1} ({up}/{} seeds rise)",
                a.name,
                rs.iter().map(|r| r.early).sum::<f64>() / rs.len().max(1) as f64,
                rs.iter().map(|r| r.final_acc).sum::<f64>() / rs.len().max(1) as f64,
                rs.len()
            ));
        }
        out.push(Verdict {
            claim: "the all-class accuracy rises over the stream (final T/10 tasks above tasks \
                    T/10..T/5)"
                .into(),
            dataset: d.clone(),
            verdict: judge(ok, n).into(),
            evidence: format!("{ok}/{n} runs rise. {}", lines.join("; ")),
        });
        // Group minus no masking of `value`, paired by seed, for the momentum-0 arms of `head`.
        let paired = |head: Head, value: fn(&RunResult) -> f64| -> Vec<f64> {
            let pick = |m: Masking| {
                arms.iter()
                    .find(|a| a.masking == m && a.head == head && a.momentum == 0.0)
                    .map(|a| of(&a.name))
                    .unwrap_or_default()
            };
            let (none, group) = (pick(Masking::None), pick(Masking::Group));
            group
                .iter()
                .filter_map(|g| {
                    none.iter()
                        .find(|b| b.seed == g.seed)
                        .map(|b| value(g) - value(b))
                })
                .collect()
        };
        // (2) Steeper with group masking: paired by seed, per head.
        let mut ok = 0;
        let mut n = 0;
        let mut lines = Vec::new();
        for head in [Head::Linear, Head::WeightNorm] {
            let diffs = paired(head, |r| r.slope_per_decade);
            ok += diffs.iter().filter(|&&v| v > 0.0).count();
            n += diffs.len();
            let sp = spread(&diffs);
            lines.push(format!(
                "{head:?} head: slope with group − without = {:+.2} points/decade \
                 (seeds {:+.2} .. {:+.2})",
                sp.mean, sp.min, sp.max
            ));
        }
        let mut ok3 = 0;
        let mut n3 = 0;
        let mut lines3 = Vec::new();
        for head in [Head::Linear, Head::WeightNorm] {
            let diffs = paired(head, |r| r.final_acc);
            ok3 += diffs.iter().filter(|&&v| v > 0.0).count();
            n3 += diffs.len();
            let sp = spread(&diffs);
            lines3.push(format!(
                "{head:?} head: final with group − without = {:+.1} points (seeds {:+.1} .. {:+.1})",
                sp.mean, sp.min, sp.max
            ));
        }
        out.push(Verdict {
            claim: "the curve is steeper with group masking (slope of accuracy against \
                    log10 t, t ≥ 10, paired by seed)"
                .into(),
            dataset: d.clone(),
            verdict: judge(ok, n).into(),
            evidence: format!("{ok}/{n} seed pairs steeper. {}", lines.join("; ")),
        });
        out.push(Verdict {
            claim: "group masking ends higher (final all-class accuracy, paired by seed; \
                    beside the card's claims)"
                .into(),
            dataset: d.clone(),
            verdict: judge(ok3, n3).into(),
            evidence: format!("{ok3}/{n3} seed pairs higher. {}", lines3.join("; ")),
        });
    }
    out
}

fn load(name: &str, dir: Option<&std::path::Path>) -> Result<Split> {
    Ok(match name {
        "fashion-mnist" => fashion_mnist::load(dir)?,
        "mnist" => mnist_digits::load(dir)?,
        other => bail!("unknown data set `{other}`"),
    })
}

/// Runs the study; writes `results.json` and `report/index.html` under `o.out` (one atomic
/// switch) and returns the JSON.
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let t0 = Instant::now();
    let st = settings(o)?;
    ModelConfig::mlp(st.hidden.clone(), Head::WeightNorm)
        .check()
        .map_err(|e| anyhow!("{e}"))?;
    crate::machine::check_out_dir(&o.out, "--out")?;
    for f in ["results.json", "report/index.html"] {
        crate::machine::check_json_out(&o.out.join(f), "--out")?;
    }
    let arms = arms(!o.no_momentum);
    for a in &arms {
        train_config(&st, a)
            .validate()
            .map_err(|e| anyhow!("{e}"))?;
    }
    // Every data set is checked against the settings before the first run.
    for d in &st.datasets {
        progress(Progress::Message(format!("checking {d}")));
        check_data(&st, d, &load(d, o.data_dir.as_deref())?)?;
    }
    let mut runs = Vec::new();
    for d in &st.datasets {
        progress(Progress::Message(format!("loading {d}")));
        let data = load(d, o.data_dir.as_deref())?;
        for &seed in &st.seeds {
            let common = Common {
                seed,
                train_per_task: Some(st.train_per_task),
                test_per_class: Some(st.test_per_class),
            };
            let cfg = ScoleConfig {
                tasks: st.tasks,
                classes_per_task: st.classes_per_task,
                ..ScoleConfig::default()
            };
            let s = scole(data.clone(), &cfg, &common)?;
            for a in &arms {
                let r = one_run(&s, &st, a, d, seed, progress)?;
                progress(Progress::Message(format!(
                    "{d}, {}, seed {seed}: early {:.1}%, final {:.1}%, slope {:+.2}/decade \
                     ({:.0} s)",
                    a.name, r.early, r.final_acc, r.slope_per_decade, r.seconds
                )));
                runs.push(r);
            }
        }
    }
    let summary: Vec<ArmSummary> = st
        .datasets
        .iter()
        .flat_map(|d| arms.iter().filter_map(|a| summarize(&runs, d, a)))
        .collect();
    let verdicts = verdicts(&runs, &st.datasets, &arms);
    let results = ScoleResults {
        settings: st,
        arms,
        runs,
        summary,
        verdicts,
        seconds: t0.elapsed().as_secs_f64(),
    };
    // results.json and the report switch in together.
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
    fn slope_and_windows() {
        // y = 3·log10(t) + 1: slope 3 per decade.
        let c: Vec<f64> = (1..=300).map(|t| 3.0 * (t as f64).log10() + 1.0).collect();
        assert!((log_slope(&c) - 3.0).abs() < 1e-9);
        let flat = vec![5.0; 300];
        assert!(log_slope(&flat).abs() < 1e-12);
        assert_eq!(window_mean(&[1.0, 2.0, 3.0, 4.0], 1, 3), 2.5);
        let s = spread(&[1.0, 3.0]);
        assert_eq!((s.mean, s.min, s.max), (2.0, 1.0, 3.0));
        assert!((s.sd - 2f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn verdicts_follow_the_numbers() {
        let run = |arm: &str, seed, early, final_acc, slope| RunResult {
            dataset: "d".into(),
            arm: arm.into(),
            seed,
            all_class_curve: vec![],
            current_task_curve: vec![],
            early,
            final_acc,
            slope_per_decade: slope,
            per_class: vec![],
            not_yet_drawn_acc: None,
            tasks_to_cover: None,
            seconds: 0.0,
        };
        let a = arms(false);
        let mut runs = Vec::new();
        for seed in [0, 1] {
            runs.push(run(&a[0].name, seed, 10.0, 20.0, 1.0));
            runs.push(run(&a[1].name, seed, 10.0, 30.0, 5.0));
            runs.push(run(&a[2].name, seed, 10.0, 20.0, 2.0));
            // Seed 1: group slower than none with the weight-norm head.
            runs.push(run(
                &a[3].name,
                seed,
                10.0,
                15.0,
                if seed == 0 { 4.0 } else { 1.0 },
            ));
        }
        let v = verdicts(&runs, &["d".into()], &a);
        assert_eq!(v[0].verdict, "holds");
        assert_eq!(v[1].verdict, "mixed");
        assert!(v[1].evidence.starts_with("3/4"), "{}", v[1].evidence);
        runs[0].final_acc = 5.0;
        let v = verdicts(&runs, &["d".into()], &a);
        assert_eq!(v[0].verdict, "mixed");
    }

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
                datasets: vec!["cifar".into()],
                ..Options::default()
            })
            .contains("--datasets")
        );
        assert!(
            bad(Options {
                tasks: Some(5),
                ..Options::default()
            })
            .contains("--tasks")
        );
        assert!(
            bad(Options {
                train_per_task: Some(0),
                ..Options::default()
            })
            .contains("--train-per-task")
        );
        let s = settings(&Options::default()).expect("defaults");
        assert_eq!((s.tasks, s.seeds.len(), s.datasets.len()), (500, 3, 2));
    }

    /// Values that used to panic (capacity overflow), abort on allocation or run for a
    /// long time unchecked are errors naming the flag; a data set given twice (which
    /// doubled the runs and the verdicts) is refused.
    #[test]
    fn huge_or_repeated_settings_are_refused() {
        let bad = |o: Options| {
            settings(&o)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        for t in [usize::MAX, 100_000_000_000, MAX_TASKS + 1] {
            let e = bad(Options {
                tasks: Some(t),
                ..Options::default()
            });
            assert_eq!(
                e,
                format!("--tasks {t} is more than the limit of {MAX_TASKS}")
            );
        }
        assert!(
            settings(&Options {
                tasks: Some(MAX_TASKS),
                ..Options::default()
            })
            .is_ok()
        );
        let e = bad(Options {
            seeds: Some(usize::MAX),
            ..Options::default()
        });
        assert!(e.starts_with("--seeds ") && e.contains("limit"), "{e}");
        let e = bad(Options {
            train_per_task: Some(usize::MAX),
            ..Options::default()
        });
        assert!(
            e.starts_with("--train-per-task ") && e.contains("limit"),
            "{e}"
        );
        let e = bad(Options {
            test_per_class: Some(1_000_000_000),
            ..Options::default()
        });
        assert!(
            e.starts_with("--test-per-class ") && e.contains("limit"),
            "{e}"
        );
        let e = bad(Options {
            datasets: vec!["fashion-mnist".into(), "fashion-mnist".into()],
            ..Options::default()
        });
        assert!(
            e.starts_with("--datasets") && e.contains("`fashion-mnist` is given twice"),
            "{e}"
        );
        let e = bad(Options {
            datasets: vec!["mnist".into(), "fashion-mnist".into(), "mnist".into()],
            ..Options::default()
        });
        assert!(e.contains("`mnist` is given twice"), "{e}");
    }

    /// More examples than the data hold are refused once loaded (not capped while the
    /// requested value is recorded).
    #[test]
    fn settings_beyond_the_data_are_refused() {
        let data = engram_learn::data::blobs::generate(&engram_learn::data::BlobsConfig {
            classes: 4,
            train_per_class: 30,
            test_per_class: 7,
            ..Default::default()
        })
        .expect("blobs");
        let st = |train_per_task, test_per_class| Settings {
            train_per_task,
            test_per_class,
            ..settings(&Options::default()).expect("defaults")
        };
        assert!(check_data(&st(60, 7), "blobs", &data).is_ok());
        let e = check_data(&st(61, 7), "blobs", &data)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--train-per-task 61") && e.contains("at most 60"),
            "{e}"
        );
        let e = check_data(&st(60, 8), "blobs", &data)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--test-per-class 8") && e.contains("at most 7"),
            "{e}"
        );
    }
}
