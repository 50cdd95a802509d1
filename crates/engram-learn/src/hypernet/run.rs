// Task-conditioned hypernetworks (von Oswald et al., arXiv 1906.00695) and the LSTM hypernetwork
// (arXiv 2209.07712): one run from a run file. Card: shared/methods/hypernetworks.md.

//! `engram hypernet --config run.toml`: a hypernetwork trained through a scenario's tasks,
//! from a run file:
//!
//! ```toml
//! seed = 0
//! [scenario]                 # as in `engram train`
//! kind = "task-incremental"
//! dataset = "fashion-mnist"
//! tasks = 5
//! classes-per-task = 2
//! train-per-task = 4000
//! [target]
//! hidden = [100, 100]        # the generated MLP's hidden widths
//! [generator]
//! kind = "lstm"              # lstm | chunked
//! task-emb = 32
//! chunk-emb = 32
//! hidden = [32]              # lstm: [units]; chunked: the MLP's hidden widths
//! chunk = 1000
//! grow = 0                   # lstm only: units added per later task (option (b))
//! [train]
//! steps = 300                # per task
//! batch = 128
//! lr = 0.001
//! beta = 0.01                # output regulariser
//! lookahead = true
//! chunk-weights = false      # option (a)
//! ```
//!
//! The output is the run's measurements, the generator's parameters and every task's
//! generated network (named as engram's `mlp` model names them, so `engram analyze`, `diff`
//! and the merges read them).

