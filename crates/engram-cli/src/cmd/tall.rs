//! `engram tall`: TALL masks over a base and its fine-tunes: statistics, and optionally
//! every task's model rebuilt from the merged vector.

use super::Ctx;
use super::models::TallArgs;
use super::util::print_json;
use anyhow::Result;
use engram_weights::tall::Tall;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub tall: TallArgs,
    /// Write each task's model θ₀ + m_t ⊙ τ_MTL into DIR/<task>/.
    #[arg(long, value_name = "DIR")]
    pub reconstruct: Option<PathBuf>,
    /// Print the statistics as JSON (per tensor and in total).
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let (base, models) = a.tall.open()?;
    let tall = a.tall.tall(&base, &models)?;
    let pb = super::progress::bar(ctx, base.param_count(), "masks");
    let stats = tall.stats(&|n| pb.inc(n))?;
    pb.finish_and_clear();
    if let Some(dir) = &a.reconstruct {
        let md = engram_ckpt::provenance(&ctx.command_line, &a.tall.params_json());
        let tau_dtype = base.float_dtype();
        // All task models are built in one staging folder and switched in together.
        let staged = engram_ckpt::Staged::new(dir)?;
        for (i, t) in tall.tasks.iter().enumerate() {
            let pb = super::progress::bar(ctx, base.param_count(), t);
            tall.write_model(
                &staged.path().join(t),
                None,
                &md,
                &|n| pb.inc(n),
                &Tall::reconstruct_kernel(i, tau_dtype),
            )?;
            pb.finish_and_clear();
        }
        staged.commit(&|n| tall.tasks.iter().any(|t| t == n))?;
    }
    if a.json {
        return print_json(&stats);
    }
    if ctx.quiet {
        return Ok(());
    }
    let t = &stats.total;
    let p = t.params.max(1) as f64 / 100.0;
    println!(
        "TALL masks over {} tasks, {} parameters (tau: {:?})",
        stats.tasks.len(),
        t.params,
        stats.recipe
    );
    println!(
        "  catastrophic (in no mask, tau != 0): {:>12} ({:.2}%)",
        t.catastrophic,
        t.catastrophic as f64 / p
    );
    println!(
        "  selfish (in exactly one mask):       {:>12} ({:.2}%)",
        t.selfish,
        t.selfish as f64 / p
    );
    println!(
        "  shared (in two or more masks):       {:>12} ({:.2}%)",
        t.shared,
        t.shared as f64 / p
    );
    println!(
        "  untouched (tau = 0):                 {:>12} ({:.2}%)",
        t.untouched,
        t.untouched as f64 / p
    );
    println!("  histogram of sum_t m_t: {:?}", t.histogram);
    for ((name, l), d) in stats.tasks.iter().zip(&stats.lambdas).zip(&t.mask_density) {
        println!(
            "  task {name:<16} lambda {l:<5} mask density {:.2}%",
            d * 100.0
        );
    }
    if let Some(dir) = &a.reconstruct {
        println!("rebuilt task models under {}", dir.display());
    }
    Ok(())
}
