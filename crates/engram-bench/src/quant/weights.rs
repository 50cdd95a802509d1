//! Weight-space quantization of trained Fashion-MNIST networks (B5; card
//! `shared/methods/quantization.md`, RTN and PowerQuant/NUPES "Small-scale experiment"): test
//! accuracy and per-layer relative error for 8, 4, 3 and 2 bits × RTN per tensor, RTN per
//! channel, PowerQuant (per tensor and per channel), StatsQ per channel and the data-driven
//! NUPES variant (per tensor, 256 calibration images; MLP and CNN only), and the error against
//! the exponent a per layer.
//!
//! Quantized: every weight matrix and convolution kernel except embeddings (the transformer's
//! patch and position embeddings), as `engram quantize` does by default; biases and norms stay
//! in float. engram-learn stores a Linear weight as burn does, `[in, out]`: it is transposed
//! to `[out, in]` first, so that "per channel" means per output row, as in the card.

use anyhow::{Result, anyhow};
use engram_learn::data::Split;
use engram_learn::eval::values_accuracy;
use engram_learn::model::ModelConfig;
use engram_learn::model::calib::layer_inputs;
use engram_learn::model::params::named_values;
use engram_learn::optim::{OptimConfig, OptimKind};
use engram_learn::scenario::{Common, Part, joint};
use engram_learn::train::{TrainConfig, Trainer};
use engram_weights::quant::model::is_embedding;
use engram_weights::quant::power::{PowerQuant, grid};
use engram_weights::quant::{self, Quantizer, Scope, Spec, nupes, sq_diff, sq_norm};
use engram_weights::rng::Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// One network of the study.
#[derive(Clone, Debug, Serialize)]
pub struct Net {
    pub name: String,
    pub config: ModelConfig,
    pub epochs: usize,
}

/// A quantization arm: a method and a scope.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Arm {
    pub method: &'static str,
    pub scope: Scope,
}

impl Arm {
    pub fn label(&self) -> String {
        format!("{} / {}", self.method, self.scope.name())
    }
}

pub const ARMS: [Arm; 6] = [
    Arm {
        method: "rtn",
        scope: Scope::Tensor,
    },
    Arm {
        method: "rtn",
        scope: Scope::Channel,
    },
    Arm {
        method: "power",
        scope: Scope::Tensor,
    },
    Arm {
        method: "power",
        scope: Scope::Channel,
    },
    Arm {
        method: "statsq",
        scope: Scope::Channel,
    },
    Arm {
        method: "nupes",
        scope: Scope::Tensor,
    },
];

pub const BITS: [u32; 4] = [8, 4, 3, 2];

#[derive(Clone, Debug, Serialize)]
pub struct Layer {
    pub name: String,
    /// `[out, in…]` as quantized.
    pub shape: Vec<usize>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ArmResult {
    pub arm: String,
    pub method: String,
    pub scope: String,
    pub bits: u32,
    pub accuracy: f64,
    /// Per layer, in the order of [`NetResult::layers`].
    pub rel_error: Vec<f64>,
    pub a: Vec<f32>,
    /// NUPES: calibration loss at the start (PowerQuant) and the end, per layer.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub calib_loss: Vec<(f64, f64)>,
    pub seconds: f64,
}

/// The error against a for one layer, per tensor.
#[derive(Clone, Debug, Serialize)]
pub struct Curve {
    pub layer: String,
    pub bits: u32,
    pub a: Vec<f32>,
    pub rel_error: Vec<f64>,
    /// The golden-section search's exponent.
    pub a_star: f32,
    /// One local minimum on the grid.
    pub unimodal: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct NetResult {
    pub name: String,
    pub config: ModelConfig,
    pub epochs: usize,
    pub fp_accuracy: f64,
    pub train_seconds: f64,
    pub layers: Vec<Layer>,
    pub arms: Vec<ArmResult>,
    pub curves: Vec<Curve>,
    /// Why NUPES did not run (the transformer), when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nupes_skipped: Option<String>,
}

/// Settings of the weight-space part.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub nets: Vec<Net>,
    pub seed: u64,
    pub train_limit: Option<usize>,
    pub batch: usize,
    pub lr: f64,
    pub calib: usize,
    pub nupes_steps: usize,
    pub bits: Vec<u32>,
}

/// Transposes a row-major `r × c` matrix.
fn transpose(v: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = v[i * c + j];
        }
    }
    t
}

