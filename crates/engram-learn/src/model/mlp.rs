//! Multi-layer perceptron with configurable hidden widths and ReLU. With a feedback input
//! (IDER, `shared/methods/replay_distillation.md`) a label-space vector enters after the
//! first hidden layer through `fb` (Linear + LeakyReLU), added to the hidden activations.
//! The output layer is a plain linear layer or SCoLe's weight-normalised head
//! (`shared/methods/theory.md`, SCoLe, `head=weightnorm`): logits = x·(W_j/‖W_j‖₂)ᵀ per
//! class j, no bias, Kaiming-normal initial rows; the norm is part of the forward pass, so
//! gradients flow through it. Each linear layer (with its ReLU) is engram's dense layer
//! (dense.rs): the same parameters as burn's `Linear`, computed faster on the CPU.

use super::Head;
use crate::{Result, err};
use burn::nn::{Initializer, Linear, LinearConfig, Relu};
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden layers, then the output layer last.
    pub fc: Vec<Linear>,
    /// Feedback input (classes → first hidden width); `None` for a plain MLP.
    pub fb: Option<Linear>,
    act: Relu,
    /// The output layer is weight-normalised (rows of W scaled to unit norm, no bias).
    pub norm_head: bool,
}

impl Mlp {
    pub fn new(input: usize, hidden: &[usize], outputs: usize, device: &Device) -> Mlp {
        Mlp::with_head(input, hidden, outputs, Head::Linear, device)
    }

    /// An MLP whose output layer is `head`; hidden layers as [`Mlp::new`].
    pub fn with_head(
        input: usize,
        hidden: &[usize],
        outputs: usize,
        head: Head,
        device: &Device,
    ) -> Mlp {
        let mut dims = vec![input];
        dims.extend_from_slice(hidden);
        dims.push(outputs);
        let last = dims.len() - 2;
        let norm_head = head == Head::WeightNorm;
        Mlp {
            fc: dims
                .windows(2)
                .enumerate()
                .map(|(l, w)| {
                    let c = LinearConfig::new(w[0], w[1]);
                    if l == last && norm_head {
                        // PyTorch's kaiming_normal_ defaults: fan-in, gain √2.
                        c.with_bias(false)
                            .with_initializer(Initializer::KaimingNormal {
                                gain: std::f64::consts::SQRT_2,
                                fan_out_only: false,
                            })
                            .init(device)
                    } else {
                        c.init(device)
                    }
                })
                .collect(),
            fb: None,
            act: Relu::new(),
            norm_head,
        }
    }

    /// The output layer's kind.
    pub fn head(&self) -> Head {
        if self.norm_head {
            Head::WeightNorm
        } else {
            Head::Linear
        }
    }

    /// Adds the feedback input of width `classes` (after the first hidden layer); an error
    /// when there is no hidden layer.
    pub fn with_feedback(mut self, classes: usize, device: &Device) -> Result<Mlp> {
        if self.fc.len() < 2 {
            return Err("a feedback input needs an mlp with at least one hidden layer".into());
        }
        let d = self.fc[0].weight.dims()[1];
        self.fb = Some(LinearConfig::new(classes, d).init(device));
        Ok(self)
    }

