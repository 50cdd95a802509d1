//! `engram bench finetune`: the selective fine-tuning benchmark (selective_finetuning.md, "CPU
//! testbed"), run on the one trainer with the selective strategies.
//!
//! A residual MLP (`model.kind = "resmlp"`: 784 → 256, four blocks 256 → 512 → 256, a head) is
//! pre-trained on Fashion-MNIST (the source), then fine-tuned with a new head on each target:
//! MNIST digits, and MNIST digits with a fixed pixel permutation (a target whose inputs share
//! nothing with the source's, so the first layers must change). Both are one Task-IL
//! scenario of two tasks (source classes 0–9, target classes 10–19, so each task has its own
//! head): the pre-training is its first task, and each method fine-tunes the second from the
//! pre-trained weights (`Trainer::start`). The source test set is then scored through the
//! *old* head. Per method: target accuracy, source accuracy kept, trainable values, optimizer
//! memory, wall time of the fine-tuning; three seeds (the seed draws the pre-training, adapters
//! and random selections).
//!
//! Methods (strategies of `engram strategies`): full fine-tuning (`naive`); the head alone
//! (`kappatune` with N = 0, the retention ceiling); LoRA r = 2, 8, 32 (α = 2r, all body
//! matrices); at the budget of LoRA r = 8, K = (m + n)·8 entries per matrix, LIFT (filter rank
//! 8, refresh every 100 steps), top-|W| (no rank reduction, same refresh) and random-K
//! (fixed); LIFT at the budget of LoRA r = 32 (filter rank 32); KappaTune with N = 3 of the 9
//! body matrices, lowest-κ, highest-κ and random; block expansion of blocks 1 and 3 (lerp
//! α = 0.5 fixed, mse divergence, λ = 0, 0.1, 1), with accuracy after folding the copies back
//! too, and the card's continued pre-training setting (learned per-example gate, cosine
//! divergence, λ = 1).
//!
//! Optimizer: AdamW lr 1e-3, β = (0.9, 0.999), eps 1e-8, no weight decay, for every method;
//! pre-training 2 epochs of the 60,000 Fashion-MNIST training images (batch 128); fine-tuning
//! 3 epochs of the target's training digits (batch 64). Output (`--out`, default
//! `bench-out/finetune`): `results.json` and `report.html`. `--quick`: small data and
//! network, one seed, a smoke check.

pub mod claims;
pub mod page;

use crate::Progress;
use crate::machine::write_json;
use crate::units::bytes;
use anyhow::{Context, Result, anyhow};
use engram_learn::data::{self, Dataset};
use engram_learn::eval::accuracy_rows;
use engram_learn::model::params::param_count;
use engram_learn::model::resmlp::placement;
use engram_learn::model::{ModelConfig, Net};
use engram_learn::optim::{OptimConfig, OptimKind};
use engram_learn::scenario::{EvalMode, EvalPlan, Scenario, Task, Transform};
use engram_learn::train::{Start, TrainConfig, Trainer};
use engram_report::report::MeanSpread;
use engram_weights::rng::Rng;
use page::{FinetuneResults, MethodSummary, render_finetune, verdict};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::Instant;

/// Settings of `engram bench finetune`.
#[derive(Clone, Debug)]
pub struct Options {
    /// Small data and network, one seed: a smoke check.
    pub quick: bool,
    /// Output folder (default bench-out/finetune, or bench-out/finetune-quick).
    pub out: Option<PathBuf>,
    /// Seeds 0..N.
    pub seeds: u64,
    /// Fine-tuning epochs.
    pub epochs: usize,
    /// Pre-training epochs.
    pub pretrain_epochs: usize,
    /// Learning rate of every fine-tuning run.
    pub lr: f64,
    /// Learning rate of the pre-training.
    pub pretrain_lr: f64,
    /// Only the methods whose label contains one of these words (e.g. lift, lora).
    pub only: Vec<String>,
    /// Folder searched first for the data sets.
    pub data_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            quick: false,
            out: None,
            seeds: 3,
            epochs: 3,
            pretrain_epochs: 2,
            lr: 1e-3,
            pretrain_lr: 1e-3,
            only: Vec::new(),
            data_dir: None,
        }
    }
}

