//! `engram consensus`: Consensus merging, θ₀ + α·(1{Σ_t m_t ≥ k} ⊙ τ_MTL).

use super::Ctx;
use super::args::opt_float_dtype;
use super::models::TallArgs;
use super::util::print_json;
use anyhow::{Result, bail};
use engram_weights::tall::Tall;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub tall: TallArgs,
    /// Keep weights that at least k task masks hold (0: plain TA/TIES; 1: drop catastrophic
    /// weights; 2: also drop selfish ones).
    #[arg(short, long, default_value_t = 2)]
    pub k: usize,
    /// Scale α of the kept merged vector (reference grid 0.1..1.0, chosen on validation data).
    #[arg(long, default_value_t = 1.0)]
    pub alpha: f32,
    /// Output model folder (or a .safetensors file).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Output float dtype (default: the base's).
    #[arg(long)]
    pub out_dtype: Option<String>,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if !a.alpha.is_finite() {
        bail!("--alpha must be finite");
    }
    if a.k > a.tall.models.len() {
        bail!(
            "-k {} is more than the {} task(s): no weight would be kept",
            a.k,
            a.tall.models.len()
        );
    }
    let out_dtype = opt_float_dtype(a.out_dtype.as_deref())?;
    let (base, models) = a.tall.open()?;
    let tall = a.tall.tall(&base, &models)?;
    let mut params = a.tall.params_json();
    params["k"] = a.k.into();
    params["alpha"] = a.alpha.into();
    let md = engram_ckpt::provenance(&ctx.command_line, &params);
    let pb = super::progress::bar(ctx, base.param_count(), "consensus");
    let files = tall.write_model(
        &a.out,
        out_dtype,
        &md,
        &|n| pb.inc(n),
        &Tall::consensus_kernel(a.k, a.alpha),
    )?;
    pb.finish_and_clear();
    if a.json {
        return print_json(&serde_json::json!({"params": params, "files": files}));
    }
    if !ctx.quiet {
        println!(
            "consensus merge (k = {}, alpha = {}) of {} models written to {}",
            a.k,
            a.alpha,
            models.len(),
            a.out.display()
        );
    }
    Ok(())
}
