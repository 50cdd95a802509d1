//! `engram train --config run.toml`: one continual-learning run, with checkpoints after each
//! task (resumable), results as JSON in the report's format.

use crate::Ctx;
use anyhow::{Context, Result, bail};
use engram_learn::config::RunConfig;
use engram_learn::metrics::{AccuracyMatrix, Costs, Summary};
use engram_learn::train::{Event, RunOutput, Trainer};
use engram_report::results::RunResults;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(
    after_help = "A run file:\n\n  seed = 0\n  [scenario]\n  kind = \"class-incremental\"   # task-incremental, permuted, rotated, scole, joint\n  dataset = \"fashion-mnist\"     # mnist, blobs\n  tasks = 5\n  classes-per-task = 2\n  [model]\n  kind = \"mlp\"                  # cnn, vit\n  hidden = [400, 400]\n  [strategy]\n  name = \"naive\"                # see `engram strategies`\n  [train]\n  epochs = 1\n  batch-size = 128\n  [train.optimizer]\n  kind = \"adam\"                 # sgd, adamw\n  lr = 0.001"
)]
pub struct Args {
    /// The run file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Folder of runs; the run writes OUT/<name>/results.json and its checkpoints.
    #[arg(long, short, default_value = "runs")]
    pub out: PathBuf,
    /// Continue from the run's last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Discard an existing checkpoint of this run and start over.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Where the data sets are (default: the system packages' locations).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Stop after this many tasks (the checkpoint lets `--resume` finish the run).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let text = std::fs::read_to_string(&a.config)
        .with_context(|| format!("cannot read {}", a.config.display()))?;
    let cfg =
        RunConfig::parse_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.config.display()))?;
    let dir = a.out.join(cfg.run_name());
    let results = run_config(
        ctx,
        &cfg,
        &dir,
        a.data_dir.as_deref(),
        a.resume,
        a.overwrite,
        a.stop_after,
    )?;
    if !ctx.quiet
        && let Some(r) = results
    {
        let s = &r.summary;
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        println!(
            "{}: ACC {} AIA {} forgetting {} BWT {} FWT {} ECE {} ({:.1} s)",
            r.display_name(),
            f(s.acc),
            f(s.aia),
            f(s.forgetting),
            f(s.bwt),
            f(s.fwt),
            f(s.ece),
            s.total_time_s().unwrap_or(0.0)
        );
        println!("results: {}", dir.join("results.json").display());
    }
    Ok(())
}

/// Runs one configuration into `dir` (results.json, checkpoint/); `None` if stopped early.
pub fn run_config(
    ctx: &Ctx,
    cfg: &RunConfig,
    dir: &Path,
    data_dir: Option<&Path>,
    resume: bool,
    overwrite: bool,
    stop_after: Option<usize>,
) -> Result<Option<RunResults>> {
    let ckpt = dir.join("checkpoint");
    if ckpt.join("state.json").exists() && !resume {
        if overwrite {
            std::fs::remove_dir_all(&ckpt)
                .with_context(|| format!("removing {}", ckpt.display()))?;
        } else {
            bail!(
                "{} holds a checkpoint of this run: pass --resume to continue it or --overwrite to start over",
                dir.display()
            );
        }
    }
    let scenario = cfg
        .scenario
        .build(data_dir)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let out = train_on(ctx, cfg, &scenario, Some(ckpt), stop_after)?;
    let done = match stop_after {
        Some(n) => n >= scenario.tasks.len(),
        None => true,
    };
    if !done {
        return Ok(None);
    }
    let results = to_results(cfg, &scenario, out)?;
    std::fs::create_dir_all(dir)?;
    engram_ckpt::write_atomic(
        &dir.join("results.json"),
        (serde_json::to_string_pretty(&results)? + "\n").as_bytes(),
    )?;
    Ok(Some(results))
}

