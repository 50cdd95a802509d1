//! IDER: IDempotent Experience Replay (Liu, Li et al., ICLR 2026, arXiv 2603.00624).
//! Card: shared/methods/replay_distillation.md ("IDER (idempotent replay)").
//!
//! The model takes its own output as an extra input: f(x, y), y ∈ ℝ^C entering through a
//! feedback layer (model/: `fb`, asked for through [`Strategy::feedback_input`]); inference and
//! the trainer's evaluation use one pass with the uniform vector u. Per step:
//! - idempotent CE: y₁ = f(x, u), y₂ = f(x, softmax(y₁)), ½[CE(y₁) + CE(y₂)] on the batch;
//! - the same on a buffer batch, weight c;
//! - after the first task, idempotence distillation MSE(y₁, f_old(x, softmax(y₁))) with f_old
//!   frozen at the end of the previous task: weight b on the batch, a on the buffer batch.
//!
//! Gradients flow through softmax(y₁) (into the second pass and into f_old's input) unless
//! `detach-feedback` is set; the choice is recorded in the parameters. The buffer is a
//! class-balanced reservoir by default, as in the reference runs.

use super::parts::buffer::{Buffer, Pending, Sampling, ce_by_task, check_buffer};
use super::parts::buffer_hooks;
use super::{Batch, Ctx, State, Strategy, parse_params};
use crate::model::Net;
use crate::{Result, err};
use burn::module::Module;
use burn::prelude::*;
use burn::tensor::activation::softmax;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Buffer capacity in examples (200).
    #[serde(default = "super::er::default_buffer")]
    pub buffer: usize,
    /// `class-balanced` (reference) or `reservoir`.
    #[serde(default = "default_sampling")]
    pub sampling: Sampling,
    /// Idempotence distillation weight on buffer samples (seq-cifar10: 0.05).
    #[serde(default = "default_ab")]
    pub a: f64,
    /// Idempotence distillation weight on the current batch (seq-cifar10: 0.05).
    #[serde(default = "default_ab")]
    pub b: f64,
    /// Weight of the two-pass CE on buffer samples (0.5).
    #[serde(default = "default_c")]
    pub c: f64,
    /// Stop gradients at softmax(y₁) (engram default: they flow).
    #[serde(default)]
    pub detach_feedback: bool,
    /// Examples per buffer batch; default: the stream batch's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_batch: Option<usize>,
}

fn default_sampling() -> Sampling {
    Sampling::ClassBalanced
}
fn default_ab() -> f64 {
    0.05
}
fn default_c() -> f64 {
    0.5
}

pub struct Ider {
    p: Params,
    buf: Buffer,
    /// f_old: the model at the end of the previous task, parameters frozen (its input keeps
    /// the graph so that gradients can flow through the feedback).
    teacher: Option<Net>,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("ider", v)?;
    check_buffer("ider", p.buffer, p.replay_batch)?;
    for (k, w) in [("a", p.a), ("b", p.b), ("c", p.c)] {
        if !(w.is_finite() && w >= 0.0) {
            return Err(err!("strategy ider: {k} must be finite and ≥ 0, got {w}"));
        }
    }
    let buf = Buffer::new(p.buffer, p.sampling, 0);
    Ok(Box::new(Ider {
        p,
        buf,
        teacher: None,
    }))
}

impl Ider {
    fn feedback(&self, y1: Tensor<2>) -> Tensor<2> {
        let f = softmax(y1, 1);
        if self.p.detach_feedback {
            f.detach()
        } else {
            f
        }
    }

    /// ½[CE(y₁) + CE(y₂)] with y₂ = f(x, softmax(y₁)), given CE(y₁) (`ids`: the examples'
    /// tasks, for the Task-IL mask).
    fn two_pass_ce(
        &self,
        cx: &Ctx,
        net: &Net,
        (ids, x, y): (&[(usize, usize)], Tensor<2>, Tensor<1, Int>),
        y1: Tensor<2>,
        ce1: Tensor<1>,
    ) -> Tensor<1> {
        let y2 = net.forward_fb(x, Some(self.feedback(y1)));
        (ce1 + ce_by_task(cx, ids, y2, y)).mul_scalar(0.5)
    }

    /// MSE(y₁, f_old(x, softmax(y₁))).
    fn distill(&self, teacher: &Net, x: Tensor<2>, y1: Tensor<2>) -> Tensor<1> {
        let old = teacher.forward_fb(x, Some(self.feedback(y1.clone())));
        (y1 - old).powi_scalar(2).mean()
    }
}

impl Strategy for Ider {
    fn name(&self) -> &'static str {
        "ider"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn feedback_input(&self) -> bool {
        true
    }

