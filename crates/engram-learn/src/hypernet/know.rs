// KNOW: weight nowcasting (Jang et al., arXiv 2508.05059; jjh6297/KNOW).
// Card: shared/methods/hypernetworks.md, "KNOW (weight nowcasting)".

//! Training KNOW's per-scalar nowcaster. The network and its file are those of
//! [`engram_weights::nowcast`] (same tensor names, kernels `[in, out]`), here with autodiff
//! parameters ([`ParamSet`]) so that it can be fitted; [`Nowcaster::net`] hands the trained
//! values to the plain forward pass, which the command and the benchmark use.
//!
//! **Samples.** A trajectory is one tensor's values over sessions ordered by growing data
//! (index 0 = the smallest subset, the last = the full data). Every 6 consecutive points give
//! one sample: the 5 earliest are the window, the 6th the target ([`windows`]). The reference
//! collects 7 sessions per trial (card step 2), so each scalar gives 2 samples. Bias windows
//! and their targets are normalised as the nowcast does ([`normalise`]); matrix ones stay raw.
//!
//! **Fit** (card step 3): mean absolute error of `w₅ + Δ` against the target, plus L1
//! penalties 1e-6 on the kernels and 0.1 on the biases of each branch's two dense layers (as
//! the reference's `kernel_regularizer`/`bias_regularizer`), Adam. Initial values as the
//! reference: those dense layers uniform in ±√(0.3/fan_in) (Keras `VarianceScaling(0.1,
//! fan_in, uniform)`), the others Glorot-uniform, biases zero.

use super::params::{Leaves, ParamSet, tensor};
use crate::optim::{OptimConfig, OptimKind};
use crate::{Result, err};
use burn::prelude::*;
use burn::tensor::activation::{leaky_relu, relu};
use engram_weights::nowcast::{
    BRANCHES, EXP_CLAMP, LEAKY, Net, PREFIXES, Predictor, WINDOW, layout, normalise, regularised,
};
use engram_weights::rng::Rng;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

/// L1 weight of the kernels of the regularised layers.
pub const L1_KERNEL: f32 = 1e-6;
/// L1 weight of their biases.
pub const L1_BIAS: f32 = 0.1;
/// A bias sample whose normalised target lies further than this from its window's last
/// value is dropped: a nearly flat window before a jump divides by ~1e-8 and would give a
/// target of 1e8 units, which no Δ bounded by tanh can reach and which would swamp the mean.
pub const BIAS_TARGET_BOUND: f32 = 2.0;

/// Windows and targets for one nowcaster (bias samples already normalised).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Samples {
    /// `len × 5` values, row-major.
    pub x: Vec<f32>,
    /// One target per window.
    pub y: Vec<f32>,
}

impl Samples {
    pub fn len(&self) -> usize {
        self.y.len()
    }

    pub fn is_empty(&self) -> bool {
        self.y.is_empty()
    }

    /// Adds one window and its target (normalised together when `is_bias`; a bias sample
    /// beyond [`BIAS_TARGET_BOUND`] is dropped).
    pub fn push(&mut self, w: [f32; WINDOW], target: f32, is_bias: bool) {
        if is_bias {
            let (n, first, scale) = normalise(&w);
            let y = (target - first) / scale;
            if (y - n[WINDOW - 1]).abs() > BIAS_TARGET_BOUND {
                return;
            }
            self.x.extend_from_slice(&n);
            self.y.push(y);
        } else {
            self.x.extend_from_slice(&w);
            self.y.push(target);
        }
    }

    /// Window `i`.
    pub fn window(&self, i: usize) -> [f32; WINDOW] {
        std::array::from_fn(|k| self.x[i * WINDOW + k])
    }

    /// The samples at `idx`, in that order.
    pub fn subset(&self, idx: &[usize]) -> Samples {
        let mut s = Samples::default();
        for &i in idx {
            s.x.extend_from_slice(&self.x[i * WINDOW..(i + 1) * WINDOW]);
            s.y.push(self.y[i]);
        }
        s
    }

