//! The `engram` command: its arguments and which command runs. No algorithms live here; each
//! subcommand is one file in `cmd/` that calls into the library crates, and `cmd/ctx.rs` sets
//! up the process around it (threads, exit codes).

mod cmd;

use clap::{Parser, Subcommand};
use cmd::Ctx;

/// engram: keep what neural networks know while they learn more, and edit it in the weights.
#[derive(Parser)]
#[command(name = "engram", version, about, long_about = None, propagate_version = true)]
struct Cli {
    /// Print no progress bars or summaries (errors still go to stderr).
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Worker threads, 1 to 1024 (default: all cores).
    #[arg(long, global = true, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=cmd::ctx::MAX_THREADS as i64))]
    threads: Option<u16>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List a checkpoint's tensors, shapes, dtypes, sizes and metadata.
    Inspect(cmd::inspect::Args),
    /// Compare two checkpoints tensor by tensor.
    Diff(cmd::diff::Args),
    /// Spectral analysis of every weight matrix: singular values, condition number κ,
    /// effective rank, norms; LIFT principal-weight masks; `--embeddings NAME`: the
    /// anisotropy of an embedding matrix.
    Analyze(cmd::analyze::Args),
    /// Change dtype and sharding of a checkpoint.
    Convert(cmd::convert::Args),
    /// Quantize a checkpoint's weights (rtn, power, statsq; 2 to 8 bits) into a packed
    /// low-bit safetensors layout, with the relative error of every tensor.
    Quantize(cmd::quantize::Args),
    /// Turn a model written by `engram quantize` back into float.
    Dequantize(cmd::quantize::DequantArgs),
    /// Write a synthetic transformer-shaped base model and fine-tunes, for tests and benchmarks.
    Synth(cmd::synth::Args),
    /// The main job on default data: a continual-learning comparison on Fashion-MNIST with
    /// an HTML report (`--weights`: a weight-space round trip on synthetic models instead).
    Demo(cmd::demo::Args),
    /// Train a network through a sequence of tasks with a strategy (run file in TOML).
    Train(cmd::train::Args),
    /// Make an HTML report (with SVG charts) and CSV from results.json files.
    Report(cmd::learn_report::Args),
    /// List the continual-learning strategies.
    Strategies,
    /// List the scenario kinds and their keys with defaults (the `[scenario]` table).
    Scenarios,
    /// Test-time adaptation: a source model meets a stream of shifted, unlabeled test
    /// batches (corruptions) through an adapter (run file in TOML).
    Adapt(cmd::adapt::Args),
    /// List the test-time adapters and their parameters with defaults.
    Adapters,
    /// Train a task-conditioned hypernetwork (chunked MLP or LSTM) through a scenario's tasks
    /// and write every task's generated network (run file in TOML).
    Hypernet(cmd::hypernet::Args),
    /// Merge checkpoints (mergekit YAML or flags): linear, task_arithmetic, ties, dare_*,
    /// breadcrumbs*, della*, model_stock, slerp.
    Merge(cmd::merge::Args),
    /// Task vectors: extract, apply, add, scale/negate.
    #[command(subcommand)]
    Tv(cmd::tv::Tv),
    /// TALL masks: per-task masks over the merged vector, their statistics, rebuilt tasks.
    Tall(cmd::tall::Args),
    /// Consensus merging: keep the weights at least k tasks need.
    Consensus(cmd::consensus::Args),
    /// KNOW weight nowcasting: predict weights one data step beyond 5 checkpoints.
    Nowcast(cmd::nowcast::Args),
    /// Pretraining-data filtering (Deep Ignorance): a blocklist stage and a classifier stage
    /// remove hazardous documents from a text corpus; writes the kept documents and a report.
    Filter(cmd::filter::Args),
    /// PCA whitening of an embedding matrix (Ker-VLJEPA): fit on the training rows or apply a
    /// stored transform; the anisotropy before and after.
    Whiten(cmd::whiten::Args),
    /// Graft named tensors of checkpoint A into checkpoint B (byte copies; checkpoint surgery).
    Graft(cmd::graft::Args),
    /// LoRA adapters (PEFT folders): extract from a fine-tune, apply (merge and unload),
    /// merge several adapters.
    #[command(subcommand)]
    Lora(cmd::lora::LoraCmd),
    /// Before a merge: what differs across models (missing or extra tensors, shapes,
    /// vocabulary sizes, tokenizer files, dtypes) and what the merge will do with each.
    Check(cmd::check::Args),
    /// Compress fine-tunes into one bundle: base, merged vector, a bit mask per task.
    Compress(cmd::compress::Args),
    /// Rebuild one task's model from a bundle written by `engram compress`.
    Extract(cmd::compress::ExtractArgs),
    /// Weight patches (Robust Weight Signatures): extract, apply, remove.
    #[command(subcommand)]
    Patch(cmd::patch::PatchCmd),
    /// End-to-end studies: train with engram-learn, then merge, mask and compress.
    #[command(subcommand)]
    Study(cmd::study::Study),
    /// Benchmarks that print ratios against baselines measured in the same run.
    #[command(subcommand)]
    Bench(cmd::bench::Bench),
    /// Many runs: plan a grid of run folders, run them locally, or emit scripts for Slurm,
    /// GNU parallel or Ray; status of a sweep.
    #[command(subcommand)]
    Sweep(cmd::sweep::SweepCmd),
    /// Search a merge's parameters with CMA-ES against a score command (as mergekit-evolve).
    Evolve(cmd::evolve::Args),
}

