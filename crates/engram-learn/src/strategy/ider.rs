//! IDER: IDempotent Experience Replay (Liu, Li et al., ICLR 2026, arXiv 2603.00624).
//! Card: shared/methods/replay_distillation.md ("IDER (idempotent replay)").
//!
//! The model takes its own output as an extra input: f(x, y), y ∈ ℝ^C entering through a
//! feedback layer (model/: `fb`, asked for through [`Strategy::feedback_input`]); inference and
//! the trainer's evaluation use one pass with the uniform vector u. Per step:
//! - idempotent CE: y₁ = f(x, u), y₂ = f(x, softmax(y₁)), ½[CE(y₁) + CE(y₂)] on the batch;
//! - after the first task, idempotence distillation b·MSE(y₁, f_old(x, softmax(y₁))) on the
//!   batch, with f_old frozen at the end of the previous task;
//! - on a buffer batch B₁: c·[CE(y₁′) + CE(y₂′)], the same two passes **without** the ½ (the
//!   reference's `ider.py`; the published c assume the unhalved sum);
//! - after the first task, on a **second, independent** buffer batch B₂:
//!   a·MSE(y₁″, f_old(x″, softmax(y₁″))).
//!
//! Gradients flow through softmax(y₁) (into the second pass and into f_old's input) unless
//! `detach-feedback` is set; the choice is recorded in the parameters. The buffer is the
//! reference's `reservoir_balanced` by default (reservoir admission, eviction from the
//! largest class; [`Sampling::ReservoirBalanced`]); `class-balanced` (CBRS) and `reservoir`
//! are options.
//!
//! Before issue 15 engram halved the replay term, reused B₁ for the a-term and kept a CBRS
//! buffer; those are not kept as options (none is the reference, and none was found useful).

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
    /// `reservoir-balanced` (reference, default), `class-balanced` (CBRS) or `reservoir`.
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
    Sampling::ReservoirBalanced
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

    /// CE(y₁) + CE(y₂) with y₂ = f(x, softmax(y₁)), given CE(y₁) (`ids`: the examples'
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
        ce1 + ce_by_task(cx, ids, y2, y)
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
        let mut total = self
            .two_pass_ce(
                cx,
                net,
                (&batch.ids, batch.x.clone(), batch.y.clone()),
                logits.clone(),
                loss,
            )
            .mul_scalar(0.5);
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
        let ce = self.two_pass_ce(cx, net, (&ids, x, y), y1, ce1);
        total = total + ce.mul_scalar(self.p.c);
        if let Some(t) = &self.teacher
            && self.p.a > 0.0
        {
            // B₂: a draw of its own, independent of B₁.
            let slots = self.buf.sample(cx.seed, "ider-distill", k);
            let (_, x, _) = self.buf.batch(cx, &slots);
            let y1 = net.forward(x.clone());
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
            steps: 100,
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

    /// Issue 15, defect 2: the replay term is c·[CE(y₁′) + CE(y₂′)] (no ½) on B₁, and the
    /// a-term reads a second, independent buffer batch B₂.
    #[test]
    fn replay_term_is_unhalved_and_distillation_draws_its_own_batch() {
        use crate::strategy::parts::testutil::batch_at;
        let s = blobs_ci();
        let d = Device::flex();
        let _rng = crate::backend::seeded(&d, 4);
        let d = d.autodiff();
        let c = s.num_outputs;
        let net = crate::model::ModelConfig::Mlp { hidden: vec![8] }
            .build_with_feedback(s.train.dim, s.train.image, c, true, &d)
            .expect("net");
        let cx = |task| Ctx {
            scenario: &s,
            task,
            device: &d,
            seed: 1,
            step: 0,
            optim: &crate::optim::OptimConfig::DEFAULT,
            lr: 1e-3,
            steps: 100,
        };
        let ce =
            |z: Tensor<2>, y: Tensor<1, Int>| CrossEntropyLossConfig::new().init(&d).forward(z, y);
        let f = |t: Tensor<1>| t.into_scalar::<f32>();
        let fill = batch_at(&s, 0, 0..12, &d);
        let cur = batch_at(&s, 0, 12..16, &d);
        // c only: the total is ½·(current two-pass CE) + c·(replay two-pass CE).
        let mut st = Ider {
            p: parse_params(
                "ider",
                &serde_json::json!({"buffer": 12, "a": 0.0, "b": 0.0,
                "c": 0.7, "replay-batch": 12}),
            )
            .expect("p"),
            buf: Buffer::new(12, Sampling::ReservoirBalanced, 0),
            teacher: None,
        };
        let y1 = net.forward(fill.x.clone());
        drop(st.loss(&cx(0), &net, &fill, y1.clone(), ce(y1, fill.y.clone())));
        st.buf.flush(1);
        let y1 = net.forward(cur.x.clone());
        let got = f(st.loss(
            &cx(0),
            &net,
            &cur,
            y1.clone(),
            ce(y1.clone(), cur.y.clone()),
        ));
        let two = |b: &Batch| {
            let y1 = net.forward(b.x.clone());
            let y2 = net.forward_fb(b.x.clone(), Some(softmax(y1.clone(), 1)));
            f(ce(y1, b.y.clone())) + f(ce(y2, b.y.clone()))
        };
        let want = 0.5 * two(&cur) + 0.7 * two(&fill);
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        // a only, after the first task: MSE on B₂, drawn after and apart from B₁.
        st.p = parse_params(
            "ider",
            &serde_json::json!({"buffer": 12, "a": 2.0, "b": 0.0,
            "c": 0.0, "replay-batch": 4}),
        )
        .expect("p");
        st.teacher = Some(net.clone().no_grad());
        let mut probe = st.buf.clone();
        let b1 = probe.sample(1, "ider-replay", 4);
        let b2 = probe.sample(1, "ider-distill", 4);
        assert_ne!(b1, b2);
        let got = f(st.loss(&cx(1), &net, &cur, y1.clone(), ce(y1, cur.y.clone())));
        assert_eq!(st.buf.draws, probe.draws);
        let (_, x2, _) = st.buf.batch(&cx(1), &b2);
        let teacher = st.teacher.as_ref().expect("teacher");
        let mse = f(st.distill(teacher, x2.clone(), net.forward(x2)));
        let want = 0.5 * two(&cur) + 2.0 * mse;
        assert!((got - want).abs() < 1e-4, "{got} vs {want}");
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
            serde_json::json!({"buffer": 200, "sampling": "reservoir-balanced", "a": 0.05,
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
