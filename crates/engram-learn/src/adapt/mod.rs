//! Test-time adapters (`shared/methods/test_time.md`): a deployed model meets an unlabeled,
//! shifting stream and updates itself batch by batch.
//!
//! The contract, beside the training strategies' (DESIGN.md): an [`Adapter`] starts from the
//! source model ([`Adapter::reset`]) and, given one unlabeled batch, updates itself and
//! returns its predictions ([`Adapter::step`]). The stream (which images, in which order, in
//! batches of which size) and the error it makes belong to [`stream`], never to an adapter.
//!
//! Adding an adapter is one file here and one line in [`REGISTRY`].

pub mod augment;
pub mod bn_adapt;
pub mod cotta;
pub mod run;
pub mod source;
pub mod stream;
pub mod tent;

use crate::model::Net;
use crate::model::batchnorm::BnMode;
use crate::{Result, err};
use burn::prelude::*;

/// A test-time adapter.
pub trait Adapter: Send {
    fn name(&self) -> &'static str;

    /// The adapter's parameters with their defaults, as JSON (recorded in results).
    fn params(&self) -> serde_json::Value;

    /// Starts (again) from the source model.
    fn reset(&mut self, source: &Source) -> Result<()>;

    /// Adapts on the unlabeled batch `x` (`n` examples of the source's input width, host
    /// values) and returns the logits of its predictions, `n` × classes.
    fn step(&mut self, x: &[f32], n: usize) -> Result<Vec<f32>>;

    /// Whether the adapter works through BatchNorm layers (refused on models without).
    fn needs_batchnorm(&self) -> bool {
        false
    }

    /// The adapter's own counters since the last reset, as JSON (`null`: none).
    fn stats(&self) -> serde_json::Value {
        serde_json::Value::Null
    }
}

/// The source model and what an adapter may know about it.
#[derive(Clone, Debug)]
pub struct Source {
    /// The trained network, on an autodiff device (as the trainer leaves it).
    pub net: Net,
    /// Values per example.
    pub dim: usize,
    /// (channels, height, width) of the images.
    pub image: Option<(usize, usize, usize)>,
    pub classes: usize,
    /// The 5 % quantile of the source's confidence (max softmax, running statistics) on clean
    /// held-out data: CoTTA's threshold for a new data set is this minus 0.05
    /// (qinenergy/cotta#16). `None` when no held-out data were given.
    pub confidence_q05: Option<f64>,
    /// Seeds the adapters' own draws (augmentations, restore masks).
    pub seed: u64,
}

pub type Build = fn(&serde_json::Value) -> Result<Box<dyn Adapter>>;

/// Every adapter: name, one-line summary, builder.
pub const REGISTRY: &[(&str, &str, Build)] = &[
    (
        "source",
        "no adaptation: the source model with its running BatchNorm statistics",
        source::build,
    ),
    (
        "bn-adapt",
        "BatchNorm statistics of each test batch instead of the running ones",
        bn_adapt::build,
    ),
    (
        "tent",
        "entropy minimisation on the BatchNorm affine parameters, continual (Wang et al. 2021)",
        tent::build,
    ),
    (
        "cotta",
        "EMA teacher, augmentation-averaged pseudo-labels gated by an anchor, stochastic \
         restore (Wang et al. 2022)",
        cotta::build,
    ),
];

pub fn build(name: &str, params: &serde_json::Value) -> Result<Box<dyn Adapter>> {
    REGISTRY
        .iter()
        .find(|(n, _, _)| *n == name)
        .map(|(_, _, b)| b(params))
        .unwrap_or_else(|| {
            Err(err!(
                "unknown adapter '{name}'; available: {}",
                REGISTRY.iter().map(|r| r.0).collect::<Vec<_>>().join(", ")
            ))
        })
}

