//! A small CNN: two 3×3 convolutions with ReLU and 2×2 max-pooling, then two linear layers.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct Cnn {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    pub fc1: Linear,
    pub fc2: Linear,
    pool: MaxPool2d,
    act: Relu,
    #[module(skip)]
    image: [usize; 3],
}

impl Cnn {
    /// `image` = (channels, height, width); `channels` = widths of the two convolutions.
    pub fn new(
        image: [usize; 3],
        channels: [usize; 2],
        hidden: usize,
        outputs: usize,
        device: &Device,
    ) -> Cnn {
        let [c, h, w] = image;
        // 3×3 valid convolution then 2×2 pooling, twice.
        let side = |s: usize| ((s - 2) / 2 - 2) / 2;
        Cnn {
            conv1: Conv2dConfig::new([c, channels[0]], [3, 3]).init(device),
            conv2: Conv2dConfig::new([channels[0], channels[1]], [3, 3]).init(device),
            fc1: LinearConfig::new(channels[1] * side(h) * side(w), hidden).init(device),
            fc2: LinearConfig::new(hidden, outputs).init(device),
            pool: MaxPool2dConfig::new([2, 2]).init(),
            act: Relu::new(),
            image,
        }
    }

    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        let b = x.dims()[0];
        let [c, h, w] = self.image;
        let x: Tensor<4> = x.reshape([b, c, h, w]);
        let x = self.pool.forward(self.act.forward(self.conv1.forward(x)));
        let x = self.pool.forward(self.act.forward(self.conv2.forward(x)));
        let x: Tensor<2> = x.flatten(1, 3);
        self.act.forward(self.fc1.forward(x))
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.features(x))
    }
}