/// Trains `cfg`'s model and strategy on an already built `scenario` (its `cfg.scenario` is
/// not consulted), with progress bars unless quiet; checkpoints in `checkpoint_dir` if given
/// (and resumes from it).
pub fn train_on(
    ctx: &Ctx,
    cfg: &RunConfig,
    scenario: &engram_learn::scenario::Scenario,
    checkpoint_dir: Option<PathBuf>,
    stop_after: Option<usize>,
) -> Result<RunOutput> {
    let strategy = engram_learn::strategy::build(
        &cfg.strategy.name,
        &serde_json::Value::Object(cfg.strategy.params.clone()),
    )
    .map_err(|e| anyhow::anyhow!(e))?;
    let mut trainer = Trainer {
        scenario,
        model: cfg.model.clone(),
        train: cfg.train.clone(),
        seed: cfg.seed,
        strategy,
        checkpoint_dir,
        stop_after,
    };
    let mp = if ctx.quiet {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let tasks_bar = mp.add(ProgressBar::new(scenario.tasks.len() as u64));
    tasks_bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] task {pos}/{len} {elapsed}<{eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    tasks_bar.set_message(cfg.strategy.name.clone());
    let step_bar = mp.add(ProgressBar::new(0));
    step_bar.set_style(
        ProgressStyle::with_template("{msg:>12} [{bar:30}] {pos}/{len} steps {elapsed}<{eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let out: RunOutput = trainer
        .run(&mut |e| match e {
            Event::Resumed { completed } => tasks_bar.set_position(completed as u64),
            Event::TaskStart { task, steps, .. } => {
                step_bar.set_length(steps as u64);
                step_bar.set_position(0);
                step_bar.set_message(format!("task {}", task + 1));
            }
            Event::Step { step, loss, .. } => {
                step_bar.set_position(step as u64);
                if step % 20 == 0 {
                    step_bar.set_message(format!("loss {loss:.3}"));
                }
            }
            Event::TaskEnd { .. } => tasks_bar.inc(1),
        })
        .map_err(|e| anyhow::anyhow!("run {}: {e}", cfg.run_name()))?;
    step_bar.finish_and_clear();
    tasks_bar.finish_and_clear();
    Ok(out)
}

/// A run's output in the report's [`RunResults`] format.
pub fn to_results(
    cfg: &RunConfig,
    s: &engram_learn::scenario::Scenario,
    out: RunOutput,
) -> Result<RunResults> {
    let costs = Costs {
        time_per_task_s: out.seconds_per_task.clone(),
        peak_memory_bytes: Some(out.peak_memory_bytes),
        state_bytes: Some(out.strategy_state_bytes),
    };
    let summary = if out.accuracy.is_empty() {
        // All-class plans (long streams): no T × T matrix; the final all-class accuracy.
        serde_json::json!({
            "acc": out.all_class_curve.last(),
            "ece": out.ece,
            "time_per_task_s": costs.time_per_task_s,
            "peak_memory_bytes": costs.peak_memory_bytes,
            "state_bytes": costs.state_bytes,
        })
    } else {
        let m = AccuracyMatrix::from_rows(&out.eval_mode, out.accuracy.clone())
            .and_then(|m| m.with_baseline(out.baseline.clone()))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut v = serde_json::to_value(Summary::from(&m, Some(out.ece), costs))?;
        if let Ok(til) = AccuracyMatrix::from_rows("task-il", out.task_il_accuracy.clone()) {
            v["task_il_acc"] = til.final_accuracy().into();
        }
        v
    };
    Ok(RunResults {
        name: cfg.run_name(),
        strategy: cfg.strategy.name.clone(),
        scenario: s.name.clone(),
        eval_mode: out.eval_mode.clone(),
        seed: cfg.seed,
        tasks: s.tasks.iter().map(|t| t.name.clone()).collect(),
        accuracy: out.accuracy.clone(),
        task_il_accuracy: (!out.task_il_accuracy.is_empty()).then(|| out.task_il_accuracy.clone()),
        baseline: (!out.baseline.is_empty() && !out.accuracy.is_empty())
            .then(|| out.baseline.clone()),
        summary: serde_json::from_value(summary)?,
        all_class_curve: (!out.all_class_curve.is_empty()).then(|| out.all_class_curve.clone()),
        params: serde_json::json!({"config": cfg, "model_params": out.params, "current_task_curve": out.current_task_curve}),
    })
}
