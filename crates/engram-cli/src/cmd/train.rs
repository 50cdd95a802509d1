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
use engram_learn::run::events::{Logged, seen_mean};
use engram_learn::train::Event;
use engram_report::results::RunResults;
use engram_report::tensorboard::EventWriter;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(
    after_help = "A run file:\n\n  seed = 0\n  [scenario]\n  kind = \"class-incremental\"   # task-incremental, permuted, rotated, scole, joint, domains\n  dataset = \"fashion-mnist\"     # mnist, blobs, or your own data (below)\n  tasks = 5\n  classes-per-task = 2\n  [model]\n  kind = \"mlp\"                  # resmlp, cnn, vit\n  hidden = [400, 400]\n  [strategy]\n  name = \"naive\"                # see `engram strategies`\n  [train]\n  epochs = 1\n  batch-size = 128\n  reset-optimizer = true       # false: carry the optimizer state across tasks (Avalanche)\n  masking = \"none\"             # group: CE over the batch's classes only (SCoLe)\n  [train.optimizer]\n  kind = \"adam\"                 # sgd, adamw\n  lr = 0.001\n  [train.adversarial]           # optional: adversarial training (PGD on every batch)\n  method = \"pgd-at\"             # dro-softmax (r, rho), gairat (lambda, begin-epoch)\n  epsilon = 0.1                # l-inf radius; norm = \"l2\" for l2\n  step = 0.025\n  steps = 5\n  [start]                      # optional: begin from saved weights (every parameter by name)\n  checkpoint = \"model.safetensors\"\n  task = 0\n\nA curriculum: [[phase]] tables instead of [scenario] and [strategy], trained in order\n(OUT/<name>/results.json, model.safetensors, phase-<phase>.safetensors):\n\n  [[phase]]\n  name = \"a\"\n  scenario = { kind = \"joint\", dataset = \"fashion-mnist\" }\n  epochs = 2                   # default: [train] epochs; lr: default [train.optimizer] lr\n  [[phase]]\n  name = \"b\"\n  scenario = { kind = \"joint\", dataset = \"mnist\" }\n  lr = 1e-4\n  freeze = [\"fc.0.*\"]           # name patterns (* any characters; no *: a name prefix)\n  anchor = { kind = \"l2\", lambda = 100.0 }   # or kind = \"ewc\" (fisher-samples, fisher)\n\nYour own data (relative paths from the run file's folder):\n\n  dataset = { kind = \"npz\", path = \"data.npz\" }   # x_train y_train x_test y_test [domain_train domain_test]\n  dataset = { kind = \"npy\", train-x = \"x.npy\", train-y = \"y.npy\", test-x = \"xt.npy\", test-y = \"yt.npy\" }\n  dataset = { kind = \"idx\", train-images = \"...-idx3-ubyte.gz\", train-labels = \"...\", test-images = \"...\", test-labels = \"...\" }\n  dataset = { kind = \"csv\", train = \"train.csv\", test = \"test.csv\", label = \"label\", domain = \"site\" }\n  dataset = { kind = \"images\", path = \"folder\" }  # folder/train/<class>/*.png|jpg and folder/test/<class>/\n  # every kind: name, num-classes, test-fraction = 0.2 (when no test files),\n  #             domains = [\"a.npz\", \"b.npz\"] (a file per domain)\n  # arrays: layout = \"nchw\" | \"nhwc\", image-shape = [c, h, w]; images: size = [h, w], channels = 1 | 3\n  kind = \"domains\"             # scenario: task t = domain t of the data (order = [\"a\", \"b\"])\n\nEvery run appends OUT/<name>/events.jsonl as it trains (one JSON object per line: run_start,\ntask_start, step with its loss, task_end with the accuracy row, run_end); follow it with\n`tail -f`. --tensorboard DIR also writes TensorBoard event files."
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
    /// Run only what is missing: if OUT/<name>/results.json is there, the run is done (one
    /// line says so; an error if it was made with other settings); else a checkpoint is
    /// resumed (as --resume); else the run starts. For sweeps that are run again after a stop.
    #[arg(long, conflicts_with_all = ["resume", "overwrite"])]
    pub if_needed: bool,
    /// Where the data sets are, the only folder searched (default: the system packages'
    /// locations). The files read and their SHA-256 are recorded in results.json.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// After the run, write the strategy's masks or importance (LIFT's masks of trainable
    /// entries, KappaTune's κ and choice per tensor) to this safetensors file, for use with
    /// another trainer.
    #[arg(long, value_name = "FILE")]
    pub export_masks: Option<PathBuf>,
    /// Also write TensorBoard event files, in DIR/<name>/ (one TensorBoard run per engram
    /// run), as the run trains: `loss` at each step, and after each task `accuracy/task_<i>`,
    /// `accuracy/mean` (over the tasks seen) and `time/task_seconds`, all at the run's step
    /// count across tasks. A run started anew hides the scalars of earlier runs of the same
    /// name; a resumed run hides those of the work it redoes.
    #[arg(long, value_name = "DIR")]
    pub tensorboard: Option<PathBuf>,
    /// Where to train, instead of the run file's `train.device`: cpu (the default), gpu (the
    /// first discrete GPU, through Vulkan) or vulkan-cpu (Vulkan's CPU device, to check the GPU
    /// path without a GPU). gpu and vulkan-cpu need a build with `--features gpu`; the first
    /// GPU epoch includes compiling its kernels.
    #[arg(long, value_name = "DEVICE", value_parser = engram_learn::backend::Compute::NAMES)]
    pub device: Option<String>,
    /// Stop after this many tasks (the checkpoint lets `--resume` finish the run).
    #[arg(long, hide = true)]
    pub stop_after: Option<usize>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let shown = |p: &std::path::Path| esc(&p.display().to_string()).into_owned();
    // Held for the whole run: no output of it may replace the run file.
    let (text, _input) = super::util::read_run_file(&a.config)?;
    let device = a
        .device
        .as_deref()
        .map(engram_learn::backend::Compute::parse)
        .transpose()?;
    let cfg = match RunFile::parse_toml_in(&text, a.config.parent())
        .map_err(|e| anyhow::anyhow!("{}: {e}", shown(&a.config)))?
    {
        RunFile::Run(mut cfg) => {
            if let Some(d) = device {
                cfg.train.device = d;
                cfg.validate()
                    .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
            }
            *cfg
        }
        RunFile::Curriculum(mut cfg) => {
            if let Some(d) = device {
                cfg.train.device = d;
                cfg.validate()
                    .map_err(|e| anyhow::anyhow!("--device: {e}"))?;
            }
            return curriculum(ctx, &a, &cfg);
        }
    };
    let dir = a.out.join(cfg.run_name());
    if a.if_needed && engram_learn::run::finished(&cfg, &dir)?.is_some() {
        return done(ctx, &dir);
    }
    let opts = RunOptions {
        data_dir: a.data_dir.as_deref(),
        resume: a.resume,
        overwrite: a.overwrite,
        stop_after: a.stop_after,
        export_masks: a.export_masks.as_deref(),
        if_needed: a.if_needed,
    };
    let bars = RunBars::new(!ctx.quiet, &esc(&cfg.strategy.name));
    let mut board = Board::new(a.tensorboard.as_deref(), &cfg.run_name());
    let results = engram_learn::run::run_config_with(&cfg, &dir, &opts, &mut |l| {
        board.on(&l);
        bars.on(l.event)
    });
    bars.finish();
    let results = board.finish(results?)?;
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

/// `--if-needed` with the run done: one line, nothing else touched.
fn done(ctx: &Ctx, dir: &std::path::Path) -> Result<()> {
    if !ctx.quiet {
        println!(
            "{}: done already (--if-needed), nothing to run",
            esc(&dir.join("results.json").display().to_string())
        );
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
    if a.if_needed && engram_learn::run::curriculum_finished(cfg, &dir)?.is_some() {
        return done(ctx, &dir);
    }
    let bars = RunBars::new(!ctx.quiet, "curriculum");
    let mut board = Board::new(a.tensorboard.as_deref(), &cfg.run_name());
    let phases = cfg.phases.len();
    // The task bar counts phases: a phase's last task ends it.
    let mut tasks = 0;
    let results =
        engram_learn::run::run_curriculum_with(cfg, &dir, a.data_dir.as_deref(), &mut |l| {
            board.on(&l);
            let k = l.phase.unwrap_or(0);
            let e = match l.event {
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
        });
    bars.finish();
    let results = board.finish(results?)?;
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

/// `--tensorboard DIR`: the run's scalars in a TensorBoard event file in DIR/<name>/, made at
/// the run's first event (a run refused at its start writes none). The first failure to
/// write stops it and is reported when the run is done.
struct Board {
    dir: Option<PathBuf>,
    writer: Option<EventWriter>,
    tasks: usize,
    failed: Option<std::io::Error>,
}

impl Board {
    fn new(root: Option<&Path>, name: &str) -> Board {
        Board {
            dir: root.map(|r| r.join(name)),
            writer: None,
            tasks: 0,
            failed: None,
        }
    }

    fn on(&mut self, l: &Logged) {
        if self.dir.is_some()
            && self.failed.is_none()
            && let Err(e) = self.write(l)
        {
            self.failed = Some(e);
        }
    }

    fn write(&mut self, l: &Logged) -> std::io::Result<()> {
        let w = match (&mut self.writer, &self.dir) {
            (Some(w), _) => w,
            (None, Some(dir)) => {
                let w = self.writer.insert(EventWriter::create(dir)?);
                // TensorBoard drops what it read at and after a restart's step: all of an
                // earlier run of this name (a run started anew), or the work a killed run
                // did after its checkpoint (a resumed run).
                match l.event {
                    Event::Resumed { .. } => w.restart(l.step as i64 + 1)?,
                    _ => w.restart(0)?,
                }
                w
            }
            (None, None) => return Ok(()),
        };
        let step = l.step as i64;
        match &l.event {
            Event::Resumed { .. } => Ok(()),
            Event::TaskStart { tasks, .. } => {
                self.tasks = *tasks;
                Ok(())
            }
            Event::Step { loss, .. } => w.scalars(step, &[("loss", *loss)]),
            Event::TaskEnd {
                task,
                seconds,
                accuracy,
            } => {
                let tags: Vec<String> = match accuracy.len() == self.tasks {
                    true => (0..accuracy.len())
                        .map(|i| format!("accuracy/task_{i}"))
                        .collect(),
                    false => Vec::new(),
                };
                let mut v: Vec<(&str, f32)> = tags
                    .iter()
                    .zip(accuracy)
                    .map(|(t, a)| (t.as_str(), *a as f32))
                    .collect();
                v.push((
                    "accuracy/mean",
                    seen_mean(*task, self.tasks, accuracy) as f32,
                ));
                v.push(("time/task_seconds", *seconds as f32));
                w.scalars(step, &v)?;
                w.flush()
            }
        }
    }

    /// Passes `results` on once what waits is written; else the first failure to write.
    fn finish<T>(mut self, results: T) -> Result<T> {
        if let Some(w) = &mut self.writer
            && self.failed.is_none()
            && let Err(e) = w.flush()
        {
            self.failed = Some(e);
        }
        match self.failed {
            Some(e) => Err(anyhow::anyhow!("--tensorboard: {e}")),
            None => Ok(results),
        }
    }
}
