//! Batch normalisation over the channels of a channels-last activation, with the three modes
//! test-time adaptation needs (`shared/methods/test_time.md`): training (batch statistics,
//! running statistics updated), evaluation (running statistics) and batch statistics without
//! touching the running ones (BN-adapt, TENT, CoTTA).
//!
//! Parameters have PyTorch's names (`weight`, `bias`, `running_mean`, `running_var`), so a
//! checkpoint of a BN network reads like a PyTorch one and engram's patch command finds its
//! statistics. As in PyTorch: ε = 1e-5, momentum 0.1, the running variance takes the unbiased
//! batch variance (n/(n − 1)), normalisation the biased one.

use burn::module::{Param, RunningState};
use burn::prelude::*;
use burn::tensor::module::{batch_norm, batch_norm_train};

/// Which statistics normalise a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BnMode {
    /// Training on an autodiff device: batch statistics, running statistics updated;
    /// anywhere else: running statistics (PyTorch's `train()` / `eval()` by device).
    #[default]
    Auto,
    /// Always the running statistics (PyTorch's `eval()`).
    Running,
    /// Always the statistics of the batch itself; the running statistics are left alone (what
    /// test-time adapters use: BN-adapt, and CoTTA's `configure_model`).
    Batch,
}

pub const EPSILON: f64 = 1e-5;
pub const MOMENTUM: f64 = 0.1;

#[derive(Module, Debug)]
pub struct BatchNorm {
    /// γ [channels]
    pub weight: Param<Tensor<1>>,
    /// β [channels]
    pub bias: Param<Tensor<1>>,
    pub running_mean: RunningState<Tensor<1>>,
    pub running_var: RunningState<Tensor<1>>,
    #[module(skip)]
    pub mode: BnMode,
}

impl BatchNorm {
    /// γ = 1, β = 0, running mean 0 and variance 1 (PyTorch's initialisation).
    pub fn new(channels: usize, device: &Device) -> BatchNorm {
        BatchNorm {
            weight: Param::from_tensor(Tensor::ones([channels], device)),
            bias: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            mode: BnMode::Auto,
        }
    }

    /// The layer with running statistics of its own. burn's `RunningState` is shared by the
    /// clones of a module (an `Arc`), so that a clone updating its statistics would change
    /// the original's: a network that will run (train or be changed) beside its source is made
    /// from the source this way.
    pub fn detached(self) -> BatchNorm {
        let fresh = |s: &RunningState<Tensor<1>>| RunningState::new(s.value_sync());
        BatchNorm {
            running_mean: fresh(&self.running_mean),
            running_var: fresh(&self.running_var),
            ..self
        }
    }

    /// Normalises `x` [batch, height, width, channels] per channel.
    pub fn forward_nhwc(&self, x: Tensor<4>) -> Tensor<4> {
        let dims = x.dims();
        let flat: Tensor<2> = x.reshape([dims[0] * dims[1] * dims[2], dims[3]]);
        self.forward_rows(flat).reshape(dims)
    }

    /// Normalises `x` [rows, channels] per channel.
    pub fn forward_rows(&self, x: Tensor<2>) -> Tensor<2> {
        let device = x.device();
        let n = x.dims()[0];
        match self.mode {
            BnMode::Running => self.forward_running(x),
            BnMode::Auto if !device.is_autodiff() => self.forward_running(x),
            BnMode::Batch => {
                batch_norm_train(x, self.weight.val(), self.bias.val(), EPSILON).output
            }
            BnMode::Auto => {
                let r = batch_norm_train(x, self.weight.val(), self.bias.val(), EPSILON);
                let unbiased = if n > 1 {
                    n as f64 / (n - 1) as f64
                } else {
                    1.0
                };
                let m = MOMENTUM;
                let mean = self.running_mean.value_sync().to_device(&device);
                let var = self.running_var.value_sync().to_device(&device);
                let mean = mean.mul_scalar(1.0 - m) + r.mean.detach().mul_scalar(m);
                let var = var.mul_scalar(1.0 - m) + r.variance.detach().mul_scalar(m * unbiased);
                self.running_mean.update(mean.detach());
                self.running_var.update(var.detach());
                // Merged at once, so that whatever reads the state next (a checkpoint, an
                // evaluation copy) sees this step's statistics, not the step before's.
                let _ = (
                    self.running_mean.value_sync(),
                    self.running_var.value_sync(),
                );
                r.output
            }
        }
    }

