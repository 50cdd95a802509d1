//! CGA, OFQ's confidence-guided annealing (arXiv 2302.02210, nbasyl/OFQ `cga.py`).
//! Card: shared/methods/quantization.md ("OFQ", steps 2 and 3).
//!
//! At the end of quantization-aware training, at the schedule's final learning rate, only the
//! weights that sit near a rounding boundary keep training. With StatsQ's pre-rounding value
//! b = n·w̃ − 0.5 (`statsq::host_pre_round`) a weight is near a boundary when b − ⌊b⌋ lies in
//! [0.5 − BR, 0.5 + BR] at one of the boundaries between two levels of the grid (⌊b⌋ in
//! −n..n−2, as the reference loops over the codes present: the clip edges at w̃ = −1 and
//! w̃ = 1 − 1e-6, where b − ⌊b⌋ is also about 0.5, are no boundary). Every other weight is
//! confident: after the backward pass its gradient is set to zero, its value is saved, and
//! after the optimizer step the saved value is written back, because AdamW's decay and
//! momentum would move it even without a gradient.
//!
//! Which layers: in the reference's QKR branch the block modules `fc1`, `fc2`, `.v` and `proj`;
//! the Q·K quantizer's own freeze (a `detach` on b) blocks no gradient under the identity STE,
//! so W_q and W_k keep training (see `qkr.rs`). Without QKR the reference freezes the fused
//! `qkv` with `proj`, `fc1` and `fc2`: engram's separate q, k, v then. See [`frozen_layers`].

use super::statsq;
use crate::model::params::{flat_params, param_infos, set_params};
use crate::model::qvit::Layer;
use crate::{Result, err};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::prelude::*;
use std::collections::BTreeMap;

/// The reference's boundary range (0.005 to 0.007 work best).
pub const BOUNDARY_RANGE: f32 = 0.005;

/// The block layers whose confident weights are frozen (see the module comment).
pub fn frozen_layers(qkr: bool) -> &'static [Layer] {
    if qkr {
        &[Layer::V, Layer::Proj, Layer::Fc1, Layer::Fc2]
    } else {
        &Layer::LINEARS
    }
}

/// Whether each entry of a host weight `[rows, cols]` (per-output-column StatsQ at `bits`)
/// is near a rounding boundary, within `range` of it in units of b.
pub fn near_boundary(w: &[f32], cols: usize, bits: u32, range: f32) -> Vec<bool> {
    let n = statsq::half_levels(bits);
    statsq::host_pre_round(w, cols, bits)
        .into_iter()
        .map(|b| {
            let fl = b.floor();
            (b - fl - 0.5).abs() <= range && fl >= -n && fl <= n - 2.0
        })
        .collect()
}

/// Weights frozen for one step: their values before it and which entries train.
#[derive(Clone, Debug, Default)]
pub struct Freeze {
    /// (parameter name, values before the step, whether each entry trains).
    tensors: Vec<(String, Vec<f32>, Vec<bool>)>,
}

impl Freeze {
    /// The share of the frozen tensors' entries that train (near a boundary).
    pub fn training_share(&self) -> f64 {
        let n: usize = self.tensors.iter().map(|t| t.2.len()).sum();
        let k: usize = self
            .tensors
            .iter()
            .map(|t| t.2.iter().filter(|&&b| b).count())
            .sum();
        k as f64 / n.max(1) as f64
    }
}

/// After the backward pass: for each weight in `weights` (parameter name → its current host
/// values, `[in, out]`), sets the gradient of every confident entry to zero and remembers the
/// values, for [`restore`] after the optimizer step.
pub fn freeze<M: Module>(
    model: &M,
    grads: &mut GradientsParams,
    weights: &BTreeMap<String, Vec<f32>>,
    bits: u32,
    range: f32,
) -> Result<Freeze> {
    let infos: BTreeMap<String, _> = param_infos(model)
        .into_iter()
        .map(|p| (p.name.clone(), p))
        .collect();
    let mut out = Freeze::default();
    for (name, w) in weights {
        let p = infos
            .get(name)
            .ok_or_else(|| err!("cga: the model has no parameter {name}"))?;
        let [rows, cols] = match p.shape[..] {
            [r, c] if r * c == w.len() => [r, c],
            _ => {
                return Err(err!(
                    "cga: {name} has shape {:?}, {} values given",
                    p.shape,
                    w.len()
                ));
            }
        };
        let train = near_boundary(w, cols, bits, range);
        if let Some(g) = grads.remove::<2>(p.id) {
            let mask: Vec<f32> = train.iter().map(|&t| t as u8 as f32).collect();
            let mask = Tensor::<2>::from_data(TensorData::new(mask, [rows, cols]), &g.device());
            grads.register(p.id, g * mask);
        }
        out.tensors.push((name.clone(), w.clone(), train));
    }
    Ok(out)
}