impl Options {
    /// The output folder.
    pub fn out(&self) -> PathBuf {
        self.out.clone().unwrap_or_else(|| {
            PathBuf::from(if self.quick {
                "bench-out/finetune-quick"
            } else {
                "bench-out/finetune"
            })
        })
    }
}

/// Residual blocks of the testbed network (block expansion copies blocks 1 and 3 of them).
const BLOCKS: usize = 4;

/// A method: its label in the tables, the strategy and its parameters.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Method {
    pub label: String,
    pub strategy: String,
    pub params: Value,
}

impl Method {
    fn new(label: impl Into<String>, strategy: &str, params: Value) -> Method {
        Method {
            label: label.into(),
            strategy: strategy.to_string(),
            params,
        }
    }

    /// Whether the method folds something back after training (LoRA's adapters are always
    /// folded in the trained weights: the same function; a lerp expansion's copies change it).
    fn merges_back(&self) -> bool {
        self.strategy == "lora"
            || (self.strategy == "block-expansion" && self.params["gate"] == "lerp")
    }
}

/// The methods compared, in table order.
pub fn methods(blocks: usize) -> Vec<Method> {
    let lora = |r: usize| {
        Method::new(
            format!("lora r{r}"),
            "lora",
            json!({"r": r, "alpha": 2 * r}),
        )
    };
    let sparse = |label: &str, selection: &str, r: usize| {
        Method::new(
            format!("{label} r{r}"),
            "lift",
            json!({"selection": selection, "rank": r, "filter-rank": r, "interval": 100}),
        )
    };
    let kappa = |pick: &str| {
        Method::new(
            format!("kappatune {pick} N=3"),
            "kappatune",
            json!({"n": 3, "pick": pick}),
        )
    };
    let b = placement(blocks, 2);
    let bl: Vec<String> = b.iter().map(|x| x.to_string()).collect();
    let expand = |l: f64| {
        Method::new(
            format!("expand {} lerp λ={l}", bl.join("+")),
            "block-expansion",
            json!({"blocks": b, "gate": "lerp", "a": 0.0, "divergence": "mse", "lambda": l}),
        )
    };
    vec![
        Method::new("full", "naive", Value::Null),
        Method::new("head only", "kappatune", json!({"n": 0})),
        lora(2),
        lora(8),
        lora(32),
        sparse("lift", "principal", 8),
        sparse("lift", "principal", 32),
        sparse("top-|W|", "magnitude", 8),
        sparse("random-K", "random", 8),
        kappa("lowest"),
        kappa("highest"),
        kappa("random"),
        expand(0.0),
        expand(0.1),
        expand(1.0),
        // The card's continued-pretraining setting: learned per-example gate, cosine.
        Method::new(
            format!("expand {} dlerp cosine λ=1", bl.join("+")),
            "block-expansion",
            json!({"blocks": b, "gate": "dlerp", "divergence": "cosine", "lambda": 1.0}),
        ),
    ]
}

/// `n` examples of `d` drawn with a seeded generator, in their original order (all when `n`
/// ≥ its size).
fn sample(d: &Dataset, n: usize, key: &str) -> Dataset {
    if n >= d.len() {
        return d.clone();
    }
    let all: Vec<usize> = (0..d.len()).collect();
    d.subset(&Rng::keyed(0, key, 0).choose_sorted(&all, n))
}

/// `a` then `b`, `b`'s labels shifted past `a`'s classes.
fn join(a: &Dataset, b: &Dataset, name: &str) -> Result<Dataset> {
    if a.dim != b.dim {
        anyhow::bail!("{} and {} differ in input size", a.name, b.name);
    }
    let mut x = a.x.clone();
    x.extend_from_slice(&b.x);
    let mut y = a.y.clone();
    y.extend(b.y.iter().map(|&c| c + a.num_classes as u32));
    Ok(Dataset {
        name: name.to_string(),
        x,
        y,
        dim: a.dim,
        image: a.image,
        num_classes: a.num_classes + b.num_classes,
    })
}

