//! `engram adapt --config run.toml`: one test-time adaptation run. A source model (trained on
//! the clean data, or read from a checkpoint) meets a stream of shifted, unlabeled test
//! batches through an adapter; the error of every domain is written as JSON.

use super::Ctx;
use super::progress::RunBars;
use super::util::print_json;
use anyhow::{Result, anyhow};
use engram_ckpt::names::esc;
use engram_learn::adapt::run::AdaptConfig;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    after_help = "A run file:\n\n  seed = 0                     # the source's training and the adapter's draws\n  [scenario]                   # the stream's domains\n  kind = \"corruption\"\n  dataset = \"fashion-mnist\"\n  severity = 5                 # 1..5\n  rounds = 1\n  test-per-class = 200         # 2 000 images per domain\n  # corruptions = [\"gaussian_noise\", \"fog\"]   (default: the 15 of CoTTA's order)\n  [model]\n  kind = \"bn-cnn\"               # the source's architecture\n  [source]\n  epochs = 3                   # trained here unless checkpoint = \"model.safetensors\"\n  [stream]\n  batch = 200\n  order = \"iid\"                 # class-sorted: the non-i.i.d. (Dirichlet) order\n  [adapter]\n  name = \"cotta\"                # see `engram adapters`\n  augmentations = 32"
)]
pub struct Args {
    /// The run file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Folder of runs; the run writes OUT/<name>/results.json.
    #[arg(long, short, default_value = "runs")]
    pub out: PathBuf,
    /// Where the data sets are (default: the system packages' locations).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(ctx: &Ctx, a: Args) -> Result<()> {
    let shown = |p: &std::path::Path| esc(&p.display().to_string()).into_owned();
    let (text, _input) = super::util::read_run_file(&a.config)?;
    let cfg = AdaptConfig::parse_toml(&text).map_err(|e| anyhow!("{}: {e}", shown(&a.config)))?;
    let file = a.out.join(cfg.run_name()).join("results.json");
    engram_ckpt::commit::refuse_input(&file)?;
    // The output folder is checked before the source trains.
    for dir in [a.out.clone(), a.out.join(cfg.run_name())] {
        if std::fs::symlink_metadata(&dir).is_ok_and(|m| !m.is_dir()) {
            anyhow::bail!("{}: exists and is not a folder", shown(&dir));
        }
    }
    let bars = RunBars::new(!ctx.quiet, "source");
    let stream = super::progress::bar(ctx, 0, &esc(&cfg.adapter.name));
    let out = engram_learn::adapt::run::run(
        &cfg,
        a.data_dir.as_deref(),
        &mut |e| bars.on(e),
        &mut |t, b, n| {
            stream.set_length(n as u64);
            stream.set_position(b as u64);
            stream.set_message(format!("domain {}", t + 1));
        },
    )?;
    bars.finish();
    stream.finish_and_clear();
    let v = serde_json::to_value(&out)?;
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir).map_err(|e| anyhow!("creating {}: {e}", shown(dir)))?;
    }
    let body = serde_json::to_string_pretty(&v)? + "\n";
    engram_ckpt::write_atomic(&file, body.as_bytes())?;
    if a.json {
        return print_json(&v);
    }
    if !ctx.quiet {
        println!(
            "{}: mean error {:.2} % over {} domains (source clean accuracy {}); {}",
            esc(&out.name),
            out.mean_error,
            out.errors.len(),
            out.clean_accuracy
                .map_or("-".into(), |v| format!("{v:.1} %")),
            shown(&file)
        );
    }
    Ok(())
}

/// One line per test-time adapter: name, summary, parameters with their defaults.
pub fn list() -> Result<()> {
    for (name, summary, build) in engram_learn::adapt::REGISTRY {
        let params = build(&serde_json::Value::Null)
            .map(|s| s.params())
            .map_err(|e| anyhow!("adapter {name}: {e}"))?;
        let defaults = super::learn_report::key_values(&params, "(no parameters)");
        println!("{name:<10} {summary}  [{defaults}]");
    }
    Ok(())
}
