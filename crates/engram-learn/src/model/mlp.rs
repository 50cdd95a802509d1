//! Multi-layer perceptron with configurable hidden widths and ReLU.

use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct Mlp {
    /// Hidden layers, then the output layer last.
    pub fc: Vec<Linear>,
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
            act: Relu::new(),
        }
    }

    /// Features before the output layer (for distillation, prototypes).
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        let mut h = x;
        for l in &self.fc[..self.fc.len() - 1] {
            h = self.act.forward(l.forward(h));
        }
        h
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        let h = self.features(x);
        self.fc[self.fc.len() - 1].forward(h)
    }
}
