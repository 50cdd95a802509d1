//! `engram compress`: many fine-tunes into one bundle (base, merged vector, a bit mask per
//! task); `engram extract` rebuilds any task's model from it exactly.

use super::Ctx;
use super::args::float_dtype;
use super::models::TallArgs;
use super::util::print_json;
use anyhow::Result;
use engram_weights::compress::{MaskCoding, extract_task, write_bundle};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub tall: TallArgs,
    /// Output bundle folder.
    #[arg(short, long)]
    pub out: PathBuf,
    /// dtype of the stored merged vector (default: the base's float dtype).
    #[arg(long)]
    pub tau_dtype: Option<String>,
    /// How masks are stored: `packed` (one bit per weight per task, MSB first, the
    /// reference layout) or `arith` (entropy coded in masks.safetensors; smaller where masks
    /// are skewed, rebuilt bit for bit).
    #[arg(long, default_value = "packed")]
    pub mask_coding: String,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let (base, models) = a.tall.open()?;
    let tau_dtype = match &a.tau_dtype {
        Some(s) => float_dtype(s)?,
        None => base.float_dtype(),
    };
    let coding = MaskCoding::parse(&a.mask_coding)?;
    let tall = a.tall.tall(&base, &models)?;
    let md = engram_ckpt::provenance(&ctx.command_line, &a.tall.params_json());
    let pb = super::progress::bar(ctx, base.param_count(), "compress");
    let rep = write_bundle(&tall, &a.out, tau_dtype, coding, &md, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    if a.json {
        return print_json(&rep);
    }
    if !ctx.quiet {
        println!(
            "bundle {}: {} bytes for {} tasks, replacing {} bytes (base + fine-tunes), {:.2}x smaller; masks {} bytes ({}; packed bits would take {})",
            a.out.display(),
            rep.bundle_bytes,
            rep.tasks.len(),
            rep.replaced_bytes,
            rep.ratio,
            rep.mask_bytes,
            rep.mask_coding.name(),
            rep.packed_mask_bytes
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct ExtractArgs {
    /// Bundle folder written by `engram compress`.
    pub bundle: PathBuf,
    /// Task to rebuild.
    #[arg(long)]
    pub task: String,
    /// Output model folder.
    #[arg(short, long)]
    pub out: PathBuf,
}

pub fn run_extract(ctx: &Ctx, a: ExtractArgs) -> Result<()> {
    let md = engram_ckpt::provenance(
        &ctx.command_line,
        &serde_json::json!({"bundle": a.bundle, "task": a.task}),
    );
    let pb = super::progress::bar(ctx, 0, "extract");
    let files = extract_task(&a.bundle, &a.task, &a.out, &md, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    if !ctx.quiet {
        println!(
            "rebuilt task '{}' into {} ({} files)",
            a.task,
            a.out.display(),
            files.len()
        );
    }
    Ok(())
}
