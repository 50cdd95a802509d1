//! Selective fine-tuning (shared/methods/selective_finetuning.md): pre-train a residual MLP on a
//! source task, then fine-tune it on a target task with a new head by one of several methods
//! that choose *which* weights may change, and measure what the source task keeps.
//!
//! Methods: full fine-tuning, the new head only, LoRA ([`lora`]), sparse fine-tuning over K
//! entries per matrix (LIFT and its controls, [`lift`]), KappaTune's choice of whole tensors by
//! condition number ([`kappatune`]) and Control LLM's block expansion ([`expand`]).

pub mod adam;
pub mod expand;
pub mod kappatune;
pub mod lift;
pub mod lora;
pub mod params;
pub mod resmlp;
pub mod train;

use crate::data::Dataset;
use params::Params;
pub use resmlp::ResMlpConfig;
use std::time::Instant;
use train::{LoopConfig, Plan};

/// The source task's head.
pub const SOURCE_HEAD: &str = "head";
/// The target task's head (always trained, densely, by every method).
pub const TARGET_HEAD: &str = "target";

/// A fine-tuning method.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Method {
    /// Every parameter of the body.
    Full,
    /// Nothing but the new head (a linear probe): the retention ceiling.
    HeadOnly,
    Lora(lora::LoraConfig),
    Sparse(lift::SparseConfig),
    /// KappaTune: `n` whole weight matrices picked by condition number.
    Kappa {
        pick: kappatune::Pick,
        n: usize,
    },
    Expand(expand::ExpandConfig),
}

impl Method {
    pub fn label(&self) -> String {
        match self {
            Method::Full => "full".into(),
            Method::HeadOnly => "head only".into(),
            Method::Lora(c) if c.targets.is_empty() => format!("lora r{}", c.r),
            Method::Lora(c) => format!("lora r{} on {}", c.r, c.targets.join("+")),
            Method::Sparse(c) => c.label(),
            Method::Kappa { pick, n } => format!("kappatune {} N={n}", pick.name()),
            Method::Expand(c) => c.label(),
        }
    }

    /// The plan for fine-tuning `pretrained` (with a target head already added), and the
    /// tensors a selection picked (KappaTune), for the report.
    pub fn plan(
        &self,
        cfg: &ResMlpConfig,
        mut p: Params,
        seed: u64,
    ) -> Result<(Plan, Vec<String>), String> {
        let head = vec![
            format!("{TARGET_HEAD}.weight"),
            format!("{TARGET_HEAD}.bias"),
        ];
        let with_head = |mut names: Vec<String>| {
            names.extend(head.iter().cloned());
            names
        };
        Ok(match self {
            Method::Full => {
                let names = with_head(cfg.body_params());
                let st = Plan::dense(&p, &names)?;
                (Plan::new(p, st), Vec::new())
            }
            Method::HeadOnly => {
                let st = Plan::dense(&p, &head)?;
                (Plan::new(p, st), Vec::new())
            }
            Method::Lora(c) => {
                let targets = c.targeted(&cfg.body_weights())?;
                let names = with_head(lora::attach(c, &mut p, &targets, seed)?);
                let st = Plan::dense(&p, &names)?;
                let mut plan = Plan::new(p, st);
                plan.lora_scale = c.scale();
                (plan, Vec::new())
            }
            Method::Sparse(c) => (
                lift::plan(c, p, &cfg.body_weights(), &head, seed)?,
                Vec::new(),
            ),
            Method::Kappa { pick, n } => {
                let k = kappatune::kappas(&p, &cfg.body_weights())?;
                let chosen = kappatune::choose(*pick, *n, &k, seed);
                let st = Plan::dense(&p, &with_head(chosen.clone()))?;
                (Plan::new(p, st), chosen)
            }
            Method::Expand(c) => {
                let names = with_head(expand::attach(c, &mut p, seed)?);
                let st = Plan::dense(&p, &names)?;
                let mut plan = Plan::new(p, st);
                plan.divergence_weight = c.lambda;
                plan.divergence = c.divergence;
                (plan, Vec::new())
            }
        })
    }
}