    /// Mean |target − last value|: the error of predicting no change.
    pub fn no_change_mae(&self) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        let s: f64 = (0..self.len())
            .map(|i| (self.y[i] - self.x[i * WINDOW + WINDOW - 1]).abs() as f64)
            .sum();
        s / self.len() as f64
    }
}

/// Adds the samples of one tensor's trajectory (`traj[t]` its values after session t, index 0
/// = the smallest data) to `out`: for every element `e` with `pick(e)` and every start s, the
/// window `traj[s..s+5][e]` and the target `traj[s+5][e]`. Errors on fewer than 6 points or
/// unequal lengths.
pub fn windows(
    traj: &[&[f32]],
    is_bias: bool,
    pick: impl Fn(usize) -> bool,
    out: &mut Samples,
) -> Result<()> {
    if traj.len() <= WINDOW {
        return Err(err!(
            "a trajectory of {} points gives no sample (a window of {WINDOW} and a target)",
            traj.len()
        ));
    }
    let n = traj[0].len();
    if let Some(t) = traj.iter().position(|v| v.len() != n) {
        return Err(err!(
            "trajectory point {t} holds {} values, point 0 holds {n}",
            traj[t].len()
        ));
    }
    for e in (0..n).filter(|&e| pick(e)) {
        for s in 0..traj.len() - WINDOW {
            let w: [f32; WINDOW] = std::array::from_fn(|k| traj[s + k][e]);
            out.push(w, traj[s + WINDOW][e], is_bias);
        }
    }
    Ok(())
}

/// Settings of [`Nowcaster::fit`].
#[derive(Clone, Debug, PartialEq)]
pub struct FitConfig {
    pub epochs: usize,
    pub batch: usize,
    pub lr: f64,
    pub seed: u64,
}

impl Default for FitConfig {
    fn default() -> Self {
        FitConfig {
            epochs: 4,
            batch: 2048,
            lr: 1e-3,
            seed: 0,
        }
    }
}

/// One per-scalar nowcaster (the matrix or the bias one) with its Adam state.
#[derive(Clone, Debug)]
pub struct Nowcaster {
    pub params: ParamSet,
}

impl Nowcaster {
    /// A fresh network, its values drawn from (seed, name).
    pub fn new(seed: u64) -> Result<Nowcaster> {
        let mut params = ParamSet::new();
        for (name, shape) in layout() {
            let n: usize = shape.iter().product();
            let v = if shape.len() == 1 {
                vec![0.0; n]
            } else {
                let (fi, fo) = (shape[0] as f32, shape[1] as f32);
                let limit = match regularised(&name) {
                    true => (3.0 * 0.1 / fi).sqrt(),
                    false => (6.0 / (fi + fo)).sqrt(),
                };
                let mut rng = Rng::keyed(seed, &format!("know-init/{name}"), 0);
                (0..n)
                    .map(|_| (rng.uniform() * 2.0 - 1.0) * limit)
                    .collect()
            };
            params.add(&name, &shape, v)?;
        }
        Ok(Nowcaster { params })
    }

    fn dense(&self, l: &Leaves, x: Tensor<2>, name: &str) -> Tensor<2> {
        let k = self.idx(&format!("{name}.kernel"));
        let b = self.idx(&format!("{name}.bias"));
        let n_out = self.params.shape(b)[0];
        x.matmul(l.mat(k)) + l.vec(b).reshape([1, n_out])
    }

    fn idx(&self, name: &str) -> usize {
        // Every name comes from `layout`, which built the set.
        self.params.index(name).unwrap_or_else(|| unreachable!())
    }

    fn branch(&self, l: &Leaves, x: Tensor<2>, b: &str) -> Tensor<2> {
        let h = self.dense(l, x, &format!("{b}.dense1"));
        let c = relu(self.dense(l, h.clone(), &format!("{b}.act.squeeze")));
        let base = self.dense(l, c.clone(), &format!("{b}.act.base"));
        let scale = self.dense(l, c.clone(), &format!("{b}.act.scale"));
        let rate = self.dense(l, c, &format!("{b}.act.rate"));
        let g = base + scale * (rate * h).clamp(-EXP_CLAMP, EXP_CLAMP).exp();
        leaky_relu(self.dense(l, g, &format!("{b}.dense2")), LEAKY as f64)
    }