/// The two-task Task-IL scenario: the source, then the target through `transform`.
fn scenario(
    src: (&Dataset, &Dataset),
    tgt: (&Dataset, &Dataset),
    transform: Transform,
    name: &str,
) -> Result<Scenario> {
    let train = join(src.0, tgt.0, name)?;
    let test = join(src.1, tgt.1, name)?;
    let sc = src.0.num_classes as u32;
    let tasks = vec![
        Task::new(
            "source",
            (0..sc).collect(),
            (0..src.0.len()).collect(),
            (0..src.1.len()).collect(),
            Transform::None,
        ),
        Task::new(
            name,
            (sc..sc + tgt.0.num_classes as u32).collect(),
            (src.0.len()..train.len()).collect(),
            (src.1.len()..test.len()).collect(),
            transform,
        ),
    ];
    let s = Scenario {
        name: format!("fashion-mnist → {name}"),
        seed: 0,
        eval: EvalMode::TaskIl,
        plan: EvalPlan::EveryTask,
        num_outputs: train.num_classes,
        train,
        test,
        tasks,
    };
    s.validate().map_err(|e| anyhow!("{e}"))?;
    Ok(s)
}

/// One method's result on one target.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Outcome {
    pub method: String,
    pub config: Method,
    /// Percent, target test set, new head.
    pub target_accuracy: f64,
    /// Percent, source test set, old head, after fine-tuning.
    pub source_accuracy: f64,
    /// After folding adapters or expanded blocks back.
    pub merged: Option<Merged>,
    /// Values training may change (the new head's included).
    pub trainable: usize,
    /// Bytes of optimizer state.
    pub optimizer_bytes: usize,
    pub seconds: f64,
    /// Tensors a selection unfroze (KappaTune).
    pub selected: Vec<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Merged {
    pub target_accuracy: f64,
    pub source_accuracy: f64,
}

/// (source, target) accuracy of `net` through their heads.
fn scores(net: &Net, s: &Scenario) -> (f64, f64) {
    let (_, til) = accuracy_rows(net, s, Some(1));
    (til[0], til[1])
}

