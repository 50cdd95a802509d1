//! A small CNN: two 3×3 convolutions with ReLU and 2×2 max-pooling, then two linear layers.
//! The convolutions and pooling are engram's own (conv.rs): same parameters as burn's
//! `Conv2d`, computed channels-last; the features are flattened in (channel, y, x) order as
//! before, so `fc1` means the same thing. With a feedback input (IDER,
//! `shared/methods/replay_distillation.md`) a label-space vector enters after the first
//! convolution block through `fb` (Linear + LeakyReLU), added to every position's channels.

use super::conv::{Conv, relu_max_pool2_nhwc};
use super::dense::linear;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct Cnn {
    pub conv1: Conv,
    pub conv2: Conv,
    pub fc1: Linear,
    pub fc2: Linear,
    /// Feedback input (classes → first convolution's channels); `None` for a plain CNN.
    pub fb: Option<Linear>,
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
            conv1: Conv::new([c, channels[0]], 3, device),
            conv2: Conv::new([channels[0], channels[1]], 3, device),
            fc1: LinearConfig::new(channels[1] * side(h) * side(w), hidden).init(device),
            fc2: LinearConfig::new(hidden, outputs).init(device),
            fb: None,
            image,
        }
    }

    /// Adds the feedback input of width `classes` (after the first convolution block).
    pub fn with_feedback(mut self, classes: usize, device: &Device) -> Cnn {
        let c0 = self.conv1.weight.dims()[0];
        self.fb = Some(LinearConfig::new(classes, c0).init(device));
        self
    }

    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        self.features_fb(x, None)
    }

    /// Features with the feedback vector `y` (`None`: the uniform vector); `y` is ignored
    /// without a feedback input.
    pub fn features_fb(&self, x: Tensor<2>, y: Option<Tensor<2>>) -> Tensor<2> {
        let b = x.dims()[0];
        let [c, h, w] = self.image;
        // NHWC throughout; a one-channel image is the same in both layouts.
        let x: Tensor<4> = if c == 1 {
            x.reshape([b, h, w, 1])
        } else {
            x.reshape([b, c, h, w]).permute([0, 2, 3, 1])
        };
        // relu(pool(conv)) = pool(relu(conv)): max and ReLU commute.
        let mut x = relu_max_pool2_nhwc(self.conv1.forward_nhwc(x));
        if let Some(fb) = &self.fb {
            let e = super::feedback(fb, y, b, &x.device());
            let c0 = e.dims()[1];
            x = x + e.reshape([b, 1, 1, c0]);
        }
        let x = relu_max_pool2_nhwc(self.conv2.forward_nhwc(x));
        let [_, ph, pw, pc] = x.dims();
        let x: Tensor<2> = x.permute([0, 3, 1, 2]).reshape([b, pc * ph * pw]);
        linear(&self.fc1, x, true)
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        linear(&self.fc2, self.features(x), false)
    }

    pub fn forward_fb(&self, x: Tensor<2>, y: Option<Tensor<2>>) -> Tensor<2> {
        linear(&self.fc2, self.features_fb(x, y), false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::conv::Conv2d;
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::Distribution;

    /// The network as it was built from burn's layers, on the same parameters.
    fn burn_forward(m: &Cnn, x: Tensor<2>) -> Tensor<2> {
        let b = x.dims()[0];
        let [c, h, w] = m.image;
        let conv = |p: &Conv| Conv2d {
            weight: p.weight.clone(),
            bias: p.bias.clone(),
            stride: [1, 1],
            kernel_size: [3, 3],
            dilation: [1, 1],
            groups: 1,
            padding: burn::nn::PaddingConfig2d::Valid,
        };
        let pool = MaxPool2dConfig::new([2, 2]).init();
        let act = burn::nn::Relu::new();
        let x: Tensor<4> = x.reshape([b, c, h, w]);
        let x = pool.forward(act.forward(conv(&m.conv1).forward(x)));
        let x = pool.forward(act.forward(conv(&m.conv2).forward(x)));
        let x: Tensor<2> = x.flatten(1, 3);
        m.fc2.forward(act.forward(m.fc1.forward(x)))
    }

    #[test]
    fn same_logits_and_gradients_as_burn_layers() {
        let d = Device::flex();
        let _rng = crate::backend::seeded(&d, 5);
        let d = d.autodiff();
        for image in [[1, 28, 28], [3, 12, 11]] {
            let m = Cnn::new(image, [4, 6], 8, 5, &d);
            let n: usize = image.iter().product();
            let x = Tensor::<2>::random([3, n], Distribution::Uniform(0.0, 1.0), &d);
            let (a, b) = (m.forward(x.clone()), burn_forward(&m, x));
            assert!((a.clone() - b.clone()).abs().max().into_scalar::<f32>() < 1e-4);
            let (ga, gb) = (a.sum().backward(), b.sum().backward());
            for (p, q) in [
                (&m.conv1.weight, &m.conv1.weight),
                (&m.conv2.weight, &m.conv2.weight),
            ] {
                let (Some(u), Some(v)) = (p.val().grad(&ga), q.val().grad(&gb)) else {
                    panic!("no gradient")
                };
                assert!((u - v).abs().max().into_scalar::<f32>() < 1e-3);
            }
        }
    }

    #[test]
    fn parameter_names_and_shapes_are_burn_conv2d_s() {
        let d = Device::flex();
        let m = Cnn::new([1, 28, 28], [32, 64], 128, 10, &d);
        let names: Vec<(String, Vec<usize>)> = crate::model::params::flat_params(&m)
            .into_iter()
            .map(|(p, _)| (p.name, p.shape))
            .collect();
        let want: Vec<(String, Vec<usize>)> = [
            ("conv1.weight", vec![32, 1, 3, 3]),
            ("conv1.bias", vec![32]),
            ("conv2.weight", vec![64, 32, 3, 3]),
            ("conv2.bias", vec![64]),
            ("fc1.weight", vec![1600, 128]),
            ("fc1.bias", vec![128]),
            ("fc2.weight", vec![128, 10]),
            ("fc2.bias", vec![10]),
        ]
        .into_iter()
        .map(|(n, s)| (n.to_string(), s))
        .collect();
        assert_eq!(names, want);
    }
}
