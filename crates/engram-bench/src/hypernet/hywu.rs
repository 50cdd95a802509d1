// HY-WU (arXiv 2603.07236): instance-conditioned LoRA generation on a frozen network.
// Card: shared/methods/hypernetworks.md, "HY-WU (instance-conditioned LoRA generator)".

//! The card's small-scale experiment: a frozen Fashion-MNIST MLP (784-100-100-10, trained on
//! the ordinary labels), 4 conflicting label-permutation tasks selected by a task token that
//! every arm receives, and two adapters at one count of trainable parameters
//! ([`engram_learn::hypernet::hywu`]): the generator G (rank-4 LoRA per instance from token ⊕
//! the base's hidden features) and one shared LoRA (its rank chosen to match G's count, the
//! token a column block of its first adapter's input). Both are trained jointly (tasks mixed)
//! and in sequence (tasks one at a time; G with the output regulariser on old tokens, the
//! shared LoRA plainly fine-tuned). The shared LoRA's pairwise gradient cosines between tasks
//! are measured at the start, the middle and the end of joint training (G's for contrast).
//!
//! engram design (the card fixes none of these):
//! - task 0 is the identity, tasks 1–3 seeded permutations that give every class a different
//!   label under every pair of tasks (a Latin rectangle), so the tasks conflict everywhere;
//! - data: training and validation images drawn per class from Fashion-MNIST's training set
//!   (disjoint), test images from its test set; the base trains on the same training images;
//! - settings are fixed in advance (below), not tuned, except β of G's sequential regulariser:
//!   it is chosen from [`BETA_GRID`] on VALIDATION data with the first seed (G trained in
//!   sequence exactly as in that seed's run, judged on the validation images): the highest
//!   mean validation accuracy over all 4 tasks after the whole sequence (it weighs keeping old
//!   tasks against learning new ones; ties go to the smaller β), then used for every seed. The
//!   test set plays no part in any choice;
//! - the claim "the shared LoRA forgets" reads: its mean old-task drop exceeds 10 points; the
//!   drop of task t is its test accuracy right after learning it minus at the end, averaged
//!   over tasks 0..T−2; the cosine claim uses the mean over pairs during training (the middle
//!   and the end of joint training), the start is reported beside it;
//! - the card's sequential claim is judged on its own words (G's drop at most 2 points, the
//!   shared LoRA's above 10); engram adds a separate check that G learns each new task (accuracy right after
//!   learning it, mean over seeds) within 10 points of the fine-tuned shared LoRA, since a G
//!   that learns nothing new keeps its old tasks trivially.

use super::{Ctx, PartOut, Verdict, cached, store};
use crate::Progress;
use crate::machine::{Spread, spread};
use crate::robust::common::{Values, accuracy as base_accuracy, split_off, subset, train_values};
use anyhow::{Context, Result, anyhow, bail};
use engram_learn::data::Dataset;
use engram_learn::hypernet::hywu::{
    self as hw, Adapter, Base, Generator, GeneratorConfig, OutputReg, Schedule, SharedLora,
    TaskData,
};
use engram_learn::model::{Head, ModelConfig};
use engram_report::html::Page;
use engram_report::svg::grouped_bar_chart;
use engram_weights::rng::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::time::Instant;

/// Tasks (label permutations).
const TASKS: usize = 4;
/// The base's hidden widths.
const HIDDEN: [usize; 2] = [100, 100];
/// G's LoRA rank (card) and hidden width (engram design).
const RANK: usize = 4;
const G_HIDDEN: usize = 16;
/// The claims' thresholds (card; "forgets" is engram's reading).
const GAIN: f64 = 10.0;
const G_DROP: f64 = 2.0;
const FORGETS: f64 = 10.0;
/// engram's added check: G must learn each new task to within this many points of the
/// fine-tuned shared LoRA (a separate verdict from the card's claim).
const LEARNS: f64 = 10.0;
/// The candidates for β of G's sequential output regulariser, chosen on validation data.
pub const BETA_GRID: [f32; 3] = [1.0, 10.0, 100.0];

/// The part's settings, fixed in advance (β's grid; β itself is chosen on validation data).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    pub train_per_class: usize,
    pub valid_per_class: usize,
    pub test_per_class: usize,
    pub base_epochs: usize,
    pub base_lr: f64,
    pub joint_steps: usize,
    pub task_steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// The candidates for β of G's sequential output regulariser (chosen on validation data).
    #[serde(default)]
    pub beta_grid: Vec<f32>,
    /// Training images per task in each gradient-cosine probe.
    pub probe: usize,
}

impl Settings {
    fn new(quick: bool) -> Settings {
        match quick {
            true => Settings {
                train_per_class: 60,
                valid_per_class: 20,
                test_per_class: 30,
                base_epochs: 3,
                base_lr: 1e-3,
                joint_steps: 60,
                task_steps: 30,
                batch: 64,
                lr: 3e-3,
                beta_grid: BETA_GRID.to_vec(),
                probe: 64,
            },
            false => Settings {
                train_per_class: 400,
                valid_per_class: 100,
                test_per_class: 200,
                base_epochs: 8,
                base_lr: 1e-3,
                joint_steps: 1500,
                task_steps: 400,
                batch: 128,
                lr: 3e-3,
                beta_grid: BETA_GRID.to_vec(),
                probe: 256,
            },
        }
    }
}

/// Accuracies (percent) of one adapter on every task.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Accs {
    pub valid: Vec<f64>,
    pub test: Vec<f64>,
}

