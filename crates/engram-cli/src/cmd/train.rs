//! `engram train --config run.toml`: one continual-learning run, with checkpoints after each
//! task (resumable), results as JSON in the report's format; or, for a run file with
//! `[[phase]]` tables, a curriculum (phases with frozen tensors and anchors), its results and
//! weights.

use super::Ctx;
use super::progress::RunBars;
use anyhow::Result;
use engram_ckpt::names::esc;
use engram_learn::config::{CurriculumConfig, RunFile};
use engram_learn::run::RunOptions;
use engram_learn::train::Event;
use engram_report::results::RunResults;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    after_help = "A run file:\n\n  seed = 0\n  [scenario]\n  kind = \"class-incremental\"   # task-incremental, permuted, rotated, scole, joint\n  dataset = \"fashion-mnist\"     # mnist, blobs\n  tasks = 5\n  classes-per-task = 2\n  [model]\n  kind = \"mlp\"                  # resmlp, cnn, vit\n  hidden = [400, 400]\n  [strategy]\n  name = \"naive\"                # see `engram strategies`\n  [train]\n  epochs = 1\n  batch-size = 128\n  reset-optimizer = true       # false: carry the optimizer state across tasks (Avalanche)\n  masking = \"none\"             # group: CE over the batch's classes only (SCoLe)\n  [train.optimizer]\n  kind = \"adam\"                 # sgd, adamw\n  lr = 0.001\n  [train.adversarial]           # optional: adversarial training (PGD on every batch)\n  method = \"pgd-at\"             # dro-softmax (r, rho), gairat (lambda, begin-epoch)\n  epsilon = 0.1                # l-inf radius; norm = \"l2\" for l2\n  step = 0.025\n  steps = 5\n  [start]                      # optional: begin from saved weights (every parameter by name)\n  checkpoint = \"model.safetensors\"\n  task = 0\n\nA curriculum: [[phase]] tables instead of [scenario] and [strategy], trained in order\n(OUT/<name>/results.json, model.safetensors, phase-<phase>.safetensors):\n\n  [[phase]]\n  name = \"a\"\n  scenario = { kind = \"joint\", dataset = \"fashion-mnist\" }\n  epochs = 2                   # default: [train] epochs; lr: default [train.optimizer] lr\n  [[phase]]\n  name = \"b\"\n  scenario = { kind = \"joint\", dataset = \"mnist\" }\n  lr = 1e-4\n  freeze = [\"fc.0.*\"]           # name patterns (* any characters; no *: a name prefix)\n  anchor = { kind = \"l2\", lambda = 100.0 }   # or kind = \"ewc\" (fisher-samples, fisher)"
)]
pub struct Args {
    /// The run file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Folder of runs; the run writes OUT/<name>/results.json and its checkpoints.
    #[arg(long, short, default_value = "runs")]
    pub out: PathBuf,
    /// Continue from the run's last checkpoint, which must have been made with the same
    /// settings and data (else an error lists what differs).
    #[arg(long)]
    pub resume: bool,
    /// Discard an existing checkpoint of this run and start over.
    #[arg(long, conflicts_with = "resume")]
    pub overwrite: bool,
    /// Where the data sets are, the only folder searched (default: the system packages'
    /// locations). The files read and their SHA-256 are recorded in results.json.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// After the run, write the strategy's masks or importance (LIFT's masks of trainable
    /// entries, KappaTune's κ and choice per tensor) to this safetensors file, for use with
    /// another trainer.
    #[arg(long, value_name = "FILE")]
    pub export_masks: Option<PathBuf>,
    /// Stop after this many tasks (the checkpoint lets `--resume` finish the run).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let shown = |p: &std::path::Path| esc(&p.display().to_string()).into_owned();
    // Held for the whole run: no output of it may replace the run file.
    let (text, _input) = super::util::read_run_file(&a.config)?;
    let cfg = match RunFile::parse_toml(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", shown(&a.config)))?
    {
        RunFile::Run(cfg) => *cfg,
        RunFile::Curriculum(cfg) => return curriculum(ctx, &a, &cfg),
    };
    let dir = a.out.join(cfg.run_name());
    let opts = RunOptions {
        data_dir: a.data_dir.as_deref(),
        resume: a.resume,
        overwrite: a.overwrite,
        stop_after: a.stop_after,
        export_masks: a.export_masks.as_deref(),
    };
    let bars = RunBars::new(!ctx.quiet, &esc(&cfg.strategy.name));
    let results = engram_learn::run::run_config(&cfg, &dir, &opts, &mut |e| bars.on(e))?;
    bars.finish();
    if !ctx.quiet
        && let Some(r) = results
    {
        let r: RunResults = serde_json::from_value(r)?;
        let s = &r.summary;
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
        println!(
            "{}: ACC {} AIA {} forgetting {} BWT {} FWT {} ECE {} ({:.1} s)",
            esc(&r.display_name()),
            f(s.acc),
            f(s.aia),
            f(s.forgetting),
            f(s.bwt),
            f(s.fwt),
            f(s.ece),
            s.total_time_s().unwrap_or(0.0)
        );
        for n in &r.notes {
            println!("note: {n}");
        }
        println!("results: {}", shown(&dir.join("results.json")));
    }
    Ok(())
}

/// A run file with phases: trained in order, without checkpoints.
fn curriculum(ctx: &Ctx, a: &Args, cfg: &CurriculumConfig) -> Result<()> {
    let shown = |p: &std::path::Path| esc(&p.display().to_string()).into_owned();
    for (set, flag) in [
        (a.resume, "--resume"),
        (a.export_masks.is_some(), "--export-masks"),
        (a.stop_after.is_some(), "--stop-after"),
    ] {
        if set {
            anyhow::bail!(
                "{}: {flag} does not apply to a run file with [[phase]] (a curriculum keeps no \
                 checkpoints or masks; it is run whole)",
                shown(&a.config)
            );
        }
    }
    let dir = a.out.join(cfg.run_name());
    let bars = RunBars::new(!ctx.quiet, "curriculum");
    let phases = cfg.phases.len();
    // The task bar counts phases: a phase's last task ends it.
    let mut tasks = 0;
    let results =
        engram_learn::run::run_curriculum(cfg, &dir, a.data_dir.as_deref(), &mut |k, e| {
            let e = match e {
                Event::TaskStart {
                    tasks: n, steps, ..
                } => {
                    tasks = n;
                    Event::TaskStart {
                        task: k,
                        tasks: phases,
                        steps,
                    }
                }
                Event::TaskEnd { task, .. } if task + 1 < tasks => return,
                e => e,
            };
            bars.on(e)
        })?;
    bars.finish();
    if !ctx.quiet {
        let names: Vec<String> = cfg
            .phases
            .iter()
            .map(|p| esc(&p.name).into_owned())
            .collect();
        for p in results["curriculum"]["phases"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let acc: Vec<String> = p["accuracy"]
                .as_array()
                .into_iter()
                .flatten()
                .zip(&names)
                .map(|(v, n)| format!("{n} {:.2}", v.as_f64().unwrap_or(f64::NAN)))
                .collect();
            println!(
                "phase {}: accuracy {} ({:.1} s)",
                esc(p["name"].as_str().unwrap_or("")),
                acc.join(", "),
                p["seconds"].as_f64().unwrap_or(0.0)
            );
        }
        println!("results: {}", shown(&dir.join("results.json")));
    }
    Ok(())
}
