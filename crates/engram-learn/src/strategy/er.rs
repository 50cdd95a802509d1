//! ER: Experience Replay (Chaudhry et al., arXiv 1902.10486; CBRS: Chrysakis & Moens, 2020).
//! Card: shared/methods/replay_distillation.md ("Experience Replay").
//!
//! Each step's loss is the CE of the current batch plus the CE of a batch drawn uniformly from
//! the buffer (as many examples as the current batch unless `replay-batch` says otherwise);
//! after the step the current batch is offered to the buffer. Replay starts as soon as the
//! buffer holds anything (also within the first task), as in the reference implementations.
//!
//! `replay-loss` says how the two batches combine: `sum` (default, as the card and the ER
//! paper write it: CE(batch) + CE(replay), each a mean over its own examples) or `concat`
//! (aimagelab/mammoth's `er`: one CE over the concatenated batch, i.e.
//! (n·CE(batch) + k·CE(replay))/(n + k), half the replay weight at equal sizes). engram's
//! models have no batch statistics, so one forward pass over the concatenation and two
//! passes give the same logits.

use super::parts::buffer::{Buffer, Pending, Sampling, ce_by_task, check_buffer};
use super::parts::buffer_hooks;
use super::{Batch, Ctx, State, Strategy, parse_params};
use crate::Result;
use crate::model::Net;
use burn::prelude::*;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Buffer capacity in examples (DER protocol and Avalanche: 200).
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// `reservoir` or `class-balanced`.
    #[serde(default = "default_sampling")]
    pub sampling: Sampling,
    /// Examples replayed per step; default: the stream batch's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_batch: Option<usize>,
    /// `sum` (default) or `concat` (Mammoth): see the module comment.
    #[serde(default)]
    pub replay_loss: ReplayLoss,
}

/// How ER combines the stream batch's and the replay batch's cross-entropies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReplayLoss {
    /// CE(batch) + CE(replay).
    #[default]
    Sum,
    /// One CE over the concatenated batch.
    Concat,
}

pub(crate) fn default_buffer() -> usize {
    200
}
fn default_sampling() -> Sampling {
    Sampling::Reservoir
}

pub struct Er {
    p: Params,
    buf: Buffer,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("er", v)?;
    check_buffer("er", p.buffer, p.replay_batch)?;
    let buf = Buffer::new(p.buffer, p.sampling, 0);
    Ok(Box::new(Er { p, buf }))
}

impl Strategy for Er {
    fn name(&self) -> &'static str {
        "er"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn loss(
        &mut self,
        cx: &Ctx,
        net: &Net,
        batch: &Batch,
        _logits: Tensor<2>,
        loss: Tensor<1>,
    ) -> Tensor<1> {
        self.buf.hold(Pending::of(batch, Vec::new()));
        if self.buf.is_empty() {
            return loss;
        }
        let k = self.p.replay_batch.unwrap_or(batch.len());
        let slots = self.buf.sample(cx.seed, "er-replay", k);
        let (ids, x, y) = self.buf.batch(cx, &slots);
        let replay = ce_by_task(cx, &ids, net.forward(x), y);
        match self.p.replay_loss {
            ReplayLoss::Sum => loss + replay,
            ReplayLoss::Concat => {
                let (n, k) = (batch.len() as f64, ids.len() as f64);
                (loss.mul_scalar(n) + replay.mul_scalar(k)).div_scalar(n + k)
            }
        }
    }

    buffer_hooks!(buf);

    fn load_state(&mut self, state: State) -> Result<()> {
        self.buf.load("buffer", &state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_er_params_are_errors() {
        for v in [
            serde_json::json!({"buffer": 0}),
            serde_json::json!({"sampling": "herding"}),
            serde_json::json!({"replay-batch": 0}),
            serde_json::json!({"size": 10}),
            serde_json::json!({"buffer": -3}),
        ] {
            assert!(build(&v).is_err(), "{v}");
        }
        let st = build(&serde_json::Value::Null).expect("defaults");
        assert_eq!(
            st.params(),
            serde_json::json!({"buffer": 200, "sampling": "reservoir", "replay-loss": "sum"})
        );
        assert!(build(&serde_json::json!({"replay-loss": "mean"})).is_err());
        // A value of the wrong type names its key.
        for (v, key) in [
            (
                serde_json::json!({"replay-loss": 1, "buffer": 10}),
                "replay-loss",
            ),
            (serde_json::json!({"buffer": 10, "sampling": 3}), "sampling"),
        ] {
            let e = build(&v).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(&format!("strategy er: {key}:")), "{e}");
        }
        let st =
            build(&serde_json::json!({"sampling": "class-balanced", "buffer": 50})).expect("cbrs");
        assert_eq!(st.params()["sampling"], "class-balanced");
    }

    /// Issue 15, convention 9: `concat` is one cross-entropy over the concatenated batch,
    /// `sum` the sum of the two batches' cross-entropies.
    #[test]
    fn replay_loss_sum_and_concat_are_the_two_conventions() {
        use crate::strategy::lwf::tests::blobs_ci;
        use crate::strategy::parts::testutil::batch_at;
        use burn::nn::loss::CrossEntropyLossConfig;
        let s = blobs_ci();
        let d = Device::flex().autodiff();
        let net = crate::model::ModelConfig::Mlp { hidden: vec![8] }
            .build(s.train.dim, s.train.image, s.num_outputs, &d)
            .expect("net");
        let cx = Ctx {
            scenario: &s,
            task: 0,
            device: &d,
            seed: 1,
            step: 0,
            optim: &crate::optim::OptimConfig::DEFAULT,
            lr: 1e-3,
            steps: 100,
        };
        let ce = |b: &Batch| {
            CrossEntropyLossConfig::new()
                .init(&d)
                .forward(net.forward(b.x.clone()), b.y.clone())
        };
        let first = batch_at(&s, 0, 0..6, &d);
        let second = batch_at(&s, 0, 6..10, &d);
        let mut losses = Vec::new();
        for mode in ["sum", "concat"] {
            let v = serde_json::json!({"buffer": 6, "replay-batch": 6, "replay-loss": mode});
            let mut st = build(&v).expect("er");
            // Fill the buffer with the first batch (6 examples, all of them replayed next).
            let l = st.loss(&cx, &net, &first, net.forward(first.x.clone()), ce(&first));
            drop(l);
            st.after_step(&cx, net.clone());
            let got = st
                .loss(
                    &cx,
                    &net,
                    &second,
                    net.forward(second.x.clone()),
                    ce(&second),
                )
                .into_scalar::<f32>();
            losses.push(got);
        }
        let (c1, c2) = (
            ce(&first).into_scalar::<f32>(),
            ce(&second).into_scalar::<f32>(),
        );
        assert!((losses[0] - (c2 + c1)).abs() < 1e-5, "{losses:?}");
        let joint = (4.0 * c2 + 6.0 * c1) / 10.0;
        assert!((losses[1] - joint).abs() < 1e-5, "{losses:?} vs {joint}");
        assert!((losses[0] - losses[1]).abs() > 1e-3);
    }
}