    fn before_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        if !net.has_feedback() {
            return Err(
                "strategy ider needs a model with a feedback input (the trainer builds it when \
                 the strategy asks)"
                    .into(),
            );
        }
        self.teacher = (cx.task > 0).then(|| net.clone().no_grad());
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
        self.buf.hold(Pending::of(batch, Vec::new()));
        let mut total = self.two_pass_ce(
            cx,
            net,
            (&batch.ids, batch.x.clone(), batch.y.clone()),
            logits.clone(),
            loss,
        );
        if let Some(t) = &self.teacher
            && self.p.b > 0.0
        {
            total = total
                + self
                    .distill(t, batch.x.clone(), logits)
                    .mul_scalar(self.p.b);
        }
        if self.buf.is_empty() {
            return total;
        }
        let k = self.p.replay_batch.unwrap_or(batch.len());
        let slots = self.buf.sample(cx.seed, "ider-replay", k);
        let (ids, x, y) = self.buf.batch(cx, &slots);
        let y1 = net.forward(x.clone());
        let ce1 = ce_by_task(cx, &ids, y1.clone(), y.clone());
        let ce = self.two_pass_ce(cx, net, (&ids, x.clone(), y), y1.clone(), ce1);
        total = total + ce.mul_scalar(self.p.c);
        if let Some(t) = &self.teacher
            && self.p.a > 0.0
        {
            total = total + self.distill(t, x, y1).mul_scalar(self.p.a);
        }
        total
    }

    buffer_hooks!(buf);

    fn load_state(&mut self, state: State) -> Result<()> {
        self.buf.load("buffer", &state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::load_params;
    use crate::strategy::lwf::tests::{blobs_ci, host};
    use burn::nn::loss::CrossEntropyLossConfig;

    #[test]
    fn the_second_pass_consumes_the_first_pass_output() {
        let s = blobs_ci();
        let d = Device::flex();
        let _rng = crate::backend::seeded(&d, 9);
        let d = d.autodiff();
        let c = s.num_outputs;
        let net = crate::model::ModelConfig::Mlp { hidden: vec![8] }
            .build_with_feedback(s.train.dim, s.train.image, c, true, &d)
            .expect("net");
        // A strong feedback path, so that the input it gets matters.
        let mut vals = crate::model::params::named_values(&net);
        for v in vals.get_mut("fb.weight").expect("fb").iter_mut() {
            *v *= 20.0;
        }
        let net = load_params(net, &vals).expect("load");
        let mut st = build(&serde_json::Value::Null).expect("ider");
        let cx = Ctx {
            scenario: &s,
            task: 0,
            device: &d,
            seed: 1,
            step: 0,
            optim: &crate::optim::OptimConfig::DEFAULT,
            lr: 1e-3,
        };
        let net = st.before_task(&cx, net).expect("before");
        let ids: Vec<(usize, usize)> = s.tasks[0].train[..5].iter().map(|&i| (0, i)).collect();
        let (xh, yh) = s.gather(crate::scenario::Part::Train, &ids);
        let x = Tensor::<2>::from_data(TensorData::new(xh.clone(), [5, s.train.dim]), &d);
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(yh.iter().map(|&v| v as i64).collect::<Vec<_>>(), [5]),
            &d,
        );
        let batch = Batch {
            x: x.clone(),
            y: y.clone(),
            ids,
            x_host: xh,
            y_host: yh,
        };
        // The plain forward is the single pass with the uniform vector.
        let u = Tensor::<2>::full([5, c], 1.0 / c as f32, &d);
        let y1 = net.forward(x.clone());
        let y1u = net.forward_fb(x.clone(), Some(u.clone()));
        assert_eq!(host(y1.clone()), host(y1u));
        let ce = |z: Tensor<2>| {
            CrossEntropyLossConfig::new()
                .init(&d)
                .forward(z, y.clone())
                .into_scalar::<f32>()
        };
        let ce1 = CrossEntropyLossConfig::new()
            .init(&d)
            .forward(y1.clone(), y.clone());
        let got = st
            .loss(&cx, &net, &batch, y1.clone(), ce1)
            .into_scalar::<f32>();
        // By hand: the second pass fed softmax(y₁).
        let sm = softmax(Tensor::<2>::from_data(y1.clone().into_data(), &d), 1);
        let y2 = net.forward_fb(x.clone(), Some(sm));
        let want = 0.5 * (ce(y1.clone()) + ce(y2));
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        // Feeding u again instead would give another value.
        let wrong = 0.5 * (ce(y1.clone()) + ce(net.forward_fb(x, Some(u))));
        assert!((wrong - want).abs() > 1e-3, "{wrong} vs {want}");
        // Without the feedback input the strategy refuses to run.
        let plain = crate::model::ModelConfig::Mlp { hidden: vec![8] }
            .build(s.train.dim, s.train.image, c, &d)
            .expect("net");
        assert!(st.before_task(&cx, plain).is_err());
        assert!(st.feedback_input());
    }

    #[test]
    fn invalid_ider_params_are_errors_and_state_round_trips() {
        for v in [
            serde_json::json!({"a": -1.0}),
            serde_json::json!({"c": f64::NAN}),
            serde_json::json!({"buffer": 0}),
            serde_json::json!({"sampling": "fifo"}),
            serde_json::json!({"detach": true}),
        ] {
            assert!(build(&v).is_err(), "{v}");
        }
        let st = build(&serde_json::Value::Null).expect("defaults");
        assert_eq!(
            st.params(),
            serde_json::json!({"buffer": 200, "sampling": "class-balanced", "a": 0.05,
                "b": 0.05, "c": 0.5, "detach-feedback": false})
        );
        let mut a = Ider {
            p: parse_params("ider", &serde_json::json!({"buffer": 4})).expect("p"),
            buf: Buffer::new(4, Sampling::ClassBalanced, 0),
            teacher: None,
        };
        a.buf.offer_all(
            3,
            Pending {
                ids: (0..9).map(|i| (0, i)).collect(),
                labels: (0..9).map(|i| i % 2).collect(),
                logits: Vec::new(),
                dim: 64,
            },
        );
        let mut b = build(&serde_json::json!({"buffer": 4})).expect("b");
        b.load_state(a.state()).expect("load");
        assert_eq!(b.state().json, a.state().json);
        assert_eq!(b.state_bytes(), a.state_bytes());
        assert!(b.load_state(State::default()).is_err());
    }
}