/// The layers to quantize, with their values as `[out, in…]`.
fn layers(
    values: &BTreeMap<String, Vec<f32>>,
    shapes: &BTreeMap<String, Vec<usize>>,
) -> Vec<(Layer, Vec<f32>)> {
    values
        .iter()
        .filter_map(|(n, v)| {
            let s = shapes.get(n)?;
            if s.len() < 2 || !n.ends_with("weight") || is_embedding(n) {
                return None;
            }
            if s.len() == 2 {
                Some((
                    Layer {
                        name: n.clone(),
                        shape: vec![s[1], s[0]],
                    },
                    transpose(v, s[0], s[1]),
                ))
            } else {
                Some((
                    Layer {
                        name: n.clone(),
                        shape: s.clone(),
                    },
                    v.clone(),
                ))
            }
        })
        .collect()
}

/// The values with the layer `name` replaced by Ŵ (given as `[out, in]`).
fn put(values: &mut BTreeMap<String, Vec<f32>>, layer: &Layer, w_hat: &[f32]) {
    let v = if layer.shape.len() == 2 {
        transpose(w_hat, layer.shape[0], layer.shape[1])
    } else {
        w_hat.to_vec()
    };
    values.insert(layer.name.clone(), v);
}

/// Whether the grid errors have a single local minimum (plateaus allowed).
fn unimodal(e: &[f64]) -> bool {
    let mut falling = true;
    for w in e.windows(2) {
        let d = w[1] - w[0];
        let tol = 1e-12 * w[0].abs().max(1e-30);
        if falling && d > tol {
            falling = false;
        } else if !falling && d < -tol {
            return false;
        }
    }
    true
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("{e}")
}

