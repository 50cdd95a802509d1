//! DER and DER++: Dark Experience Replay (Buzzega et al., NeurIPS 2020, arXiv 2004.07211).
//! Card: shared/methods/replay_distillation.md ("DER and DER++").
//!
//! A reservoir buffer keeps (x, y, z) with z the logits the network produced for x in the step
//! it was offered (all output units, never refreshed). DER adds α·MSE(f(x′), z′) on a buffer
//! batch (mean over logits and examples); DER++ adds β·CE(f(x″), y″) on a second batch drawn
//! independently.

use super::parts::buffer::{Buffer, Pending, Sampling, ce_by_task, check_buffer, host2};
use super::parts::buffer_hooks;
use super::{Batch, Ctx, State, Strategy, parse_params};
use crate::model::Net;
use crate::{Result, err};
use burn::prelude::*;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Buffer capacity in examples (200).
    #[serde(default = "super::er::default_buffer")]
    pub buffer: usize,
    /// Weight of the logit MSE (Avalanche and Mammoth at buffer 200: 0.1).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// Weight of the buffer CE, DER++ only (0.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// Examples per buffer batch; default: the stream batch's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_batch: Option<usize>,
}

fn default_alpha() -> f64 {
    0.1
}

pub struct Der {
    plus: bool,
    p: Params,
    beta: f64,
    buf: Buffer,
}

fn make(name: &str, plus: bool, v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params(name, v)?;
    check_buffer(name, p.buffer, p.replay_batch)?;
    if !plus && p.beta.is_some() {
        return Err("strategy der: beta belongs to der++".into());
    }
    let beta = if plus { p.beta.unwrap_or(0.5) } else { 0.0 };
    for (k, w) in [("alpha", p.alpha), ("beta", beta)] {
        if !(w.is_finite() && w >= 0.0) {
            return Err(err!("strategy {name}: {k} must be finite and ≥ 0, got {w}"));
        }
    }
    let p = Params {
        beta: plus.then_some(beta),
        ..p
    };
    Ok(Box::new(Der {
        plus,
        p,
        beta,
        buf: Buffer::new(0, Sampling::Reservoir, 0),
    }))
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    make("der", false, v)
}

pub fn build_plus(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    make("der++", true, v)
}

impl Der {
    /// The buffer is sized when the output width is known (first task).
    fn ensure_buffer(&mut self, width: usize) {
        if self.buf.width != width || self.buf.capacity != self.p.buffer {
            self.buf = Buffer::new(self.p.buffer, Sampling::Reservoir, width);
        }
    }
}