/// One probe of the gradient cosines during joint training.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Probe {
    pub step: usize,
    pub matrix: Vec<Vec<f64>>,
    pub mean: f64,
}

/// One arm trained in sequence: `after[k][t]`, accuracy on task t after learning task k, on
/// the test images in the seed runs and on the validation images in β's tuning.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sequence {
    pub after: Vec<Vec<f64>>,
    /// Accuracy on every task at the end.
    pub end: Vec<f64>,
    /// Mean over tasks 0..T−2 of (accuracy right after learning it − at the end).
    pub old_drop: f64,
    /// Mean over tasks of the accuracy right after learning it (plasticity).
    pub learned: f64,
}

/// One seed's results.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// π_t(y) for each task t.
    pub perms: Vec<Vec<u32>>,
    /// The frozen base's test accuracy on the ordinary labels.
    pub base_test: f64,
    pub g_params: usize,
    pub shared_params: usize,
    pub shared_rank: usize,
    pub joint_g: Accs,
    pub joint_shared: Accs,
    /// The card's literal shared rank-4 LoRA (a quarter… a seventeenth of G's count), for
    /// reference; no claim uses it.
    pub joint_shared_r4: Accs,
    pub shared_r4_params: usize,
    pub cos_shared: Vec<Probe>,
    pub cos_shared_r4: Vec<Probe>,
    pub cos_g: Vec<Probe>,
    /// β of G's sequential regulariser (chosen on validation data, see [`Tuning`]).
    #[serde(default)]
    pub beta: f32,
    pub seq_g: Sequence,
    pub seq_shared: Sequence,
    pub seconds: f64,
}

/// β of G's sequential regulariser chosen on validation data with one seed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tuning {
    pub seed: u64,
    pub grid: Vec<f32>,
    /// Per β: mean validation accuracy over all tasks after the whole sequence (the criterion).
    pub valid: Vec<f64>,
    /// Per β: G's sequence judged on the validation images.
    pub runs: Vec<Sequence>,
    pub chosen: f32,
    pub seconds: f64,
}

/// The β of the highest score (the first, i.e. the smaller β, on ties); None when no score is
/// finite.
pub fn choose(grid: &[f32], scores: &[f64]) -> Option<f32> {
    let mut best: Option<(f32, f64)> = None;
    for (&b, &v) in grid.iter().zip(scores) {
        if v.is_finite() && best.is_none_or(|(_, bv)| v > bv) {
            best = Some((b, v));
        }
    }
    best.map(|(b, _)| b)
}

fn model() -> ModelConfig {
    ModelConfig::mlp(HIDDEN.to_vec(), Head::default())
}

fn dims() -> Vec<usize> {
    vec![784, HIDDEN[0], HIDDEN[1], 10]
}

/// A seed of its own for each use of the study's seed.
fn sub(seed: u64, key: &str) -> u64 {
    Rng::keyed(seed, key, 0).next_u64()
}

/// Task 0 the identity, then permutations of `classes` labels that differ from every earlier
/// one at every class (drawn by rejection from (seed, task, try)).
pub fn permutations(tasks: usize, classes: usize, seed: u64) -> Result<Vec<Vec<u32>>> {
    if tasks > classes {
        bail!("{tasks} tasks cannot all disagree on {classes} classes");
    }
    let mut out: Vec<Vec<u32>> = vec![(0..classes as u32).collect()];
    for t in 1..tasks {
        let found = (0..100_000u64).find_map(|k| {
            let p = Rng::keyed(seed, &format!("hywu-perm-{t}"), k).permutation(classes);
            out.iter()
                .all(|q| q.iter().zip(&p).all(|(a, b)| a != b))
                .then_some(p)
        });
        out.push(found.ok_or_else(|| anyhow!("no conflicting permutation found for task {t}"))?);
    }
    Ok(out)
}

/// `ds`'s labels under every permutation.
fn relabel(ds: &Dataset, perms: &[Vec<u32>]) -> Vec<Vec<u32>> {
    perms
        .iter()
        .map(|p| ds.y.iter().map(|&c| p[c as usize]).collect())
        .collect()
}

fn data<'a>(ds: &'a Dataset, labels: &'a [Vec<u32>]) -> Vec<TaskData<'a>> {
    labels.iter().map(|y| TaskData { x: &ds.x, y }).collect()
}

fn accs(arm: &dyn Adapter, base: &Base, valid: &[TaskData], test: &[TaskData]) -> Result<Accs> {
    let all = |d: &[TaskData]| -> Result<Vec<f64>> {
        d.iter()
            .enumerate()
            .map(|(t, d)| Ok(hw::accuracy(arm, base, t, *d)?))
            .collect()
    };
    Ok(Accs {
        valid: all(valid)?,
        test: all(test)?,
    })
}

/// Trains `arm` on the tasks one at a time (G with the output regulariser); the accuracy
/// matrix on `eval` (test or validation data).
fn sequence(
    arm: &mut dyn Adapter,
    base: &Base,
    train: &[TaskData],
    eval: &[TaskData],
    s: &Schedule,
    beta: Option<f32>,
) -> Result<Sequence> {
    let mut after = Vec::new();
    for (t, d) in train.iter().enumerate() {
        let old: Vec<usize> = (0..t).collect();
        let reg = match beta {
            Some(b) => Some(OutputReg::new(arm, &old, b)?),
            None => None,
        };
        let st = Schedule {
            seed: sub(s.seed, &format!("task{t}")),
            ..s.clone()
        };
        hw::train_task(arm, base, t, *d, &st, reg.as_ref())?;
        let row: Vec<f64> = eval
            .iter()
            .enumerate()
            .map(|(k, d)| Ok(hw::accuracy(arm, base, k, *d)?))
            .collect::<Result<_>>()?;
        after.push(row);
    }
    let end = after.last().cloned().unwrap_or_default();
    let n = train.len().saturating_sub(1).max(1) as f64;
    let old_drop = (0..train.len().saturating_sub(1))
        .map(|t| after[t][t] - end[t])
        .sum::<f64>()
        / n;
    let learned = mean(&(0..after.len()).map(|t| after[t][t]).collect::<Vec<_>>());
    Ok(Sequence {
        after,
        end,
        old_drop,
        learned,
    })
}

