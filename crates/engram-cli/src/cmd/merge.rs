//! `engram merge`: merge checkpoints by a mergekit YAML config or by flags; a config of several
//! `---`-separated documents is a multi-stage merge (mergekit-multi), run stage by stage.

use super::Ctx;
use super::args::{opt_bytes, opt_float_dtype, param};
use super::models::{open, open_all};
use super::util::{emit, esc, outln, print_json};
use anyhow::{Context, Result, bail};
use engram_weights::merge::engine::{MergeReport, run_merge};
use engram_weights::merge::{config, registry, stages};
use engram_weights::spelling::Spelling;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
#[command(
    // `--lambda -0.5` (a negative λ forgets a task) and `--weights -1,1` are values.
    allow_negative_numbers = true,
    after_help = "With a config file, the merge is the config's: --base, --density, --weights, --lambda, --t, --param and --trim-scope are refused (write them in the config). --out-dtype and --seed apply to both forms (an error if the config sets them too); so do --allow-missing, --check-finite, --shard-size and --json.\n\nMulti-stage merges (as mergekit-multi): a config of several `---`-separated documents, each a merge config with a `name`. A model reference equal to a stage's name is that stage's output, OUTDIR/<name>; -o gives OUTDIR. Stages run in dependency order; a stage whose output is complete and was written by the same config, options and inputs is skipped. The last stage run is the final product. --seed applies to the stages that draw random numbers.\n\nExamples:\n  engram merge merge.yml -o merged/\n  engram merge --method ties --base base/ --density 0.2 ft-1/ ft-2/ -o merged/\n  engram merge stages.yml -o out/ [--stage NAME]\n  engram merge --list"
)]
pub struct Args {
    /// A mergekit YAML config (merge_method, base_model, models, parameters, dtype, out_dtype;
    /// engram adds trim_scope and seed); or, with --method, the models to merge.
    #[arg(value_name = "CONFIG | MODELS")]
    pub inputs: Vec<PathBuf>,
    /// Output model folder (or a .safetensors file).
    #[arg(short, long)]
    pub out: Option<PathBuf>,
    /// Merge method (quick form); `--list` shows them all.
    #[arg(long)]
    pub method: Option<String>,
    /// Base model (quick form).
    #[arg(long)]
    pub base: Option<PathBuf>,
    /// Share of each delta kept (ties, dare_*, breadcrumbs*, della*).
    #[arg(long)]
    pub density: Option<f64>,
    /// Per-model weights, comma-separated in model order (default 1 each).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub weights: Vec<f64>,
    /// Scale of the merged delta (task_arithmetic, ties, dare_*, della*, breadcrumbs*).
    #[arg(long)]
    pub lambda: Option<f64>,
    /// Interpolation factor of slerp (0 = base).
    #[arg(long)]
    pub t: Option<f64>,
    /// Further parameters as NAME=VALUE (e.g. --param epsilon=0.1 --param normalize=0).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    pub params: Vec<String>,
    /// Top-k over each tensor (mergekit) or over the whole model (TIES/TALL papers).
    #[arg(long, value_parser = ["tensor", "model"])]
    pub trim_scope: Option<String>,
    /// Seed of random methods (dare_*, della*): same seed, same bytes.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output float dtype (default: the base's; a config's out_dtype).
    #[arg(long)]
    pub out_dtype: Option<String>,
    /// Keep the base's tensor where a model lacks it, and leave out a tensor the base lacks
    /// (both listed in the output), instead of failing.
    #[arg(long)]
    pub allow_missing: bool,
    /// Fail if a merged value is NaN or infinite.
    #[arg(long)]
    pub check_finite: bool,
    /// Shard the output at this size (e.g. 5GB).
    #[arg(long, value_name = "SIZE")]
    pub shard_size: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// List the merge methods and their parameters.
    #[arg(long)]
    pub list: bool,
    /// With a multi-stage config: run this stage and the stages it needs (default: all).
    #[arg(long, value_name = "NAME")]
    pub stage: Option<String>,
    /// Find TIES' and breadcrumbs' thresholds (per tensor, or over the model with
    /// --trim-scope model) with two selection passes before the merge pass, as engram did
    /// before it finished them during the merge pass (the same output; for
    /// `engram bench merge`'s comparison).
    #[arg(long, hide = true)]
    pub select_first: bool,
}