/// Runs the benchmark; writes `results.json` and `report.html` and returns the JSON (the
/// tables and the claims go to `Output`).
pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<Value> {
    let out = o.out();
    crate::machine::check_out_dir(&out, "--out")?;
    crate::machine::check_json_out(&out.join("results.json"), "--out")?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let dd = o.data_dir.as_deref();
    let fm = data::load("fashion-mnist", dd).map_err(|e| anyhow!("{e}"))?;
    let mn = data::load("mnist", dd).map_err(|e| anyhow!("{e}"))?;
    let (model, seeds, src_train, src_test, tgt_train_n, tgt_test_n) = if o.quick {
        let m = ModelConfig::Resmlp {
            width: 64,
            hidden: 128,
            blocks: BLOCKS,
        };
        (m, 1, 3000, 1000, 1500, 500)
    } else {
        (
            ModelConfig::Resmlp {
                width: 256,
                hidden: 512,
                blocks: BLOCKS,
            },
            o.seeds.max(1),
            usize::MAX,
            usize::MAX,
            usize::MAX,
            usize::MAX,
        )
    };
    let source = (
        sample(&fm.train, src_train, "source-train"),
        sample(&fm.test, src_test, "source-test"),
    );
    let digits = (
        sample(&mn.train, tgt_train_n, "target-train"),
        sample(&mn.test, tgt_test_n, "target-test"),
    );
    let perm = Rng::keyed(0, "mnist-permuted", 0).permutation(digits.0.dim);
    let targets = [
        (
            "mnist",
            scenario(
                (&source.0, &source.1),
                (&digits.0, &digits.1),
                Transform::None,
                "mnist",
            )?,
        ),
        (
            "mnist-permuted",
            scenario(
                (&source.0, &source.1),
                (&digits.0, &digits.1),
                Transform::Permute(perm),
                "mnist-permuted",
            )?,
        ),
    ];
    let adamw = |lr: f64| OptimConfig {
        eps: 1e-8,
        ..OptimConfig::new(OptimKind::Adamw, lr)
    };
    let pre = TrainConfig {
        epochs: o.pretrain_epochs,
        batch_size: 128,
        optimizer: adamw(o.pretrain_lr),
        ..Default::default()
    };
    let ft = TrainConfig {
        epochs: o.epochs,
        batch_size: 64,
        optimizer: adamw(o.lr),
        ..Default::default()
    };
    let chosen: Vec<Method> = methods(BLOCKS)
        .into_iter()
        .filter(|m| o.only.is_empty() || o.only.iter().any(|w| m.label.contains(w.as_str())))
        .collect();
    if chosen.is_empty() {
        anyhow::bail!("--only matches no method");
    }
    let settings = json!({
        "network": model,
        "source": {"data": "fashion-mnist", "train": source.0.len(), "test": source.1.len()},
        "targets": [
            {"name": "mnist", "train": digits.0.len(), "test": digits.1.len()},
            {"name": "mnist-permuted", "train": digits.0.len(), "test": digits.1.len()},
        ],
        "pretrain": pre,
        "finetune": ft,
        "seeds": seeds,
        "threads": rayon::current_num_threads(),
        "quick": o.quick,
    });
    let started = Instant::now();
    let runs_total = seeds as usize * targets.len() * chosen.len();
    let mut source_before = Vec::new();
    let mut kappas = Vec::new();
    let mut runs: Vec<(String, u64, Outcome)> = Vec::new();
    let naive = || engram_learn::strategy::build("naive", &Value::Null).map_err(|e| anyhow!(e));
    for seed in 0..seeds {
        let t0 = Instant::now();
        // Pre-training: the first task of the scenario (the same for both targets: the
        // source data and the seed alone decide it).
        let mut t = Trainer {
            stop_after: Some(1),
            ..Trainer::new(&targets[0].1, model.clone(), pre.clone(), seed, naive()?)
        };
        let label = format!("pre-training s{seed}");
        let (po, pnet) = t
            .run_net(&mut crate::training_progress(&label, progress))
            .map_err(|e| anyhow!("pre-training: {e}"))?;
        progress(Progress::Finish);
        let before = po.accuracy[0][0];
        source_before.push(before);
        kappas
            .push(engram_learn::strategy::kappatune::kappas(&pnet).map_err(|e| anyhow!("κ: {e}"))?);
        let values = engram_learn::model::params::named_values(&pnet);
        progress(Progress::Message(format!(
            "seed {seed}: pre-trained in {:.1} s, source accuracy {before:.1}%",
            t0.elapsed().as_secs_f64()
        )));
        for (tname, s) in &targets {
            for m in &chosen {
                let strategy = engram_learn::strategy::build(&m.strategy, &m.params)
                    .map_err(|e| anyhow!("{}: {e}", m.label))?;
                let mut t = Trainer {
                    start: Some(Start {
                        task: 1,
                        values: values.clone(),
                    }),
                    ..Trainer::new(s, model.clone(), ft.clone(), seed, strategy)
                };
                let label = format!("{tname} {} s{seed}", m.label);
                let (ro, net) = t
                    .run_net(&mut crate::training_progress(&label, progress))
                    .map_err(|e| anyhow!("{tname} {}: {e}", m.label))?;
                progress(Progress::Finish);
                let row = ro.task_il_accuracy.last().cloned().unwrap_or_default();
                let (source_accuracy, target_accuracy) = (row[0], row[1]);
                let merged = match (&net, m.merges_back()) {
                    (Net::ResMlp(r), true) if r.is_expanded() => {
                        let folded = Net::ResMlp(r.clone().merge_back().map_err(|e| anyhow!(e))?);
                        Some(scores(&folded, s))
                    }
                    (_, true) => Some((source_accuracy, target_accuracy)),
                    _ => None,
                };
                let selected = t
                    .strategy
                    .masks()
                    .into_iter()
                    .filter(|(n, _, v)| n.starts_with("kappatune.") && v.get(1) == Some(&1.0))
                    .map(|(n, _, _)| n.trim_start_matches("kappatune.").to_string())
                    .collect();
                let r = Outcome {
                    method: m.label.clone(),
                    config: m.clone(),
                    target_accuracy,
                    source_accuracy,
                    merged: merged.map(|(source_accuracy, target_accuracy)| Merged {
                        target_accuracy,
                        source_accuracy,
                    }),
                    trainable: ro.trainable_values.unwrap_or_else(|| param_count(&net)),
                    optimizer_bytes: ro.optimizer_bytes as usize,
                    seconds: ro.seconds_per_task.last().copied().unwrap_or(0.0),
                    selected,
                };
                progress(Progress::Message(format!(
                    "[{}/{runs_total}] {tname:15} {:28} target {:5.1}%  source {:5.1}%  {:.1} s",
                    runs.len() + 1,
                    r.method,
                    r.target_accuracy,
                    r.source_accuracy,
                    r.seconds
                )));
                runs.push((tname.to_string(), seed, r));
            }
        }
    }
    let summary = summarize(&targets.map(|t| t.0.to_string()), &chosen, &runs)?;
    let claims = claims::judge(&summary);
    let results = FinetuneResults {
        settings,
        source_before,
        kappas,
        summary,
        claims,
        runs: json!(
            runs.iter()
                .map(|(t, s, o)| json!({"target": t, "seed": s, "outcome": o}))
                .collect::<Vec<_>>()
        ),
    };
    write_json(&out.join("results.json"), &results)?;
    engram_ckpt::write_atomic(
        &out.join("report.html"),
        render_finetune(&results).as_bytes(),
    )?;
    let mut text = render_text(&results);
    text += &format!(
        "{} runs in {:.0} s; results: {}, report: {}\n",
        runs.len(),
        started.elapsed().as_secs_f64(),
        out.join("results.json").display(),
        out.join("report.html").display()
    );
    progress(Progress::Output(text));
    Ok(serde_json::to_value(&results)?)
}