    /// Δ for windows `x` (`[n, 5]`), `[n, 1]`.
    pub fn forward(&self, l: &Leaves, x: Tensor<2>) -> Tensor<2> {
        let n = x.dims()[0];
        let d = x.clone().slice([0..n, 1..WINDOW]) - x.clone().slice([0..n, 0..WINDOW - 1]);
        let a = self.branch(l, x, BRANCHES[0].0);
        let b = self.branch(l, d, BRANCHES[1].0);
        self.dense(l, Tensor::cat(vec![a, b], 1), "head").tanh()
    }

    /// The L1 penalties of the reference (see the module documentation).
    fn penalty(&self, l: &Leaves) -> Tensor<1> {
        let mut total: Option<Tensor<1>> = None;
        for i in 0..self.params.len() {
            let name = self.params.name(i);
            if !regularised(name) {
                continue;
            }
            let w = match name.ends_with(".kernel") {
                true => L1_KERNEL,
                false => L1_BIAS,
            };
            let t = l.vec(i).abs().sum() * w;
            total = Some(match total {
                Some(s) => s + t,
                None => t,
            });
        }
        total.unwrap_or_else(|| unreachable!())
    }

    /// The network as the plain forward pass sees it.
    pub fn net(&self) -> Result<Net> {
        let values = self
            .params
            .named()
            .into_iter()
            .map(|(k, (_, v))| (k, v))
            .collect();
        Ok(Net::from_values(&values, "", Path::new("nowcaster"))?)
    }