    fn forward_running(&self, x: Tensor<2>) -> Tensor<2> {
        let device = x.device();
        batch_norm(
            x,
            self.weight.val(),
            self.bias.val(),
            self.running_mean.value().to_device(&device),
            self.running_var.value().to_device(&device),
            EPSILON,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(t: Tensor<1>) -> Vec<f32> {
        t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    }

    fn rows(d: &Device) -> (Tensor<2>, Vec<[f32; 2]>) {
        let v: Vec<[f32; 2]> = vec![[1.0, 10.0], [2.0, 20.0], [3.0, 40.0], [6.0, 10.0]];
        let flat: Vec<f32> = v.iter().flatten().copied().collect();
        (Tensor::from_data(TensorData::new(flat, [4, 2]), d), v)
    }

    /// Per-channel (mean, biased variance, unbiased variance) by hand.
    fn stats(v: &[[f32; 2]], c: usize) -> (f64, f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().map(|r| r[c] as f64).sum::<f64>() / n;
        let ss = v.iter().map(|r| (r[c] as f64 - mean).powi(2)).sum::<f64>();
        (mean, ss / n, ss / (n - 1.0))
    }

    #[test]
    fn modes_use_the_statistics_they_should() {
        let d = Device::flex();
        let ad = d.clone().autodiff();
        let (x, v) = rows(&d);
        let mut bn = BatchNorm::new(2, &d);
        bn.weight = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![2.0f32, 1.0], [2]),
            &d,
        ));
        bn.bias = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![0.5f32, -1.0], [2]),
            &d,
        ));
        let set_running = |bn: &BatchNorm, m: [f32; 2], var: [f32; 2]| {
            bn.running_mean
                .update(Tensor::from_data(TensorData::new(m.to_vec(), [2]), &d));
            bn.running_var
                .update(Tensor::from_data(TensorData::new(var.to_vec(), [2]), &d));
            let _ = (bn.running_mean.value_sync(), bn.running_var.value_sync());
        };
        set_running(&bn, [1.0, 5.0], [4.0, 9.0]);
        let out = |bn: &BatchNorm, x: Tensor<2>| -> Vec<f32> {
            bn.forward_rows(x)
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .unwrap()
        };
        let (g, b) = ([2.0f64, 1.0], [0.5f64, -1.0]);
        // Running statistics: (x − μ_r)/√(σ²_r + ε)·γ + β; Auto without autodiff is the same.
        for mode in [BnMode::Running, BnMode::Auto] {
            bn.mode = mode;
            let o = out(&bn, x.clone());
            for (i, r) in v.iter().enumerate() {
                for c in 0..2 {
                    let (m, var) = ([1.0, 5.0][c], [4.0, 9.0][c]);
                    let want = (r[c] as f64 - m) / (var + EPSILON).sqrt() * g[c] + b[c];
                    assert!((o[i * 2 + c] as f64 - want).abs() < 1e-4, "{mode:?}");
                }
            }
        }
        // Batch statistics, running statistics untouched.
        bn.mode = BnMode::Batch;
        let o = out(&bn, x.clone());
        for (i, r) in v.iter().enumerate() {
            for c in 0..2 {
                let (m, var, _) = stats(&v, c);
                let want = (r[c] as f64 - m) / (var + EPSILON).sqrt() * g[c] + b[c];
                assert!((o[i * 2 + c] as f64 - want).abs() < 1e-4);
            }
        }
        assert_eq!(host(bn.running_mean.value_sync()), vec![1.0, 5.0]);
        assert_eq!(host(bn.running_var.value_sync()), vec![4.0, 9.0]);
        // Training (Auto on an autodiff device): batch statistics, and the running ones move
        // by momentum 0.1 towards the batch mean and the unbiased batch variance.
        bn.mode = BnMode::Auto;
        let xa = Tensor::from_data(x.into_data(), &ad);
        let o = out(&bn, xa);
        let (m0, v0, u0) = stats(&v, 0);
        let want = (v[0][0] as f64 - m0) / (v0 + EPSILON).sqrt() * g[0] + b[0];
        assert!((o[0] as f64 - want).abs() < 1e-4);
        let rm = host(bn.running_mean.value_sync());
        let rv = host(bn.running_var.value_sync());
        assert!((rm[0] as f64 - (0.9 * 1.0 + 0.1 * m0)).abs() < 1e-5);
        let (_, _, u1) = stats(&v, 1);
        assert!((rv[0] as f64 - (0.9 * 4.0 + 0.1 * u0)).abs() < 1e-4);
        assert!((rv[1] as f64 - (0.9 * 9.0 + 0.1 * u1)).abs() < 1e-3);
    }

    #[test]
    fn nhwc_normalises_each_channel_over_batch_and_positions() {
        let d = Device::flex();
        let mut bn = BatchNorm::new(3, &d);
        bn.mode = BnMode::Batch;
        let vals: Vec<f32> = (0..2 * 2 * 2 * 3).map(|i| ((i * 7) % 11) as f32).collect();
        let x: Tensor<4> = Tensor::from_data(TensorData::new(vals.clone(), [2, 2, 2, 3]), &d);
        let o = bn
            .forward_nhwc(x)
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap();
        for c in 0..3 {
            let ch: Vec<f64> = vals.iter().skip(c).step_by(3).map(|&v| v as f64).collect();
            let m = ch.iter().sum::<f64>() / 8.0;
            let var = ch.iter().map(|v| (v - m).powi(2)).sum::<f64>() / 8.0;
            for (k, &xv) in ch.iter().enumerate() {
                let want = (xv - m) / (var + EPSILON).sqrt();
                assert!((o[k * 3 + c] as f64 - want).abs() < 1e-4);
            }
        }
    }
}