/// Refuses a source without BatchNorm for an adapter that works through it.
pub(crate) fn need_batchnorm(name: &str, source: &Source) -> Result<()> {
    if source.net.has_batchnorm() {
        Ok(())
    } else {
        Err(err!(
            "adapter {name} adapts BatchNorm layers and the model has none; use model kind \
             \"bn-cnn\""
        ))
    }
}

/// A copy of the source network without autodiff, its BatchNorm layers in `mode`.
pub(crate) fn frozen(source: &Source, mode: BnMode) -> Net {
    source.net.valid().with_bn_mode(mode)
}

/// The copy of the source an adapter trains: on the source's autodiff device, BatchNorm on
/// batch statistics, sharing no state with the source.
pub(crate) fn trainable(name: &str, source: &Source) -> Result<(Net, Device)> {
    let device = source.net.devices().first().cloned().unwrap_or_default();
    if !device.is_autodiff() {
        return Err(err!(
            "adapter {name} trains the model: the source must be on an autodiff device"
        ));
    }
    Ok((source.net.detached().with_bn_mode(BnMode::Batch), device))
}

/// The default learning rate of the adapters that train (the reference's Adam at 1e-3).
pub(crate) fn default_lr() -> f64 {
    1e-3
}

/// PyTorch's Adam as the references use it: β (0.9, 0.999), eps 1e-8, no weight decay.
pub(crate) fn adam(lr: f64) -> crate::optim::OptimConfig {
    crate::optim::OptimConfig {
        eps: 1e-8,
        ..crate::optim::OptimConfig::new(crate::optim::OptimKind::Adam, lr)
    }
}

pub(crate) fn check_lr(name: &str, lr: f64) -> Result<()> {
    if !(lr.is_finite() && lr > 0.0) {
        return Err(err!("adapter {name}: lr = {lr} must be a positive number"));
    }
    Ok(())
}

/// The host batch as a tensor on `device`.
pub(crate) fn input(x: &[f32], n: usize, dim: usize, device: &Device) -> Result<Tensor<2>> {
    if x.len() != n * dim {
        return Err(err!(
            "a batch of {n} examples of {dim} values has {} values",
            x.len()
        ));
    }
    Ok(Tensor::<2>::from_data(
        TensorData::new(x.to_vec(), [n, dim]),
        device,
    ))
}

pub(crate) use crate::backend::host;

/// Mean over the batch of the entropy-like cross term −Σ_k p_k · log softmax(z)_k, with `p`
/// a probability tensor (detached by the caller where it should be).
pub(crate) fn soft_cross_entropy(p: Tensor<2>, z: Tensor<2>) -> Tensor<1> {
    let logp = burn::tensor::activation::log_softmax(z, 1);
    (p * logp).sum_dim(1).mean().neg()
}

/// Names of the parameters that are weights or biases (BatchNorm's γ and β included; the
/// running statistics are not).
pub(crate) fn is_weight_or_bias(name: &str) -> bool {
    name.ends_with(".weight") || name.ends_with(".bias")
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;
    use crate::model::ModelConfig;

    /// A small untrained BN-CNN source on 12×12 images with 3 classes.
    pub fn source(seed: u64) -> Source {
        let d = Device::flex();
        let _rng = crate::backend::seeded(&d, seed);
        let cfg = ModelConfig::BnCnn {
            channels: [4, 6],
            hidden: 8,
        };
        let net = match cfg.build(144, Some((1, 12, 12)), 3, &d.autodiff()) {
            Ok(n) => n,
            Err(e) => panic!("{e}"),
        };
        Source {
            net,
            dim: 144,
            image: Some((1, 12, 12)),
            classes: 3,
            confidence_q05: Some(0.6),
            seed,
        }
    }

    /// `n` images of 144 values in [0, 1].
    pub fn batch(n: usize, seed: u64) -> Vec<f32> {
        let mut r = engram_weights::rng::Rng::new(seed);
        (0..n * 144).map(|_| r.uniform()).collect()
    }
}
