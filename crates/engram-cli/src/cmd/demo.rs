//! `engram demo`: the main job on its default data. By default a small but real
//! continual-learning comparison on Fashion-MNIST (every registered strategy on Split
//! Fashion-MNIST, class-incremental, and on Permuted Fashion-MNIST), written up in
//! `report/index.html`. With `--weights`: a weight-space round trip on a synthetic model
//! family (merge, TALL masks, Consensus, compression and bit-exact extraction).

use super::Ctx;
use super::args::parse_count;
use anyhow::{Result, bail};
use engram_ckpt::{DType, Model};
use engram_report::{html::Page, svg::bar_chart};
use engram_weights::compress::{extract_task, write_bundle};
use engram_weights::merge::engine::{MergeRequest, run_merge};
use engram_weights::merge::get;
use engram_weights::merge::params::{ParamSource, ParamValue};
use engram_weights::synth::{ArchConfig, SynthOptions, write_family};
use engram_weights::tall::{MtlRecipe, Tall};
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// Run the weight-space round trip instead of the continual-learning comparison.
    #[arg(long)]
    pub weights: bool,
    /// Epochs per task of the continual-learning comparison.
    #[arg(long, default_value_t = 2)]
    pub epochs: usize,
    /// Strategies to compare (default: naive, joint and every other registered strategy).
    #[arg(long, value_delimiter = ',')]
    pub strategies: Vec<String>,
    /// Run every strategy with its method card's defaults instead of the settings the
    /// continual-learning suite chose on validation (see `VALIDATED` in demo.rs).
    #[arg(long)]
    pub card_defaults: bool,
    /// Where the data sets are (default: the system packages' locations).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Working folder for models and runs (reused when present).
    #[arg(long, default_value = "demo-out")]
    pub work: PathBuf,
    /// Folder of the HTML report.
    #[arg(long, default_value = "report")]
    pub report: PathBuf,
    /// Size of the synthetic models (parameters).
    #[arg(long, default_value = "50M")]
    pub params: String,
    /// Number of fine-tuned models.
    #[arg(short = 'n', long, default_value_t = 4)]
    pub tasks: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// Strategy settings that `engram bench cl` chose on validation (Split Fashion-MNIST, MLP
/// 400-400, seed 0, 10 % of the training examples held out; the grids are `GRID` in
/// engram-bench's `cl/suite.rs`; runs of 2026-11-28 and 2026-12-06, the same choices;
/// `bench-out/cl/tuning.json`). The demo
/// uses them unless `--card-defaults`, which runs each strategy's own defaults (CLASSP's:
/// per-weight threshold 0 at the reference's lr 0.2, which learns, less well than lr 0.01 on
/// validation).
const VALIDATED: &[(&str, &str)] = &[
    ("ewc", "lambda = 10000.0"),
    ("online-ewc", "lambda = 10000.0"),
    ("si", "c = 1.0"),
    ("l2", "lambda = 1.0"),
    ("classp", "lr = 0.01\nthreshold = 0.0"),
    ("lwf", "alpha = 2.0"),
    ("der", "alpha = 1.0"),
    ("der++", "alpha = 0.3"),
];

/// The selective fine-tuning strategies' settings in the suite (fixed, not tuned): the first
/// task trains every parameter, later tasks only what the method chooses. Used with
/// `--card-defaults` too: at `from-task = 0` they would restrict a network that has learned
/// nothing yet.
const SELECTIVE: &[(&str, &str)] = &[
    ("lift", "from-task = 1"),
    ("kappatune", "from-task = 1\nn = 1"),
    ("lora", "from-task = 1"),
    ("block-expansion", "from-task = 1"),
];

/// The demo's network; block expansion copies residual blocks, so it runs on a residual MLP
/// (its row says so in the report's settings).
fn model_toml(st: &str) -> &'static str {
    match st {
        "block-expansion" => "kind = \"resmlp\"\nwidth = 256\nhidden = 256\nblocks = 2",
        _ => "kind = \"mlp\"\nhidden = [256, 256]",
    }
}

