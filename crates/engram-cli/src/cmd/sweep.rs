//! `engram sweep plan|run|emit|status`: many runs, each addressable, idempotent and resumable;
//! engram plans and runs them locally or writes the script for Slurm, GNU parallel or Ray.

use super::Ctx;
use super::util::print_json;
use anyhow::{Result, bail};
use engram_bench::sweep::emit::{Engine, ParallelOptions, SlurmOptions};
use engram_bench::sweep::{plan, runner, status};
use std::path::PathBuf;

const PLAN_HELP: &str = "A sweep file (TOML):

  name = \"lr-sweep\"            # optional: names the Slurm job
  base = \"run.toml\"            # the run file every run starts from (relative to this file),
                               # or a [base] table holding a whole run file
  seeds = [0, 1, 2]            # each sets `seed` and `scenario.seed` (unless the grid sets them)
  [grid]                       # dotted keys into the run file, each a list of values
  \"train.optimizer.lr\" = [1e-3, 1e-4]
  strategy = [{ name = \"naive\" }, { name = \"ewc\", lambda = 100.0 }]   # a table replaces the
                               # whole sub-table: parameters that only some choices have

Seeds: a curriculum's phases keep their own `scenario.seed`s (set them in the grid to vary
them). With your own data split by `test-fraction`, the split follows `scenario.seed`, so
each seed is also tested on its own held-out examples (a seeded split per run, as with
repeated random splits); give test files to keep one test set.

Runs: every combination of the grid's values, times the seeds (at most 10000). Each run gets
RUNS/<id>/run.toml, its complete run file with `name = \"<id>\"`; the id is 16 hex digits of
SHA-256 over the run file (keys sorted), engram's version and the seed, so the same settings
always get the same id. Relative paths in a `dataset = { kind = ..., path = ... }` table and in
[start] checkpoint are made absolute against the file that wrote them (the run file moves).

RUNS/jobs.txt: one complete command per run,
  ENGRAM --threads T train --config <id>/run.toml --out . --if-needed
run from RUNS/ (every script `cd`s there, so RUNS can be mounted elsewhere on other
machines); a run is done exactly when RUNS/<id>/results.json exists, and running a line again
does nothing for a done run and resumes an interrupted one. RUNS/ids.txt: the id of each line.
RUNS/sweep.json: the plan (each run's id, grid point and seed), the sweep file, engram's
version. Planning again is a no-op for the runs that exist; nothing is ever removed.";

const RUN_HELP: &str =
    "Runs every run of RUNS not done, at most --jobs at once, each line of RUNS/jobs.txt
exactly as written (through sh, from RUNS/). --jobs is lowered, with a note, where --jobs ×
--threads-per-run would exceed the cores. Each run's output is appended to RUNS/<id>/log.txt
under a header per attempt, its attempts recorded in RUNS/<id>/attempts.json; RUNS/<id>/.running
is locked while it runs (a second runner leaves it alone). A failed run is tried again at the
end of the queue until it has had 1 + --retries attempts; an interrupted one (Ctrl-C, a killed
machine) resumes from its checkpoint the next time. At the end RUNS/status.json holds every
run's state; the exit status is 1 if any run is not done, with the failed ids and their logs.";

#[derive(clap::Subcommand)]
pub enum SweepCmd {
    /// Expand a sweep file (a grid × seeds over a base run file) into one run folder per run,
    /// with stable ids, RUNS/sweep.json and the jobs file RUNS/jobs.txt.
    #[command(after_help = PLAN_HELP)]
    Plan(PlanArgs),
    /// Run a planned sweep on this machine: bounded concurrency, per-run logs, skip-if-done,
    /// retries, resume, a live table.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Write a ready-to-submit script: a Slurm job array, GNU parallel, or Ray jobs.
    Emit(EmitArgs),
    /// Show where a sweep stands: counts of done, running, failed, started (checkpoint, no
    /// results) and pending runs, and one line per run with its final accuracy.
    Status(StatusArgs),
}

#[derive(clap::Args)]
pub struct PlanArgs {
    /// The sweep file (TOML).
    pub sweep: PathBuf,
    /// The sweep folder.
    #[arg(short, long)]
    pub out: PathBuf,
    /// The program at the start of every jobs line (default: this engram binary's absolute
    /// path; give `engram` where the runs go to machines that have it on their PATH).
    #[arg(long, value_name = "PROGRAM")]
    pub engram: Option<String>,
    /// Worker threads of each run (`--threads` of every jobs line).
    #[arg(long, default_value_t = 1, value_name = "T")]
    pub threads_per_run: usize,
    /// Replace the plan of another sweep in RUNS (its run folders and results are kept).
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// The sweep folder (planned by `engram sweep plan`).
    pub runs: PathBuf,
    /// Runs at once.
    #[arg(short, long, default_value_t = 1, value_name = "K")]
    pub jobs: usize,
    /// Threads per run: must be the plan's (its jobs lines pass it); default the plan's.
    #[arg(long, value_name = "T")]
    pub threads_per_run: Option<usize>,
    /// Attempts after the first for a run that fails.
    #[arg(long, default_value_t = 0, value_name = "R")]
    pub retries: usize,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("engine").required(true).args(["slurm", "parallel", "ray"])))]