/// Joint training of `arm`, probing the gradient cosines at the start, the middle and the end.
fn joint(
    arm: &mut dyn Adapter,
    base: &Base,
    train: &[TaskData],
    probe: &[TaskData],
    s: &Schedule,
) -> Result<Vec<Probe>> {
    let at = [0, s.steps / 2, s.steps];
    let mut probes = Vec::new();
    hw::train_joint(arm, base, train, s, &mut |k, a| {
        if at.contains(&k) && probes.iter().all(|p: &Probe| p.step != k) {
            let matrix = hw::cosine_matrix(&hw::task_gradients(a, base, probe)?);
            probes.push(Probe {
                step: k,
                mean: hw::mean_pairwise(&matrix),
                matrix,
            });
        }
        Ok(())
    })?;
    Ok(probes)
}

/// One seed's data (training, validation and test images, relabelled per task) and frozen base.
struct Prepared {
    train: Dataset,
    valid: Dataset,
    test: Dataset,
    values: Values,
    base: Base,
    base_test: f64,
    perms: Vec<Vec<u32>>,
    ytr: Vec<Vec<u32>>,
    yva: Vec<Vec<u32>>,
    yte: Vec<Vec<u32>>,
}

fn prepare(
    cx: &Ctx,
    z: &Settings,
    seed: u64,
    split: &engram_learn::data::Split,
    progress: &mut dyn FnMut(Progress),
) -> Result<Prepared> {
    let all = subset(
        &split.train,
        z.train_per_class + z.valid_per_class,
        sub(seed, "hywu-train"),
    );
    let share = z.valid_per_class as f64 / (z.train_per_class + z.valid_per_class) as f64;
    let (train, valid) = split_off(&all, share, sub(seed, "hywu-valid"));
    let test = subset(&split.test, z.test_per_class, sub(seed, "hywu-test"));
    if train.is_empty() || valid.is_empty() || test.is_empty() {
        bail!("hywu: the settings leave an empty training, validation or test set");
    }
    let m = model();

    // The frozen base, cached per seed.
    let base_path = cx.runs.join(format!("hywu-base-seed{seed}.json"));
    let base_settings = json!({
        "model": format!("{m:?}"),
        "seed": seed,
        "train_per_class": z.train_per_class,
        "valid_per_class": z.valid_per_class,
        "epochs": z.base_epochs,
        "lr": z.base_lr,
    });
    let values: Values = match cached(&base_path, &base_settings) {
        Some(v) => v,
        None => {
            progress(Progress::Message(format!(
                "hywu seed {seed}: training the base"
            )));
            let v = train_values(
                &m,
                &train,
                None,
                z.base_epochs,
                z.base_lr,
                64,
                sub(seed, "hywu-base"),
            )?;
            store(&base_path, &base_settings, &v)?;
            v
        }
    };
    let base_test = base_accuracy(&m, &values, &test)?;
    let base = Base::new(&dims(), &values)?;

    let perms = permutations(TASKS, 10, sub(seed, "hywu-perms"))?;
    let (ytr, yva, yte) = (
        relabel(&train, &perms),
        relabel(&valid, &perms),
        relabel(&test, &perms),
    );
    Ok(Prepared {
        train,
        valid,
        test,
        values,
        base,
        base_test,
        perms,
        ytr,
        yva,
        yte,
    })
}

/// G's initial state for `seed` (the same in β's tuning and in the seed's run).
fn generator(base: &Base, seed: u64) -> Result<Generator> {
    let gcfg = GeneratorConfig {
        tasks: TASKS,
        rank: RANK,
        hidden: G_HIDDEN,
    };
    Ok(Generator::new(base, &gcfg, sub(seed, "hywu-g"))?)
}

/// The training schedule of one phase (`key`: "joint" or "seq").
fn schedule(z: &Settings, seed: u64, key: &str, steps: usize) -> Schedule {
    Schedule {
        steps,
        batch: z.batch,
        lr: z.lr,
        seed: sub(seed, key),
    }
}