/// One method's result on one target.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub method: String,
    pub config: Method,
    /// Percent, target test set, new head.
    pub target_accuracy: f64,
    /// Percent, source test set, old head, after fine-tuning.
    pub source_accuracy: f64,
    /// After folding adapters or expanded blocks back (LoRA: the same function; block
    /// expansion: a different one).
    pub merged: Option<Merged>,
    /// Values the optimizer may change (the new head's included).
    pub trainable: usize,
    /// Bytes of optimizer state (moments, and indices when sparse).
    pub optimizer_bytes: usize,
    pub seconds: f64,
    /// Tensors a selection unfroze (KappaTune).
    pub selected: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Merged {
    pub target_accuracy: f64,
    pub source_accuracy: f64,
}

/// Pre-trains a fresh network on `source` (head [`SOURCE_HEAD`]).
pub fn pretrain(
    cfg: &ResMlpConfig,
    source: &Dataset,
    lc: &LoopConfig,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Params, String> {
    if source.dim != cfg.input {
        return Err(format!(
            "{} has {} features, the network takes {}",
            source.name, source.dim, cfg.input
        ));
    }
    let p = cfg.init(SOURCE_HEAD, source.num_classes, seed);
    let mut names = cfg.body_params();
    names.push(format!("{SOURCE_HEAD}.weight"));
    names.push(format!("{SOURCE_HEAD}.bias"));
    let st = Plan::dense(&p, &names)?;
    let mut plan = Plan::new(p, st);
    train::train(&mut plan, SOURCE_HEAD, source, lc, seed, progress)?;
    Ok(plan.params)
}

/// Fine-tunes `pretrained` on `target` by `method` and evaluates both tasks.
#[allow(clippy::too_many_arguments)]
pub fn fine_tune(
    method: &Method,
    cfg: &ResMlpConfig,
    pretrained: &Params,
    target: (&Dataset, &Dataset),
    source_test: &Dataset,
    lc: &LoopConfig,
    seed: u64,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Outcome, String> {
    let (train_set, test_set) = target;
    if train_set.dim != cfg.input || source_test.dim != cfg.input {
        return Err("the target and source data must match the network's input".into());
    }
    let start = Instant::now();
    let mut p = pretrained.clone();
    cfg.add_head(&mut p, TARGET_HEAD, train_set.num_classes, seed ^ 0x7a);
    let (mut plan, selected) = method.plan(cfg, p, seed)?;
    let trainable = plan.trainable();
    let optimizer_bytes = plan.optimizer_bytes();
    train::train(&mut plan, TARGET_HEAD, train_set, lc, seed, progress)?;
    let seconds = start.elapsed().as_secs_f64();
    let scale = plan.lora_scale;
    let eval = |p: &Params| -> Result<(f64, f64), String> {
        Ok((
            train::accuracy(p, scale, TARGET_HEAD, test_set)?,
            train::accuracy(p, scale, SOURCE_HEAD, source_test)?,
        ))
    };
    let (target_accuracy, source_accuracy) = eval(&plan.params)?;
    let merged = match method {
        Method::Lora(_) => {
            lora::merge(&mut plan.params, scale)?;
            let (t, s) = eval(&plan.params)?;
            Some(Merged {
                target_accuracy: t,
                source_accuracy: s,
            })
        }
        Method::Expand(c) if matches!(c.gate, expand::Gate::Lerp { .. }) => {
            expand::merge_back(&mut plan.params)?;
            let (t, s) = eval(&plan.params)?;
            Some(Merged {
                target_accuracy: t,
                source_accuracy: s,
            })
        }
        _ => None,
    };
    Ok(Outcome {
        method: method.label(),
        config: method.clone(),
        target_accuracy,
        source_accuracy,
        merged,
        trainable,
        optimizer_bytes,
        seconds,
        selected,
    })
}

#[cfg(test)]
mod tests;