fn main() {
    let cli = Cli::parse();
    let ctx = Ctx::start(cli.quiet, cli.threads.map(usize::from));
    let res = match cli.command {
        Command::Inspect(a) => cmd::inspect::run(&ctx, a),
        Command::Diff(a) => cmd::diff::run(&ctx, a),
        Command::Analyze(a) => cmd::analyze::run(&ctx, a),
        Command::Convert(a) => cmd::convert::run(&ctx, a),
        Command::Quantize(a) => cmd::quantize::run(&ctx, a),
        Command::Dequantize(a) => cmd::quantize::run_dequantize(&ctx, a),
        Command::Synth(a) => cmd::synth::run(&ctx, a),
        Command::Demo(a) => cmd::demo::run(&ctx, a),
        Command::Train(a) => cmd::train::run(&ctx, a),
        Command::Report(a) => cmd::learn_report::run(&ctx, a),
        Command::Strategies => cmd::learn_report::list_strategies(),
        Command::Scenarios => cmd::learn_report::list_scenarios(),
        Command::Adapt(a) => cmd::adapt::run(&ctx, a),
        Command::Adapters => cmd::adapt::list(),
        Command::Hypernet(a) => cmd::hypernet::run(&ctx, a),
        Command::Merge(a) => cmd::merge::run(&ctx, a),
        Command::Tv(t) => cmd::tv::run(&ctx, t),
        Command::Tall(a) => cmd::tall::run(&ctx, a),
        Command::Consensus(a) => cmd::consensus::run(&ctx, a),
        Command::Nowcast(a) => cmd::nowcast::run(&ctx, a),
        Command::Filter(a) => cmd::filter::run(&ctx, a),
        Command::Whiten(a) => cmd::whiten::run(&ctx, a),
        Command::Graft(a) => cmd::graft::run(&ctx, a),
        Command::Lora(l) => cmd::lora::run(&ctx, l),
        Command::Check(a) => cmd::check::run(&ctx, a),
        Command::Compress(a) => cmd::compress::run(&ctx, a),
        Command::Extract(a) => cmd::compress::run_extract(&ctx, a),
        Command::Patch(p) => cmd::patch::run(&ctx, p),
        Command::Study(s) => cmd::study::run(&ctx, s),
        Command::Bench(b) => cmd::bench::run(&ctx, b),
        Command::Sweep(s) => cmd::sweep::run(&ctx, s),
        Command::Evolve(a) => cmd::evolve::run(&ctx, a),
    };
    ctx.finish(res);
}