    /// Features before the output layer (for distillation, prototypes).
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        self.features_fb(x, None)
    }

    /// Features with the feedback vector `y` (`None`: the uniform vector); `y` is ignored
    /// without a feedback input.
    pub fn features_fb(&self, x: Tensor<2>, y: Option<Tensor<2>>) -> Tensor<2> {
        let mut h = x;
        let mut y = y;
        for (i, l) in self.fc[..self.fc.len() - 1].iter().enumerate() {
            h = super::dense::linear(l, h, true);
            if i == 0
                && let Some(fb) = &self.fb
            {
                let e = super::feedback(fb, y.take(), h.dims()[0], &h.device());
                h = h + e;
            }
        }
        h
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.forward_fb(x, None)
    }

    pub fn forward_fb(&self, x: Tensor<2>, y: Option<Tensor<2>>) -> Tensor<2> {
        let h = self.features_fb(x, y);
        let out = &self.fc[self.fc.len() - 1];
        if !self.norm_head {
            return super::dense::linear(out, h, false);
        }
        // burn stores the weight as [features, classes]: class j's row is column j.
        let w = out.weight.val();
        let norm = w.clone().square().sum_dim(0).sqrt().clamp_min(1e-12);
        h.matmul(w / norm)
    }

    /// Σ_rows w_r·(∂ℓ_r/∂θ)² for every weight and bias (the per-example squared gradients of
    /// the Fisher estimators, `strategy/parts/fisher.rs`), in one backward pass: this forward
    /// pass with a zero "probe" leaf added to every pre-activation, so that the backward pass
    /// of `loss(logits)` (a sum of per-row losses) gives each row's output gradient δ, and
    /// Σ_rows w·(a²)ᵀ(δ²) is the weight term (a: the layer's input), Σ_rows w·δ² the bias
    /// one. Names as `fc.<l>.weight` and `fc.<l>.bias`. Not for a network with a feedback
    /// input (its extra path is not mirrored here).
    pub fn weighted_sq_grads(
        &self,
        x: Tensor<2>,
        w: &[f32],
        loss: impl FnOnce(Tensor<2>) -> Tensor<1>,
    ) -> Result<Vec<(String, Vec<f32>)>> {
        if self.fb.is_some() {
            return Err("per-example gradients of an mlp with a feedback input".into());
        }
        if self.norm_head {
            return Err("per-example gradients of an mlp with a weight-normalised head".into());
        }
        let device = x.device();
        let nr = x.dims()[0];
        if w.len() != nr {
            return Err(err!("{} row weights for {nr} rows", w.len()));
        }
        let mut h = x;
        let mut acts = Vec::new();
        let mut probes = Vec::new();
        let last = self.fc.len() - 1;
        for (l, lin) in self.fc.iter().enumerate() {
            let wt = lin.weight.val();
            let probe = Tensor::<2>::zeros([nr, wt.dims()[1]], &device).require_grad();
            acts.push(h.clone().detach());
            let mut z = h.matmul(wt) + probe.clone();
            if let Some(bias) = &lin.bias {
                z = z + bias.val().unsqueeze_dim(0);
            }
            probes.push(probe);
            h = if l < last { self.act.forward(z) } else { z };
        }
        let grads = loss(h).backward();
        let host = |t: Tensor<2>| -> Result<Vec<f32>> {
            t.into_data()
                .convert::<f32>()
                .try_into_vec::<f32>()
                .map_err(|e| err!("tensor to host: {e:?}"))
        };
        let mut out = Vec::new();
        for (l, lin) in self.fc.iter().enumerate() {
            let dz = probes[l]
                .grad(&grads)
                .ok_or("no gradient reached a probe")?;
            let wc = Tensor::<1>::from_data(TensorData::new(w.to_vec(), [nr]), &dz.device())
                .unsqueeze_dim::<2>(1);
            let dz2 = dz.square() * wc;
            let a = acts[l].clone().without_autodiff();
            out.push((
                format!("fc.{l}.weight"),
                host(a.square().transpose().matmul(dz2.clone()))?,
            ));
            if lin.bias.is_some() {
                out.push((format!("fc.{l}.bias"), host(dz2.sum_dim(0))?));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::host_params;
    use burn::module::Param;
    use burn::tensor::Distribution;

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("f32")
    }

    fn wn_net(d: &Device) -> Mlp {
        let _rng = crate::backend::seeded(&Device::flex(), 4);
        let m = Mlp::with_head(5, &[6], 4, Head::WeightNorm, d);
        host_params(&m);
        m
    }

    /// logits_j = h·W_j/‖W_j‖ with h the hidden features, no bias; rescaling a class's row
    /// leaves the logits as they were.
    #[test]
    fn weight_norm_head_is_normalised_rows_without_bias() {
        let d = Device::flex().autodiff();
        let m = wn_net(&d);
        assert_eq!(m.head(), Head::WeightNorm);
        let names: Vec<String> = host_params(&m).into_iter().map(|(i, _)| i.name).collect();
        assert_eq!(names, ["fc.0.weight", "fc.0.bias", "fc.1.weight"]);
        let x = Tensor::<2>::random([3, 5], Distribution::Uniform(-1.0, 1.0), &d);
        let h = host(m.features(x.clone()));
        let w = host(m.fc[1].weight.val()); // [6, 4], row-major
        let logits = host(m.forward(x.clone()));
        for r in 0..3 {
            for j in 0..4 {
                let norm = (0..6).map(|k| w[k * 4 + j].powi(2)).sum::<f32>().sqrt();
                let want: f32 = (0..6).map(|k| h[r * 6 + k] * w[k * 4 + j] / norm).sum();
                assert!((logits[r * 4 + j] - want).abs() < 1e-5, "{r},{j}");
            }
        }
        // Each logit is at most ‖h‖ (a unit row): a linear head's would not be bounded so.
        for r in 0..3 {
            let hn = (0..6).map(|k| h[r * 6 + k].powi(2)).sum::<f32>().sqrt();
            assert!((0..4).all(|j| logits[r * 4 + j].abs() <= hn + 1e-5));
        }
        // Scale class 2's row by 7 (and class 0's by 0.01): the same logits.
        let scale =
            Tensor::<2>::from_data(TensorData::new(vec![0.01f32, 1.0, 7.0, 1.0], [1, 4]), &d);
        let mut scaled = wn_net(&d);
        let w2 = (scaled.fc[1].weight.val() * scale).detach();
        scaled.fc[1].weight = Param::from_tensor(w2);
        let again = host(scaled.forward(x));
        for (a, b) in logits.iter().zip(&again) {
            assert!((a - b).abs() < 1e-5);
        }
        // A linear head differs: the bias and the row norms enter.
        let _rng = crate::backend::seeded(&Device::flex(), 4);
        let lin = Mlp::new(5, &[6], 4, &d);
        assert_eq!(lin.head(), Head::Linear);
        assert!(lin.fc[1].bias.is_some());
    }

    /// Gradients reach the head through the norm: each class row's gradient is orthogonal to
    /// the row (the derivative of a function of W_j/‖W_j‖), and it is not zero.
    #[test]
    fn gradients_flow_through_the_normalisation() {
        let d = Device::flex().autodiff();
        let m = wn_net(&d);
        let x = Tensor::<2>::random([8, 5], Distribution::Uniform(-1.0, 1.0), &d);
        let y =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 3, 0, 1, 2, 3], [8]), &d);
        let loss = burn::nn::loss::CrossEntropyLossConfig::new()
            .init(&d)
            .forward(m.forward(x), y);
        let grads = loss.backward();
        let g = host(m.fc[1].weight.grad(&grads).expect("head gradient"));
        let w = host(m.fc[1].weight.val());
        for j in 0..4 {
            let dot: f32 = (0..6).map(|k| g[k * 4 + j] * w[k * 4 + j]).sum();
            let gn = (0..6).map(|k| g[k * 4 + j].powi(2)).sum::<f32>().sqrt();
            let wn = (0..6).map(|k| w[k * 4 + j].powi(2)).sum::<f32>().sqrt();
            assert!(gn > 1e-6, "class {j}: no gradient");
            assert!(dot.abs() < 1e-4 * gn * wn, "class {j}: g·w = {dot}");
        }
    }
}
