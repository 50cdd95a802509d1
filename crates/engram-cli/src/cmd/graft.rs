//! `engram graft --from A --into B --tensors PATTERNS -o OUT`: checkpoint surgery, B with the
//! tensors of A that the patterns name, copied byte for byte (Ker-VLJEPA's warm
//! initialisation; card shared/methods/robustness_safety.md, "Ker-VLJEPA parts").

use super::Ctx;
use super::models::open;
use super::util::print_json;
use anyhow::Result;
use engram_weights::graft::{parse_patterns, plan, write};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint A: the grafted tensors come from here.
    #[arg(long, value_name = "A")]
    pub from: PathBuf,
    /// Checkpoint B: every other tensor, the metadata and the side files come from here.
    #[arg(long, value_name = "B")]
    pub into: PathBuf,
    /// Tensor names or globs (`*`: any run of characters; whole names), comma-separated;
    /// each must match a tensor of A, and each matched tensor must be in B with the same
    /// dtype and shape.
    #[arg(long, value_name = "PATTERNS")]
    pub tensors: String,
    /// Output model folder (or a .safetensors file).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let patterns = parse_patterns(&a.tensors)?;
    let (from, into) = (open(&a.from)?, open(&a.into)?);
    let p = plan(&from, &into, &patterns)?;
    let params = serde_json::json!({"from": a.from, "into": a.into, "tensors": patterns});
    let md = engram_ckpt::provenance(&ctx.command_line, &params);
    let pb = super::progress::bar(ctx, into.param_count(), "graft");
    let report = write(&p, &from, &into, &a.out, &md, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    if a.json {
        return print_json(&serde_json::json!({
            "engram_graft": 1, "params": params, "plan": p, "report": report,
        }));
    }
    if !ctx.quiet {
        println!(
            "grafted {} tensor(s) ({} parameters) from {} into {}, kept {}; written to {}",
            report.grafted.len(),
            report.grafted_params,
            a.from.display(),
            a.into.display(),
            report.kept,
            a.out.display()
        );
    }
    Ok(())
}
