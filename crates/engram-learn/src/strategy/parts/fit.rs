//! A small supervised training loop on a list of (task, train index) examples, for strategies
//! that train a network themselves outside the trainer's stream (GDumb retrains from scratch
//! on its memory after every task).
//!
//! The same update as the trainer's: its fused optimizer ([`Optimizer`]) with the run's
//! settings (`cx.optim`: kind, learning rate and schedule, decay, clipping), a fresh state per
//! call, and the cross-entropy of [`ce_by_task`] (Task-IL: each example over its own task's
//! classes). Batches are drawn from a seeded shuffle per epoch, keyed by (run seed, `key`,
//! task, epoch), so a resumed run draws exactly what an uninterrupted one would. The trainer's
//! `train.masking` is not applied here.

use super::buffer::ce_by_task;
use crate::model::Net;
use crate::scenario::Part;
use crate::strategy::Ctx;
use crate::train::fused::Optimizer;
use crate::{Result, err};
use burn::optim::GradientsParams;
use burn::prelude::*;
use engram_weights::rng::Rng;

/// How [`fit`] trains: `epochs` passes over the examples in batches of `batch_size`, shuffled
/// by a stream keyed by `key`.
#[derive(Clone, Copy, Debug)]
pub struct Fit<'k> {
    pub epochs: usize,
    pub batch_size: usize,
    pub key: &'k str,
}

/// Trains `net` (on `cx.device`) on the examples `ids` as [`Fit`] says; returns the network.
/// The example order of `ids` matters only through the seeded shuffle: pass them in a
/// canonical order for a result that depends on the set alone.
pub fn fit(cx: &Ctx, mut net: Net, ids: &[(usize, usize)], how: Fit) -> Result<Net> {
    let s = cx.scenario;
    let bs = how.batch_size.max(1);
    let total = how.epochs * ids.len().div_ceil(bs);
    let mut opt = Optimizer::new(cx.optim);
    let mut order = ids.to_vec();
    let mut step = 0;
    for epoch in 0..how.epochs {
        let index = ((cx.task as u64) << 32) | epoch as u64;
        Rng::keyed(cx.seed, how.key, index).shuffle(&mut order);
        for chunk in order.chunks(bs) {
            let (x, y) = s.gather(Part::Train, chunk);
            let n = chunk.len();
            let x = Tensor::<2>::from_data(TensorData::new(x, [n, s.train.dim]), cx.device);
            let y = Tensor::<1, Int>::from_data(
                TensorData::new(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), [n]),
                cx.device,
            );
            let loss = ce_by_task(cx, chunk, net.forward(x), y);
            let value = loss.clone().into_scalar::<f32>();
            if !value.is_finite() {
                return Err(err!(
                    "task {}, {} step {step}: the loss is {value}; lower the learning rate",
                    cx.task,
                    how.key
                ));
            }
            let grads = GradientsParams::from_grads(loss.backward(), &net);
            net = opt.step(cx.optim.lr_at(step, total, epoch), net, grads);
            step += 1;
        }
    }
    Ok(net)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::parts::testutil::{blobs, ctx, device, mlp};

    fn accuracy(net: &Net, s: &crate::scenario::Scenario, ids: &[(usize, usize)]) -> f64 {
        let (x, y) = s.gather(Part::Train, ids);
        let d = Device::flex();
        let x = Tensor::<2>::from_data(TensorData::new(x, [ids.len(), s.train.dim]), &d);
        let pred = net
            .valid()
            .forward(x)
            .argmax(1)
            .into_data()
            .convert::<i64>();
        let pred = pred.try_into_vec::<i64>().expect("pred");
        let hits = pred
            .iter()
            .zip(&y)
            .filter(|(p, y)| **p == **y as i64)
            .count();
        100.0 * hits as f64 / ids.len() as f64
    }

    /// Training lowers the error on the examples it sees, and the same call gives the same
    /// bytes (seeded shuffles, no other randomness).
    #[test]
    fn fit_learns_and_is_deterministic() {
        let s = blobs("class-incremental", 2);
        let (dev, _g) = device();
        let net = mlp(&s, 16, &dev);
        let cx = ctx(&s, 0, &dev);
        let ids: Vec<(usize, usize)> = s.tasks[0].train.iter().map(|&i| (0, i)).collect();
        let before = accuracy(&net, &s, &ids);
        let how = Fit {
            epochs: 5,
            batch_size: 16,
            key: "fit-test",
        };
        let a = fit(&cx, net.clone(), &ids, how).expect("fit");
        let b = fit(&cx, net, &ids, how).expect("fit");
        let after = accuracy(&a, &s, &ids);
        assert!(after > 90.0 && after > before, "{before} -> {after}");
        assert_eq!(
            crate::model::params::named_values(&a),
            crate::model::params::named_values(&b)
        );
    }
}