fn list() {
    for m in registry() {
        println!("{:<18} {}", m.name(), m.summary());
        for p in m.params() {
            let d = p
                .default
                .map_or("required".into(), |d| format!("default {d}"));
            let scope = if p.per_model { "per model" } else { "global" };
            println!("{:<20}{:<12} {:<10} {} ({d})", "", p.name, scope, p.help);
        }
    }
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if a.list {
        list();
        return Ok(());
    }
    let Some(out) = a.out.clone() else {
        bail!("give the output with -o/--out");
    };
    // The config is an input of the run until the output is written.
    let (cfg, _config_guard) = match a.inputs.as_slice() {
        [path] if a.method.is_none() => {
            refuse_quick_flags(&a, path)?;
            let (bytes, guard) =
                engram_ckpt::commit::read_input(path, "a merge config", CONFIG_LIMIT)?;
            let text = String::from_utf8(bytes)
                .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
            if stages::is_multi_stage(&text) {
                let res = run_stages(ctx, &a, path, &text, &out);
                drop(guard);
                return res;
            }
            (from_config(&a, path, &text)?, Some(guard))
        }
        _ => (quick_config(&a)?, None),
    };
    if a.stage.is_some() {
        bail!("--stage applies to a multi-stage config (several `---`-separated documents)");
    }
    let params = serde_json::json!({
        "method": cfg.method.name(), "base": cfg.base, "models": cfg.models,
        "trim_scope": cfg.scope, "seed": cfg.seed, "inputs": a.inputs,
    });
    let (rep, n) = merge(ctx, &a, cfg, &out, &params, None)?;
    if a.json {
        return print_json(&rep);
    }
    if ctx.quiet {
        return Ok(());
    }
    emit(&summary(&rep, Some(n), &out))?;
    Ok(())
}

