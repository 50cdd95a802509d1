//! `engram study`: end-to-end studies that train models with engram-learn and then work on
//! their weights with engram-weights. The studies live in engram-bench; here are their
//! arguments, the progress and the printing.

use super::Ctx;
use super::progress::Reporter;
use anyhow::Result;
use engram_bench::{merge8, scole};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Study {
    /// The merge-8 study (B2, B6): eight image tasks from Fashion-MNIST and MNIST digits, one
    /// pre-trained base, eight fine-tunes; Task Arithmetic, TIES, TALL masks, Consensus and
    /// compression, evaluated on real test data, with an HTML report.
    Merge8(Merge8Args),
    /// SCoLe (shared/methods/theory.md): a long stream of recurring 2-class tasks from
    /// Fashion-MNIST and MNIST digits; all-class accuracy over the stream with masking none vs
    /// group and a linear vs weight-normalised head, with an HTML report and the card's claims
    /// judged.
    Scole(ScoleArgs),
    /// Score a merged backbone on a merge-8 study's validation (or test) sets with each
    /// task's own head: prints the mean normalized accuracy in percent (the study's
    /// selection score) as one line, e.g. as `engram evolve`'s score command.
    #[command(name = "merge8-score", after_help = MERGE8_SCORE_HELP)]
    Merge8Score(Merge8ScoreArgs),
}

const MERGE8_SCORE_HELP: &str =
    "The first call writes STUDY/score-cache.safetensors (the tasks' validation and test
examples, and the fine-tuned models' accuracies, which normalize); later calls read only it
and the heads. A cache made from other settings or other models is made anew.

Examples:
  engram study merge8-score --study m8 merged.safetensors
  engram study merge8-score --study m8 merged/ --part test --json";

#[derive(clap::Args)]
pub struct Merge8ScoreArgs {
    /// The study folder (`engram study merge8 --out`).
    #[arg(long)]
    pub study: PathBuf,
    /// The merged backbone: a safetensors file or a model folder (the study's tensor names).
    pub model: PathBuf,
    /// Which split.
    #[arg(long, default_value = "valid", value_parser = ["valid", "test"])]
    pub part: String,
    /// What is printed: normalized (mean of accuracy / fine-tuned accuracy) or accuracy
    /// (mean Task-IL accuracy), both in percent.
    #[arg(long, default_value = "normalized", value_parser = ["normalized", "accuracy"])]
    pub metric: String,
    /// Where the data sets are, if the cache must be made (default: the system packages').
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the per-task accuracies as JSON instead of the number.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ScoleArgs {
    /// Output folder: results.json and report/index.html (replaced together).
    #[arg(short, long, default_value = "bench-out/scole")]
    pub out: PathBuf,
    /// First seed (seeds SEED, SEED+1, ...: stream, subsamples, initial weights, shuffles).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of seeds (default 3; --quick 2).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// A small, fast version (T = 40, Fashion-MNIST only): the pipeline end to end in under a
    /// minute, not the study's numbers.
    #[arg(long)]
    pub quick: bool,
    /// Tasks in the stream (default 500; --quick 40).
    #[arg(long)]
    pub tasks: Option<usize>,
    /// Training examples per task (default 512; --quick 128).
    #[arg(long)]
    pub train_per_task: Option<usize>,
    /// Test examples per class (default 100; --quick 30).
    #[arg(long)]
    pub test_per_class: Option<usize>,
    /// Data sets, comma-separated: fashion-mnist, mnist (default both; --quick fashion-mnist).
    #[arg(long, value_delimiter = ',')]
    pub datasets: Vec<String>,
    /// Leave out the momentum-0.9 arm.
    #[arg(long)]
    pub no_momentum: bool,
    /// Where the data sets are (default: the system packages' locations).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

impl From<ScoleArgs> for scole::Options {
    fn from(a: ScoleArgs) -> Self {
        scole::Options {
            out: a.out,
            seed: a.seed,
            seeds: a.seeds,
            quick: a.quick,
            tasks: a.tasks,
            train_per_task: a.train_per_task,
            test_per_class: a.test_per_class,
            datasets: a.datasets,
            no_momentum: a.no_momentum,
            data_dir: a.data_dir,
        }
    }
}

#[derive(clap::Args)]
pub struct Merge8Args {
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
    /// Start over: remove an earlier study's own files from --out (only where study.json is a
    /// study's settings; other files there are kept).
    #[arg(long)]
    pub overwrite: bool,
}

impl From<Merge8Args> for merge8::Options {
    fn from(a: Merge8Args) -> Self {
        merge8::Options {
            out: a.out,
            seed: a.seed,
            quick: a.quick,
            hidden: a.hidden,
            pretrain_epochs: a.pretrain_epochs,
            finetune_steps: a.finetune_steps,
            finetune_lr: a.finetune_lr,
            data_dir: a.data_dir,
            overwrite: a.overwrite,
        }
    }
}

pub fn run(ctx: &Ctx, s: Study) -> Result<()> {
    // A study's summary is for the person watching: not printed with --quiet.
    let mut r = Reporter::new(ctx, !ctx.quiet);
    let res = match s {
        Study::Merge8(a) => merge8::run(&a.into(), &mut |p| r.show(p)),
        Study::Scole(a) => scole::run(&a.into(), &mut |p| r.show(p)),
        Study::Merge8Score(a) => return merge8_score(a),
    };
    r.finish(res.map(drop))
}

/// `engram study merge8-score`: the score alone on stdout (the last line is the number), or
/// the JSON.
fn merge8_score(a: Merge8ScoreArgs) -> Result<()> {
    use engram_bench::merge8::score::{Metric, ScoreOptions, score};
    use engram_learn::scenario::Part;
    let o = ScoreOptions {
        study: a.study,
        model: a.model,
        part: if a.part == "test" {
            Part::Test
        } else {
            Part::Valid
        },
        metric: if a.metric == "accuracy" {
            Metric::Accuracy
        } else {
            Metric::Normalized
        },
        data_dir: a.data_dir,
    };
    let s = score(&o)?;
    if a.json {
        return super::util::print_json(&s);
    }
    super::util::emit(&format!("{}\n", s.score))
}