/// The run file of one strategy on one scenario.
fn run_toml(st: &str, label: &str, scenario: &str, a: &Args) -> String {
    let settings = VALIDATED
        .iter()
        .filter(|_| !a.card_defaults)
        .chain(SELECTIVE)
        .find(|v| v.0 == st)
        .map_or("", |v| v.1);
    let model = model_toml(st);
    format!(
        "name = \"{st}-{label}\"\nseed = {seed}\n[scenario]\n{scenario}\ndataset = \"fashion-mnist\"\nseed = {seed}\n[model]\n{model}\n[strategy]\nname = \"{st}\"\n{settings}\n[train]\nepochs = {}\nbatch-size = 128\n[train.optimizer]\nkind = \"adam\"\nlr = 0.001\n",
        a.epochs,
        seed = a.seed
    )
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    if a.weights {
        weights(ctx, a)
    } else {
        continual(ctx, a)
    }
}

/// The continual-learning comparison: every strategy on two Fashion-MNIST scenarios.
fn continual(ctx: &Ctx, a: Args) -> Result<()> {
    let strategies: Vec<String> = if a.strategies.is_empty() {
        engram_learn::strategy::REGISTRY
            .iter()
            .map(|r| r.0.to_string())
            .filter(|n| n != "probe" && n != "rift")
            .collect()
    } else {
        a.strategies.clone()
    };
    let scenarios = [
        (
            "class-incremental",
            "kind = \"class-incremental\"\ntasks = 5\nclasses-per-task = 2",
        ),
        (
            "permuted",
            "kind = \"permuted\"\ntasks = 4\ntrain-per-task = 10000",
        ),
    ];
    let mut runs = Vec::new();
    for (label, scen) in scenarios {
        for st in &strategies {
            // The exemplar-free class-incremental methods learn rotations of images as extra
            // classes: they belong to class splits, not to permuted pixels.
            if label == "permuted" && matches!(st.as_str(), "napa-vq" | "pass") {
                if !ctx.quiet {
                    eprintln!("{st} runs on class-incremental splits only; not on {label}");
                }
                continue;
            }
            let text = run_toml(st, label, scen, &a);
            let cfg = engram_learn::config::RunConfig::parse_toml(&text)
                .map_err(|e| anyhow::anyhow!(e))?;
            if !ctx.quiet {
                eprintln!("run {}", cfg.run_name());
            }
            let dir = a.work.join("runs").join(cfg.run_name());
            let opts = engram_learn::run::RunOptions {
                data_dir: a.data_dir.as_deref(),
                overwrite: true,
                ..Default::default()
            };
            let bars = super::progress::RunBars::new(!ctx.quiet, st);
            let r = engram_learn::run::run_config(&cfg, &dir, &opts, &mut |e| bars.on(e))?
                .ok_or_else(|| anyhow::anyhow!("run {} did not finish", cfg.run_name()))?;
            bars.finish();
            let r: engram_report::results::RunResults = serde_json::from_value(r)?;
            if !ctx.quiet {
                let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
                println!(
                    "{:<34} ACC {:>6}  forgetting {:>6}  BWT {:>6}  ({:.0} s)",
                    r.name,
                    f(r.summary.acc),
                    f(r.summary.forgetting),
                    f(r.summary.bwt),
                    r.summary.total_time_s().unwrap_or(0.0)
                );
            }
            runs.push(r);
        }
    }
    let files = engram_report::report::write_report(&runs, &a.report)?;
    if !ctx.quiet {
        println!(
            "report: {}",
            files
                .first()
                .map(|f| f.display().to_string())
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// The weight-space round trip on a synthetic family.
fn weights(ctx: &Ctx, a: Args) -> Result<()> {
    if a.tasks < 2 {
        bail!("the demo needs at least 2 tasks");
    }
    let arch = ArchConfig::for_params(parse_count(&a.params)?)?;
    let fam = a.work.join("models");
    let say = |s: &str| {
        if !ctx.quiet {
            eprintln!("{s}");
        }
    };
    let md = engram_ckpt::provenance(
        &ctx.command_line,
        &serde_json::json!({"demo": true, "seed": a.seed}),
    );
    if !fam
        .join(format!("ft-{}", a.tasks))
        .join("model.safetensors")
        .is_file()
    {
        say(&format!(
            "writing a synthetic family: base + {} fine-tunes of {} parameters (bf16)",
            a.tasks,
            arch.param_count()
        ));
        let pb = super::progress::bar(ctx, arch.param_count(), "synth");
        let opts = SynthOptions {
            arch: arch.clone(),
            finetunes: a.tasks,
            dtype: DType::BF16,
            seed: a.seed,
            delta_scale: 0.05,
            max_shard_bytes: None,
        };
        write_family(&fam, &opts, &md, &|n| pb.inc(n))?;
        pb.finish_and_clear();
    }
    let base = super::models::open(&fam.join("base"))?;
    let models: Vec<Model> = (1..=a.tasks)
        .map(|i| super::models::open(&fam.join(format!("ft-{i}"))))
        .collect::<Result<_>>()?;
    let names: Vec<String> = (1..=a.tasks).map(|i| format!("task{i}")).collect();
    let p = base.param_count();
    let mut steps = Steps {
        ctx,
        units: p,
        rows: Vec::new(),
    };

    for (method, density) in [("task_arithmetic", None), ("ties", Some(0.2))] {
        let mut params = ParamSource::default();
        if let Some(d) = density {
            params
                .global
                .insert("density".into(), ParamValue::Scalar(d));
        }
        params.global.insert(
            "lambda".into(),
            ParamValue::Scalar(if density.is_some() { 1.0 } else { 0.5 }),
        );
        let req = MergeRequest::new(
            get(method).ok_or_else(|| anyhow::anyhow!("no {method}"))?,
            Some(&base),
            models.iter().collect(),
        )
        .with_params(params)
        .with_seed(a.seed);
        steps.run(&format!("merge {method}"), method, |tick| {
            run_merge(&req, &a.work.join(method), &md, tick)
        })?;
    }
    let tall = Tall::new(
        &base,
        models.iter().collect(),
        names.clone(),
        MtlRecipe::Sum,
        vec![0.4; a.tasks],
    )?;
    let stats = steps.run("TALL mask statistics", "masks", |tick| tall.stats(tick))?;
    steps.run("consensus merge (k = 2)", "consensus", |tick| {
        tall.write_model(
            &a.work.join("consensus"),
            None,
            &md,
            tick,
            &Tall::consensus_kernel(2, 1.0),
        )
    })?;
    let bundle = a.work.join("bundle");
    let rep = steps.run("compress into one bundle", "compress", |tick| {
        write_bundle(
            &tall,
            &bundle,
            DType::BF16,
            engram_weights::compress::MaskCoding::Packed,
            &md,
            tick,
        )
    })?;

    // Every task extracted from the bundle equals its in-memory TALL reconstruction.
    let mut exact = 0;
    for (i, task) in names.iter().enumerate() {
        let t = Instant::now();
        let ex = a.work.join("extracted").join(task);
        extract_task(&bundle, task, &ex, &md, &|_| {})?;
        let secs = t.elapsed().as_secs_f64();
        let mem = a.work.join("reconstructed").join(task);
        tall.write_model(
            &mem,
            None,
            &md,
            &|_| {},
            &Tall::reconstruct_kernel(i, DType::BF16),
        )?;
        if !Model::open(&ex)?.same_tensors(&Model::open(&mem)?) {
            bail!("task {task}: the extracted model differs from the TALL reconstruction");
        }
        exact += 1;
        steps.record(format!("extract {task}"), secs);
    }

    let mut page = Page::new("engram demo: weight-space round trip");
    page.para(&format!(
        "A synthetic decoder-only transformer family ({} parameters, {} layers, hidden {}; bf16) with {} fine-tunes, merged, masked and compressed by engram. Re-run: engram demo.",
        p, arch.num_hidden_layers, arch.hidden_size, a.tasks
    ));
    let rows = steps.rows;
    page.heading("Steps").table(&["step", "seconds"], &rows);
    let tot = &stats.total;
    page.heading("TALL masks (lambda 0.4, tau = sum)").table(
        &["weights", "count", "share"],
        &[
            ("catastrophic (no mask, tau != 0)", tot.catastrophic),
            ("selfish (one mask)", tot.selfish),
            ("shared (two or more)", tot.shared),
            ("untouched (tau = 0)", tot.untouched),
        ]
        .iter()
        .map(|(k, v)| {
            vec![
                k.to_string(),
                v.to_string(),
                format!("{:.2}%", 100.0 * *v as f64 / tot.params.max(1) as f64),
            ]
        })
        .collect::<Vec<_>>(),
    );
    let labels: Vec<String> = (0..tot.histogram.len()).map(|k| k.to_string()).collect();
    let vals: Vec<f64> = tot.histogram.iter().map(|&v| v as f64).collect();
    page.svg(&bar_chart(
        "Number of task masks holding each weight",
        &labels,
        &vals,
        "weights",
    ));
    page.heading("Compression").table(
        &["", "bytes"],
        &[
            vec![
                "base + fine-tuned checkpoints".into(),
                rep.replaced_bytes.to_string(),
            ],
            vec![
                "bundle (base, merged vector, masks)".into(),
                rep.bundle_bytes.to_string(),
            ],
            vec!["of which masks".into(), rep.mask_bytes.to_string()],
        ],
    );
    page.para(&format!(
        "{:.2}x smaller; {exact} of {} tasks extracted bit-exact.",
        rep.ratio, a.tasks
    ));
    // The page and its JSON are switched in together.
    let staged = engram_ckpt::Staged::new(&a.report)?;
    engram_ckpt::write_atomic(&staged.path().join("index.html"), page.render().as_bytes())?;
    let summary = serde_json::json!({"steps": rows, "tall": stats.total, "compression": rep, "exact_extractions": exact});
    engram_ckpt::write_atomic(
        &staged.path().join("demo.json"),
        serde_json::to_string_pretty(&summary)?.as_bytes(),
    )?;
    staged.commit(&|n| n == "index.html" || n == "demo.json")?;
    let index = a.report.join("index.html");
    if !ctx.quiet {
        for r in &rows {
            println!("{:<32} {:>8} s", r[0], r[1]);
        }
        println!(
            "bundle {:.2}x smaller than the checkpoints; {exact}/{} tasks extracted bit-exact",
            rep.ratio, a.tasks
        );
        println!("report: {}", index.display());
    }
    Ok(())
}

/// The steps of the round trip as they run: each under a progress bar of `units` (the model's
/// parameters), and a row of its seconds.
struct Steps<'a> {
    ctx: &'a Ctx,
    units: u64,
    rows: Vec<Vec<String>>,
}

impl Steps<'_> {
    /// Runs `step` under a bar labelled `bar` and records its time as `label`.
    fn run<T, E: Into<anyhow::Error>>(
        &mut self,
        label: &str,
        bar: &str,
        step: impl FnOnce(&(dyn Fn(u64) + Sync)) -> Result<T, E>,
    ) -> Result<T> {
        let pb = super::progress::bar(self.ctx, self.units, bar);
        let t = Instant::now();
        let out = step(&|n| pb.inc(n)).map_err(Into::into)?;
        pb.finish_and_clear();
        self.record(label.to_string(), t.elapsed().as_secs_f64());
        Ok(out)
    }

    fn record(&mut self, label: String, seconds: f64) {
        self.rows.push(vec![label, format!("{seconds:.2}")]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        a: Args,
    }

    /// Every validated setting names a registered strategy and parses as its parameters
    /// (parsing a run file builds its strategy); `--card-defaults` leaves them out.
    #[test]
    fn validated_settings_are_valid_strategy_parameters() {
        let validated = Cli::parse_from(["demo"]).a;
        let defaults = Cli::parse_from(["demo", "--card-defaults"]).a;
        let registered: Vec<&str> = engram_learn::strategy::REGISTRY
            .iter()
            .map(|r| r.0)
            .collect();
        for (name, settings) in VALIDATED {
            assert!(registered.contains(name), "{name}");
            let scen = "kind = \"permuted\"\ntasks = 2";
            let cfg =
                engram_learn::config::RunConfig::parse_toml(&run_toml(name, "t", scen, &validated))
                    .unwrap_or_else(|e| panic!("{name}: {settings}: {e}"));
            let key = settings.split(' ').next().unwrap_or_default();
            assert!(cfg.strategy.params.contains_key(key), "{name}: {key}");
            let cfg =
                engram_learn::config::RunConfig::parse_toml(&run_toml(name, "t", scen, &defaults))
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(cfg.strategy.params.is_empty(), "{name}");
        }
    }
}
