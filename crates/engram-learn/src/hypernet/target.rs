// Task-conditioned hypernetworks (von Oswald et al., arXiv 1906.00695): the target network.
// Card: shared/methods/hypernetworks.md, "Dependency-preserving RNN hypernetwork".

//! The target MLP of a hypernetwork: a ReLU MLP whose forward pass takes all its weights as
//! one flat tensor θ (the generator's output), so that the loss's gradient reaches the
//! generator. Layer l's weight is `[in, out]` (x·W + b) followed by its bias, in layer order,
//! named as engram's `mlp` model names them (`fc.0.weight`, `fc.0.bias`, ...), so generated
//! weights save as a checkpoint that `engram`'s other commands read.
//!
//! The generator emits values of unit scale; the target multiplies layer l's weight by the
//! fixed 1/√fan_in (engram design, the role hypercl's "hyperfan" initialisation plays: a
//! generated 784-input layer starts at the scale of a freshly initialised one).

use crate::{Result, err};
use burn::prelude::*;
use std::collections::BTreeMap;

/// A ReLU MLP `sizes[0] → sizes[1] → … → sizes[L]` with generated weights.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetMlp {
    pub sizes: Vec<usize>,
}

/// One parameter tensor of the target: its name, shape and range in θ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    pub shape: Vec<usize>,
    pub start: usize,
    pub layer: usize,
}

impl Slot {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TargetMlp {
    /// Refuses fewer than two sizes or a zero width.
    pub fn new(sizes: &[usize]) -> Result<TargetMlp> {
        if sizes.len() < 2 || sizes.contains(&0) {
            return Err(err!(
                "target MLP sizes {sizes:?}: need an input and an output width, none zero"
            ));
        }
        Ok(TargetMlp {
            sizes: sizes.to_vec(),
        })
    }

    /// Every parameter in θ's order: per layer its weight `[in, out]`, then its bias.
    pub fn slots(&self) -> Vec<Slot> {
        let mut out = Vec::new();
        let mut start = 0;
        for l in 0..self.sizes.len() - 1 {
            let (i, o) = (self.sizes[l], self.sizes[l + 1]);
            out.push(Slot {
                name: format!("fc.{l}.weight"),
                shape: vec![i, o],
                start,
                layer: l,
            });
            start += i * o;
            out.push(Slot {
                name: format!("fc.{l}.bias"),
                shape: vec![o],
                start,
                layer: l,
            });
            start += o;
        }
        out
    }

    /// Values in θ.
    pub fn count(&self) -> usize {
        self.slots().iter().map(Slot::len).sum()
    }

    /// The values of each layer (weight and bias together), in order: what layer-aligned
    /// chunking splits.
    pub fn layer_sizes(&self) -> Vec<usize> {
        (0..self.sizes.len() - 1)
            .map(|l| (self.sizes[l] + 1) * self.sizes[l + 1])
            .collect()
    }

    /// The network's logits for `x` (`[n, sizes[0]]`) with weights `theta` (`[count]`).
    pub fn forward(&self, theta: Tensor<1>, x: Tensor<2>) -> Result<Tensor<2>> {
        let n = theta.dims()[0];
        if n != self.count() {
            return Err(err!(
                "target MLP {:?} needs {} weights, got {n}",
                self.sizes,
                self.count()
            ));
        }
        if x.dims()[1] != self.sizes[0] {
            return Err(err!(
                "target MLP {:?}: input width {} is not {}",
                self.sizes,
                x.dims()[1],
                self.sizes[0]
            ));
        }
        let layers = self.sizes.len() - 1;
        let mut h = x;
        let mut at = 0;
        for l in 0..layers {
            let (i, o) = (self.sizes[l], self.sizes[l + 1]);
            let scale = 1.0 / (i as f32).sqrt();
            let w = theta.clone().narrow(0, at, i * o).reshape([i, o]) * scale;
            at += i * o;
            let b = theta.clone().narrow(0, at, o).reshape([1, o]);
            at += o;
            h = h.matmul(w) + b;
            if l + 1 < layers {
                h = burn::tensor::activation::relu(h);
            }
        }
        Ok(h)
    }

    /// θ as the weights engram's `mlp` model holds (the 1/√fan_in scale applied), by name:
    /// what a checkpoint of the generated network stores.
    pub fn values(&self, theta: &[f32]) -> Result<BTreeMap<String, Vec<f32>>> {
        if theta.len() != self.count() {
            return Err(err!(
                "target MLP {:?} needs {} weights, got {}",
                self.sizes,
                self.count(),
                theta.len()
            ));
        }
        Ok(self
            .slots()
            .into_iter()
            .map(|s| {
                let v = &theta[s.start..s.start + s.len()];
                let v = match s.shape.len() {
                    2 => {
                        let k = 1.0 / (s.shape[0] as f32).sqrt();
                        v.iter().map(|x| x * k).collect()
                    }
                    _ => v.to_vec(),
                };
                (s.name, v)
            })
            .collect())
    }

    /// Every parameter's shape by name.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.slots()
            .into_iter()
            .map(|s| (s.name, s.shape))
            .collect()
    }
}

/// Layer-aligned chunking of θ (engram design: the card's pitfall, "chunk order sets the
/// dependency direction; fix it to the target layer order"): each layer's values (weight then
/// bias) are cut into chunks of `size`, its last chunk partly used, so no chunk spans two
/// layers. A generator emits `count()` chunks of `size` values; [`Chunks::assemble`] keeps
/// the used part of each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunks {
    pub size: usize,
    /// Per layer: its first chunk and its number of values.
    pub layers: Vec<(usize, usize)>,
    total: usize,
}

