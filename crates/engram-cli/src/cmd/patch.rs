//! `engram patch`: Robust Weight Signatures: extract a weight patch, apply or remove it.

use super::Ctx;
use super::args::{finite_f32, scaled};
use super::models::open;
use super::util::print_json;
use anyhow::{Result, bail};
use engram_weights::patch::{self, Patch, Selection};
use engram_weights::tv::fingerprint;
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
        /// Tensors whose name contains PATTERN, or with `*` (any run of characters) matches
        /// it whole (`layers.*.bias`); repeatable. Default: all.
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
    /// θ = model + Σ α_c·patch_c; give each patch as PATH or PATH:α_c. A patch without its
    /// own α_c gets α/n, n the number of patches given (α = --scale, default 1; card
    /// default). BatchNorm running statistics mix linearly (μ_clean + Σ α_c·Δμ_c, likewise the
    /// variance, which must stay positive); num_batches_tracked is kept. The scales applied
    /// are recorded in the output (engram.patches).
    Apply {
        model: PathBuf,
        #[arg(long = "patch", required = true, value_name = "PATCH[:ALPHA]")]
        patches: Vec<String>,
        /// α: each patch given without its own scale gets α/n, n the number of patches
        /// given.
        #[arg(long, default_value = "1", allow_negative_numbers = true)]
        scale: String,
        #[arg(short, long)]
        out: PathBuf,
        /// Apply even if a patch was extracted against another θ_pre (the model is neither
        /// the patch's θ_pre or clean model, nor records its θ_pre).
        #[arg(long)]
        force: bool,
    },
    /// θ = model − Σ α_c·patch_c: undoes `apply`. A patch without its own α_c is removed with
    /// the scale the model records for it (engram.patches), or with α/n if --scale is given.
    Remove {
        model: PathBuf,
        #[arg(long = "patch", required = true, value_name = "PATCH[:ALPHA]")]
        patches: Vec<String>,
        /// α: each patch given without its own scale gets α/n (as `apply`); default: the
        /// scale recorded for it in the model.
        #[arg(long, allow_negative_numbers = true)]
        scale: Option<String>,
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
        } => {
            let scale = finite_f32("--scale", &scale)?;
            apply(ctx, &md, &model, &patches, (Some(scale), force), &out, 1.0)?
        }
        PatchCmd::Remove {
            model,
            patches,
            scale,
            out,
            force,
        } => {
            let scale = scale.map(|a| finite_f32("--scale", &a)).transpose()?;
            apply(ctx, &md, &model, &patches, (scale, force), &out, -1.0)?
        }
    }
    Ok(())
}

/// Applies (sign 1) or removes (sign −1) the patches. A patch without its own scale gets
/// α/n with α = `scale` ([`patch::default_scale`]); removing without `scale`, the scale the
/// model records for it ([`patch::recorded_scale`]). A scale of 0 (`--scale 0`, `PATCH:0`)
/// is refused: the model would be written unchanged. Removing with the recorded scales, a
/// patch given twice is refused (each would take off the whole recorded amount).
fn apply(
    ctx: &Ctx,
    md: &std::collections::BTreeMap<String, String>,
    model: &std::path::Path,
    patches: &[String],
    (scale, force): (Option<f32>, bool),
    out: &std::path::Path,
    sign: f32,
) -> Result<()> {
    let (verb, done) = if sign > 0.0 {
        ("apply", "applied")
    } else {
        ("remove", "removed")
    };
    if scale == Some(0.0) {
        bail!(
            "--scale 0 has no effect: each patch given without its own scale would be {done} \
             with 0, and the model written unchanged"
        );
    }
    for s in patches {
        if explicit_scale(s)?.1 == Some(0.0) {
            bail!(
                "--patch '{s}': a scale of 0 has no effect (the patch would not change the \
                 model); give a non-zero scale or leave the patch out"
            );
        }
    }
    let m = open(model)?;
    let given = patches
        .iter()
        .map(|s| {
            let (path, a) = explicit_scale(s)?;
            Ok((s, Patch::open(&path)?, a))
        })
        .collect::<Result<Vec<_>>>()?;
    let default = scale
        .map(|a| patch::default_scale(a, given.len()))
        .transpose()?;
    if default.is_none() {
        // Scales from the model's record: the same patch twice would subtract its whole
        // recorded amount twice.
        let fps: Vec<String> = given
            .iter()
            .map(|(_, p, _)| fingerprint(&p.model))
            .collect();
        for (i, (s, _, a)) in given.iter().enumerate() {
            let Some(j) = (0..i).find(|&j| fps[j] == fps[i]) else {
                continue;
            };
            if a.is_none() || given[j].2.is_none() {
                bail!(
                    "--patch '{s}': the same patch as --patch '{}' (fingerprint {}); the scale \
                     the model records for it is the whole amount applied, so giving it twice \
                     would take off more than that: give it once, or give each its own scale \
                     as PATCH:ALPHA",
                    given[j].0,
                    fps[i]
                );
            }
        }
    }
    let mut ps = Vec::new();
    for (_, p, a) in given {
        let a = match (a, default) {
            (Some(a), _) => a,
            (None, Some(d)) => d,
            (None, None) => {
                // The patch's own checks first: a patch of another base says so.
                if !force {
                    p.check_target(&m)?;
                }
                patch::recorded_scale(&m, &p)?
            }
        };
        ps.push((p, a));
    }
    let pb = super::progress::bar(ctx, m.param_count(), verb);
    let rep = patch::apply(&m, &ps, sign, force, out, md, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    if !ctx.quiet {
        print_json(&rep)?;
    }
    Ok(())
}

/// `PATH` or `PATH:ALPHA`: the path and the patch's own scale, if given.
fn explicit_scale(arg: &str) -> Result<(PathBuf, Option<f32>)> {
    // `scaled` with a NaN default tells "no scale given" apart (a given scale is finite).
    let (path, a) = scaled(arg, f32::NAN)?;
    Ok((path, a.is_finite().then_some(a)))
}
