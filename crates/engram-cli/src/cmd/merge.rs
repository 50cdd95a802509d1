//! `engram merge`: merge checkpoints by a mergekit YAML config or by flags.

use super::Ctx;
use super::args::{opt_bytes, opt_float_dtype, param};
use super::models::{open, open_all};
use super::util::{emit, esc, outln, print_json};
use anyhow::{Context, Result, bail};
use engram_weights::merge::engine::{MergeRequest, run_merge};
use engram_weights::merge::params::{ParamSource, ParamValue};
use engram_weights::merge::{TrimScope, config, registry};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    // `--lambda -0.5` (a negative λ forgets a task) and `--weights -1,1` are values.
    allow_negative_numbers = true,
    after_help = "With a config file, the merge is the config's: --base, --density, --weights, --lambda, --t, --param and --trim-scope are refused (write them in the config). --out-dtype and --seed apply to both forms (an error if the config sets them too); so do --allow-missing, --check-finite, --shard-size and --json.\n\nExamples:\n  engram merge merge.yml -o merged/\n  engram merge --method ties --base base/ --density 0.2 ft-1/ ft-2/ -o merged/\n  engram merge --list"
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
            let (cfg, guard) = from_config(&a, path)?;
            (cfg, Some(guard))
        }
        _ => (quick_config(&a)?, None),
    };
    let base = cfg.base.as_deref().map(open).transpose()?;
    let models = open_all(&cfg.models)?;
    let req = MergeRequest::new(cfg.method, base.as_ref(), models.iter().collect())
        .with_params(cfg.params)
        .with_scope(cfg.scope)
        .with_seed(cfg.seed.unwrap_or(0))
        .with_out_dtype(cfg.out_dtype)
        .with_allow_missing(a.allow_missing)
        .with_check_finite(a.check_finite)
        .with_max_shard_bytes(opt_bytes(a.shard_size.as_deref())?);
    let params = serde_json::json!({
        "method": cfg.method.name(), "base": cfg.base, "models": cfg.models,
        "trim_scope": cfg.scope, "seed": cfg.seed, "inputs": a.inputs,
    });
    let md = engram_ckpt::provenance(&ctx.command_line, &params);
    let total = base
        .as_ref()
        .or(models.first())
        .map_or(0, |m| m.param_count());
    let pb = super::progress::bar(ctx, total, cfg.method.name());
    let rep = run_merge(&req, &out, &md, &|n| pb.inc(n))?;
    pb.finish_and_clear();
    if a.json {
        return print_json(&rep);
    }
    if ctx.quiet {
        return Ok(());
    }
    let mut o = String::new();
    outln!(
        o,
        "{}: merged {} tensors ({} parameters) of {} models into {}",
        rep.method,
        rep.tensors_merged,
        rep.params_merged,
        models.len(),
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
    emit(&o)?;
    Ok(())
}

/// Largest merge config read (a mergekit config is a few kilobytes).
const CONFIG_LIMIT: u64 = 1 << 20;

/// The config form: the config decides the merge; flags of the quick form are refused, and
/// --out-dtype and --seed apply unless the config sets them too.
fn from_config(
    a: &Args,
    path: &std::path::Path,
) -> Result<(config::MergeConfig, engram_ckpt::commit::OpenInput)> {
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
    let (bytes, guard) = engram_ckpt::commit::read_input(path, "a merge config", CONFIG_LIMIT)?;
    let text = String::from_utf8(bytes)
        .map_err(|_| anyhow::anyhow!("{}: not UTF-8 text", path.display()))?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let mut cfg =
        config::parse(&text, dir).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let out_dtype = opt_float_dtype(a.out_dtype.as_deref())?;
    for (flag, given, in_config) in [
        ("--out-dtype", out_dtype.is_some(), cfg.out_dtype.is_some()),
        ("--seed", a.seed.is_some(), cfg.seed.is_some()),
    ] {
        if given && in_config {
            bail!(
                "{flag} is given and {} sets it too; give it once",
                path.display()
            );
        }
    }
    config::check_effect(cfg.method, false, a.seed.is_some(), ["", "--seed"])
        .map_err(anyhow::Error::msg)?;
    cfg.out_dtype = cfg.out_dtype.or(out_dtype);
    cfg.seed = cfg.seed.or(a.seed);
    Ok((cfg, guard))
}

fn quick_config(a: &Args) -> Result<config::MergeConfig> {
    let name = a
        .method
        .as_deref()
        .context("give a mergekit YAML config, or --method (see --list) with --base and models")?;
    let method = engram_weights::merge::get(name)
        .with_context(|| format!("unknown method '{name}'; see `engram merge --list`"))?;
    let models = a.inputs.clone();
    if models.is_empty() {
        bail!("no models to merge");
    }
    // Each parameter once: `--lambda 0.4 --param lambda=0.5` or a repeated --param is an error.
    let mut given: Vec<(String, String, ParamValue)> =
        [("density", a.density), ("lambda", a.lambda), ("t", a.t)]
            .into_iter()
            .filter_map(|(k, v)| Some((k.into(), format!("--{k}"), ParamValue::Scalar(v?))))
            .collect();
    for p in &a.params {
        let (k, v) = param(p)?;
        given.push((k.clone(), format!("--param {p}"), v));
    }
    let mut global = BTreeMap::new();
    for (k, flag, v) in given {
        if global.insert(k.clone(), v).is_some() {
            bail!("{flag}: parameter '{k}' is given twice; give it once");
        }
    }
    if !a.weights.is_empty() && a.weights.len() != models.len() {
        bail!("{} weights for {} models", a.weights.len(), models.len());
    }
    // Without --weights no model has its own map: the merge gives each the global parameters.
    let per_model = a
        .weights
        .iter()
        .map(|w| BTreeMap::from([("weight".to_string(), ParamValue::Scalar(*w))]))
        .collect();
    // The library's one check of parameters (the plan repeats it), before models are opened.
    let params = ParamSource { global, per_model };
    let names: Vec<String> = models.iter().map(|m| m.display().to_string()).collect();
    params
        .validate(method, &names)
        .map_err(anyhow::Error::msg)?;
    config::check_effect(
        method,
        a.base.is_some(),
        a.seed.is_some(),
        ["--base", "--seed"],
    )
    .map_err(anyhow::Error::msg)?;
    let scope = match a.trim_scope.as_deref() {
        Some("model") => {
            if !method.trims_by_magnitude() {
                bail!(
                    "--trim-scope model applies to magnitude-trimming methods; {name} does not trim by magnitude"
                );
            }
            TrimScope::Model
        }
        _ => TrimScope::Tensor,
    };
    if method.needs_base() && a.base.is_none() {
        bail!("{name} needs --base");
    }
    Ok(config::MergeConfig {
        method,
        base: a.base.clone(),
        models,
        params,
        out_dtype: opt_float_dtype(a.out_dtype.as_deref())?,
        scope,
        seed: a.seed,
    })
}
