//! `engram evolve`: CMA-ES over a merge's parameters against a user's score command (as
//! mergekit-evolve), candidates evaluated as jobs of the sweep runner; `engram evolve eval`
//! is the job of one candidate.

use super::Ctx;
use super::progress::Reporter;
use super::util::{emit, print_json};
use anyhow::{Context, Result, bail};
use engram_bench::evolve::{self, candidate};
use engram_bench::sweep::runner::RunnerOptions;
use std::path::PathBuf;

const HELP: &str = "The config (YAML):

  merge_method: task_arithmetic    # an engram merge method with per-model weight (density)
  base_model: base/                # paths: from the current folder, else the config's
  models: [ft-a/, ft-b/, ft-c/]
  parameters: {lambda: 1.0}        # fixed global merge parameters (optional)
  search:
    weight: [0.0, 1.5]             # every model's weight, within these bounds
    density: [0.1, 1.0]            # every model's density (ties, dare_*, ...; optional)
    layer_groups: 1                # values per model and parameter over depth: with N > 1,
                                   # mergekit's gradient list of N anchors over the layers
  score:
    command: \"engram study merge8-score --study m8 {model}\"
                                   # sh -c; {model}: the merged model's folder (quoted);
                                   # a list is argv run without a shell
    maximize: true                 # false: lower is better
    timeout: 3600                  # seconds per candidate
  population: 10                   # default 4 + floor(3 ln n), n the searched values
  generations: 10
  sigma0: 0.25                     # initial step, a share of each bound's width
  seed: 0
  dtype: float32                   # the candidates' output dtype (default: the base's)

The score command runs in the current folder and must print the score as the last line of its
stdout. The search runs in [0, 1]^n (each coordinate scaled to its bounds) from the centre;
a sample outside is mirrored into the box and the mirrored point is what CMA-ES learns from.

Output folder: OUT/gen-G/cand-I/candidate.yml (a mergekit config), score.json once evaluated
(the done file), log.txt (the job's output); OUT/evolve.json (every candidate's parameters and
score, the best of each generation); OUT/best.yml (the best config: engram merge OUT/best.yml
-o MERGED). Each candidate is the job `engram evolve eval OUT/gen-G/cand-I`, run by the
sweep runner (--jobs at once). Rerunning with the same config continues the search:
evaluated candidates are read back, and a larger --generations goes further.

Examples:
  engram evolve evolve.yml -o evolve-out --jobs 2
  engram merge evolve-out/best.yml -o merged/";

#[derive(clap::Args)]
#[command(
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = HELP
)]
pub struct Args {
    #[command(subcommand)]
    pub job: Option<EvolveCmd>,
    /// The evolve configuration (YAML).
    #[arg(required = true)]
    pub config: Option<PathBuf>,
    /// Output folder (candidates, evolve.json, best.yml); a rerun continues the search in it.
    #[arg(short, long, required = true)]
    pub out: Option<PathBuf>,
    /// Candidates evaluated at once.
    #[arg(short, long, default_value_t = 1, value_name = "K")]
    pub jobs: usize,
    /// Threads of each candidate's job (merge and score command).
    #[arg(long, default_value_t = 1, value_name = "T")]
    pub threads_per_run: usize,
    /// Attempts after the first for a candidate whose job fails.
    #[arg(long, default_value_t = 0, value_name = "R")]
    pub retries: usize,
    /// Generations (default: the config's, else 10); more than a finished run had continues it.
    #[arg(long, value_name = "G")]
    pub generations: Option<usize>,
    /// Candidates per generation (default: the config's, else 4 + floor(3 ln n)).
    #[arg(long, value_name = "P")]
    pub population: Option<usize>,
    /// Seed of the search (default: the config's, else 0).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Keep every candidate's merged model (OUT/gen-G/cand-I/model/).
    #[arg(long)]
    pub keep_models: bool,
    /// Print evolve.json instead of the summary line.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Subcommand)]
pub enum EvolveCmd {
    /// The job of one candidate: merge DIR/candidate.yml into DIR/model/, run the search's
    /// score command on it, write DIR/score.json, remove the model (unless --keep-models).
    #[command(hide = true)]
    Eval(EvalArgs),
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The candidate's folder (OUT/gen-G/cand-I).
    pub dir: PathBuf,
    /// Keep the merged model.
    #[arg(long)]
    pub keep_models: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if let Some(EvolveCmd::Eval(e)) = a.job {
        let s = candidate::eval(&e.dir, e.keep_models)?;
        if !ctx.quiet {
            eprintln!(
                "{}: score {} (merge {:.2} s, score {:.2} s)",
                e.dir.display(),
                s.score,
                s.merge_seconds,
                s.score_seconds
            );
        }
        return Ok(());
    }
    let (Some(config), Some(out)) = (a.config, a.out) else {
        bail!("give the config and -o OUT");
    };
    let o = evolve::Options {
        config,
        out: out.clone(),
        generations: a.generations,
        population: a.population,
        seed: a.seed,
        runner: RunnerOptions {
            jobs: a.jobs,
            threads_per_run: a.threads_per_run,
            retries: a.retries,
            progress: !ctx.quiet,
        },
        keep_models: a.keep_models,
        exe: std::env::current_exe().context("finding this engram binary for the jobs")?,
    };
    let mut r = Reporter::new(ctx, false);
    let mut done = None;
    let res = evolve::run(&o, &mut |p| r.show(p)).map(|v| done = Some(v));
    r.finish(res)?;
    let res = done.context("the search returned no results")?;
    if a.json {
        return print_json(&res);
    }
    if !ctx.quiet {
        emit(&format!(
            "evolve: best score {} ({}) of {} candidates in {} generations ({} evaluated now); {}\n",
            res.best.score,
            res.best.id,
            res.evaluations,
            res.generations.len(),
            res.evaluated_now,
            out.join(evolve::run::BEST_FILE).display()
        ))?;
    }
    Ok(())
}
