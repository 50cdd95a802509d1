//! Multi-layer perceptron with configurable hidden widths and ReLU. With a feedback input
//! (IDER, `shared/methods/replay_distillation.md`) a label-space vector enters after the
//! first hidden layer through `fb` (Linear + LeakyReLU), added to the hidden activations.

use crate::{Result, err};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden layers, then the output layer last.
    pub fc: Vec<Linear>,
    /// Feedback input (classes → first hidden width); `None` for a plain MLP.
    pub fb: Option<Linear>,
    act: Relu,
}

impl Mlp {
    pub fn new(input: usize, hidden: &[usize], outputs: usize, device: &Device) -> Mlp {
        let mut dims = vec![input];
        dims.extend_from_slice(hidden);
        dims.push(outputs);
        Mlp {
            fc: dims
                .windows(2)
                .map(|w| LinearConfig::new(w[0], w[1]).init(device))
                .collect(),
            fb: None,
            act: Relu::new(),
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
            h = self.act.forward(l.forward(h));
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
        self.fc[self.fc.len() - 1].forward(h)
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
