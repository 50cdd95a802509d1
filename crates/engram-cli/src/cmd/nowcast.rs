// KNOW: weight nowcasting (Jang et al., arXiv 2508.05059; jjh6297/KNOW).
// Card: shared/methods/hypernetworks.md, "KNOW (weight nowcasting)".

//! `engram nowcast`: predicts a model's weights one data step beyond 5 checkpoints trained on
//! growing data (smallest data first), scalar by scalar, with a trained KNOW predictor (3
//! recurrences by default); streamed tensor by tensor and written atomically.

use super::Ctx;
use super::models::open_all;
use super::util::print_json;
use anyhow::{Result, bail};
use engram_weights::nowcast::{Predictor, STEPS, WINDOW, nowcast_models};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The 5 checkpoints of one network, the smallest training data first and the full data
    /// last.
    #[arg(required = true, num_args = 1..)]
    pub checkpoints: Vec<PathBuf>,
    /// The predictor file (safetensors; `matrix.*` and `bias.*` networks, as the hypernet
    /// benchmark's KNOW part writes them).
    #[arg(long)]
    pub predictor: PathBuf,
    /// Recurrences: each prediction is appended and the window shifted; the last is written.
    #[arg(long, default_value_t = STEPS)]
    pub steps: usize,
    /// Output model folder (or a .safetensors file).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if a.checkpoints.len() != WINDOW {
        bail!(
            "engram nowcast reads exactly {WINDOW} checkpoints (smallest data first), not {}",
            a.checkpoints.len()
        );
    }
    if a.steps == 0 || a.steps > 100 {
        bail!("--steps {} must be between 1 and 100", a.steps);
    }
    let models = open_all(&a.checkpoints)?;
    // Held open for the run, so that the output cannot replace it.
    let pm = super::models::open(&a.predictor)?;
    let predictor = Predictor::from_model(&pm)?;
    let params = serde_json::json!({
        "checkpoints": a.checkpoints, "predictor": a.predictor, "steps": a.steps,
    });
    let md = engram_ckpt::provenance(&ctx.command_line, &params);
    let total: u64 = models[WINDOW - 1].param_count();
    let pb = super::progress::bar(ctx, total, "nowcast");
    let s = nowcast_models(&models, &predictor, a.steps, &a.out, &md, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    drop(pm);
    if a.json {
        return print_json(&serde_json::json!({"params": params, "summary": s}));
    }
    if !ctx.quiet {
        println!(
            "nowcast ({} steps) of {} matrices and {} biases ({} values; {} tensors copied) written to {}",
            a.steps,
            s.matrices,
            s.biases,
            s.predicted,
            s.copied,
            a.out.display()
        );
    }
    Ok(())
}