fn summarize(
    targets: &[String],
    methods: &[Method],
    runs: &[(String, u64, Outcome)],
) -> Result<Vec<MethodSummary>> {
    let mut out = Vec::new();
    for t in targets {
        for m in methods {
            let label = m.label.clone();
            let rs: Vec<&Outcome> = runs
                .iter()
                .filter(|(tt, _, o)| tt == t && o.method == label)
                .map(|(_, _, o)| o)
                .collect();
            let of = |f: &dyn Fn(&Outcome) -> Option<f64>| {
                let v: Vec<f64> = rs.iter().filter_map(|o| f(o)).collect();
                MeanSpread::of(&v)
            };
            let need = |x: Option<MeanSpread>| x.ok_or_else(|| anyhow!("{t} {label}: no runs"));
            out.push(MethodSummary {
                target: t.clone(),
                method: label.clone(),
                trainable: rs.iter().map(|o| o.trainable).min().unwrap_or(0),
                trainable_max: rs.iter().map(|o| o.trainable).max().unwrap_or(0),
                optimizer_bytes: rs.iter().map(|o| o.optimizer_bytes).max().unwrap_or(0),
                target_accuracy: need(of(&|o| Some(o.target_accuracy)))?,
                source_accuracy: need(of(&|o| Some(o.source_accuracy)))?,
                merged_target_accuracy: of(&|o| o.merged.as_ref().map(|m| m.target_accuracy)),
                merged_source_accuracy: of(&|o| o.merged.as_ref().map(|m| m.source_accuracy)),
                seconds: need(of(&|o| Some(o.seconds)))?,
                selected: rs.iter().map(|o| o.selected.clone()).collect(),
            });
        }
    }
    Ok(out)
}

/// The tables of a run: κ of the pre-trained body, then per target every method's trainable
/// values, optimizer state, target and source accuracy and time; then the claims.
pub fn render_text(r: &FinetuneResults) -> String {
    let mut o = String::new();
    let f = |m: &MeanSpread| m.format_with(|x| format!("{x:.1}"));
    if let Some(k) = r.kappas.first() {
        o += "κ of the pre-trained body (seed 0):\n";
        for (n, v) in k {
            o += &format!("  {n:24} {v:10.3e}\n");
        }
    }
    let mut target = "";
    for m in &r.summary {
        if m.target != target {
            target = &m.target;
            o += &format!(
                "\ntarget {target} (source before: {})\n",
                r.source_before
                    .iter()
                    .map(|a| format!("{a:.1}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            o += &format!(
                "{:30} {:>15} {:>12} {:>13} {:>13} {:>8}\n",
                "method", "trainable", "optim state", "target %", "source kept %", "seconds"
            );
        }
        o += &format!(
            "{:30} {:>15} {:>12} {:>13} {:>13} {:>8.1}\n",
            m.method,
            if m.trainable == m.trainable_max {
                m.trainable.to_string()
            } else {
                format!("{}–{}", m.trainable, m.trainable_max)
            },
            bytes(m.optimizer_bytes as u64),
            f(&m.target_accuracy),
            f(&m.source_accuracy),
            m.seconds.mean
        );
    }
    o.push('\n');
    for c in &r.claims {
        o += &format!(
            "[{}] {}: {}\n      {}\n",
            verdict(c),
            c.target,
            c.claim,
            c.evidence
        );
    }
    o
}