/// Chooses β on validation data: G trained in sequence with each β of the grid, exactly as in
/// the seed's run, judged by the mean validation accuracy over all tasks at the end.
fn tune(
    z: &Settings,
    seed: u64,
    p: &Prepared,
    progress: &mut dyn FnMut(Progress),
) -> Result<Tuning> {
    let t0 = Instant::now();
    let (dtr, dva) = (data(&p.train, &p.ytr), data(&p.valid, &p.yva));
    let g0 = generator(&p.base, seed)?;
    let mut runs = Vec::new();
    for &b in &z.beta_grid {
        progress(Progress::Message(format!(
            "hywu seed {seed}: choosing β on validation data (β = {b})"
        )));
        let mut g = g0.clone();
        runs.push(sequence(
            &mut g,
            &p.base,
            &dtr,
            &dva,
            &schedule(z, seed, "seq", z.task_steps),
            Some(b),
        )?);
    }
    let valid: Vec<f64> = runs.iter().map(|r| mean(&r.end)).collect();
    let chosen = choose(&z.beta_grid, &valid)
        .ok_or_else(|| anyhow!("hywu: no β of the grid gave a finite validation accuracy"))?;
    if p.base.values() != p.values {
        bail!("hywu: the frozen base changed in training");
    }
    Ok(Tuning {
        seed,
        grid: z.beta_grid.clone(),
        valid,
        runs,
        chosen,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn run_seed(
    cx: &Ctx,
    z: &Settings,
    seed: u64,
    beta: f32,
    split: &engram_learn::data::Split,
    progress: &mut dyn FnMut(Progress),
) -> Result<SeedResult> {
    let t0 = Instant::now();
    let p = prepare(cx, z, seed, split, progress)?;
    let (base, values, base_test, perms) = (&p.base, &p.values, p.base_test, p.perms.clone());
    let (dtr, dva, dte) = (
        data(&p.train, &p.ytr),
        data(&p.valid, &p.yva),
        data(&p.test, &p.yte),
    );
    let np = z.probe.min(p.train.len());
    let probe: Vec<TaskData> = dtr
        .iter()
        .map(|d| TaskData {
            x: &d.x[..np * 784],
            y: &d.y[..np],
        })
        .collect();

    let g0 = generator(base, seed)?;
    let g_params = g0.params().trainable();
    let rank = SharedLora::matched_rank(base, TASKS, g_params);
    let s0 = SharedLora::new(base, TASKS, rank, sub(seed, "hywu-lora"))?;
    let shared_params = s0.params().trainable();
    let sched = |key: &str, steps: usize| schedule(z, seed, key, steps);

    progress(Progress::Message(format!(
        "hywu seed {seed}: joint training (G, shared LoRA)"
    )));
    let mut g = g0.clone();
    let cos_g = joint(&mut g, base, &dtr, &probe, &sched("joint", z.joint_steps))?;
    let joint_g = accs(&g, base, &dva, &dte)?;
    let mut s = s0.clone();
    let cos_shared = joint(&mut s, base, &dtr, &probe, &sched("joint", z.joint_steps))?;
    let joint_shared = accs(&s, base, &dva, &dte)?;
    let mut s4 = SharedLora::new(base, TASKS, RANK, sub(seed, "hywu-lora"))?;
    let shared_r4_params = s4.params().trainable();
    let cos_shared_r4 = joint(&mut s4, base, &dtr, &probe, &sched("joint", z.joint_steps))?;
    let joint_shared_r4 = accs(&s4, base, &dva, &dte)?;

    progress(Progress::Message(format!(
        "hywu seed {seed}: sequential training (G, shared LoRA)"
    )));
    let mut g = g0;
    let seq_g = sequence(
        &mut g,
        base,
        &dtr,
        &dte,
        &sched("seq", z.task_steps),
        Some(beta),
    )?;
    let mut s = s0;
    let seq_shared = sequence(&mut s, base, &dtr, &dte, &sched("seq", z.task_steps), None)?;
    if base.values() != *values {
        bail!("hywu: the frozen base changed in training");
    }
    Ok(SeedResult {
        seed,
        perms,
        base_test,
        g_params,
        shared_params,
        shared_rank: rank,
        joint_g,
        joint_shared,
        joint_shared_r4,
        shared_r4_params,
        cos_shared,
        cos_shared_r4,
        cos_g,
        beta,
        seq_g,
        seq_shared,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// The mean pairwise cosine during training (the probes after the start).
fn during(p: &[Probe]) -> f64 {
    mean(
        &p.iter()
            .filter(|q| q.step > 0)
            .map(|q| q.mean)
            .collect::<Vec<_>>(),
    )
}

/// The claims of the card judged on the seeds' means.
fn verdicts(rs: &[SeedResult]) -> Vec<Verdict> {
    let one = if rs.len() == 1 {
        " (one seed: judged on it alone)"
    } else {
        ""
    };
    let per = |f: &dyn Fn(&SeedResult) -> f64| -> (f64, String) {
        let v: Vec<f64> = rs.iter().map(f).collect();
        let list: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        (mean(&v), list.join(", "))
    };
    let (cos, cos_list) = per(&|r| during(&r.cos_shared));
    let (cos0, _) = per(&|r| r.cos_shared.first().map_or(0.0, |p| p.mean));
    let (gain, gain_list) = per(&|r| mean(&r.joint_g.test) - mean(&r.joint_shared.test));
    let (dg, dg_list) = per(&|r| r.seq_g.old_drop);
    let (ds, ds_list) = per(&|r| r.seq_shared.old_drop);
    let (lg, _) = per(&|r| r.seq_g.learned);
    let (ls, _) = per(&|r| r.seq_shared.learned);
    // engram's added check, per task: accuracy right after learning it, mean over seeds.
    let learned = |g: bool| -> Vec<f64> {
        per_task(rs, &|r| {
            let q = if g { &r.seq_g } else { &r.seq_shared };
            (0..TASKS)
                .map(|t| {
                    q.after
                        .get(t)
                        .and_then(|row| row.get(t))
                        .copied()
                        .unwrap_or(f64::NAN)
                })
                .collect()
        })
    };
    let gaps: Vec<f64> = learned(true)
        .iter()
        .zip(learned(false))
        .map(|(g, s)| g - s)
        .collect();
    let worst = gaps.iter().copied().fold(f64::INFINITY, f64::min);
    let gap_list: Vec<String> = gaps.iter().map(|x| format!("{x:+.2}")).collect();
    vec![
        Verdict {
            part: "hywu".into(),
            claim: "the shared LoRA's mean gradient cosine across tasks is negative".into(),
            holds: Some(cos < 0.0),
            detail: format!(
                "mean pairwise cosine during joint training {cos:.3} (per seed {cos_list}; at \
                 the start {cos0:.3}; secondary source −0.30){one}"
            ),
        },
        Verdict {
            part: "hywu".into(),
            claim: format!("G beats the shared LoRA by ≥ {GAIN} points of mean accuracy (joint)"),
            holds: Some(gain >= GAIN),
            detail: format!(
                "G − shared {gain:+.2} points of mean test accuracy (per seed {gain_list}){one}"
            ),
        },
        Verdict {
            part: "hywu".into(),
            claim: format!(
                "sequential: G's old-task accuracy drops ≤ {G_DROP} points while the shared LoRA \
                 forgets (\"forgets\": its mean old-task drop > {FORGETS} points)"
            ),
            holds: Some(dg <= G_DROP && ds > FORGETS),
            detail: format!(
                "old-task drop G {dg:.2} (per seed {dg_list}), shared LoRA {ds:.2} (per seed \
                 {ds_list}); the card's words only: see engram's added check below for whether \
                 G learns the new tasks{one}"
            ),
        },
        Verdict {
            part: "hywu".into(),
            claim: format!(
                "engram's added check (not in the card): sequential G learns each new task \
                 within {LEARNS} points of the fine-tuned shared LoRA"
            ),
            holds: Some(worst.is_finite() && worst >= -LEARNS),
            detail: format!(
                "accuracy right after learning task t, G − shared LoRA per task {} (worst \
                 {worst:+.2}); mean over tasks G {lg:.2}, shared LoRA {ls:.2}; a G that keeps \
                 its old tasks by not learning new ones passes the card's claim but not this \
                 check{one}",
                gap_list.join(", ")
            ),
        },
    ]
}

/// The arms' mean test accuracies: (label, per seed).
fn arm_means(rs: &[SeedResult]) -> Vec<(&'static str, Vec<f64>)> {
    vec![
        (
            "G joint",
            rs.iter().map(|r| mean(&r.joint_g.test)).collect(),
        ),
        (
            "shared joint",
            rs.iter().map(|r| mean(&r.joint_shared.test)).collect(),
        ),
        (
            "shared r4 joint",
            rs.iter().map(|r| mean(&r.joint_shared_r4.test)).collect(),
        ),
        (
            "G sequential",
            rs.iter().map(|r| mean(&r.seq_g.end)).collect(),
        ),
        (
            "shared sequential",
            rs.iter().map(|r| mean(&r.seq_shared.end)).collect(),
        ),
    ]
}

fn f(s: &Spread) -> String {
    format!("{:.2} ± {:.2}", s.mean, s.sd)
}

/// Reads one per-task accuracy vector of a seed's result.
type Get<'a> = &'a dyn Fn(&SeedResult) -> Vec<f64>;

/// Per-task test accuracies of an arm, mean over seeds.
fn per_task(rs: &[SeedResult], get: &dyn Fn(&SeedResult) -> Vec<f64>) -> Vec<f64> {
    (0..TASKS)
        .map(|t| mean(&rs.iter().map(|r| get(r)[t]).collect::<Vec<_>>()))
        .collect()
}

/// "1, 10, 100".
fn grid_list(g: &[f32]) -> String {
    g.iter()
        .map(|b| b.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn text(rs: &[SeedResult], tuning: Option<&Tuning>) -> String {
    let mut s =
        String::from("\nHY-WU: 4 conflicting label permutations on a frozen Fashion-MNIST MLP\n");
    s += &format!("{:<18} {:>14} {:>28}\n", "arm", "mean test acc", "per task");
    let tasks: [Get; 5] = [
        &|r| r.joint_g.test.clone(),
        &|r| r.joint_shared.test.clone(),
        &|r| r.joint_shared_r4.test.clone(),
        &|r| r.seq_g.end.clone(),
        &|r| r.seq_shared.end.clone(),
    ];
    for ((name, v), get) in arm_means(rs).into_iter().zip(tasks) {
        let pt: Vec<String> = per_task(rs, get)
            .iter()
            .map(|x| format!("{x:.1}"))
            .collect();
        s += &format!("{name:<18} {:>14} {:>28}\n", f(&spread(&v)), pt.join(" "));
    }
    let d = |g: &dyn Fn(&SeedResult) -> f64| f(&spread(&rs.iter().map(g).collect::<Vec<_>>()));
    s += &format!(
        "old-task drop (sequential): G {}, shared {}\n",
        d(&|r| r.seq_g.old_drop),
        d(&|r| r.seq_shared.old_drop)
    );
    s += &format!(
        "shared LoRA gradient cosine (mean over pairs): start {}, during {}\n",
        d(&|r| r.cos_shared.first().map_or(0.0, |p| p.mean)),
        d(&|r| during(&r.cos_shared))
    );
    if let Some(t) = tuning {
        let scores: Vec<String> = t
            .grid
            .iter()
            .zip(&t.valid)
            .map(|(b, v)| format!("β {b}: {v:.2}"))
            .collect();
        s += &format!(
            "β chosen on validation data (seed {}, mean valid acc after the sequence): {} → β = {}\n",
            t.seed,
            scores.join(", "),
            t.chosen
        );
    }
    if let Some(r) = rs.first() {
        s += &format!(
            "trainable parameters: G {}, shared LoRA {} (rank {})\n",
            r.g_params, r.shared_params, r.shared_rank
        );
    }
    s
}

/// Runs the part: every seed (cached), then the verdicts.
pub fn run(cx: &Ctx, progress: &mut dyn FnMut(Progress)) -> Result<PartOut> {
    let t0 = Instant::now();
    let z = Settings::new(cx.quick);
    let seeds = cx.seeds_or(&[0, 1, 2], 1);
    if seeds.is_empty() {
        bail!("hywu: no seeds to run");
    }
    let mut split = None;

    // β of G's sequential regulariser, chosen on validation data with the first seed.
    let tseed = seeds[0];
    let tpath = cx.runs.join(format!("hywu-tune-seed{tseed}.json"));
    let tsettings = json!({
        "settings": z,
        "seed": tseed,
        "rank": RANK,
        "g_hidden": G_HIDDEN,
        "criterion": "mean validation accuracy over all tasks after the sequence",
    });
    let tuning: Tuning = match cached(&tpath, &tsettings) {
        Some(t) => t,
        None => {
            let sp = load(&mut split, cx)?;
            let p = prepare(cx, &z, tseed, sp, progress)
                .with_context(|| format!("hywu seed {tseed}"))?;
            let t = tune(&z, tseed, &p, progress).context("hywu: choosing β")?;
            store(&tpath, &tsettings, &t)?;
            progress(Progress::Message(format!(
                "hywu: β = {} chosen on validation data ({:.0} s)",
                t.chosen, t.seconds
            )));
            t
        }
    };
    let beta = tuning.chosen;

    let mut rs = Vec::new();
    for &seed in &seeds {
        let path = cx.runs.join(format!("hywu-seed{seed}.json"));
        let settings = json!({
            "settings": z,
            "seed": seed,
            "rank": RANK,
            "g_hidden": G_HIDDEN,
            "beta": beta,
        });
        if let Some(r) = cached::<SeedResult>(&path, &settings) {
            rs.push(r);
            continue;
        }
        let sp = load(&mut split, cx)?;
        let r = run_seed(cx, &z, seed, beta, sp, progress)
            .with_context(|| format!("hywu seed {seed}"))?;
        store(&path, &settings, &r)?;
        progress(Progress::Message(format!(
            "hywu seed {seed}: {:.0} s",
            r.seconds
        )));
        rs.push(r);
    }
    let verdicts = verdicts(&rs);
    let results = json!({
        "settings": z,
        "beta_tuning": tuning,
        "seeds": rs,
        "quick": cx.quick,
        "rank": RANK,
        "g_hidden": G_HIDDEN,
        "wall_s": t0.elapsed().as_secs_f64(),
    });
    Ok(PartOut {
        results,
        verdicts,
        text: text(&rs, Some(&tuning)),
    })
}

/// Fashion-MNIST, loaded on first use.
fn load<'s>(
    split: &'s mut Option<engram_learn::data::Split>,
    cx: &Ctx,
) -> Result<&'s engram_learn::data::Split> {
    if split.is_none() {
        *split = Some(
            engram_learn::data::load("fashion-mnist", cx.data_dir)
                .context("hywu: loading Fashion-MNIST")?,
        );
    }
    split.as_ref().ok_or_else(|| anyhow!("hywu: no data"))
}

fn matrix_rows(m: &[Vec<f64>], label: &dyn Fn(usize) -> String) -> Vec<Vec<String>> {
    m.iter()
        .enumerate()
        .map(|(i, row)| {
            let mut r = vec![label(i)];
            r.extend(row.iter().map(|v| format!("{v:.2}")));
            r
        })
        .collect()
}

/// The element-wise mean of the seeds' matrices.
fn mean_matrix(ms: &[&Vec<Vec<f64>>]) -> Vec<Vec<f64>> {
    let Some(first) = ms.first() else {
        return Vec::new();
    };
    first
        .iter()
        .enumerate()
        .map(|(i, row)| {
            (0..row.len())
                .map(|j| mean(&ms.iter().map(|m| m[i][j]).collect::<Vec<_>>()))
                .collect()
        })
        .collect()
}

/// The report's HY-WU section.
pub fn section(p: &mut Page, v: &Value) -> Result<()> {
    let rs: Vec<SeedResult> = serde_json::from_value(v["seeds"].clone())?;
    let z: Settings = serde_json::from_value(v["settings"].clone())?;
    let tuning: Option<Tuning> = match v.get("beta_tuning") {
        Some(t) if !t.is_null() => Some(serde_json::from_value(t.clone())?),
        _ => None,
    };
    p.heading("HY-WU: instance-conditioned LoRA generation");
    let Some(r0) = rs.first() else {
        p.para("No seed ran.");
        return Ok(());
    };
    p.para(&format!(
        "Card: shared/methods/hypernetworks.md, HY-WU. A frozen 784-100-100-10 MLP trained on \
         Fashion-MNIST's ordinary labels ({} images per class, {} epochs; test accuracy {}); \
         4 tasks relabel y → π_t(y), task 0 the identity, the others permutations that \
         disagree with every other task on every class; the task token (one-hot) reaches every \
         arm. G: one-hot token ⊕ the base's last hidden features → 2-layer MLP (width {}) → \
         rank-{} factors A_l, B_l of both hidden layers per example, B-head at 0. Shared LoRA: \
         one adapter on the same layers, the token a column block of its first A, rank {} to \
         match G's count ({} vs {} trainable values). Adam lr {}, batch {}; joint: {} steps \
         (tasks mixed); sequential: {} steps per task, Adam restarted, G with the output \
         regulariser β = {} on old tokens (current inputs, snapshot before the task), the \
         shared LoRA fine-tuned. {} validation and {} test images per class. Settings are \
         engram design, fixed in advance and not tuned per arm, except β, which was chosen on \
         validation data (table below); the test set played no part in any choice. For \
         reference, the card's literal shared rank-4 LoRA ({} values) is trained jointly too; \
         no claim uses it. Seeds {:?}.",
        z.train_per_class,
        z.base_epochs,
        f(&spread(&rs.iter().map(|r| r.base_test).collect::<Vec<_>>())),
        G_HIDDEN,
        RANK,
        r0.shared_rank,
        r0.g_params,
        r0.shared_params,
        z.lr,
        z.batch,
        z.joint_steps,
        z.task_steps,
        r0.beta,
        z.valid_per_class,
        z.test_per_class,
        r0.shared_r4_params,
        rs.iter().map(|r| r.seed).collect::<Vec<_>>(),
    ));
    if v["quick"].as_bool().unwrap_or(false) {
        p.note("Quick mode: a smoke check, not the benchmark's numbers.");
    }

    p.subheading("Choosing β on validation data");
    match &tuning {
        Some(t) => {
            p.para(&format!(
                "β of G's sequential output regulariser, chosen once with seed {} from {{{}}} and \
                 used for every seed: G trained in sequence exactly as in that seed's run, judged \
                 on the validation images. Criterion: the highest mean validation accuracy over \
                 all 4 tasks after the whole sequence (it weighs keeping old tasks against \
                 learning new ones; ties go to the smaller β). Chosen: β = {}.",
                t.seed,
                grid_list(&t.grid),
                t.chosen
            ));
            let rows: Vec<Vec<String>> = t
                .grid
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    let q = t.runs.get(i);
                    let num = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.2}"));
                    vec![
                        b.to_string(),
                        num(t.valid.get(i).copied()),
                        num(q.map(|q| q.old_drop)),
                        num(q.map(|q| q.learned)),
                        if *b == t.chosen { "yes" } else { "" }.into(),
                    ]
                })
                .collect();
            p.table(
                &[
                    "β",
                    "mean valid acc after the sequence (criterion)",
                    "old-task drop (valid)",
                    "valid acc right after learning",
                    "chosen",
                ],
                &rows,
            );
        }
        None => {
            p.para("These results hold no record of β's choice on validation data.");
        }
    }

    p.subheading("Mean accuracy per arm");
    let gets: [Get; 5] = [
        &|r| r.joint_g.test.clone(),
        &|r| r.joint_shared.test.clone(),
        &|r| r.joint_shared_r4.test.clone(),
        &|r| r.seq_g.end.clone(),
        &|r| r.seq_shared.end.clone(),
    ];
    let valid: [Option<Get>; 5] = [
        Some(&|r| r.joint_g.valid.clone()),
        Some(&|r| r.joint_shared.valid.clone()),
        Some(&|r| r.joint_shared_r4.valid.clone()),
        None,
        None,
    ];
    let means = arm_means(&rs);
    let mut rows = Vec::new();
    for (((name, m), get), va) in means.iter().zip(gets).zip(valid) {
        let mut row = vec![name.to_string(), f(&spread(m))];
        row.push(match va {
            Some(g) => format!(
                "{:.2}",
                mean(&rs.iter().map(|r| mean(&g(r))).collect::<Vec<_>>())
            ),
            None => "–".into(),
        });
        row.extend(per_task(&rs, get).iter().map(|x| format!("{x:.1}")));
        rows.push(row);
    }
    p.table(
        &[
            "arm",
            "mean test acc",
            "mean valid acc",
            "task 0",
            "task 1",
            "task 2",
            "task 3",
        ],
        &rows,
    );
    let groups: Vec<String> = ["joint", "sequential"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let series: Vec<String> = ["G", "shared LoRA (matched)", "shared LoRA rank 4"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let sp: Vec<Spread> = means.iter().map(|(_, m)| spread(m)).collect();
    let vals = vec![
        vec![Some(sp[0].mean), Some(sp[1].mean), Some(sp[2].mean)],
        vec![Some(sp[3].mean), Some(sp[4].mean), None],
    ];
    let errs = vec![
        vec![Some(sp[0].sd), Some(sp[1].sd), Some(sp[2].sd)],
        vec![Some(sp[3].sd), Some(sp[4].sd), None],
    ];
    p.svg(&grouped_bar_chart(
        "Mean test accuracy over the 4 tasks",
        &groups,
        &series,
        &vals,
        Some(&errs),
        "accuracy (%)",
    ));

    p.subheading("Sequential: forgetting");
    let d = |g: &dyn Fn(&SeedResult) -> f64| f(&spread(&rs.iter().map(g).collect::<Vec<_>>()));
    p.table(
        &[
            "arm",
            "old-task drop (points)",
            "accuracy right after learning",
            "mean final accuracy",
        ],
        &[
            vec![
                "G + output regulariser".into(),
                d(&|r| r.seq_g.old_drop),
                d(&|r| r.seq_g.learned),
                d(&|r| mean(&r.seq_g.end)),
            ],
            vec![
                "shared LoRA, fine-tuned".into(),
                d(&|r| r.seq_shared.old_drop),
                d(&|r| r.seq_shared.learned),
                d(&|r| mean(&r.seq_shared.end)),
            ],
        ],
    );
    p.para(
        "Old-task drop: for tasks 0–2, test accuracy right after learning the task minus at the \
         end of the sequence, averaged. Rows below: after learning task k (mean over seeds), \
         columns: accuracy on task t.",
    );
    let head = ["after", "task 0", "task 1", "task 2", "task 3"];
    for (name, g) in [("G", true), ("shared LoRA", false)] {
        let ms: Vec<&Vec<Vec<f64>>> = rs
            .iter()
            .map(|r| {
                if g {
                    &r.seq_g.after
                } else {
                    &r.seq_shared.after
                }
            })
            .collect();
        p.para(name);
        p.table(
            &head,
            &matrix_rows(&mean_matrix(&ms), &|k| format!("task {k}")),
        );
    }

    p.subheading("Gradient cosines between tasks (joint training)");
    p.para(&format!(
        "Cosine between the gradients of two tasks' losses with respect to all trainable \
         values, on the same {} training images under each task's labels; mean over seeds. The \
         claim uses the mean over pairs in the middle and at the end of training.",
        z.probe
    ));
    let mut rows = Vec::new();
    let pick = |r: &SeedResult, k: usize| -> Vec<Probe> {
        match k {
            0 => r.cos_shared.clone(),
            1 => r.cos_shared_r4.clone(),
            _ => r.cos_g.clone(),
        }
    };
    for (arm, name) in ["shared LoRA (matched)", "shared LoRA rank 4", "G"]
        .into_iter()
        .enumerate()
    {
        let get = |r: &SeedResult| -> Vec<f64> { pick(r, arm).iter().map(|q| q.mean).collect() };
        let steps = pick(r0, arm);
        for (k, pr) in steps.iter().enumerate() {
            let vals: Vec<f64> = rs.iter().filter_map(|r| get(r).get(k).copied()).collect();
            rows.push(vec![
                name.to_string(),
                pr.step.to_string(),
                f(&spread(&vals)),
            ]);
        }
    }
    p.table(&["adapter", "step", "mean pairwise cosine"], &rows);
    let head = ["task", "0", "1", "2", "3"];
    for (k, pr) in r0.cos_shared.iter().enumerate() {
        let ms: Vec<&Vec<Vec<f64>>> = rs
            .iter()
            .filter_map(|r| r.cos_shared.get(k).map(|q| &q.matrix))
            .collect();
        p.para(&format!("shared LoRA, step {}", pr.step));
        p.table(&head, &matrix_rows(&mean_matrix(&ms), &|i| i.to_string()));
    }
    let perms: Vec<Vec<String>> = r0
        .perms
        .iter()
        .enumerate()
        .map(|(t, pm)| {
            vec![
                t.to_string(),
                pm.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    p.para(&format!(
        "Label permutations of seed {} (π_t(0) … π_t(9)):",
        r0.seed
    ));
    p.table(&["task", "labels"], &perms);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutations_conflict_everywhere_and_are_seeded() -> Result<()> {
        let p = permutations(4, 10, 3)?;
        assert_eq!(p[0], (0..10).collect::<Vec<u32>>());
        for a in 0..4 {
            let mut s = p[a].clone();
            s.sort_unstable();
            assert_eq!(s, (0..10).collect::<Vec<u32>>());
            for b in 0..a {
                assert!(p[a].iter().zip(&p[b]).all(|(x, y)| x != y));
            }
        }
        assert_eq!(p, permutations(4, 10, 3)?);
        assert_ne!(p, permutations(4, 10, 4)?);
        assert!(permutations(11, 10, 0).is_err());
        Ok(())
    }

    #[test]
    fn choose_takes_the_best_finite_score_and_the_smaller_beta_on_ties() {
        assert_eq!(choose(&[1.0, 10.0, 100.0], &[50.0, 60.0, 55.0]), Some(10.0));
        assert_eq!(choose(&[1.0, 10.0, 100.0], &[60.0, 60.0, 55.0]), Some(1.0));
        assert_eq!(choose(&[1.0, 10.0], &[f64::NAN, 40.0]), Some(10.0));
        assert_eq!(choose(&[1.0, 10.0], &[f64::NAN, f64::NAN]), None);
        assert_eq!(choose(&[], &[]), None);
    }

    /// The part end to end in quick mode on the installed Fashion-MNIST, its report section
    /// included (ignored: needs the data set; `cargo test -p engram-bench --lib hypernet::hywu
    /// -- --ignored`).
    #[test]
    #[ignore]
    fn quick_part_runs_end_to_end() -> Result<()> {
        let full = std::env::var("HYWU_FULL").is_ok();
        let runs = std::env::temp_dir().join(format!("engram-hywu-test-{full}"));
        std::fs::create_dir_all(&runs)?;
        let cx = Ctx {
            quick: !full,
            seeds: None,
            runs,
            data_dir: None,
        };
        let t = Instant::now();
        let out = run(&cx, &mut |p| {
            if let Progress::Message(m) = p {
                eprintln!("{m}");
            }
        })?;
        eprintln!("{}\n{:.1} s", out.text, t.elapsed().as_secs_f64());
        eprintln!("{}", super::super::render_verdicts(&out.verdicts));
        assert_eq!(out.verdicts.len(), 4);
        let t: Tuning = serde_json::from_value(out.results["beta_tuning"].clone())?;
        assert_eq!(t.grid, BETA_GRID.to_vec());
        assert_eq!(t.valid.len(), t.grid.len());
        assert!(t.grid.contains(&t.chosen));
        let rs: Vec<SeedResult> = serde_json::from_value(out.results["seeds"].clone())?;
        assert!(rs.iter().all(|r| r.beta == t.chosen));
        let mut p = Page::new("t");
        section(&mut p, &out.results)?;
        let html = p.render();
        assert!(html.contains("Gradient cosines"));
        assert!(html.contains("Choosing β on validation data"));
        Ok(())
    }
}
