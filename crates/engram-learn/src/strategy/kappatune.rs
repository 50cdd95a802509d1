//! KappaTune: unfreeze only the tensors of lowest condition number (Ludwig, arXiv
//! 2506.16289), with the highest-κ and random choices as controls at the same count.
//! Card: shared/methods/selective_finetuning.md, "KappaTune".
//!
//! κ = σ_max/(σ_min + 1e-8) of every body weight (two or more dimensions, seen as
//! `shape[0]` rows; the output layer's weight excluded) from a full SVD (engram-weights'
//! spectral module), computed once at the start of task `from-task` and never updated. The
//! `n` chosen weights train whole under the run's optimizer; every other parameter, biases
//! included, stays as it is, except the output layer when `train-head` (a new task's classes
//! need it). Tasks before `from-task` train every parameter. `n = 0` trains the output layer
//! alone (a linear probe).

use super::parts::body::{body_weights, is_head, keep_grads, values_of};
use super::{Ctx, Setup, State, Strategy, check_from_task, in_range, parse_params};
use crate::model::Net;
use crate::{Result, err};
use burn::optim::GradientsParams;
use engram_weights::rng::Rng;
use engram_weights::spectral::{self, SpectralOptions};

/// Which tensors to unfreeze.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pick {
    Lowest,
    Highest,
    Random,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Tensors to unfreeze (card: 100 on LLMs; small networks have a handful); 0: the
    /// output layer alone (`train-head`).
    #[serde(default = "default_n")]
    pub n: usize,
    /// lowest (KappaTune) | highest | random.
    #[serde(default = "default_pick")]
    pub pick: Pick,
    #[serde(default)]
    pub from_task: usize,
    #[serde(default = "yes")]
    pub train_head: bool,
}

fn default_n() -> usize {
    2
}
fn default_pick() -> Pick {
    Pick::Lowest
}
fn yes() -> bool {
    true
}

pub struct KappaTune {
    p: Params,
    /// κ of every body weight, in visiting order (empty until computed).
    kappas: Vec<(String, f64)>,
    /// The unfrozen weights.
    chosen: Vec<String>,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("kappatune", v)?;
    // n = 0 trains the output layer alone ("head only"), unless that is frozen too.
    let least = usize::from(!p.train_head);
    in_range(
        "kappatune",
        "n",
        p.n,
        least,
        usize::MAX,
        "with train-head = false",
    )?;
    Ok(Box::new(KappaTune {
        p,
        kappas: Vec::new(),
        chosen: Vec::new(),
    }))
}

/// κ of every body weight of `net`, in visiting order.
pub fn kappas(net: &Net) -> Result<Vec<(String, f64)>> {
    let values = crate::model::params::named_values(net);
    body_weights(net)
        .into_iter()
        .map(|b| {
            let w = &values[&b.info.name];
            let s = spectral::spectrum(w, b.rows, b.cols, &SpectralOptions::default())
                .map_err(|e| err!("{}: {e}", b.info.name))?;
            let k = s
                .kappa
                .ok_or_else(|| err!("{}: no exact spectrum", b.info.name))?;
            Ok((b.info.name, k))
        })
        .collect()
}

/// Names sorted by ascending κ (ties by name, so the order is total).
pub fn ascending(k: &[(String, f64)]) -> Vec<String> {
    let mut v = k.to_vec();
    v.sort_by(|a, b| a.1.total_cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
    v.into_iter().map(|(n, _)| n).collect()
}

/// The `n` tensors `pick` unfreezes, from the κ of every candidate.
pub fn choose(pick: Pick, n: usize, k: &[(String, f64)], seed: u64) -> Vec<String> {
    let order = ascending(k);
    let n = n.min(order.len());
    match pick {
        Pick::Lowest => order[..n].to_vec(),
        Pick::Highest => order[order.len() - n..].to_vec(),
        Pick::Random => {
            let mut names: Vec<String> = k.iter().map(|(n, _)| n.clone()).collect();
            Rng::keyed(seed, "kappatune-random", 0).shuffle(&mut names);
            names.truncate(n);
            names
        }
    }
}

impl Strategy for KappaTune {
    fn name(&self) -> &'static str {
        "kappatune"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn check(&self, s: &Setup) -> Result<()> {
        check_from_task("kappatune", self.p.from_task, s)?;
        let k = body_weights(s.net).len();
        let what = format!("the model has {k} weight matrices besides its output layer");
        in_range(
            "kappatune",
            "n",
            self.p.n,
            usize::from(!self.p.train_head),
            k,
            &what,
        )
    }

    fn has_masks(&self) -> bool {
        true
    }

    fn masks_kind(&self) -> &'static str {
        "kappa"
    }

    fn before_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        if cx.task >= self.p.from_task && self.kappas.is_empty() {
            self.kappas = kappas(&net)?;
            self.chosen = choose(self.p.pick, self.p.n, &self.kappas, cx.seed);
        }
        Ok(net)
    }

    fn after_backward(&mut self, cx: &Ctx, net: &Net, grads: &mut GradientsParams) {
        if cx.task < self.p.from_task {
            return;
        }
        let head = self.p.train_head;
        keep_grads(net, grads, |n| {
            (head && is_head(net, n)) || self.chosen.iter().any(|c| c == n)
        });
    }

    fn trainable(&self, net: &Net) -> Option<usize> {
        if self.kappas.is_empty() {
            return None;
        }
        Some(values_of(net, |n| {
            (self.p.train_head && is_head(net, n)) || self.chosen.iter().any(|c| c == n)
        }))
    }

    fn masks(&self) -> Vec<(String, Vec<usize>, Vec<f32>)> {
        self.kappas
            .iter()
            .map(|(n, k)| {
                let unfrozen = if self.chosen.contains(n) { 1.0 } else { 0.0 };
                (format!("kappatune.{n}"), vec![2], vec![*k as f32, unfrozen])
            })
            .collect()
    }

    fn state(&self) -> State {
        State {
            tensors: Vec::new(),
            json: serde_json::json!({"kappas": self.kappas, "chosen": self.chosen}),
        }
    }

    fn load_state(&mut self, st: State) -> Result<()> {
        let get = |k: &str| st.json.get(k).cloned().unwrap_or(serde_json::Value::Null);
        if get("kappas").is_null() {
            return Ok(());
        }
        self.kappas = serde_json::from_value(get("kappas"))
            .map_err(|e| err!("strategy kappatune: state: {e}"))?;
        self.chosen = serde_json::from_value(get("chosen"))
            .map_err(|e| err!("strategy kappatune: state: {e}"))?;
        Ok(())
    }
}
