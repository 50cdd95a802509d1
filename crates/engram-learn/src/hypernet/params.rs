//! A generator's parameters held as plain values with their Adam moments, made into autodiff
//! leaves for each step. Networks that write networks need what burn modules make awkward:
//! evaluating the same parameters shifted by a detached step (the look-ahead of the output
//! regulariser), freezing single tensors (old task embeddings), and snapshots of their
//! outputs; plain values make each of those one line. The update is the trainer's Adam
//! ([`crate::optim::AdamStep`]), so the same settings mean the same step everywhere.

use crate::optim::OptimConfig;
use crate::{Result, err};
use burn::prelude::*;
use std::collections::BTreeMap;

/// Named tensors (row-major values and a shape), each trainable or frozen, with Adam moments.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParamSet {
    names: Vec<String>,
    shapes: Vec<Vec<usize>>,
    values: Vec<Vec<f32>>,
    frozen: Vec<bool>,
    m: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    /// Adam steps taken (bias correction).
    t: u64,
}

/// The autodiff leaves of a [`ParamSet`] for one forward pass: one flat tensor per parameter
/// (a frozen one without gradient), reshaped where used.
pub struct Leaves {
    tensors: Vec<Tensor<1>>,
    shapes: Vec<Vec<usize>>,
}

impl Leaves {
    /// Parameter `i` as a vector.
    pub fn vec(&self, i: usize) -> Tensor<1> {
        self.tensors[i].clone()
    }

    /// Parameter `i` as a `[rows, cols]` matrix (its stored shape must have that many values).
    pub fn mat(&self, i: usize) -> Tensor<2> {
        let s = &self.shapes[i];
        let rows = s.first().copied().unwrap_or(1);
        let cols = s.iter().skip(1).product::<usize>().max(1);
        self.tensors[i].clone().reshape([rows, cols])
    }

    /// Row `r` of parameter `i` seen as a matrix, as a `[1, cols]` tensor.
    pub fn row(&self, i: usize, r: usize) -> Tensor<2> {
        let m = self.mat(i);
        let cols = m.dims()[1];
        m.slice([r..r + 1, 0..cols])
    }

    /// The gradient of every parameter in `grads` (zeros for a frozen one or one the loss
    /// does not reach), as plain values.
    pub fn grads(&self, grads: &burn::tensor::Gradients) -> Vec<Vec<f32>> {
        self.tensors
            .iter()
            .zip(&self.shapes)
            .map(|(t, s)| {
                let n: usize = s.iter().product();
                t.grad(grads)
                    .map(host)
                    .filter(|g| g.len() == n)
                    .unwrap_or_else(|| vec![0.0; n])
            })
            .collect()
    }
}

pub use crate::backend::host;

/// A float tensor of `shape` holding `values` on `device`.
pub fn tensor<const D: usize>(values: Vec<f32>, shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(values, shape), device)
}

impl ParamSet {
    pub fn new() -> ParamSet {
        ParamSet::default()
    }

