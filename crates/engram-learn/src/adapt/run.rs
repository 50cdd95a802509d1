//! One test-time adaptation run (`engram adapt --config run.toml`): a source model, trained on
//! the clean data here or read from a checkpoint, meets a stream (a scenario, normally a
//! corruption stream) through one adapter; the result is the error of every domain.
//!
//! ```toml
//! seed = 0
//! [scenario]                 # the stream's domains
//! kind = "corruption"
//! dataset = "fashion-mnist"
//! severity = 5
//! test-per-class = 200
//! [model]                    # the source's architecture
//! kind = "bn-cnn"
//! [source]                   # trained here unless `checkpoint` is given
//! epochs = 3
//! [stream]
//! batch = 200
//! order = "iid"              # or "class-sorted"
//! [adapter]
//! name = "cotta"
//! augmentations = 32
//! ```

use super::stream::{self, StreamConfig};
use super::{Source, build};
use crate::data::Split;
use crate::eval::logits_of;
use crate::metrics::{ClassMask, masked_predictions};
use crate::model::{ModelConfig, Net};
use crate::optim::{OptimConfig, OptimKind};
use crate::scenario::{Common, Part, Scenario, ScenarioConfig, joint};
use crate::train::{Event, TrainConfig, Trainer};
use crate::{Result, err};
use burn::prelude::*;
use engram_weights::rng::Rng;
use serde_json::{Map, Value};
use std::path::PathBuf;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct AdaptConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// Seeds the source's training and the adapter's draws; the scenario (test subsample,
    /// corruption draws) and the stream's image order have their own.
    #[serde(default)]
    pub seed: u64,
    pub scenario: ScenarioConfig,
    #[serde(default = "bn_cnn")]
    pub model: ModelConfig,
    #[serde(default)]
    pub source: SourceConfig,
    #[serde(default)]
    pub stream: StreamConfig,
    pub adapter: AdapterConfig,
}

fn bn_cnn() -> ModelConfig {
    ModelConfig::BnCnn {
        channels: [16, 32],
        hidden: 64,
    }
}

/// `[source]`: where the source model comes from.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct SourceConfig {
    /// A trained model of `[model]`'s architecture (safetensors); without it the source is
    /// trained here on the clean training set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<PathBuf>,
    #[serde(default = "three")]
    pub epochs: usize,
    #[serde(default = "batch128")]
    pub batch_size: usize,
    /// Adam's learning rate.
    #[serde(default = "lr")]
    pub lr: f64,
    /// Share of the clean training set held out (not trained on) for the confidence quantile
    /// CoTTA's threshold is calibrated on.
    #[serde(default = "tenth")]
    pub validation: f32,
}

fn three() -> usize {
    3
}
fn batch128() -> usize {
    128
}
fn lr() -> f64 {
    1e-3
}
fn tenth() -> f32 {
    0.1
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            checkpoint: None,
            epochs: three(),
            batch_size: batch128(),
            lr: lr(),
            validation: tenth(),
        }
    }
}

/// `[adapter]`: `name` and the adapter's own parameters.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdapterConfig {
    pub name: String,
    #[serde(flatten)]
    pub params: Map<String, Value>,
}

