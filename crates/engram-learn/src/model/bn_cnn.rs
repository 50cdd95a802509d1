//! The CNN with BatchNorm of the test-time adaptation experiment (`shared/methods/test_time.md`,
//! CoTTA: "conv 16 → conv 32, each with BN, ≈ 50k parameters"): two 3×3 convolutions, each
//! followed by BatchNorm, ReLU and 2×2 max-pooling, then two linear layers. The convolutions
//! are engram's own (conv.rs), channels-last, like the plain CNN's.
//!
//! The BatchNorm layers switch between training, running statistics and batch statistics
//! ([`BnMode`]); their affine parameters (`bn1.weight`, `bn1.bias`, ...) are the group TENT
//! trains ([`BnCnn::bn_affine_names`]).

use super::batchnorm::{BatchNorm, BnMode};
use super::conv::{Conv, relu_max_pool2_nhwc};
use burn::nn::{Linear, LinearConfig, Relu};
use burn::prelude::*;

#[derive(Module, Debug)]
pub struct BnCnn {
    pub conv1: Conv,
    pub bn1: BatchNorm,
    pub conv2: Conv,
    pub bn2: BatchNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    act: Relu,
    #[module(skip)]
    image: [usize; 3],
}

impl BnCnn {
    /// `image` = (channels, height, width), at least 10×10; `channels` = widths of the two
    /// convolutions.
    pub fn new(
        image: [usize; 3],
        channels: [usize; 2],
        hidden: usize,
        outputs: usize,
        device: &Device,
    ) -> BnCnn {
        let [c, h, w] = image;
        let side = |s: usize| ((s - 2) / 2 - 2) / 2;
        BnCnn {
            conv1: Conv::new([c, channels[0]], 3, device),
            bn1: BatchNorm::new(channels[0], device),
            conv2: Conv::new([channels[0], channels[1]], 3, device),
            bn2: BatchNorm::new(channels[1], device),
            fc1: LinearConfig::new(channels[1] * side(h) * side(w), hidden).init(device),
            fc2: LinearConfig::new(hidden, outputs).init(device),
            act: Relu::new(),
            image,
        }
    }

    /// The network with every BatchNorm layer in `mode`.
    pub fn with_bn_mode(mut self, mode: BnMode) -> BnCnn {
        self.bn1.mode = mode;
        self.bn2.mode = mode;
        self
    }

    /// A copy whose BatchNorm running statistics are its own (see
    /// [`BatchNorm::detached`]).
    pub fn detached(&self) -> BnCnn {
        let mut m = self.clone();
        m.bn1 = m.bn1.detached();
        m.bn2 = m.bn2.detached();
        m
    }

    /// Names of the BatchNorm affine parameters (γ and β of each layer).
    pub fn bn_affine_names() -> Vec<String> {
        ["bn1", "bn2"]
            .iter()
            .flat_map(|l| [format!("{l}.weight"), format!("{l}.bias")])
            .collect()
    }

    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        let b = x.dims()[0];
        let [c, h, w] = self.image;
        let x: Tensor<4> = if c == 1 {
            x.reshape([b, h, w, 1])
        } else {
            x.reshape([b, c, h, w]).permute([0, 2, 3, 1])
        };
        let x = relu_max_pool2_nhwc(self.bn1.forward_nhwc(self.conv1.forward_nhwc(x)));
        let x = relu_max_pool2_nhwc(self.bn2.forward_nhwc(self.conv2.forward_nhwc(x)));
        let [_, ph, pw, pc] = x.dims();
        let x: Tensor<2> = x.permute([0, 3, 1, 2]).reshape([b, pc * ph * pw]);
        self.act.forward(self.fc1.forward(x))
    }

    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc2.forward(self.features(x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Distribution;

    #[test]
    fn names_shapes_and_size() {
        let d = Device::flex();
        let m = BnCnn::new([1, 28, 28], [16, 32], 64, 10, &d);
        let names: Vec<(String, Vec<usize>)> = crate::model::params::flat_params(&m)
            .into_iter()
            .map(|(p, _)| (p.name, p.shape))
            .collect();
        let want: Vec<(&str, Vec<usize>)> = vec![
            ("conv1.weight", vec![16, 1, 3, 3]),
            ("conv1.bias", vec![16]),
            ("bn1.weight", vec![16]),
            ("bn1.bias", vec![16]),
            ("bn1.running_mean", vec![16]),
            ("bn1.running_var", vec![16]),
            ("conv2.weight", vec![32, 16, 3, 3]),
            ("conv2.bias", vec![32]),
            ("bn2.weight", vec![32]),
            ("bn2.bias", vec![32]),
            ("bn2.running_mean", vec![32]),
            ("bn2.running_var", vec![32]),
            ("fc1.weight", vec![800, 64]),
            ("fc1.bias", vec![64]),
            ("fc2.weight", vec![64, 10]),
            ("fc2.bias", vec![10]),
        ];
        let want: Vec<(String, Vec<usize>)> =
            want.into_iter().map(|(n, s)| (n.to_string(), s)).collect();
        assert_eq!(names, want);
    }

    /// In batch-statistics mode a batch's output does not depend on the running statistics,
    /// and a constant shift of the whole batch's input leaves the first layer's normalised
    /// activations unchanged; in running mode it does not.
    #[test]
    fn batch_mode_ignores_running_statistics() {
        let d = Device::flex();
        let _rng = crate::backend::seeded(&d, 3);
        let m = BnCnn::new([1, 12, 12], [4, 6], 8, 3, &d);
        let x = Tensor::<2>::random([5, 144], Distribution::Uniform(0.0, 1.0), &d);
        let batch = m.detached().with_bn_mode(BnMode::Batch);
        let a = batch.forward(x.clone());
        batch.bn1.running_mean.update(Tensor::full([4], 3.0, &d));
        let _ = batch.bn1.running_mean.value_sync();
        let b = batch.forward(x.clone());
        assert!((a.clone() - b).abs().max().into_scalar::<f32>() < 1e-6);
        // The detached copy's update did not reach the original (running mean still 0).
        let host = |t: Tensor<1>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        assert_eq!(host(m.bn1.running_mean.value_sync()), vec![0.0; 4]);
        let running = m.with_bn_mode(BnMode::Running);
        let c = running.forward(x);
        assert!((a - c).abs().max().into_scalar::<f32>() > 1e-3);
    }
}
