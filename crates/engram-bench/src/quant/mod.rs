//! `engram bench quant` (BENCHMARKS.md B5; card `shared/methods/quantization.md`): what
//! quantization costs in accuracy and what it takes in time.
//!
//! Three parts, each selectable: `weights` (trained Fashion-MNIST MLP, CNN and tiny
//! transformer quantized with RTN, PowerQuant, StatsQ and NUPES at 8/4/3/2 bits; see
//! [`weights`]), `ofq` (2-bit quantization-aware training of the tiny transformer with LSQ,
//! StatsQ, StatsQ + CGA and StatsQ + CGA + QKR, 2 seeds; see [`ofq`]) and `speed` (`engram
//! quantize` and GGUF Q8_0/Q4_0 conversion of synthetic 0.1B and 1B checkpoints against the
//! `gguf` Python package's numpy quantizer and the read-and-write bound; see [`speed`]).
//! The card's "reproduced if" criteria are judged in [`verdicts`].
//!
//! Output under `--out`: `results.json` and `report/index.html`, committed together.

pub mod ofq;
pub mod page;
pub mod speed;
pub mod verdicts;
pub mod weights;

use crate::Progress;
use anyhow::{Result, bail};
use engram_learn::model::ModelConfig;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Instant;

/// The parts of the benchmark.
pub const PARTS: [&str; 3] = ["weights", "ofq", "speed"];

/// Settings of `engram bench quant`.
#[derive(Clone, Debug)]
pub struct Options {
    pub out: PathBuf,
    pub seed: u64,
    /// Small and fast: the pipeline end to end, not the benchmark's numbers.
    pub quick: bool,
    /// Parts to run (default all).
    pub parts: Vec<String>,
    /// Seeds of the OFQ part (default 2; quick 1).
    pub ofq_seeds: Option<usize>,
    /// Synthetic model sizes of the speed part (default `small` (0.1B) and `1b`; quick
    /// `tiny`).
    pub speed_sizes: Vec<String>,
    /// The `engram` binary the speed part times (default: this one).
    pub engram: Option<PathBuf>,
    /// Python with numpy and gguf for the speed baseline (default: target/pyenv, made if
    /// missing).
    pub python: Option<PathBuf>,
    pub data_dir: Option<PathBuf>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            out: "bench-out/quant".into(),
            seed: 0,
            quick: false,
            parts: Vec::new(),
            ofq_seeds: None,
            speed_sizes: Vec::new(),
            engram: None,
            python: None,
            data_dir: None,
        }
    }
}

impl Options {
    fn wants(&self, part: &str) -> bool {
        self.parts.is_empty() || self.parts.iter().any(|p| p == part)
    }
}

/// Everything the benchmark measured.
#[derive(Clone, Debug, Serialize)]
pub struct QuantResults {
    pub quick: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub weights: Option<WeightsPart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ofq: Option<ofq::OfqPart>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub speed: Option<speed::SpeedPart>,
    pub verdicts: Vec<verdicts::Verdict>,
    pub machine: serde_json::Value,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct WeightsPart {
    pub settings: weights::Settings,
    pub nets: Vec<weights::NetResult>,
}

fn weights_settings(o: &Options) -> weights::Settings {
    let q = o.quick;
    weights::Settings {
        nets: vec![
            weights::Net {
                name: "mlp".into(),
                config: ModelConfig::Mlp {
                    hidden: vec![512, 512],
                },
                epochs: if q { 1 } else { 3 },
            },
            weights::Net {
                name: "cnn".into(),
                config: ModelConfig::Cnn {
                    channels: [32, 64],
                    hidden: 128,
                },
                epochs: if q { 1 } else { 3 },
            },
            weights::Net {
                name: "vit".into(),
                config: ModelConfig::Vit {
                    patch: 7,
                    d_model: 64,
                    layers: 2,
                    heads: 4,
                },
                epochs: if q { 1 } else { 5 },
            },
        ],
        seed: o.seed,
        train_limit: q.then_some(5_000),
        batch: 128,
        lr: 1e-3,
        calib: 256,
        nupes_steps: if q { 20 } else { 500 },
        bits: weights::BITS.to_vec(),
    }
}

pub fn run(o: &Options, progress: &mut dyn FnMut(Progress)) -> Result<serde_json::Value> {
    let t0 = Instant::now();
    for p in &o.parts {
        if !PARTS.contains(&p.as_str()) {
            bail!("unknown part '{p}' (expected {})", PARTS.join(", "));
        }
    }
    crate::machine::check_out_dir(&o.out, "--out")?;
    for f in ["results.json", "report/index.html"] {
        crate::machine::check_json_out(&o.out.join(f), "--out")?;
    }
    let needs_data = o.wants("weights") || o.wants("ofq");
    let data = if needs_data {
        progress(Progress::Message("loading fashion-mnist".into()));
        Some(engram_learn::data::fashion_mnist::load(
            o.data_dir.as_deref(),
        )?)
    } else {
        None
    };
    let mut msg = |s: String| progress(Progress::Message(s));
    let weights = match (&data, o.wants("weights")) {
        (Some(d), true) => {
            let st = weights_settings(o);
            let mut nets = Vec::new();
            for n in &st.nets {
                nets.push(weights::run_net(n, &st, d, &mut msg)?);
            }
            Some(WeightsPart { settings: st, nets })
        }
        _ => None,
    };
    let ofq = match (&data, o.wants("ofq")) {
        (Some(d), true) => Some(ofq::run(o, d, &mut msg)?),
        _ => None,
    };
    let speed = if o.wants("speed") {
        Some(speed::run(o, &mut msg)?)
    } else {
        None
    };
    let verdicts = verdicts::judge(weights.as_ref(), ofq.as_ref(), speed.as_ref());
    let results = QuantResults {
        quick: o.quick,
        weights,
        ofq,
        speed,
        verdicts,
        machine: crate::machine::describe(),
        seconds: t0.elapsed().as_secs_f64(),
    };
    let where_ = crate::machine::commit_report(&o.out, &results, &page::render(&results))?;
    progress(Progress::Output(format!(
        "{}{where_}",
        page::text(&results)
    )));
    Ok(serde_json::to_value(&results)?)
}
