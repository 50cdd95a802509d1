//! ER: Experience Replay (Chaudhry et al., arXiv 1902.10486; CBRS: Chrysakis & Moens, 2020).
//! Card: shared/methods/replay_distillation.md ("Experience Replay").
//!
//! Each step's loss is the CE of the current batch plus the CE of a batch drawn uniformly from
//! the buffer (as many examples as the current batch unless `replay-batch` says otherwise);
//! after the step the current batch is offered to the buffer. Replay starts as soon as the
//! buffer holds anything (also within the first task), as in the reference implementations.

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
        loss + ce_by_task(cx, &ids, net.forward(x), y)
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
            serde_json::json!({"buffer": 200, "sampling": "reservoir"})
        );
        let st =
            build(&serde_json::json!({"sampling": "class-balanced", "buffer": 50})).expect("cbrs");
        assert_eq!(st.params()["sampling"], "class-balanced");
    }
}
