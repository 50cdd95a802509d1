//! `engram patch`: Robust Weight Signatures: extract a weight patch, apply or remove it.

use super::Ctx;
use super::args::scaled;
use super::models::open;
use super::util::print_json;
use anyhow::Result;
use engram_weights::patch::{self, Patch, Selection};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum PatchCmd {
    /// δ = model − pre over selected tensors, optionally without the clean direction and
    /// quantized to a few levels.
    Extract {
        /// The shared pre-trained model θ_pre.
        #[arg(long)]
        pre: PathBuf,
        /// The clean fine-tune θ_clean: its direction is projected out of δ per tensor.
        #[arg(long)]
        clean: Option<PathBuf>,
        /// The model fine-tuned on the corruption (the signature's source).
        #[arg(long)]
        model: PathBuf,
        /// Tensors whose name contains PATTERN (`*` wildcards); repeatable. Default: all.
        #[arg(long, value_name = "PATTERN")]
        include: Vec<String>,
        /// Only the first K layers (by layer number, or the first K modules).
        #[arg(long, value_name = "K")]
        first_layers: Option<usize>,
        /// Quantize each tensor to L uniform min-max levels (2..256).
        #[arg(long, value_name = "L")]
        levels: Option<u32>,
        /// Output patch file (.safetensors).
        #[arg(short, long)]
        out: PathBuf,
    },
    /// θ = model + Σ α_c·patch_c; give each patch as PATH or PATH:α.
    Apply {
        model: PathBuf,
        #[arg(long = "patch", required = true, value_name = "PATCH[:ALPHA]")]
        patches: Vec<String>,
        /// α of patches given without one.
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        scale: f32,
        #[arg(short, long)]
        out: PathBuf,
        /// Apply even if a patch was extracted against another θ_pre (the model is neither
        /// the patch's θ_pre or clean model, nor records its θ_pre).
        #[arg(long)]
        force: bool,
    },
    /// θ = model − Σ α_c·patch_c (undo `apply` with the same patches and scales).
    Remove {
        model: PathBuf,
        #[arg(long = "patch", required = true, value_name = "PATCH[:ALPHA]")]
        patches: Vec<String>,
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        scale: f32,
        #[arg(short, long)]
        out: PathBuf,
        /// Remove even if a patch was extracted against another θ_pre.
        #[arg(long)]
        force: bool,
    },
}

pub fn run(ctx: &Ctx, p: PatchCmd) -> Result<()> {
    let md = engram_ckpt::provenance(
        &ctx.command_line,
        &serde_json::json!({"command": ctx.command_line}),
    );
    match p {
        PatchCmd::Extract {
            pre,
            clean,
            model,
            include,
            first_layers,
            levels,
            out,
        } => {
            let (pre, m) = (open(&pre)?, open(&model)?);
            let clean = clean.as_deref().map(open).transpose()?;
            let sel = Selection {
                include,
                first_layers,
            };
            let pb = super::progress::bar(ctx, m.param_count(), "patch");
            let rep = patch::extract(&pre, clean.as_ref(), &m, &sel, levels, &out, &md, &|n| {
                pb.inc(n)
            })?;
            pb.finish_and_clear();
            if !ctx.quiet {
                print_json(&rep)?;
            }
        }
        PatchCmd::Apply {
            model,
            patches,
            scale,
            out,
            force,
        } => apply(ctx, &md, &model, &patches, (scale, force), &out, 1.0)?,
        PatchCmd::Remove {
            model,
            patches,
            scale,
            out,
            force,
        } => apply(ctx, &md, &model, &patches, (scale, force), &out, -1.0)?,
    }
    Ok(())
}

fn apply(
    ctx: &Ctx,
    md: &std::collections::BTreeMap<String, String>,
    model: &std::path::Path,
    patches: &[String],
    (scale, force): (f32, bool),
    out: &std::path::Path,
    sign: f32,
) -> Result<()> {
    let m = open(model)?;
    let ps = patches
        .iter()
        .map(|s| {
            let (path, a) = scaled(s, scale)?;
            Ok((Patch::open(&path)?, a))
        })
        .collect::<Result<Vec<_>>>()?;
    let pb = super::progress::bar(
        ctx,
        m.param_count(),
        if sign > 0.0 { "apply" } else { "remove" },
    );
    let rep = patch::apply(&m, &ps, sign, force, out, md, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    if !ctx.quiet {
        print_json(&rep)?;
    }
    Ok(())
}
