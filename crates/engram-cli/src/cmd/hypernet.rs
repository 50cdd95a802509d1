//! `engram hypernet --config run.toml`: a task-conditioned hypernetwork (chunked MLP or LSTM)
//! trained through a scenario's tasks with the output regulariser. Writes OUT/<name>/ in one
//! atomic switch: `results.json` (Task-IL accuracy matrix, HNET+ENT Class-IL, parameter
//! counts), `generator.safetensors` and `task<t>.safetensors` (each task's generated network).

use super::Ctx;
use super::util::print_json;
use anyhow::{Result, anyhow};
use engram_ckpt::names::esc;
use engram_learn::hypernet::run::HnetConfig;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Args)]
#[command(
    after_help = "A run file:\n\n  seed = 0\n  [scenario]                  # as in `engram train`\n  kind = \"task-incremental\"\n  dataset = \"fashion-mnist\"\n  tasks = 5\n  classes-per-task = 2\n  train-per-task = 4000\n  [target]\n  hidden = [100, 100]         # the generated MLP\n  [generator]\n  kind = \"lstm\"               # lstm | chunked\n  task-emb = 32\n  chunk-emb = 32\n  hidden = [32]               # lstm: [units]; chunked: its MLP's widths\n  chunk = 1000\n  grow = 0                    # lstm: units added per later task\n  [train]\n  steps = 300                 # per task\n  batch = 128\n  lr = 0.001\n  beta = 0.01                 # output regulariser\n  lookahead = true\n  chunk-weights = false"
)]
pub struct Args {
    /// The run file (TOML).
    #[arg(long, short)]
    pub config: PathBuf,
    /// Folder of runs; the run writes OUT/<name>/.
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
    let cfg = HnetConfig::parse_toml(&text).map_err(|e| anyhow!("{}: {e}", shown(&a.config)))?;
    let dir = a.out.join(cfg.run_name());
    // Checked before training: the folder can be made and replaces no input.
    let staged = engram_ckpt::Staged::new(&dir)?;
    let total = (cfg.train.steps as u64).max(1);
    let pb = super::progress::bar(ctx, total, "task 1");
    let out = engram_learn::hypernet::run::run(&cfg, a.data_dir.as_deref(), &mut |t, s| {
        pb.set_message(format!("task {}", t + 1));
        pb.set_position(s as u64 + 1);
    })?;
    pb.finish_and_clear();
    let v = serde_json::json!({
        "engram_hypernet": 1,
        "name": out.name,
        "config": cfg,
        "run": out.run,
    });
    let md = engram_ckpt::provenance(&ctx.command_line, &serde_json::to_value(&cfg)?);
    let body = serde_json::to_string_pretty(&v)? + "\n";
    engram_ckpt::write_atomic(&staged.path().join("results.json"), body.as_bytes())?;
    let (mut gv, mut gs) = (BTreeMap::new(), BTreeMap::new());
    for (k, (shape, values)) in out.generator {
        gs.insert(k.clone(), shape);
        gv.insert(k, values);
    }
    engram_learn::model::io::save_values(
        &staged.path().join("generator.safetensors"),
        &gv,
        &gs,
        &md,
    )?;
    for (t, net) in out.networks.iter().enumerate() {
        let p = staged.path().join(format!("task{t}.safetensors"));
        engram_learn::model::io::save_values(&p, net, &out.shapes, &md)?;
    }
    staged.commit(&|_| false)?;
    if a.json {
        return print_json(&v);
    }
    if !ctx.quiet {
        println!(
            "{}: mean Task-IL {:.2} % over {} tasks{}; generator {} parameters, target {}; {}",
            esc(&out.name),
            out.run.final_task_il(),
            out.run.task_il.len(),
            out.run
                .class_il
                .map_or(String::new(), |c| format!(", HNET+ENT Class-IL {c:.2} %")),
            out.run.generator_params,
            out.run.target_params,
            shown(&dir)
        );
    }
    Ok(())
}
