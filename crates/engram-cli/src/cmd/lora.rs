//! `engram lora extract|apply|merge`: LoRA adapters as PEFT folders (adapter_config.json +
//! adapter_model.safetensors); the algorithms are `engram_weights::lora`.

use super::Ctx;
use super::util::{emit, esc, outln, print_json};
use anyhow::{Context, Result};
use engram_weights::lora::request::{
    ApplyRequest, ExtractRequest, RecombineRequest, adapter_weights, check_merge_method,
    stage_expanded,
};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum LoraCmd {
    /// Extract a LoRA adapter from a fine-tune: per linear weight, the best rank-r
    /// approximation of its task vector (truncated SVD, randomized above a size), written as a
    /// PEFT adapter folder that `peft.PeftModel.from_pretrained` loads on the base.
    #[command(
        after_help = "Every tensor the adapter does not carry is listed with the reason \
        and how much it changed (norms, biases, embeddings: PEFT adapts embeddings with another \
        layout). The captured energy Σσ²(top r) / ‖ΔW‖² of every matrix is in --json.\n\n\
        Example:\n  engram lora extract --base base/ --model ft/ -r 32 -o adapter/"
    )]
    Extract(ExtractArgs),
    /// Merge an adapter into its base (PEFT's merge-and-unload), W + m·s·B·A in f32, rounded
    /// to the dtype given; the rounding error of every changed tensor is reported.
    Apply(ApplyArgs),
    /// Merge several adapters: into one model through their task vectors with any merge
    /// method (`--method ties ...`), or into one adapter of rank R by SVD (`--rank R`).
    #[command(
        allow_negative_numbers = true,
        after_help = "Examples:\n  engram lora merge --base base/ --method ties --density 0.5 a1/ a2/ -o merged/\n  engram lora merge --base base/ --rank 16 --weights 0.5,0.5 a1/ a2/ -o adapter/"
    )]
    Merge(MergeArgs),
}