impl Chunks {
    pub fn new(target: &TargetMlp, size: usize) -> Result<Chunks> {
        if size == 0 {
            return Err(err!("chunk size must be at least 1"));
        }
        let mut layers = Vec::new();
        let mut k = 0;
        for n in target.layer_sizes() {
            layers.push((k, n));
            k += n.div_ceil(size);
        }
        Ok(Chunks {
            size,
            layers,
            total: k,
        })
    }

    /// Chunks a generator emits.
    pub fn count(&self) -> usize {
        self.total
    }

    /// The used values of each chunk, in order.
    pub fn used(&self) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.total);
        for &(_, n) in &self.layers {
            let full = n / self.size;
            out.extend(std::iter::repeat_n(self.size, full));
            if n % self.size > 0 {
                out.push(n % self.size);
            }
        }
        out
    }

    /// θ (`[s, count of the target]`) from a generator's chunks (`[s, count() · size]`).
    pub fn assemble(&self, out: Tensor<2>) -> Tensor<2> {
        let s = out.dims()[0];
        let parts: Vec<Tensor<2>> = self
            .layers
            .iter()
            .map(|&(k, n)| out.clone().slice([0..s, k * self.size..k * self.size + n]))
            .collect();
        Tensor::cat(parts, 1)
    }
}

/// A generator of the target's weights from task embeddings: its parameters (one embedding
/// per task, `task.<t>`, created by [`Generator::add_task`]) and θ for a set of tasks.
pub trait Generator {
    fn params(&self) -> &super::params::ParamSet;
    fn params_mut(&mut self) -> &mut super::params::ParamSet;
    /// θ of each of `tasks` (`[tasks.len(), target count]`) from the parameters' leaves.
    fn generate(&self, leaves: &super::params::Leaves, tasks: &[usize]) -> Result<Tensor<2>>;
    /// Prepares task `t` (its embedding; the growth option's new units).
    fn add_task(&mut self, t: usize, seed: u64) -> Result<()>;
    /// Zeroes the gradient entries that must not change while training task `t` (beyond
    /// frozen tensors; the growth option's old units).
    fn mask_grads(&self, _t: usize, _g: &mut [Vec<f32>]) {}
    /// The chunking of θ.
    fn chunks(&self) -> &Chunks;
    fn name(&self) -> String;
}

/// The index of task `t`'s embedding in `p`.
pub fn task_index(p: &super::params::ParamSet, t: usize) -> Result<usize> {
    p.index(&format!("task.{t}"))
        .ok_or_else(|| err!("task {t} has no embedding yet (add_task first)"))
}

/// The embeddings of `tasks` as rows (`[tasks.len(), e]`).
pub fn task_rows(
    p: &super::params::ParamSet,
    leaves: &super::params::Leaves,
    tasks: &[usize],
) -> Result<Tensor<2>> {
    let rows = tasks
        .iter()
        .map(|&t| Ok(leaves.vec(task_index(p, t)?).unsqueeze::<2>()))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(rows, 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hypernet::params::{host, tensor};

    #[test]
    fn slots_follow_the_mlp_layout_and_forward_matches_a_plain_product() -> Result<()> {
        let t = TargetMlp::new(&[3, 2, 2])?;
        assert_eq!(t.count(), 3 * 2 + 2 + 2 * 2 + 2);
        assert_eq!(t.layer_sizes(), vec![8, 6]);
        let names: Vec<String> = t.slots().into_iter().map(|s| s.name).collect();
        assert_eq!(
            names,
            ["fc.0.weight", "fc.0.bias", "fc.1.weight", "fc.1.bias"]
        );
        let theta: Vec<f32> = (0..t.count()).map(|i| (i as f32 - 6.0) * 0.1).collect();
        let x = vec![1.0f32, -2.0, 0.5];
        let device = Device::flex();
        let y = host(t.forward(
            tensor(theta.clone(), [14], &device),
            tensor(x.clone(), [1, 3], &device),
        )?);
        // The same network from the values a checkpoint holds.
        let v = t.values(&theta)?;
        let (w0, b0, w1, b1) = (
            &v["fc.0.weight"],
            &v["fc.0.bias"],
            &v["fc.1.weight"],
            &v["fc.1.bias"],
        );
        let h: Vec<f32> = (0..2)
            .map(|o| (0..3).map(|i| x[i] * w0[i * 2 + o]).sum::<f32>() + b0[o])
            .map(|a| a.max(0.0))
            .collect();
        for o in 0..2 {
            let want = (0..2).map(|i| h[i] * w1[i * 2 + o]).sum::<f32>() + b1[o];
            assert!((y[o] - want).abs() < 1e-5, "{o}: {} vs {want}", y[o]);
        }
        assert!(
            t.forward(
                tensor(vec![0.0; 13], [13], &device),
                tensor(x, [1, 3], &device)
            )
            .is_err()
        );
        assert!(TargetMlp::new(&[3]).is_err());
        Ok(())
    }

    #[test]
    fn chunks_align_to_layers_and_assemble_the_used_parts() -> Result<()> {
        let t = TargetMlp::new(&[3, 2, 2])?;
        let c = Chunks::new(&t, 3)?;
        assert_eq!(c.count(), 3 + 2);
        assert_eq!(c.used(), vec![3, 3, 2, 3, 3]);
        // Chunk k holds values 10k, 10k+1, 10k+2.
        let raw: Vec<f32> = (0..5)
            .flat_map(|k| (0..3).map(move |j| (10 * k + j) as f32))
            .collect();
        let device = Device::flex();
        let th = host(c.assemble(tensor(raw, [1, 15], &device)));
        assert_eq!(
            th,
            vec![
                0., 1., 2., 10., 11., 12., 20., 21., 30., 31., 32., 40., 41., 42.
            ]
        );
        assert_eq!(th.len(), t.count());
        Ok(())
    }
}