/// Opens the models of `cfg` and merges them into `out`, with a progress bar; provenance
/// records `params`, and `extra` (a metadata key and value) is added to it.
fn merge(
    ctx: &Ctx,
    a: &Args,
    cfg: config::MergeConfig,
    out: &Path,
    params: &serde_json::Value,
    extra: Option<(&str, &str)>,
) -> Result<(MergeReport, usize)> {
    let base = cfg.base.as_deref().map(open).transpose()?;
    let models = open_all(&cfg.models)?;
    let req = cfg
        .request(base.as_ref(), &models)
        .with_allow_missing(a.allow_missing)
        .with_check_finite(a.check_finite)
        .with_max_shard_bytes(opt_bytes(a.shard_size.as_deref())?)
        .with_one_pass(!a.select_first);
    let mut md = engram_ckpt::provenance(&ctx.command_line, params);
    if let Some((k, v)) = extra {
        md.insert(k.to_string(), v.to_string());
    }
    let pb = super::progress::bar(ctx, req.total_params(), cfg.method.name());
    let rep = run_merge(&req, out, &md, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    Ok((rep, models.len()))
}

/// The text report of one merge of `n` models (if known) into `out`.
fn summary(rep: &MergeReport, n: Option<usize>, out: &Path) -> String {
    let mut o = String::new();
    let of = n.map_or(String::new(), |n| format!(" of {n} models"));
    outln!(
        o,
        "{}: merged {} tensors ({} parameters){of} into {}",
        rep.method,
        rep.tensors_merged,
        rep.params_merged,
        out.display()
    );
    for (what, names) in [
        ("copied from the base (not float)", &rep.copied),
        (
            "kept from the base (missing in some model)",
            &rep.kept_from_base,
        ),
        ("ignored (not in the base)", &rep.ignored),
    ] {
        if !names.is_empty() {
            let names: Vec<_> = names.iter().map(|n| esc(n)).collect();
            outln!(o, "  {what}: {}", names.join(", "));
        }
    }
    if let Some(t) = &rep.model_thresholds {
        outln!(o, "  model-scope |tau| thresholds: {t:?}");
    }
    o
}

/// A multi-stage config (`text`, read from `path`): every stage is checked before any runs,
/// then the stages run in dependency order into `out_dir/<name>`, up-to-date ones skipped.
fn run_stages(ctx: &Ctx, a: &Args, path: &Path, text: &str, out_dir: &Path) -> Result<()> {
    let label = path.display().to_string();
    if engram_ckpt::writer::is_single_file_target(out_dir) {
        bail!(
            "{label} is a multi-stage config: -o names the folder of the stages' outputs, not a .safetensors file"
        );
    }
    let list = stages::parse(text).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    let order =
        stages::order(&list, a.stage.as_deref()).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let outs = stages::outputs(&list, out_dir)?;
    stages::check_references(&list, dir).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    let out_dtype = opt_float_dtype(a.out_dtype.as_deref())?;
    // Every stage's config and flags, before anything is written.
    let mut random = false;
    for &i in &order {
        let cfg =
            stages::config(&list[i], dir, &outs).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
        random |= cfg.method.random();
        stage_flags(a, cfg, &format!("stage '{}' of {label}", list[i].name))?;
    }
    if a.seed.is_some() && !random {
        bail!(
            "--seed has no effect: no stage of {label} draws random numbers (only dare_* and della* do)"
        );
    }
    let options = serde_json::json!({
        "allow_missing": a.allow_missing,
        "max_shard_bytes": opt_bytes(a.shard_size.as_deref())?,
        "out_dtype": out_dtype.map(|d| d.name()),
        "seed": a.seed,
    });
    let mut merge_stage = |s: &stages::Stage,
                           cfg: config::MergeConfig,
                           out: &Path,
                           record: &str|
     -> engram_ckpt::Result<MergeReport> {
        let what = format!("stage '{}' of {label}", s.name);
        let run = || -> Result<MergeReport> {
            let cfg = stage_flags(a, cfg, &what)?;
            let params = serde_json::json!({
                "method": cfg.method.name(), "base": cfg.base, "models": cfg.models,
                "trim_scope": cfg.scope, "seed": cfg.seed, "inputs": a.inputs,
                "stage": s.name,
            });
            Ok(merge(ctx, a, cfg, out, &params, Some((stages::STAGE_KEY, record)))?.0)
        };
        run().map_err(|e| engram_ckpt::Error::Invalid(engram_bench::error_chain(&e)))
    };
    let show = !a.json && !ctx.quiet;
    let mut on_stage = |r: &stages::StageReport| {
        if !show {
            return;
        }
        let line = match &r.report {
            None => format!("stage {}: up to date, skipped ({})\n", r.name, r.output),
            Some(rep) => format!(
                "stage {}: merged ({}); {}",
                r.name,
                r.status.describe(),
                summary(rep, None, Path::new(&r.output))
            ),
        };
        // A closed pipe or a full disk is reported by the final summary's write.
        let _ = emit(&line);
    };
    let reports = stages::run(
        &list,
        &order,
        dir,
        out_dir,
        &options,
        &mut merge_stage,
        &mut on_stage,
    )?;
    let last = reports
        .last()
        .map(|r| (r.name.clone(), r.output.clone()))
        .context("no stage to run")?;
    if a.json {
        return print_json(&serde_json::json!({
            "engram_merge_stages": 1,
            "config": path,
            "out_dir": out_dir,
            "final": {"name": last.0, "output": last.1},
            "stages": reports,
        }));
    }
    if show {
        let merged = reports.iter().filter(|r| r.report.is_some()).count();
        emit(&format!(
            "{} stage(s): {merged} merged, {} skipped; final model: {} ({})\n",
            reports.len(),
            reports.len() - merged,
            last.1,
            last.0
        ))?;
    }
    Ok(())
}

/// --out-dtype and --seed applied to one stage's config: --out-dtype unless the stage sets
/// out_dtype (both: an error), --seed to a stage that draws random numbers unless it sets
/// seed (both: an error).
fn stage_flags(a: &Args, mut cfg: config::MergeConfig, what: &str) -> Result<config::MergeConfig> {
    let out_dtype = opt_float_dtype(a.out_dtype.as_deref())?;
    if out_dtype.is_some() && cfg.out_dtype.is_some() {
        bail!("--out-dtype is given and {what} sets out_dtype too; give it once");
    }
    let seed = a.seed.filter(|_| cfg.method.random());
    if seed.is_some() && cfg.seed.is_some() {
        bail!("--seed is given and {what} sets seed too; give it once");
    }
    cfg.out_dtype = cfg.out_dtype.or(out_dtype);
    cfg.seed = cfg.seed.or(seed);
    Ok(cfg)
}

/// Largest merge config read (a mergekit config is a few kilobytes).
const CONFIG_LIMIT: u64 = 1 << 20;

/// The quick form's flags, refused with a config file (the config decides the merge).
fn refuse_quick_flags(a: &Args, path: &Path) -> Result<()> {
    let quick = [
        ("--base", a.base.is_some()),
        ("--density", a.density.is_some()),
        ("--weights", !a.weights.is_empty()),
        ("--lambda", a.lambda.is_some()),
        ("--t", a.t.is_some()),
        ("--param", !a.params.is_empty()),
        ("--trim-scope", a.trim_scope.is_some()),
    ];
    if let Some((flag, _)) = quick.iter().find(|(_, given)| *given) {
        bail!(
            "{flag} belongs to the quick form (--method with models); with a config file, write it in {}",
            path.display()
        );
    }
    Ok(())
}

/// The config form: the config (`text`, read from `path`) decides the merge; --out-dtype and
/// --seed apply unless the config sets them too.
fn from_config(a: &Args, path: &Path, text: &str) -> Result<config::MergeConfig> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let label = path.display().to_string();
    let cfg = config::parse(text, dir).map_err(|e| anyhow::anyhow!("{label}: {e}"))?;
    config::with_flags(cfg, &label, a.out_dtype.as_deref(), a.seed, Spelling::Flags)
        .map_err(anyhow::Error::msg)
}

pub(crate) fn quick_config(a: &Args) -> Result<config::MergeConfig> {
    let name = a
        .method
        .as_deref()
        .context("give a mergekit YAML config, or --method (see --list) with --base and models")?;
    let method = engram_weights::merge::get(name)
        .with_context(|| format!("unknown method '{name}'; see `engram merge --list`"))?;
    // --param values are read in their turn (after the models are checked).
    let params = a.params.iter().map(|p| {
        let (k, v) = param(p).map_err(|e| format!("{e:#}"))?;
        Ok((k, v, Some(format!("--param {p}"))))
    });
    let q = config::QuickForm {
        method,
        base: a.base.clone(),
        models: a.inputs.clone(),
        density: a.density,
        lambda: a.lambda,
        t: a.t,
        params,
        weights: a.weights.clone(),
        trim_scope: a.trim_scope.clone(),
        seed: a.seed,
        out_dtype: a.out_dtype.clone(),
    };
    config::quick_config(q, Spelling::Flags).map_err(anyhow::Error::msg)
}
