//! Multi-layer perceptron with configurable hidden widths and ReLU. With a feedback input
//! (IDER, `shared/methods/replay_distillation.md`) a label-space vector enters after the
//! first hidden layer through `fb` (Linear + LeakyReLU), added to the hidden activations.

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
    pub fn with_feedback(mut self, classes: usize, device: &Device) -> Result<Mlp, String> {
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
}
