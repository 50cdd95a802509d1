//! `engram tv`: task vectors (extract, apply, add, scale/negate).

use super::Ctx;
use super::args::{float_dtype, opt_float_dtype, scaled};
use super::models::open;
use super::util::print_json;
use anyhow::{Result, bail};
use engram_ckpt::Model;
use engram_weights::tv::{
    FINGERPRINT_KEY, TASK_VECTOR_KEY, Term, check_base, check_task_vector, combine, fingerprint,
};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum Tv {
    /// τ = fine-tuned − base, over the float tensors.
    Extract {
        #[arg(long)]
        base: PathBuf,
        /// The fine-tuned model.
        #[arg(long)]
        model: PathBuf,
        #[arg(short, long)]
        out: PathBuf,
        /// dtype of the stored task vector.
        #[arg(long, default_value = "f32")]
        dtype: String,
    },
    /// θ = base + Σ λ_i·τ_i; give each task vector as PATH or PATH:λ (negative λ forgets).
    Apply {
        #[arg(long)]
        base: PathBuf,
        #[arg(required = true, num_args = 1..)]
        vectors: Vec<String>,
        /// λ for vectors given without one.
        #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
        scale: f32,
        #[arg(short, long)]
        out: PathBuf,
        /// Output float dtype (default: the base's).
        #[arg(long)]
        out_dtype: Option<String>,
        /// Apply even if a vector was extracted against another base.
        #[arg(long)]
        force: bool,
    },
    /// Σ c_i·τ_i of task vectors (PATH or PATH:c).
    Add {
        #[arg(required = true, num_args = 1..)]
        vectors: Vec<String>,
        #[arg(short, long)]
        out: PathBuf,
    },
    /// c·τ (use --by -1 to negate).
    Scale {
        vector: PathBuf,
        #[arg(long, allow_negative_numbers = true)]
        by: f32,
        #[arg(short, long)]
        out: PathBuf,
    },
}

pub fn run(ctx: &Ctx, t: Tv) -> Result<()> {
    let params = serde_json::json!({"command": ctx.command_line});
    let mut md = engram_ckpt::provenance(&ctx.command_line, &params);
    // Every output but `apply`'s is a task vector.
    md.insert(TASK_VECTOR_KEY.into(), "1".into());
    let report = match t {
        Tv::Extract {
            base,
            model,
            out,
            dtype,
        } => {
            let dt = float_dtype(&dtype)?;
            let (b, m) = (open(&base)?, open(&model)?);
            md.insert(FINGERPRINT_KEY.into(), fingerprint(&b));
            let pb = super::progress::bar(ctx, m.param_count(), "extract");
            let r = combine(
                &[Term::new(&m, 1.0), Term::new(&b, -1.0)],
                &out,
                Some(dt),
                true,
                &md,
                &[],
                true,
                &|n| pb.inc(n),
            )?;
            pb.finish_and_clear();
            r
        }
        Tv::Apply {
            base,
            vectors,
            scale,
            out,
            out_dtype,
            force,
        } => {
            md.remove(TASK_VECTOR_KEY);
            let b = open(&base)?;
            let (models, scales) = open_scaled(&vectors, scale)?;
            if !force {
                for m in &models {
                    check_base(m, &b)?;
                }
            }
            let mut terms = vec![Term::new(&b, 1.0)];
            terms.extend(models.iter().zip(&scales).map(|(m, c)| Term::new(m, *c)));
            let dt = opt_float_dtype(out_dtype.as_deref())?;
            let pb = super::progress::bar(ctx, b.param_count(), "apply");
            let r = combine(&terms, &out, dt, false, &md, b.side_files(), true, &|n| {
                pb.inc(n)
            })?;
            pb.finish_and_clear();
            r
        }
        Tv::Add { vectors, out } => {
            let (models, scales) = open_scaled(&vectors, 1.0)?;
            let fps: Vec<_> = models
                .iter()
                .filter_map(|m| m.metadata().get(FINGERPRINT_KEY).cloned())
                .collect();
            if fps.windows(2).any(|w| w[0] != w[1]) {
                bail!("these task vectors were extracted against different bases");
            }
            if let Some(fp) = fps.first() {
                md.insert(FINGERPRINT_KEY.into(), fp.clone());
            }
            let terms: Vec<Term> = models
                .iter()
                .zip(&scales)
                .map(|(m, c)| Term::new(m, *c))
                .collect();
            combine(&terms, &out, None, false, &md, &[], true, &|_| {})?
        }
        Tv::Scale { vector, by, out } => {
            let m = open(&vector)?;
            check_task_vector(&m)?;
            if let Some(fp) = m.metadata().get(FINGERPRINT_KEY) {
                md.insert(FINGERPRINT_KEY.into(), fp.clone());
            }
            combine(
                &[Term::new(&m, by)],
                &out,
                None,
                false,
                &md,
                &[],
                true,
                &|_| {},
            )?
        }
    };
    if ctx.quiet {
        return Ok(());
    }
    print_json(&report)
}

/// The task vectors given as `PATH` or `PATH:SCALE` (`default` where no scale is given),
/// opened and checked to be task vectors, and their scales; every argument is read before any model is opened.
fn open_scaled(vectors: &[String], default: f32) -> Result<(Vec<Model>, Vec<f32>)> {
    if !default.is_finite() {
        bail!("--scale {default} is not a finite number");
    }
    let vs = vectors
        .iter()
        .map(|v| scaled(v, default))
        .collect::<Result<Vec<_>>>()?;
    let models: Vec<Model> = vs.iter().map(|(p, _)| open(p)).collect::<Result<_>>()?;
    for m in &models {
        check_task_vector(m)?;
    }
    Ok((models, vs.into_iter().map(|(_, c)| c).collect()))
}