/// Trains one network and quantizes it with every arm and width.
pub fn run_net(
    net: &Net,
    st: &Settings,
    data: &Split,
    progress: &mut dyn FnMut(String),
) -> Result<NetResult> {
    let t0 = Instant::now();
    let common = Common {
        seed: st.seed,
        train_per_task: None,
        test_per_class: None,
    };
    let mut d = data.clone();
    if let Some(n) = st.train_limit {
        let mut keep: Vec<usize> = (0..d.train.len()).collect();
        Rng::keyed(st.seed, "quant-train-subsample", 0).shuffle(&mut keep);
        keep.truncate(n);
        keep.sort_unstable();
        d.train = d.train.subset(&keep);
    }
    let s = joint(d.clone(), &common).map_err(err)?;
    let cfg = TrainConfig {
        epochs: net.epochs,
        batch_size: st.batch,
        optimizer: OptimConfig::new(OptimKind::Adam, st.lr),
        ..TrainConfig::default()
    };
    let strategy = engram_learn::strategy::build("naive", &serde_json::Value::Null).map_err(err)?;
    let mut t = Trainer::new(&s, net.config.clone(), cfg, st.seed, strategy);
    let (_, trained) = t.run_net(&mut |_| {}).map_err(err)?;
    let values = named_values(&trained);
    let shapes = engram_learn::eval::param_shapes(&net.config, &s).map_err(err)?;
    let fp_accuracy = values_accuracy(&net.config, &values, &s, 0, Part::Test).map_err(err)?;
    let train_seconds = t0.elapsed().as_secs_f64();
    progress(format!(
        "{}: trained {} epochs, test accuracy {fp_accuracy:.2} % ({train_seconds:.0} s)",
        net.name, net.epochs
    ));
    let ls = layers(&values, &shapes);
    // Calibration: seeded training images, never test ones.
    let calib = {
        let mut idx: Vec<usize> = (0..d.train.len()).collect();
        Rng::keyed(st.seed, "quant-calibration", 0).shuffle(&mut idx);
        idx.truncate(st.calib);
        let dim = d.train.dim;
        idx.iter()
            .flat_map(|&i| d.train.x[i * dim..(i + 1) * dim].iter().copied())
            .collect::<Vec<f32>>()
    };
    let inputs = layer_inputs(
        &net.config,
        &values,
        &calib,
        d.train.dim,
        d.train.image,
        s.num_outputs,
    );
    let nupes_skipped = inputs.as_ref().err().map(|e| e.to_string());
    let mut arms = Vec::new();
    for &bits in &st.bits {
        for arm in ARMS {
            let ta = Instant::now();
            let spec = Spec::new(bits, arm.scope);
            let mut q_values = values.clone();
            let (mut rel, mut exps, mut calib_loss) = (Vec::new(), Vec::new(), Vec::new());
            if arm.method == "nupes" {
                let Ok(inputs) = &inputs else { continue };
                for (l, w) in &ls {
                    let x = inputs
                        .get(&l.name)
                        .ok_or_else(|| anyhow!("no calibration inputs for {}", l.name))?;
                    let cfg = nupes::Config {
                        steps: st.nupes_steps,
                        ..nupes::Config::default()
                    };
                    let (z, o) =
                        nupes::nupes(w, &l.shape, &x.values, x.rows, &spec, &cfg).map_err(err)?;
                    let back = z.dequantize(&PowerQuant, &spec);
                    rel.push(sq_diff(w, &back) / sq_norm(w).max(f64::MIN_POSITIVE));
                    exps.push(z.a);
                    calib_loss.push((o.loss_start, o.loss));
                    put(&mut q_values, l, &back);
                }
            } else {
                let q: &dyn Quantizer = quant::by_name(arm.method).map_err(err)?;
                for (l, w) in &ls {
                    let z = quant::quantize(q, &spec, w, &l.shape).map_err(err)?;
                    let back = z.dequantize(q, &spec);
                    rel.push(sq_diff(w, &back) / sq_norm(w).max(f64::MIN_POSITIVE));
                    exps.push(z.a);
                    put(&mut q_values, l, &back);
                }
            }
            let accuracy =
                values_accuracy(&net.config, &q_values, &s, 0, Part::Test).map_err(err)?;
            let r = ArmResult {
                arm: arm.label(),
                method: arm.method.into(),
                scope: arm.scope.name(),
                bits,
                accuracy,
                rel_error: rel,
                a: exps,
                calib_loss,
                seconds: ta.elapsed().as_secs_f64(),
            };
            progress(format!(
                "{}: {} bits, {}: accuracy {:.2} % ({:.1} s)",
                net.name, bits, r.arm, accuracy, r.seconds
            ));
            arms.push(r);
        }
    }
    // The error against a per layer, per tensor, at 4 and 3 bits.
    let mut curves = Vec::new();
    for bits in [4, 3].into_iter().filter(|b| st.bits.contains(b)) {
        let spec = Spec::new(bits, Scope::Tensor);
        for (l, w) in &ls {
            let norm = sq_norm(w).max(f64::MIN_POSITIVE);
            let a = grid();
            let rel_error = a
                .iter()
                .map(|&a| quant::error_at(&PowerQuant, &spec, w, &l.shape, a).map(|e| e / norm))
                .collect::<Result<Vec<f64>, String>>()
                .map_err(err)?;
            let a_star = quant::quantize(&PowerQuant, &spec, w, &l.shape)
                .map_err(err)?
                .a;
            curves.push(Curve {
                layer: l.name.clone(),
                bits,
                unimodal: unimodal(&rel_error),
                a,
                rel_error,
                a_star,
            });
        }
    }
    Ok(NetResult {
        name: net.name.clone(),
        config: net.config.clone(),
        epochs: net.epochs,
        fp_accuracy,
        train_seconds,
        layers: ls.into_iter().map(|(l, _)| l).collect(),
        arms,
        curves,
        nupes_skipped,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unimodality() {
        assert!(unimodal(&[3.0, 2.0, 1.0, 1.0, 2.0]));
        assert!(unimodal(&[1.0, 2.0, 3.0]));
        assert!(!unimodal(&[3.0, 1.0, 2.0, 0.5, 4.0]));
    }

    #[test]
    fn transpose_round_trips() {
        let v: Vec<f32> = (0..6).map(|i| i as f32).collect();
        let t = transpose(&v, 2, 3);
        assert_eq!(t, vec![0.0, 3.0, 1.0, 4.0, 2.0, 5.0]);
        assert_eq!(transpose(&t, 3, 2), v);
    }
}