#[derive(clap::Args)]
pub struct ExtractArgs {
    /// The base model.
    #[arg(long)]
    pub base: PathBuf,
    /// The fine-tuned model.
    #[arg(long)]
    pub model: PathBuf,
    /// Rank of the adapter (a matrix with a smaller side gets that side).
    #[arg(short = 'r', long)]
    pub rank: usize,
    /// The adapter folder to write.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Module-name globs to extract, comma-separated (module = tensor name without
    /// `.weight`; `*` any run of characters); default: every linear weight.
    #[arg(long, value_delimiter = ',')]
    pub targets: Vec<String>,
    /// Module-name globs to leave out, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub exclude: Vec<String>,
    /// The adapter's lora_alpha (default: the rank, so the scale α/r is 1).
    #[arg(long)]
    pub alpha: Option<f64>,
    /// dtype of the factors (default: the fine-tune's).
    #[arg(long)]
    pub dtype: Option<String>,
    /// Exact SVD for matrices whose smaller side is at most this; randomized above
    /// [default: 4·(rank + oversample)].
    #[arg(long)]
    pub exact_below: Option<usize>,
    /// Power iterations of the randomized SVD.
    #[arg(long, default_value_t = 4)]
    pub power_iters: usize,
    /// Extra columns of the randomized SVD.
    #[arg(long, default_value_t = 10)]
    pub oversample: usize,
    /// Seed of the randomized SVD.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    /// The base model the adapter was trained on.
    #[arg(long)]
    pub base: PathBuf,
    /// The PEFT adapter folder.
    #[arg(long)]
    pub adapter: PathBuf,
    /// Output dtype of float tensors: f32, bf16, f16, ... or `base` (each tensor keeps the
    /// base's). Required: merging in f32 and storing in bf16 loses precision, so say which.
    #[arg(long)]
    pub dtype: String,
    /// Multiplier of the adapter's update (1: as trained).
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub multiplier: f64,
    /// Output model folder (or a .safetensors file).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct MergeArgs {
    /// The adapter folders.
    #[arg(required = true, num_args = 1..)]
    pub adapters: Vec<PathBuf>,
    /// The base model.
    #[arg(long)]
    pub base: PathBuf,
    /// Output: a model folder (with --method) or an adapter folder (with --rank).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Recombine into one adapter of this rank: Σ w_i·s_i·B_i·A_i, truncated by SVD.
    #[arg(long, conflicts_with_all = ["method", "density", "lambda", "params", "out_dtype"])]
    pub rank: Option<usize>,
    /// dtype of the recombined adapter's factors (with --rank).
    #[arg(long, default_value = "f32", requires = "rank")]
    pub dtype: String,
    /// Merge method over the adapters' task vectors (see `engram merge --list`).
    #[arg(long)]
    pub method: Option<String>,
    /// Per-adapter weights, comma-separated (default 1 each).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub weights: Vec<f64>,
    /// Share of each delta kept (ties, dare_*, ...).
    #[arg(long)]
    pub density: Option<f64>,
    /// Scale of the merged delta.
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Further merge parameters as NAME=VALUE.
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Seed of random methods.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output float dtype of the merged model (default: the base's).
    #[arg(long)]
    pub out_dtype: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, c: LoraCmd) -> Result<()> {
    match c {
        LoraCmd::Extract(a) => run_extract(ctx, a),
        LoraCmd::Apply(a) => run_apply(ctx, a),
        LoraCmd::Merge(a) => run_merge(ctx, a),
    }
}

fn run_extract(ctx: &Ctx, a: ExtractArgs) -> Result<()> {
    let req = ExtractRequest {
        targets: a.targets,
        exclude: a.exclude,
        alpha: a.alpha,
        dtype: a.dtype,
        exact_below: a.exact_below,
        power_iters: a.power_iters,
        oversample: a.oversample,
        seed: a.seed,
        ..ExtractRequest::new(a.base, a.model, a.rank)
    };
    let pb = super::progress::bar(ctx, 0, "extract");
    let done = req.run(&a.out, &ctx.command_line, &|n| pb.set_length(n), &|n| {
        pb.inc(n)
    })?;
    pb.finish_and_clear();
    if a.json {
        return print_json(&done);
    }
    if ctx.quiet {
        return Ok(());
    }
    let rep = &done.report;
    let mut s = String::new();
    outln!(
        s,
        "extracted {} matrices at rank {} into {} ({} parameters, {} bytes, {}); energy captured {:.4} (relative error {:.4}) in {:.1} s",
        rep.modules.len(),
        rep.rank,
        a.out.display(),
        rep.adapter_params,
        rep.adapter_bytes,
        rep.dtype,
        rep.energy,
        (1.0 - rep.energy).max(0.0).sqrt(),
        done.seconds
    );
    let mut worst: Vec<_> = rep.modules.iter().collect();
    worst.sort_by(|x, y| x.energy.total_cmp(&y.energy));
    for m in worst.iter().take(5) {
        outln!(
            s,
            "  lowest energy: {:<48} {:>8.4} (rank {})",
            esc(&m.module),
            m.energy,
            m.rank
        );
    }
    if !rep.unchanged.is_empty() {
        outln!(
            s,
            "  unchanged (not in the adapter): {}",
            rep.unchanged.len()
        );
    }
    for l in &rep.left_out {
        let change = l
            .rel_change
            .map_or(String::new(), |c| format!(", relative change {c:.3e}"));
        outln!(s, "  left out: {} ({}{change})", esc(&l.tensor), l.reason);
    }
    emit(&s)
}

fn run_apply(ctx: &Ctx, a: ApplyArgs) -> Result<()> {
    let req = ApplyRequest {
        base: a.base,
        adapter: a.adapter,
        dtype: a.dtype,
        multiplier: a.multiplier,
    };
    let pb = super::progress::bar(ctx, 0, "apply");
    let done = req.run(&a.out, &ctx.command_line, &|n| pb.set_length(n), &|n| {
        pb.inc(n)
    })?;
    pb.finish_and_clear();
    if a.json {
        return print_json(&done);
    }
    if ctx.quiet {
        return Ok(());
    }
    let rep = &done.report;
    let worst = rep
        .applied
        .iter()
        .map(|x| x.rel_rounding_error)
        .fold(0.0, f64::max);
    let mut s = String::new();
    outln!(
        s,
        "merged {} module(s) of {} into {} ({}), replaced {} saved tensor(s), kept {}; largest relative rounding error {worst:.3e}",
        rep.applied.len(),
        req.adapter.display(),
        a.out.display(),
        rep.dtype.as_deref().unwrap_or("the base's dtypes"),
        rep.replaced.len(),
        rep.kept
    );
    emit(&s)
}

fn run_merge(ctx: &Ctx, a: MergeArgs) -> Result<()> {
    if let Some(rank) = a.rank {
        let req = RecombineRequest {
            base: a.base,
            adapters: a.adapters,
            rank,
            weights: a.weights,
            dtype: a.dtype,
        };
        let done = req.run(&a.out, &ctx.command_line)?;
        if a.json {
            return print_json(&done);
        }
        if !ctx.quiet {
            let mut s = String::new();
            outln!(
                s,
                "recombined {} adapter(s) into {} at rank {rank}: {} module(s), energy captured {:.4}",
                req.adapters.len(),
                a.out.display(),
                done.report.modules.len(),
                done.report.energy
            );
            emit(&s)?;
        }
        return Ok(());
    }
    let method = a
        .method
        .clone()
        .context("give --method (a merge over task vectors) or --rank (one adapter by SVD)")?;
    adapter_weights(&a.weights, a.adapters.len())?;
    check_merge_method(&method)?;
    let mut args = super::merge::Args {
        inputs: a.adapters.clone(),
        out: Some(a.out.clone()),
        method: Some(method),
        base: Some(a.base.clone()),
        density: a.density,
        weights: a.weights.clone(),
        lambda: a.lambda,
        t: None,
        params: a.params.clone(),
        trim_scope: None,
        seed: a.seed,
        out_dtype: a.out_dtype.clone(),
        // Tensors no adapter changes are in no expanded model: the base's are kept.
        allow_missing: true,
        check_finite: true,
        shard_size: None,
        json: a.json,
        list: false,
        stage: None,
        select_first: false,
    };
    // The merge's own checks (method, parameters, model count) before any file is written.
    super::merge::quick_config(&args)?;
    // The expanded models live while the merge runs (`_stage` removes them when dropped).
    let (_stage, expanded) = stage_expanded(&a.base, &a.adapters, &a.out, &ctx.command_line)?;
    args.inputs = expanded;
    super::merge::run(ctx, args)
}