impl SourceConfig {
    fn train_config(&self) -> TrainConfig {
        TrainConfig {
            epochs: self.epochs,
            batch_size: self.batch_size,
            optimizer: OptimConfig::new(OptimKind::Adam, self.lr),
            ..TrainConfig::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        let d = SourceConfig::default();
        if let Some(p) = &self.checkpoint {
            if p.as_os_str().is_empty() {
                return Err(err!("source.checkpoint is empty"));
            }
            // Training settings do nothing when the source is read from a file.
            for (key, set) in [
                ("epochs", self.epochs != d.epochs),
                ("batch-size", self.batch_size != d.batch_size),
                ("lr", self.lr != d.lr),
                ("validation", self.validation != d.validation),
            ] {
                if set {
                    return Err(err!(
                        "source.{key} has no effect with source.checkpoint (the source is read, \
                         not trained)"
                    ));
                }
            }
            return Ok(());
        }
        if !(self.validation > 0.0 && self.validation < 1.0) {
            return Err(err!(
                "source.validation = {:e} must be in (0, 1): the source's confidence quantile is \
                 measured on the held-out part",
                self.validation
            ));
        }
        if !(1..=10_000).contains(&self.epochs) {
            return Err(err!("source.epochs = {} must be 1 to 10000", self.epochs));
        }
        if self.batch_size == 0 {
            return Err(err!("source.batch-size must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(err!("source.lr = {} must be a positive number", self.lr));
        }
        self.train_config().validate()
    }
}

impl AdaptConfig {
    pub fn parse_toml(text: &str) -> Result<AdaptConfig> {
        let cfg: AdaptConfig = toml::from_str(text).map_err(|e| err!("{e}"))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every check that needs no data.
    pub fn validate(&self) -> Result<()> {
        crate::strategy::finite("scenario", &self.scenario.params)?;
        crate::strategy::finite("adapter", &self.adapter.params)?;
        if self.scenario.train_per_task.is_some() || self.scenario.validation.is_some() {
            return Err(err!(
                "scenario.train-per-task and scenario.validation have no effect in a test-time \
                 adaptation run (the source trains on the whole clean training set; see \
                 [source])"
            ));
        }
        self.scenario.check()?;
        self.model.check()?;
        self.source.validate()?;
        self.stream.validate()?;
        let a = build(
            &self.adapter.name,
            &Value::Object(self.adapter.params.clone()),
        )?;
        if a.needs_batchnorm() && !self.model.has_batchnorm() {
            return Err(err!(
                "adapter {} adapts BatchNorm layers and model {:?} has none; use model kind \
                 \"bn-cnn\"",
                self.adapter.name,
                self.model
            ));
        }
        engram_ckpt::names::plain_name("name", &self.run_name())?;
        Ok(())
    }

    /// The run's name (its folder): `name`, or adapter, scenario kind, data set, stream order
    /// and seeds.
    pub fn run_name(&self) -> String {
        self.name.clone().unwrap_or_else(|| {
            let order = match self.stream.order {
                stream::Order::Iid => String::new(),
                o => format!("-{}", o.name()),
            };
            format!(
                "{}-{}-{}{order}-seed{}-{}",
                self.adapter.name,
                self.scenario.kind,
                self.scenario.dataset,
                self.seed,
                self.stream.seed
            )
        })
    }
}

/// The source and what was measured while making it.
#[derive(Clone, Debug)]
pub struct Trained {
    pub source: Source,
    /// Clean test accuracy (percent, running statistics); `None` for a checkpoint.
    pub clean_accuracy: Option<f64>,
    pub seconds: f64,
}

/// The `q` quantile (nearest rank) of the source's confidence on examples `ids` of `s`'s
/// training set, with running statistics.
fn confidence_quantile(net: &Net, s: &Scenario, ids: &[usize], q: f64) -> Result<Option<f64>> {
    let pairs: Vec<(usize, usize)> = ids.iter().map(|&i| (0, i)).collect();
    let (logits, _, c) = logits_of(&net.valid(), s, Part::Train, &pairs, &Device::flex(), 500);
    let mut conf: Vec<f64> = masked_predictions(&logits, c, &ClassMask::all(c))
        .map_err(|e| err!("the source's confidence on clean data: {e}"))?
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    if conf.is_empty() {
        return Ok(None);
    }
    conf.sort_by(f64::total_cmp);
    let k = ((q * conf.len() as f64).ceil() as usize).clamp(1, conf.len()) - 1;
    Ok(Some(conf[k]))
}

/// Trains the source on the clean training set of `data` (a seeded `validation` share held
/// out), or reads it from `sc.checkpoint`; calibrates the 5 % confidence quantile on the held-out
/// part (a checkpoint: on a seeded 5 000 training examples).
pub fn make_source(
    model: &ModelConfig,
    sc: &SourceConfig,
    data: &Split,
    seed: u64,
    on: &mut dyn FnMut(Event),
) -> Result<Trained> {
    let t0 = std::time::Instant::now();
    let common = Common {
        seed,
        train_per_task: None,
        test_per_class: None,
    };
    let mut s = joint(data.clone(), &common)?;
    let ad = Device::flex().autodiff();
    let (net, clean, held) = match &sc.checkpoint {
        Some(path) => {
            let _rng = crate::backend::seeded(&Device::flex(), seed);
            let net = model.build(s.input_dim(), s.image(), s.num_outputs, &ad)?;
            let net = crate::model::io::load(net, path)?;
            let mut all: Vec<usize> = (0..s.train.len()).collect();
            Rng::keyed(seed, "calibration", 0).shuffle(&mut all);
            all.truncate(5000);
            all.sort_unstable();
            (net, None, all)
        }
        None => {
            s.carve_validation(sc.validation, seed)?;
            let mut t = Trainer::new(
                &s,
                model.clone(),
                sc.train_config(),
                seed,
                crate::strategy::build("naive", &Value::Null)?,
            );
            let (out, net) = t.run_net(on)?;
            let clean = out.accuracy.last().and_then(|r| r.first()).copied();
            (net, clean, s.tasks[0].valid.clone())
        }
    };
    let q = confidence_quantile(&net, &s, &held, 0.05)?;
    Ok(Trained {
        source: Source {
            net,
            dim: s.input_dim(),
            image: s.image(),
            classes: s.num_outputs,
            confidence_q05: q,
            seed,
        },
        clean_accuracy: clean,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// What `engram adapt` reports.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct AdaptOutput {
    pub name: String,
    pub adapter: String,
    pub params: Value,
    pub scenario: String,
    pub domains: Vec<String>,
    /// Error (percent) of each domain, in stream order.
    pub errors: Vec<f64>,
    pub mean_error: f64,
    pub clean_accuracy: Option<f64>,
    pub confidence_q05: Option<f64>,
    /// What the confidence quantile was measured on: `held-out` clean training examples the
    /// source did not train on, or (a checkpoint) `training` examples.
    pub calibrated_on: String,
    pub source_seconds: f64,
    pub stream_seconds: f64,
}

/// Runs `cfg`: loads the data, makes the source, builds the stream, adapts.
pub fn run(
    cfg: &AdaptConfig,
    data_dir: Option<&std::path::Path>,
    on_train: &mut dyn FnMut(Event),
    on_stream: stream::Progress,
) -> Result<AdaptOutput> {
    cfg.validate()?;
    let mut adapter = build(
        &cfg.adapter.name,
        &Value::Object(cfg.adapter.params.clone()),
    )?;
    let data = cfg.scenario.source()?.load(data_dir)?;
    let scenario = cfg.scenario.build_with(data.clone())?;
    if scenario.eval != crate::scenario::EvalMode::DomainIl {
        return Err(err!(
            "scenario {}: a test-time adaptation stream needs domains over one label space \
             (corruption, rotated, permuted); this kind splits the classes",
            cfg.scenario.kind
        ));
    }
    // The adapter's own checks against a network of the source's shape (BatchNorm, image
    // shape), before minutes of training.
    let probe = Source {
        net: cfg.model.build(
            scenario.input_dim(),
            scenario.image(),
            scenario.num_outputs,
            &Device::flex().autodiff(),
        )?,
        dim: scenario.input_dim(),
        image: scenario.image(),
        classes: scenario.num_outputs,
        confidence_q05: Some(0.5),
        seed: cfg.seed,
    };
    adapter.reset(&probe)?;
    let rendered = stream::render(&scenario);
    let trained = make_source(&cfg.model, &cfg.source, &data, cfg.seed, on_train)?;
    let t0 = std::time::Instant::now();
    let errors = stream::run(
        &rendered,
        &trained.source,
        adapter.as_mut(),
        &cfg.stream,
        on_stream,
    )?;
    Ok(AdaptOutput {
        name: cfg.run_name(),
        adapter: cfg.adapter.name.clone(),
        params: adapter.params(),
        scenario: scenario.name.clone(),
        domains: scenario.tasks.iter().map(|t| t.name.clone()).collect(),
        mean_error: errors.iter().sum::<f64>() / errors.len().max(1) as f64,
        errors,
        clean_accuracy: trained.clean_accuracy,
        confidence_q05: trained.source.confidence_q05,
        calibrated_on: if cfg.source.checkpoint.is_some() {
            "training"
        } else {
            "held-out"
        }
        .into(),
        source_seconds: trained.seconds,
        stream_seconds: t0.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = r#"
[scenario]
kind = "corruption"
dataset = "blobs"
corruptions = ["contrast", "gaussian_noise"]
[scenario.blobs]
dim = 144
classes = 3
train-per-class = 200
test-per-class = 30
separation = 2.0
[model]
kind = "bn-cnn"
channels = [4, 6]
hidden = 8
[source]
epochs = 3
batch-size = 32
lr = 0.01
[stream]
batch = 20
[adapter]
name = "tent"
"#;

    #[test]
    fn a_run_file_runs_end_to_end() {
        let cfg = AdaptConfig::parse_toml(RUN).unwrap_or_else(|e| panic!("{e}"));
        let out = run(&cfg, None, &mut |_| {}, &mut |_, _, _| {}).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out.errors.len(), 2);
        assert_eq!(out.domains[1], "round 1: gaussian_noise 5");
        assert!(
            out.clean_accuracy.is_some_and(|a| a > 50.0),
            "{:?}",
            out.clean_accuracy
        );
        assert!(out.confidence_q05.is_some_and(|q| (0.1..=1.0).contains(&q)));
        let again =
            run(&cfg, None, &mut |_| {}, &mut |_, _, _| {}).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.errors, out.errors);
    }

    #[test]
    fn bad_run_files_name_the_key() {
        let bad = |from: &str, to: &str| {
            AdaptConfig::parse_toml(&RUN.replace(from, to))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        assert!(bad("name = \"tent\"", "name = \"tnet\"").contains("unknown adapter 'tnet'"));
        assert!(bad("epochs = 3", "epochs = 3\nvalidation = 0.0").contains("source.validation"));
        assert!(bad("batch = 20", "batch = 0").contains("batch"));
        assert!(bad("name = \"tent\"", "name = \"tent\"\nlr = -1").contains("lr"));
        assert!(bad("epochs = 3", "epocs = 3").contains("epocs"));
        let e = bad(
            "kind = \"bn-cnn\"\nchannels = [4, 6]\nhidden = 8",
            "kind = \"mlp\"",
        );
        assert!(e.contains("BatchNorm"), "{e}");
    }
}
