//! `engram synth`: a synthetic base model and N fine-tunes, from a seed.

use super::Ctx;
use super::args::{float_dtype, opt_bytes, parse_count};
use anyhow::{Context, Result};
use engram_weights::synth::{ArchConfig, SynthOptions, write_family};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Output folder; receives `base/` and `ft-1/` ... `ft-N/` model folders (those of an
    /// earlier family there are replaced; other entries are kept).
    #[arg(short, long)]
    pub out: PathBuf,
    /// Model size: tiny (~0.2M parameters), small (~0.1B), medium (~0.5B), 1b, 3b, 7b.
    #[arg(long, default_value = "tiny")]
    pub size: String,
    /// Target parameter count instead of --size, e.g. 250M or 1.5B.
    #[arg(long, value_name = "N")]
    pub params: Option<String>,
    /// Number of fine-tunes to write beside the base.
    #[arg(short = 'n', long, default_value_t = 2)]
    pub finetunes: usize,
    /// Element type of every tensor (f32, f16, bf16, f64, f8_e4m3, f8_e5m2).
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Seed; the same seed gives the same bytes.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Typical relative size of a fine-tuning delta per tensor.
    #[arg(long, default_value_t = 0.05)]
    pub delta_scale: f32,
    /// Shard outputs at this many bytes (e.g. 2GB, 500MB); default one file per model.
    #[arg(long, value_name = "SIZE")]
    pub shard_size: Option<String>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let arch = match &a.params {
        Some(p) => ArchConfig::for_params(parse_count(p)?)?,
        None => ArchConfig::preset(&a.size).with_context(|| {
            format!(
                "unknown --size '{}': use tiny, small, medium, 1b, 3b or 7b",
                a.size
            )
        })?,
    };
    let dtype = float_dtype(&a.dtype)?;
    let opts = SynthOptions {
        arch: arch.clone(),
        finetunes: a.finetunes,
        dtype,
        seed: a.seed,
        delta_scale: a.delta_scale,
        max_shard_bytes: opt_bytes(a.shard_size.as_deref())?,
    };
    let params = arch.param_count();
    let md = engram_ckpt::provenance(
        &ctx.command_line,
        &serde_json::json!({"arch": arch, "finetunes": a.finetunes, "dtype": dtype.name(), "seed": a.seed, "delta_scale": a.delta_scale}),
    );
    // The family (base/, ft-1/ ...) is one output: staged, and switched in whole, so that
    // models of an earlier, larger family (ft-3/ beside a new ft-1/ and ft-2/) do not stay.
    let staged = engram_ckpt::Staged::new(&a.out)?;
    let pb = super::progress::bar(ctx, params, "synth");
    let written = write_family(staged.path(), &opts, &md, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    staged.commit(&|n| {
        n == "base"
            || n.strip_prefix("ft-")
                .is_some_and(|k| k.parse::<u32>().is_ok())
    })?;
    if !ctx.quiet {
        println!(
            "wrote {} models of {} parameters ({} layers, hidden {}) as {} to {} ({} files)",
            a.finetunes + 1,
            params,
            arch.num_hidden_layers,
            arch.hidden_size,
            dtype,
            a.out.display(),
            written.len()
        );
    }
    Ok(())
}