impl Strategy for Der {
    fn name(&self) -> &'static str {
        if self.plus { "der++" } else { "der" }
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn before_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        if self.buf.width != cx.scenario.num_outputs {
            if !self.buf.is_empty() {
                return Err(err!(
                    "strategy {}: the buffer holds logits of {} outputs, the model has {}",
                    self.name(),
                    self.buf.width,
                    cx.scenario.num_outputs
                ));
            }
            self.ensure_buffer(cx.scenario.num_outputs);
        }
        Ok(net)
    }

    fn loss(
        &mut self,
        cx: &Ctx,
        net: &Net,
        batch: &Batch,
        logits: Tensor<2>,
        loss: Tensor<1>,
    ) -> Tensor<1> {
        self.buf.hold(Pending::of(batch, host2(logits.clone())));
        if self.buf.is_empty() {
            return loss;
        }
        let k = self.p.replay_batch.unwrap_or(batch.len());
        let mut total = loss;
        let slots = self.buf.sample(cx.seed, "der-logits", k);
        let (_, x, _) = self.buf.batch(cx, &slots);
        let z = self.buf.logits_of(&slots, cx.device);
        let mse = (net.forward(x) - z).powi_scalar(2).mean();
        total = total + mse.mul_scalar(self.p.alpha);
        if self.plus {
            let slots = self.buf.sample(cx.seed, "der-labels", k);
            let (ids, x, y) = self.buf.batch(cx, &slots);
            total = total + ce_by_task(cx, &ids, net.forward(x), y).mul_scalar(self.beta);
        }
        total
    }

    buffer_hooks!(buf);

    fn load_state(&mut self, state: State) -> Result<()> {
        let width = state
            .json
            .get("buffer")
            .and_then(|b| b.get("width"))
            .and_then(|w| w.as_u64())
            .ok_or_else(|| err!("strategy {}: the state has no buffer", self.name()))?;
        self.ensure_buffer(width as usize);
        self.buf.load("buffer", &state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::lwf::tests::{blobs_ci, t2};

    #[test]
    fn der_stores_insertion_logits_and_its_term_is_the_hand_mse() {
        let s = blobs_ci();
        let d = Device::flex().autodiff();
        let c = s.num_outputs;
        let net = crate::model::ModelConfig::Mlp { hidden: vec![8] }
            .build(s.train.dim, s.train.image, c, &d)
            .expect("net");
        let mut st = build(&serde_json::json!({"buffer": 10, "alpha": 0.3})).expect("der");
        let cx = Ctx {
            scenario: &s,
            task: 0,
            device: &d,
            seed: 4,
            step: 0,
            optim: &crate::optim::OptimConfig::DEFAULT,
            lr: 1e-3,
            steps: 100,
        };
        let net = st.before_task(&cx, net).expect("before");
        let ids: Vec<(usize, usize)> = s.tasks[0].train[..6].iter().map(|&i| (0, i)).collect();
        let (xh, yh) = s.gather(crate::scenario::Part::Train, &ids);
        let batch = Batch {
            x: Tensor::<2>::from_data(TensorData::new(xh.clone(), [6, s.train.dim]), &d),
            y: Tensor::<1, Int>::from_data(
                TensorData::new(yh.iter().map(|&v| v as i64).collect::<Vec<_>>(), [6]),
                &d,
            ),
            ids: ids.clone(),
            x_host: xh,
            y_host: yh,
        };
        // Arbitrary "logits seen at insertion".
        let z: Vec<f32> = (0..6 * c).map(|i| (i as f32 * 0.37).sin()).collect();
        let zero = Tensor::<1>::zeros([1], &d);
        // Empty buffer: no term.
        let l = st.loss(&cx, &net, &batch, t2(z.clone(), 6, c, &d), zero.clone());
        assert!(l.into_scalar::<f32>().abs() < 1e-9);
        let net = st.after_step(&cx, net);
        let saved = st.state();
        let tz = saved
            .tensors
            .iter()
            .find(|t| t.0 == "buffer.logits")
            .expect("logits saved");
        assert_eq!(tz.1, vec![6, c]);
        assert_eq!(tz.2, z, "the buffer keeps the logits of insertion");
        // The term on a replay batch of all six equals α·mean((f(x) − z)²) by hand.
        let mut st2 = build(&serde_json::json!({"buffer": 10, "alpha": 0.3, "replay-batch": 6}))
            .expect("der");
        st2.load_state(saved).expect("load");
        let l = st2
            .loss(&cx, &net, &batch, t2(z.clone(), 6, c, &d), zero)
            .into_scalar::<f32>() as f64;
        let f = crate::strategy::lwf::tests::host(net.forward(batch.x.clone()));
        let mse: f64 = f
            .iter()
            .zip(&z)
            .map(|(a, b)| ((a - b) as f64).powi(2))
            .sum::<f64>()
            / (6 * c) as f64;
        assert!((l - 0.3 * mse).abs() < 1e-5, "{l} vs {}", 0.3 * mse);
        assert!(mse > 1e-3);
    }

    #[test]
    fn invalid_der_params_are_errors() {
        for (name, v) in [
            ("der", serde_json::json!({"beta": 0.5})),
            ("der", serde_json::json!({"alpha": -0.1})),
            ("der", serde_json::json!({"buffer": 0})),
            ("der++", serde_json::json!({"beta": -1.0})),
            ("der++", serde_json::json!({"gamma": 1.0})),
        ] {
            let r = if name == "der" {
                build(&v)
            } else {
                build_plus(&v)
            };
            assert!(r.is_err(), "{name} {v}");
        }
        let p = build_plus(&serde_json::Value::Null)
            .expect("der++")
            .params();
        assert_eq!(
            p,
            serde_json::json!({"buffer": 200, "alpha": 0.1, "beta": 0.5})
        );
        let p = build(&serde_json::Value::Null).expect("der").params();
        assert_eq!(p["beta"], serde_json::Value::Null);
    }
}
