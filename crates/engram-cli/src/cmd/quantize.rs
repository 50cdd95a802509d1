//! `engram quantize MODEL --method rtn|power|statsq --bits B -o OUT`: weight quantization into
//! engram's packed low-bit layout (docs/quantization.md), with the per-tensor relative error
//! and exponent in the JSON report; `engram dequantize Q -o OUT` back to float.

use super::Ctx;
use super::args::opt_float_dtype;
use super::util::{self, print_json};
use anyhow::{Result, bail};
use engram_weights::quant::model::{Options, dequantize_model, quantize_model};
use engram_weights::quant::{Scope, Spec, by_name};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model to quantize (file, folder or index).
    pub input: PathBuf,
    /// Output: a path ending in .safetensors is one file; anything else a model folder.
    #[arg(short, long)]
    pub out: PathBuf,
    /// rtn (round to nearest), power (PowerQuant: searched exponent a per tensor) or statsq
    /// (scale 2·mean|W|, mid-rise grid).
    #[arg(long, default_value = "rtn")]
    pub method: String,
    /// Bits per weight, 2 to 8.
    #[arg(long)]
    pub bits: u32,
    /// Which entries share a scale: tensor, channel (one per output row) or group [default:
    /// channel, or group with --group].
    #[arg(long)]
    pub scope: Option<String>,
    /// Group size for --scope group (must divide every quantized row); implies --scope group
    /// when --scope is not given.
    #[arg(long)]
    pub group: Option<usize>,
    /// Asymmetric grid with a zero point (rtn only).
    #[arg(long)]
    pub asym: bool,
    /// Store scales in f16 (codes are computed with the rounded scale).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    pub scale_dtype: String,
    /// power: search a on a 0.05 grid over [0.2, 1.5] instead of by golden section.
    #[arg(long)]
    pub grid: bool,
    /// Also quantize biases, norms, embeddings and other 1-D tensors (kept in float by
    /// default); a non-float tensor is then an error.
    #[arg(long)]
    pub quantize_all: bool,
    /// Print the JSON report (per tensor: relative error, exponent, bytes).
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args)]
pub struct DequantArgs {
    /// A model written by `engram quantize`.
    pub input: PathBuf,
    /// Output: a path ending in .safetensors is one file; anything else a model folder.
    #[arg(short, long)]
    pub out: PathBuf,
    /// Float dtype of the dequantized tensors (default: each tensor's original dtype).
    #[arg(long)]
    pub dtype: Option<String>,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let q = by_name(&a.method).map_err(anyhow::Error::msg)?;
    let scope_flag = match (&a.scope, a.group) {
        (Some(s), _) => s.as_str(),
        (None, Some(_)) => "group",
        (None, None) => "channel",
    };
    let scope = Scope::parse(scope_flag, a.group).map_err(anyhow::Error::msg)?;
    let spec = Spec {
        bits: a.bits,
        scope,
        symmetric: !a.asym,
        scale_f16: a.scale_dtype == "f16",
        grid: a.grid,
    };
    spec.check().map_err(anyhow::Error::msg)?;
    q.check(&spec).map_err(anyhow::Error::msg)?;
    if a.grid && q.name() != "power" {
        bail!("--grid applies to --method power only");
    }
    let model = super::models::open(&a.input)?;
    let params = serde_json::json!({
        "source": a.input.display().to_string(),
        "method": q.name(),
        "bits": a.bits,
        "scope": scope.name(),
        "symmetric": !a.asym,
        "scale_dtype": a.scale_dtype,
        "grid": a.grid,
        "quantize_all": a.quantize_all,
    });
    let opts = Options {
        spec,
        quantize_all: a.quantize_all,
        metadata: engram_ckpt::provenance(&ctx.command_line, &params),
    };
    let pb = super::progress::bar(ctx, model.data_bytes(), "quantize");
    let res = quantize_model(&model, q, &opts, &a.out, &|n| pb.inc(n));
    pb.finish_and_clear();
    let (report, files) = res?;
    if a.json {
        return print_json(&serde_json::json!({"report": report, "files": files}));
    }
    if !ctx.quiet {
        let worst = report
            .tensors
            .iter()
            .filter_map(|t| t.quantized.as_ref().map(|q| (q.rel_error, &t.name)))
            .max_by(|x, y| x.0.total_cmp(&y.0));
        println!(
            "quantized {} tensors ({} kept) with {} at {} bits per {}: {} -> {} ({:.2} bits per weight){}; wrote {}",
            report.quantized,
            report.kept,
            report.method,
            a.bits,
            scope.name(),
            util::bytes(report.bytes_in),
            util::bytes(report.bytes_out),
            report.bits_per_weight,
            worst.map_or(String::new(), |(e, n)| format!(
                ", largest relative error {e:.2e} ({n})"
            )),
            a.out.display()
        );
    }
    Ok(())
}

pub fn run_dequantize(ctx: &Ctx, a: DequantArgs) -> Result<()> {
    let dtype = opt_float_dtype(a.dtype.as_deref())?;
    let model = super::models::open(&a.input)?;
    let md = engram_ckpt::provenance(
        &ctx.command_line,
        &serde_json::json!({"source": a.input.display().to_string(), "dtype": dtype.map(|d| d.name())}),
    );
    let pb = super::progress::bar(ctx, model.data_bytes(), "dequantize");
    let res = dequantize_model(&model, &a.out, dtype, &md, &|n| pb.inc(n));
    pb.finish_and_clear();
    let files = res?;
    if !ctx.quiet {
        println!(
            "dequantized {} into {} ({} files)",
            a.input.display(),
            a.out.display(),
            files.len()
        );
    }
    Ok(())
}
