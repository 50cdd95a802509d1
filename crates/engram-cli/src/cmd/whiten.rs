//! `engram whiten MODEL --tensor NAME -o OUT`: PCA whitening of an embedding matrix
//! (Ker-VLJEPA; card shared/methods/robustness_safety.md, "Ker-VLJEPA parts"), fitted on its
//! first `--fit-rows` rows (training rows only: the card's pitfall) or taken from an earlier
//! transform (`--apply`). OUT holds the whitened matrix under the input's name and the
//! transform (`whiten.mean`, `whiten.components`, `whiten.scale`, `engram.whiten` metadata),
//! so that it can itself be given to `--apply`; the anisotropy before and after is reported.

use super::Ctx;
use super::embeddings::{measure, read_labels, read_matrix, summary};
use super::util::{emit, print_json};
use anyhow::{Context, Result, bail};
use engram_ckpt::{DType, TensorSpec};
use engram_weights::embed::{COMPONENTS, MEAN, SCALE, Whitening};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file (a model or saved features), a model folder, or an index.
    pub path: PathBuf,
    /// The embedding matrix to whiten: a 2-D float tensor, rows × dim.
    #[arg(long, value_name = "NAME")]
    pub tensor: String,
    /// Components kept, 1 to min(dim, fitted rows − 1) [default: 32, or that bound if lower].
    #[arg(long, conflicts_with = "apply")]
    pub k: Option<usize>,
    /// ε added to each kept singular value before dividing (finite, ≥ 0) [default: 1e-5].
    #[arg(
        long,
        value_name = "EPS",
        conflicts_with = "apply",
        allow_negative_numbers = true
    )]
    pub eps: Option<String>,
    /// Fit on the first N rows only (the training rows); all rows are whitened [default: all].
    /// min(N, dim) is at most 8192 (the side of the matrix the fit eigendecomposes).
    #[arg(long, value_name = "N", conflicts_with = "apply")]
    pub fit_rows: Option<usize>,
    /// Whiten with the transform in this file (an earlier `engram whiten` output) instead of
    /// fitting one.
    #[arg(long, value_name = "TRANSFORM")]
    pub apply: Option<PathBuf>,
    /// A tensor of one integer label per row (same file): d′ before and after.
    #[arg(long, value_name = "NAME")]
    pub labels: Option<String>,
    /// Output .safetensors file.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

/// `--eps`: a finite number ≥ 0.
fn eps(text: Option<&str>) -> Result<f64> {
    let Some(t) = text else { return Ok(1e-5) };
    match t.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        Ok(_) => bail!("--eps {t}: must be finite and at least 0"),
        Err(_) => bail!("--eps '{t}' is not a number"),
    }
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let eps = eps(a.eps.as_deref())?;
    if [MEAN, COMPONENTS, SCALE].contains(&a.tensor.as_str()) {
        bail!(
            "--tensor {}: a transform tensor's name; the output holds the transform under it",
            a.tensor
        );
    }
    let m = super::models::open(&a.path)?;
    let (x, rows, dim) = read_matrix(&m, &a.tensor)?;
    let labels = a
        .labels
        .as_deref()
        .map(|l| read_labels(&m, l, rows))
        .transpose()?;
    let before = measure(
        &m,
        &a.tensor,
        "before whitening",
        &x,
        rows,
        dim,
        labels.as_deref(),
    )?;
    let transform = a.apply.as_deref().map(super::models::open).transpose()?;
    let w = match &transform {
        Some(t) => {
            let w = Whitening::from_tensors(t)?;
            if w.dim != dim {
                bail!(
                    "--apply {}: the transform is for {} dimensions, but '{}' has {dim}",
                    t.source().display(),
                    w.dim,
                    a.tensor
                );
            }
            w
        }
        None => {
            let fit = a.fit_rows.unwrap_or(rows);
            if fit < 2 || fit > rows {
                bail!(
                    "--fit-rows {fit}: give 2 to {rows} (the rows of '{}')",
                    a.tensor
                );
            }
            let most = dim.min(fit - 1);
            let k = a.k.unwrap_or(most.min(32));
            if k == 0 || k > most {
                bail!(
                    "--k {k}: keep 1 to {most} components (at most the {dim} dimensions of '{}' and the {fit} fitted rows − 1)",
                    a.tensor
                );
            }
            Whitening::fit(&x[..fit * dim], fit, dim, k, eps)
                .with_context(|| format!("{}: fitting '{}'", m.source().display(), a.tensor))?
        }
    };
    let z = w.apply(&x, rows)?;
    drop(x);
    let k = w.k;
    let after = measure(
        &m,
        &a.tensor,
        "after whitening",
        &z,
        rows,
        k,
        labels.as_deref(),
    )?;

    let params = serde_json::json!({
        "model": a.path, "tensor": a.tensor, "labels": a.labels, "k": k, "eps": w.eps,
        "fit_rows": w.fitted_rows, "apply": a.apply,
    });
    let mut md = engram_ckpt::provenance(&ctx.command_line, &params);
    let (tensors, (key, value)) = w.to_tensors();
    md.insert(key, value);
    let mut specs = vec![TensorSpec::new(&a.tensor, DType::F32, &[rows, k])];
    specs.extend(
        tensors
            .iter()
            .map(|(n, s, _)| TensorSpec::new(*n, DType::F32, s)),
    );
    let writer = engram_weights::output::writer(&a.out, specs, &md)?;
    writer.write_f32(&a.tensor, &z)?;
    for (n, _, v) in &tensors {
        writer.write_f32(n, v)?;
    }
    let files: Vec<String> = writer
        .finish(&[])?
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    drop(transform);

    if a.json {
        let mut info = serde_json::to_value(w.info())?;
        info["from"] = serde_json::json!(a.apply);
        return print_json(&serde_json::json!({
            "engram_whiten": 1,
            "model": m.source().display().to_string(),
            "tensor": a.tensor,
            "labels": a.labels,
            "mode": if a.apply.is_some() { "apply" } else { "fit" },
            "rows": rows,
            "transform": info,
            "before": before,
            "after": after,
            "files": files,
        }));
    }
    if ctx.quiet {
        return Ok(());
    }
    let how = match &a.apply {
        Some(p) => format!("transform of {}", p.display()),
        None => format!(
            "fitted on {} rows, {:.2}% of variance kept",
            w.fitted_rows,
            100.0 * w.retained
        ),
    };
    emit(&format!(
        "whitened '{}' ({rows} × {dim} -> {rows} × {k}; {how}) into {}\n  before: {}\n  after:  {}\n",
        a.tensor,
        a.out.display(),
        summary(&before),
        summary(&after)
    ))
}