    /// Adds a trainable parameter; its index back. Refuses a duplicate name or values that
    /// do not fill the shape.
    pub fn add(&mut self, name: &str, shape: &[usize], values: Vec<f32>) -> Result<usize> {
        let n: usize = shape.iter().product();
        if values.len() != n {
            return Err(err!(
                "parameter {name}: {} values for shape {shape:?}",
                values.len()
            ));
        }
        if self.names.iter().any(|x| x == name) {
            return Err(err!("parameter {name} added twice"));
        }
        self.names.push(name.to_string());
        self.shapes.push(shape.to_vec());
        self.m.push(vec![0.0; n]);
        self.v.push(vec![0.0; n]);
        self.values.push(values);
        self.frozen.push(false);
        Ok(self.names.len() - 1)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The index of the parameter called `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|x| x == name)
    }

    pub fn name(&self, i: usize) -> &str {
        &self.names[i]
    }

    pub fn shape(&self, i: usize) -> &[usize] {
        &self.shapes[i]
    }

    pub fn values(&self, i: usize) -> &[f32] {
        &self.values[i]
    }

    pub fn values_mut(&mut self, i: usize) -> &mut [f32] {
        &mut self.values[i]
    }

    /// Freezes (or thaws) parameter `i`: it gets no gradient and Adam leaves it alone.
    pub fn set_frozen(&mut self, i: usize, frozen: bool) {
        self.frozen[i] = frozen;
    }

    pub fn is_frozen(&self, i: usize) -> bool {
        self.frozen[i]
    }

    /// Values of every parameter, trainable or not.
    pub fn count(&self) -> usize {
        self.values.iter().map(Vec::len).sum()
    }

    /// Values of the trainable parameters.
    pub fn trainable(&self) -> usize {
        self.values
            .iter()
            .zip(&self.frozen)
            .filter(|(_, f)| !**f)
            .map(|(v, _)| v.len())
            .sum()
    }

    /// Autodiff leaves of the current values (trainable ones require a gradient).
    pub fn leaves(&self, device: &Device) -> Leaves {
        self.leaves_shifted(None, device)
    }

    /// Autodiff leaves of the values plus `delta` (a detached step, one vector per
    /// parameter): the gradient at the shifted point is the gradient the update uses.
    pub fn leaves_shifted(&self, delta: Option<&[Vec<f32>]>, device: &Device) -> Leaves {
        let tensors = (0..self.len())
            .map(|i| {
                let vals = match delta {
                    Some(d) => self.values[i]
                        .iter()
                        .zip(&d[i])
                        .map(|(a, b)| a + b)
                        .collect(),
                    None => self.values[i].clone(),
                };
                let n = vals.len();
                let t = tensor(vals, [n], device);
                if self.frozen[i] || !device.is_autodiff() {
                    t
                } else {
                    t.require_grad()
                }
            })
            .collect();
        Leaves {
            tensors,
            shapes: self.shapes.clone(),
        }
    }

    /// The step Adam would take with gradient `g` now (`opt`'s settings at `lr`), without
    /// taking it: zero for frozen parameters. hypercl's look-ahead ΔΘ.
    pub fn adam_delta(&self, g: &[Vec<f32>], opt: &OptimConfig, lr: f64) -> Vec<Vec<f32>> {
        let step = opt.adam_step(lr, self.t + 1);
        (0..self.len())
            .map(|i| {
                if self.frozen[i] {
                    return vec![0.0; self.values[i].len()];
                }
                self.values[i]
                    .iter()
                    .zip(&g[i])
                    .zip(self.m[i].iter().zip(&self.v[i]))
                    .map(|((&w, &gv), (&m, &v))| {
                        let (mut w2, mut m2, mut v2) = (w, m, v);
                        step.apply(&mut w2, gv, &mut m2, &mut v2);
                        w2 - w
                    })
                    .collect()
            })
            .collect()
    }

    /// One Adam step with gradient `g` (one vector per parameter); frozen ones stay.
    pub fn adam_step(&mut self, g: &[Vec<f32>], opt: &OptimConfig, lr: f64) -> Result<()> {
        if g.len() != self.len() {
            return Err(err!("{} gradients for {} parameters", g.len(), self.len()));
        }
        self.t += 1;
        let step = opt.adam_step(lr, self.t);
        for (i, gi) in g.iter().enumerate() {
            if self.frozen[i] {
                continue;
            }
            if gi.len() != self.values[i].len() {
                return Err(err!(
                    "gradient of {}: {} values for {}",
                    self.names[i],
                    gi.len(),
                    self.values[i].len()
                ));
            }
            for (((w, &gv), m), v) in self.values[i]
                .iter_mut()
                .zip(gi)
                .zip(self.m[i].iter_mut())
                .zip(self.v[i].iter_mut())
            {
                step.apply(w, gv, m, v);
            }
        }
        Ok(())
    }

    /// Restarts Adam (moments and step count), e.g. at a new task.
    pub fn reset_optimizer(&mut self) {
        self.t = 0;
        for (m, v) in self.m.iter_mut().zip(self.v.iter_mut()) {
            m.fill(0.0);
            v.fill(0.0);
        }
    }

    /// Every parameter's values and shape by name (what safetensors files hold).
    pub fn named(&self) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
        (0..self.len())
            .map(|i| {
                (
                    self.names[i].clone(),
                    (self.shapes[i].clone(), self.values[i].clone()),
                )
            })
            .collect()
    }

    /// Loads values by name: every parameter must be present with its shape's count.
    pub fn load(&mut self, values: &BTreeMap<String, Vec<f32>>) -> Result<()> {
        for i in 0..self.len() {
            let v = values
                .get(&self.names[i])
                .ok_or_else(|| err!("parameter {} missing", self.names[i]))?;
            if v.len() != self.values[i].len() {
                return Err(err!(
                    "parameter {}: {} values, the generator needs {}",
                    self.names[i],
                    v.len(),
                    self.values[i].len()
                ));
            }
            self.values[i].clone_from(v);
        }
        Ok(())
    }
}

/// Uniform values in ±1/√fan_in (PyTorch's default for linear layers), drawn from
/// (seed, key).
pub fn uniform_init(n: usize, fan_in: usize, seed: u64, key: &str) -> Vec<f32> {
    let mut rng = engram_weights::rng::Rng::keyed(seed, key, 0);
    let a = 1.0 / (fan_in.max(1) as f32).sqrt();
    (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) * a).collect()
}

/// Standard normal values times `scale`, drawn from (seed, key).
pub fn normal_init(n: usize, scale: f32, seed: u64, key: &str) -> Vec<f32> {
    let mut rng = engram_weights::rng::Rng::keyed(seed, key, 0);
    (0..n).map(|_| rng.normal() * scale).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gradients_reach_trainable_leaves_only_and_adam_matches_its_delta() -> Result<()> {
        let device = Device::flex().autodiff();
        let mut p = ParamSet::new();
        let a = p.add("a", &[2, 2], vec![1.0, 2.0, 3.0, 4.0])?;
        let b = p.add("b", &[2], vec![0.5, -0.5])?;
        p.set_frozen(b, true);
        assert!(p.add("a", &[1], vec![0.0]).is_err());
        assert!(p.add("c", &[3], vec![0.0]).is_err());
        let l = p.leaves(&device);
        // loss = Σ (A·b) = b0·(1+3) + b1·(2+4) with b as a column.
        let loss = l.mat(a).matmul(l.vec(b).reshape([2, 1])).sum();
        let g = l.grads(&loss.backward());
        assert_eq!(g[a], vec![0.5, -0.5, 0.5, -0.5]);
        assert_eq!(g[b], vec![0.0, 0.0]);
        let opt = OptimConfig::DEFAULT;
        let d = p.adam_delta(&g, &opt, 1e-2);
        let before = p.values(a).to_vec();
        p.adam_step(&g, &opt, 1e-2)?;
        for k in 0..4 {
            assert!((p.values(a)[k] - before[k] - d[a][k]).abs() < 1e-7);
        }
        assert_eq!(p.values(b), &[0.5, -0.5]);
        assert_eq!(d[b], vec![0.0, 0.0]);
        Ok(())
    }
}