    /// Fits the network to `s` (mean absolute error plus the L1 penalties, Adam at `cfg.lr`,
    /// shuffled batches drawn from `cfg.seed`); the mean training loss (error only) of every
    /// epoch back. `progress(step, steps)` after every step.
    pub fn fit(
        &mut self,
        s: &Samples,
        cfg: &FitConfig,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Vec<f64>> {
        if s.is_empty() {
            return Err(err!("no samples to fit the nowcaster on"));
        }
        if cfg.batch == 0 || !(cfg.lr.is_finite() && cfg.lr > 0.0) {
            return Err(err!(
                "nowcaster fit: batch {} and lr {} must be positive",
                cfg.batch,
                cfg.lr
            ));
        }
        let device = Device::flex().autodiff();
        let opt = OptimConfig::new(OptimKind::Adam, cfg.lr);
        let n = s.len();
        let per_epoch = n.div_ceil(cfg.batch);
        let steps = per_epoch * cfg.epochs;
        let mut losses = Vec::new();
        for epoch in 0..cfg.epochs {
            let order = Rng::keyed(cfg.seed, "know-fit", epoch as u64).permutation(n);
            let mut sum = 0.0;
            for (b, idx) in order.chunks(cfg.batch).enumerate() {
                let m = idx.len();
                let mut x = Vec::with_capacity(m * WINDOW);
                let mut y = Vec::with_capacity(m);
                for &i in idx {
                    let i = i as usize;
                    x.extend_from_slice(&s.x[i * WINDOW..(i + 1) * WINDOW]);
                    // The network predicts Δ = target − last value.
                    y.push(s.y[i] - s.x[i * WINDOW + WINDOW - 1]);
                }
                let l = self.params.leaves(&device);
                let xt = tensor(x, [m, WINDOW], &device);
                let yt = tensor(y, [m, 1], &device);
                let mae = (self.forward(&l, xt) - yt).abs().mean();
                let mae_v = super::params::host(mae.clone())
                    .first()
                    .copied()
                    .unwrap_or(0.0);
                if !mae_v.is_finite() {
                    return Err(err!("nowcaster fit: the loss is {mae_v} at epoch {epoch}"));
                }
                sum += mae_v as f64 * m as f64;
                let loss = mae + self.penalty(&l);
                let g = l.grads(&loss.backward());
                self.params.adam_step(&g, &opt, cfg.lr)?;
                progress(epoch * per_epoch + b + 1, steps);
            }
            losses.push(sum / n as f64);
        }
        Ok(losses)
    }

    /// Mean absolute error of `w₅ + Δ` on `s`, by the plain forward pass.
    pub fn mae(&self, s: &Samples) -> Result<f64> {
        if s.is_empty() {
            return Ok(0.0);
        }
        let net = self.net()?;
        let sum: f64 = (0..s.len())
            .into_par_iter()
            .map(|i| {
                let w = s.window(i);
                (w[WINDOW - 1] + net.delta(&w) - s.y[i]).abs() as f64
            })
            .sum();
        Ok(sum / s.len() as f64)
    }
}

/// The nowcaster pair as the plain forward pass uses it.
pub fn predictor(matrix: &Nowcaster, bias: &Nowcaster) -> Result<Predictor> {
    Ok(Predictor {
        matrix: matrix.net()?,
        bias: bias.net()?,
    })
}

/// Writes both networks to one predictor file (names prefixed `matrix.` and `bias.`, F32),
/// atomically; what `engram nowcast --predictor` reads.
pub fn save(
    path: &Path,
    matrix: &Nowcaster,
    bias: &Nowcaster,
    metadata: &BTreeMap<String, String>,
) -> Result<()> {
    let mut values = BTreeMap::new();
    let mut shapes = BTreeMap::new();
    for (p, net) in PREFIXES.iter().zip([matrix, bias]) {
        for (k, (shape, v)) in net.params.named() {
            shapes.insert(format!("{p}{k}"), shape);
            values.insert(format!("{p}{k}"), v);
        }
    }
    Ok(crate::model::io::save_values(
        path, &values, &shapes, metadata,
    )?)
}

/// Reads a predictor file written by [`save`] (or any file with the same tensors): the
/// matrix and the bias nowcaster.
pub fn load(path: &Path) -> Result<(Nowcaster, Nowcaster)> {
    let values = crate::model::io::read_values(path)?;
    let mut out = Vec::new();
    for p in PREFIXES {
        let mine: BTreeMap<String, Vec<f32>> = values
            .iter()
            .filter_map(|(k, v)| k.strip_prefix(p).map(|s| (s.to_string(), v.clone())))
            .collect();
        let mut n = Nowcaster::new(0)?;
        n.params
            .load(&mine)
            .map_err(|e| err!("{}: {p}: {e}", path.display()))?;
        out.push(n);
    }
    let bias = out.pop().unwrap_or_else(|| unreachable!());
    let matrix = out.pop().unwrap_or_else(|| unreachable!());
    Ok((matrix, bias))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_weights::nowcast::nowcast;

    /// A network with every value (biases too) drawn at random, so that every path counts.
    fn random_net(seed: u64) -> Result<Nowcaster> {
        let mut n = Nowcaster::new(seed)?;
        for i in 0..n.params.len() {
            let mut rng = Rng::keyed(seed, "know-test", i as u64);
            for v in n.params.values_mut(i) {
                *v = rng.normal() * 0.4;
            }
        }
        Ok(n)
    }

    #[test]
    fn burn_forward_equals_the_plain_forward() -> Result<()> {
        let n = random_net(3)?;
        let net = n.net()?;
        let device = Device::flex().autodiff();
        let mut rng = Rng::keyed(1, "windows", 0);
        let x: Vec<f32> = (0..64 * WINDOW).map(|_| rng.normal() * 0.5).collect();
        let l = n.params.leaves(&device);
        let y = super::super::params::host(n.forward(&l, tensor(x.clone(), [64, WINDOW], &device)));
        let mut worst = 0f32;
        for i in 0..64 {
            let w: [f32; WINDOW] = std::array::from_fn(|k| x[i * WINDOW + k]);
            worst = worst.max((net.delta(&w) - y[i]).abs());
        }
        assert!(worst < 1e-5, "{worst}");
        // Not a degenerate network: the outputs differ between windows.
        assert!(y.iter().any(|v| (v - y[0]).abs() > 1e-3));
        Ok(())
    }

    /// Geometric convergence w_t = c + a·ρ^(5−t) toward c as data grow (t = 0..6).
    fn geometric(n: usize, seed: u64) -> Result<Samples> {
        let mut rng = Rng::keyed(seed, "geo", 0);
        let traj: Vec<Vec<f32>> = {
            let p: Vec<(f32, f32, f32)> = (0..n)
                .map(|_| {
                    (
                        (rng.uniform() - 0.5) * 0.2,
                        (rng.uniform() - 0.5) * 0.1,
                        0.3 + 0.5 * rng.uniform(),
                    )
                })
                .collect();
            (0..6)
                .map(|t| p.iter().map(|(c, a, r)| c + a * r.powi(6 - t)).collect())
                .collect()
        };
        let refs: Vec<&[f32]> = traj.iter().map(Vec::as_slice).collect();
        let mut s = Samples::default();
        windows(&refs, false, |_| true, &mut s)?;
        Ok(s)
    }

    #[test]
    fn fitting_lowers_the_error_on_geometric_trajectories() -> Result<()> {
        let train = geometric(4096, 0)?;
        let test = geometric(1024, 1)?;
        let mut n = Nowcaster::new(0)?;
        let before = n.mae(&test)?;
        let cfg = FitConfig {
            epochs: 6,
            batch: 256,
            lr: 3e-3,
            seed: 0,
        };
        let losses = n.fit(&train, &cfg, &mut |_, _| {})?;
        let after = n.mae(&test)?;
        assert!(losses.last() < losses.first(), "{losses:?}");
        assert!(after < 0.5 * before, "{before} → {after}");
        // It has learnt the direction: better than predicting no change.
        assert!(
            after < test.no_change_mae(),
            "{after} vs {}",
            test.no_change_mae()
        );
        Ok(())
    }

    #[test]
    fn samples_windows_and_the_file_round_trip() -> Result<()> {
        let t: Vec<Vec<f32>> = (0..7).map(|k| vec![k as f32, 10.0 * k as f32]).collect();
        let refs: Vec<&[f32]> = t.iter().map(Vec::as_slice).collect();
        let mut s = Samples::default();
        windows(&refs, false, |e| e == 1, &mut s)?;
        assert_eq!(s.len(), 2);
        assert_eq!(s.window(1), [10.0, 20.0, 30.0, 40.0, 50.0]);
        assert_eq!(s.y, vec![50.0, 60.0]);
        let mut b = Samples::default();
        windows(&refs[..6], true, |e| e == 0, &mut b)?;
        // Window 0..4: first 0, scale 2·4: normalised last 0.5, target 5/8.
        assert!((b.window(0)[4] - 0.5).abs() < 1e-6 && (b.y[0] - 0.625).abs() < 1e-6);
        assert!(windows(&refs[..5], false, |_| true, &mut s).is_err());

        let d = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let path = d.path().join("know.safetensors");
        let (m, bn) = (random_net(1)?, random_net(2)?);
        save(&path, &m, &bn, &BTreeMap::new())?;
        let (m2, b2) = load(&path)?;
        assert_eq!(m2.params.named(), m.params.named());
        assert_eq!(b2.params.named(), bn.params.named());
        // The plain predictor read from the file agrees with the trained pair.
        let p = Predictor::open(&path)?;
        let traj = [[0.1f32], [0.2], [0.25], [0.27], [0.28]];
        let refs: Vec<&[f32]> = traj.iter().map(|v| v.as_slice()).collect();
        let a = nowcast(&refs, true, &p, 3)?;
        let b = nowcast(&refs, true, &predictor(&m, &bn)?, 3)?;
        assert_eq!(a, b);
        Ok(())
    }

    use crate::Error;
}