pub struct EmitArgs {
    /// The sweep folder.
    pub runs: PathBuf,
    /// RUNS/sweep.slurm: a job array, one array task per --pack jobs lines
    /// (`sbatch --wait RUNS/sweep.slurm`).
    #[arg(long)]
    pub slurm: bool,
    /// RUNS/sweep-parallel.sh: GNU parallel over the jobs file with its joblog
    /// (RUNS/parallel.joblog; a line whose run is done is skipped), locally or with --sshloginfile.
    #[arg(long)]
    pub parallel: bool,
    /// RUNS/sweep_ray.py: one Ray job per run not done, submitted to RAY_ADDRESS and waited for.
    #[arg(long)]
    pub ray: bool,
    /// Slurm: array tasks at once (`--array=0-N%LIMIT`).
    #[arg(long, value_name = "N", conflicts_with_all = ["parallel", "ray"])]
    pub array_limit: Option<usize>,
    /// Slurm: jobs lines per array task, run in order (short runs share an allocation;
    /// default 1).
    #[arg(long, value_name = "P", conflicts_with_all = ["parallel", "ray"])]
    pub pack: Option<usize>,
    /// Slurm: the partition.
    #[arg(long, value_name = "X", conflicts_with_all = ["parallel", "ray"])]
    pub partition: Option<String>,
    /// Slurm: time limit of one array task (HH:MM:SS).
    #[arg(long, value_name = "HH:MM:SS", conflicts_with_all = ["parallel", "ray"])]
    pub time: Option<String>,
    /// Slurm: CPUs per array task (default: the plan's threads per run).
    #[arg(long, value_name = "T", conflicts_with_all = ["parallel", "ray"])]
    pub cpus: Option<usize>,
    /// GNU parallel: machines to run on (RUNS at the same path on each; plan with
    /// `--engram engram` if engram is on their PATH rather than at this binary's path).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["slurm", "ray"])]
    pub sshloginfile: Option<PathBuf>,
    /// GNU parallel: runs at once per machine (default: cores / threads per run).
    #[arg(short, long, value_name = "K", conflicts_with_all = ["slurm", "ray"])]
    pub jobs: Option<usize>,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// The sweep folder.
    pub runs: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, c: SweepCmd) -> Result<()> {
    match c {
        SweepCmd::Plan(a) => {
            let p = plan::plan(&plan::PlanOptions {
                sweep: a.sweep,
                out: a.out.clone(),
                program: a.engram,
                threads_per_run: a.threads_per_run,
                force: a.force,
            })?;
            if !ctx.quiet {
                let n = p.plan.runs.len();
                println!(
                    "planned {n} runs into {} ({} new, {} done); jobs: {}",
                    a.out.display(),
                    p.new_runs,
                    p.done,
                    a.out.join(engram_bench::sweep::JOBS).display()
                );
                println!("run them: engram sweep run {} --jobs K", a.out.display());
            }
            Ok(())
        }
        SweepCmd::Run(a) => {
            let plan = engram_bench::sweep::read_plan(&a.runs)?;
            let opts = runner::RunnerOptions {
                jobs: a.jobs,
                threads_per_run: a.threads_per_run.unwrap_or(plan.threads_per_run),
                retries: a.retries,
                progress: !ctx.quiet,
            };
            let out = runner::run_sweep(&a.runs, &opts)?;
            let bad: Vec<String> = out
                .iter()
                .filter(|o| o.status == "failed" || o.status == "busy")
                .map(|o| {
                    format!(
                        "  {} ({}, {} attempts): {}",
                        o.id,
                        o.status,
                        o.attempts,
                        a.runs.join(&o.id).join(runner::LOG).display()
                    )
                })
                .collect();
            if !bad.is_empty() {
                bail!(
                    "{} of {} runs not done:\n{}",
                    bad.len(),
                    out.len(),
                    bad.join("\n")
                );
            }
            if !ctx.quiet {
                let ran = out.iter().filter(|o| o.status == "done").count();
                println!(
                    "{} runs done ({ran} run now, {} were done); status: {}",
                    out.len(),
                    out.len() - ran,
                    a.runs.join(engram_bench::sweep::STATUS_JSON).display()
                );
            }
            Ok(())
        }
        SweepCmd::Emit(a) => {
            let engine = if a.slurm {
                Engine::Slurm(SlurmOptions {
                    array_limit: a.array_limit,
                    pack: a.pack.unwrap_or(1),
                    partition: a.partition,
                    time: a.time,
                    cpus: a.cpus,
                })
            } else if a.parallel {
                Engine::Parallel(ParallelOptions {
                    sshloginfile: a.sshloginfile,
                    jobs: a.jobs,
                })
            } else {
                Engine::Ray
            };
            let e = engram_bench::sweep::emit::emit(&a.runs, &engine)?;
            if !ctx.quiet {
                println!("wrote {}", e.script.display());
                println!("submit: {}", e.submit);
            }
            Ok(())
        }
        SweepCmd::Status(a) => {
            let s = status::status(&a.runs)?;
            if a.json {
                return print_json(&s);
            }
            print!("{}", status::render(&s));
            Ok(())
        }
    }
}