/// After the optimizer step: writes the saved value back into every confident entry, so
/// that it is bit-identical to its value before the step.
pub fn restore<M: Module>(model: M, freeze: &Freeze) -> Result<M> {
    let mut now: BTreeMap<&str, Vec<f32>> = BTreeMap::new();
    for (info, t) in flat_params(&model) {
        if let Some((name, ..)) = freeze.tensors.iter().find(|f| f.0 == info.name) {
            let v = t
                .into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| err!("cga: cannot read {name}: {e:?}"))?;
            now.insert(name, v);
        }
    }
    let mut values = BTreeMap::new();
    for (name, before, train) in &freeze.tensors {
        let mut v = now
            .remove(name.as_str())
            .ok_or_else(|| err!("cga: the model has no parameter {name}"))?;
        for ((x, &b), &t) in v.iter_mut().zip(before).zip(train) {
            if !t {
                *x = b;
            }
        }
        values.insert(name.clone(), v);
    }
    set_params(model, &values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::qvit::{QVit, QVitConfig};
    use crate::optim::{OptimConfig, OptimKind};
    use crate::train::fused::Optimizer;
    use burn::tensor::Distribution;

    #[test]
    fn boundaries_are_between_levels_only() {
        // Any weights: near iff b − ⌊b⌋ is within the range of 0.5 and ⌊b⌋ in −2..0 (2 bits).
        let w = [0.5f32, 0.0, -0.5, 0.35, -3.0, 3.0]; // s = 2.45: ±3 clip
        let b = statsq::host_pre_round(&w, 1, 2);
        assert_eq!(b[4], -2.5);
        let near = near_boundary(&w, 1, 2, 0.2);
        for (i, (&b, &nb)) in b.iter().zip(&near).enumerate() {
            let fl = b.floor();
            let want = (b - fl - 0.5).abs() <= 0.2 && (-2.0..=0.0).contains(&fl);
            assert_eq!(nb, want, "entry {i}: b = {b}");
        }
        // The clip edges (b = −2.5 and 1.5 − 2e-6, b − ⌊b⌋ ≈ 0.5) are no boundary.
        assert!(!near[4] && !near[5]);
        let exact = [0.25f32, 0.75, -0.25, -0.75]; // s = 1: b = 0, 1, −1, −2 (on levels)
        assert_eq!(near_boundary(&exact, 1, 2, 0.4), [false; 4]);
        let mid = [0.5f32, 0.0, 1.0, -0.5]; // s = 1: b = 0.5, −0.5, 1.5 − 2e-6 (edge), −1.5
        assert_eq!(near_boundary(&mid, 1, 2, 0.01), [true, true, false, true]);
    }

    /// Confident weights are bit-identical after an AdamW step with weight decay; weights
    /// near a boundary move; layers not frozen move freely.
    #[test]
    fn confident_weights_survive_adamw_with_decay() -> Result<()> {
        let d = Device::flex().autodiff();
        let cfg = QVitConfig {
            patch: 4,
            d_model: 8,
            heads: 2,
            layers: 1,
            mlp_hidden: 8,
        };
        let mut net = QVit::build(&cfg, (1, 8, 8), 3, 3, &d)?;
        let mut opt = Optimizer::new(&OptimConfig {
            weight_decay: 0.5,
            ..OptimConfig::new(OptimKind::Adamw, 0.05)
        });
        let x = {
            let _g = crate::backend::seeded(&d, 4);
            Tensor::<2>::random([6, 64], Distribution::Uniform(0.0, 1.0), &d)
        };
        let frozen = ["blocks.0.mlp.fc1.weight", "blocks.0.attn.v.weight"];
        for _ in 0..3 {
            let all = crate::model::params::named_values(&net);
            let weights: BTreeMap<String, Vec<f32>> = frozen
                .iter()
                .map(|n| (n.to_string(), all[*n].clone()))
                .collect();
            let loss = net.forward(x.clone()).powi_scalar(2).mean();
            let mut grads = GradientsParams::from_grads(loss.backward(), &net);
            let fr = freeze(&net, &mut grads, &weights, 2, 0.2)?;
            assert!(fr.training_share() > 0.0 && fr.training_share() < 1.0);
            net = opt.step(0.05, net, grads);
            net = restore(net, &fr)?;
            let after = crate::model::params::named_values(&net);
            for (name, before) in &weights {
                let train = near_boundary(before, 8, 2, 0.2);
                let (mut kept, mut moved) = (0, 0);
                for ((a, b), t) in after[name].iter().zip(before).zip(&train) {
                    if *t {
                        moved += (a != b) as usize;
                    } else {
                        assert_eq!(a.to_bits(), b.to_bits(), "{name}: a confident weight moved");
                        kept += 1;
                    }
                }
                assert!(kept > 0 && moved > 0, "{name}: kept {kept}, moved {moved}");
            }
            // A layer that is not frozen moves everywhere (decay alone moves it).
            let q = "blocks.0.attn.q.weight";
            let changed = after[q].iter().zip(&all[q]).filter(|(a, b)| a != b).count();
            assert_eq!(changed, all[q].len());
        }
        Ok(())
    }
}