use super::chunked::{ChunkedConfig, ChunkedHnet};
use super::lstm::{LstmConfig, LstmHnet};
use super::target::{Generator, TargetMlp};
use super::task::{HnetRun, HnetTrain, thetas, train};
use crate::optim::{OptimConfig, OptimKind};
use crate::scenario::Part;
use crate::scenario::config::ScenarioConfig;
use crate::{Result, err};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HnetConfig {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub seed: u64,
    pub scenario: ScenarioConfig,
    #[serde(default)]
    pub target: TargetConfig,
    #[serde(default)]
    pub generator: GeneratorConfig,
    #[serde(default)]
    pub train: TrainSection,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TargetConfig {
    pub hidden: Vec<usize>,
}

impl Default for TargetConfig {
    fn default() -> Self {
        TargetConfig {
            hidden: vec![100, 100],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorKind {
    Lstm,
    Chunked,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct GeneratorConfig {
    pub kind: GeneratorKind,
    pub task_emb: usize,
    pub chunk_emb: usize,
    pub hidden: Vec<usize>,
    pub chunk: usize,
    #[serde(default)]
    pub grow: usize,
}

impl Default for GeneratorConfig {
    /// The card's engram CPU default: embeddings 32, LSTM hidden 32, chunks of 1 000.
    fn default() -> Self {
        GeneratorConfig {
            kind: GeneratorKind::Lstm,
            task_emb: 32,
            chunk_emb: 32,
            hidden: vec![32],
            chunk: 1000,
            grow: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct TrainSection {
    #[serde(default = "d_steps")]
    pub steps: usize,
    #[serde(default = "d_batch")]
    pub batch: usize,
    #[serde(default = "d_lr")]
    pub lr: f64,
    #[serde(default = "d_beta")]
    pub beta: f64,
    #[serde(default = "yes")]
    pub lookahead: bool,
    #[serde(default)]
    pub chunk_weights: bool,
}

fn d_steps() -> usize {
    300
}
fn d_batch() -> usize {
    128
}
fn d_lr() -> f64 {
    1e-3
}
fn d_beta() -> f64 {
    0.01
}
fn yes() -> bool {
    true
}

impl Default for TrainSection {
    fn default() -> Self {
        TrainSection {
            steps: d_steps(),
            batch: d_batch(),
            lr: d_lr(),
            beta: d_beta(),
            lookahead: true,
            chunk_weights: false,
        }
    }
}

/// Largest sizes accepted (a typo must not allocate gigabytes).
const MAX_WIDTH: usize = 1 << 16;

impl HnetConfig {
    pub fn parse_toml(text: &str) -> Result<HnetConfig> {
        let cfg: HnetConfig = toml::from_str(text).map_err(|e| err!("{e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every check that needs no data.
    pub fn validate(&self) -> Result<()> {
        crate::strategy::finite("scenario", &self.scenario.params)?;
        self.scenario.check()?;
        let g = &self.generator;
        let widths = self.target.hidden.iter().chain(&g.hidden);
        for (key, v) in [
            ("generator.task-emb", g.task_emb),
            ("generator.chunk-emb", g.chunk_emb),
            ("generator.chunk", g.chunk),
        ]
        .into_iter()
        .chain(widths.map(|&w| ("a hidden width", w)))
        {
            if v == 0 || v > MAX_WIDTH {
                return Err(err!("{key} = {v} must be between 1 and {MAX_WIDTH}"));
            }
        }
        match g.kind {
            GeneratorKind::Lstm if g.hidden.len() != 1 => {
                return Err(err!(
                    "generator.hidden = {:?}: an LSTM generator has one width, [units]",
                    g.hidden
                ));
            }
            GeneratorKind::Chunked if g.grow > 0 => {
                return Err(err!(
                    "generator.grow is the LSTM's growth option; remove it"
                ));
            }
            _ => {}
        }
        if g.grow > MAX_WIDTH {
            return Err(err!("generator.grow = {} is too large", g.grow));
        }
        self.train_config().validate()?;
        engram_ckpt::names::plain_name("name", &self.run_name())?;
        Ok(())
    }

    pub fn train_config(&self) -> HnetTrain {
        let t = &self.train;
        HnetTrain {
            steps: t.steps,
            batch: t.batch,
            optimizer: OptimConfig::new(OptimKind::Adam, t.lr),
            beta: t.beta,
            lookahead: t.lookahead,
            chunk_weights: t.chunk_weights,
        }
    }

    /// The run's name (its folder): `name`, or generator, scenario kind, data set and seed.
    pub fn run_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let kind = match self.generator.kind {
                GeneratorKind::Lstm => "lstm",
                GeneratorKind::Chunked => "chunked",
            };
            format!(
                "hnet-{kind}-{}-{}-seed{}",
                self.scenario.kind, self.scenario.dataset, self.seed
            )
        })
    }
}

/// A finished run: its measurements, the generator's parameters and each task's network.
pub struct HnetOutput {
    pub name: String,
    pub run: HnetRun,
    pub generator: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    /// Per task, the generated network's values by name.
    pub networks: Vec<BTreeMap<String, Vec<f32>>>,
    pub shapes: BTreeMap<String, Vec<usize>>,
}

/// Builds the scenario, trains, and generates every task's network (Test part evaluated).
pub fn run(
    cfg: &HnetConfig,
    data_dir: Option<&Path>,
    on: &mut dyn FnMut(usize, usize),
) -> Result<HnetOutput> {
    cfg.validate()?;
    let s = cfg.scenario.build(data_dir)?;
    let mut sizes = vec![s.input_dim()];
    sizes.extend(&cfg.target.hidden);
    sizes.push(s.num_outputs);
    let target = TargetMlp::new(&sizes)?;
    let g = &cfg.generator;
    let mut gen_: Box<dyn Generator> = match g.kind {
        GeneratorKind::Chunked => Box::new(ChunkedHnet::new(
            &target,
            &ChunkedConfig {
                task_emb: g.task_emb,
                chunk_emb: g.chunk_emb,
                hidden: g.hidden.clone(),
                chunk: g.chunk,
            },
            cfg.seed,
        )?),
        GeneratorKind::Lstm => Box::new(LstmHnet::new(
            &target,
            &LstmConfig {
                task_emb: g.task_emb,
                chunk_emb: g.chunk_emb,
                hidden: g.hidden[0],
                chunk: g.chunk,
                grow: g.grow,
                tasks: s.tasks.len(),
            },
            cfg.seed,
        )?),
    };
    let run = train(
        gen_.as_mut(),
        &target,
        &s,
        &cfg.train_config(),
        Part::Test,
        cfg.seed,
        on,
    )?;
    let all: Vec<usize> = (0..s.tasks.len()).collect();
    let networks = thetas(gen_.as_ref(), &all)?
        .iter()
        .map(|th| target.values(th))
        .collect::<Result<_>>()?;
    Ok(HnetOutput {
        name: cfg.run_name(),
        run,
        generator: gen_.params().named(),
        networks,
        shapes: target.shapes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = r#"
seed = 1
[scenario]
kind = "task-incremental"
dataset = "blobs"
tasks = 2
classes-per-task = 2
[scenario.blobs]
dim = 9
classes = 4
train-per-class = 60
test-per-class = 20
separation = 4.0
[target]
hidden = [16]
[generator]
kind = "chunked"
task-emb = 4
chunk-emb = 4
hidden = [8]
chunk = 20
[train]
steps = 30
batch = 16
lr = 0.01
"#;

    #[test]
    fn a_run_file_trains_and_generates_every_tasks_network() -> Result<()> {
        let cfg = HnetConfig::parse_toml(RUN)?;
        let out = run(&cfg, None, &mut |_, _| {})?;
        assert_eq!(out.networks.len(), 2);
        assert_eq!(out.run.task_il.len(), 2);
        for net in &out.networks {
            for (k, shape) in &out.shapes {
                assert_eq!(net[k].len(), shape.iter().product::<usize>(), "{k}");
            }
        }
        assert!(out.generator.contains_key("task.1"));
        assert_eq!(out.name, "hnet-chunked-task-incremental-blobs-seed1");
        Ok(())
    }

    #[test]
    fn bad_keys_and_values_are_refused_by_name() {
        for (from, to, want) in [
            ("steps = 30", "steps = 0", "steps"),
            ("lr = 0.01", "lr = -1.0", "lr"),
            ("chunk = 20", "chunk = 0", "generator.chunk"),
            ("kind = \"chunked\"", "kind = \"gru\"", "gru"),
            ("hidden = [16]", "hidden = [16]\nwidth = 3", "width"),
            ("chunk = 20", "chunk = 20\ngrow = 2", "grow"),
            ("lr = 0.01", "lr = 0.01\nbeta = nan", "beta"),
        ] {
            let text = RUN.replacen(from, to, 1);
            let e = HnetConfig::parse_toml(&text).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|m| m.contains(want)),
                "{to}: {e:?}"
            );
        }
    }
}
