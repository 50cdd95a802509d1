//! ER-ACE: Experience Replay with Asymmetric Cross-Entropy (Caccia et al., ICLR 2022, arXiv
//! 2104.05025, "New Insights on Reducing Abrupt Representation Change in Online Continual
//! Learning"). Card: shared/methods/replay_distillation.md ("Experience Replay").
//!
//! ER's two terms with an asymmetry: the incoming batch's cross-entropy sees only the logits
//! of the classes present in that batch (the others get −1e9 before the softmax, so the new
//! classes' examples do not push old classes' logits down), and the replay batch's CE, drawn
//! from a reservoir buffer, sees every logit. The loss is CE_masked(batch) + CE(replay), each
//! a mean over its own examples; the trainer's CE is replaced. As in `er`, the replay batch
//! has the stream batch's size unless `replay-batch` says otherwise, replay starts as soon as
//! the buffer holds anything (the authors' code runs ER-ACE task-free), and the batch is
//! offered to the buffer after the step. In Task-IL both terms also keep each example to its
//! own task's classes.
//!
//! `mask` says which logits the incoming CE keeps: `present` (default, the paper's equation:
//! the classes in the incoming batch) or `present-and-unseen` (pclucas14/AML
//! `methods/er_ace.py` and Mammoth's `er_ace`: also every class not yet seen in the stream,
//! which the code writes as the indices from the largest seen class on; engram tracks the set,
//! so that a scenario's class order does not matter). Mammoth also masks and replays only
//! from the second task on.

use super::parts::buffer::{Buffer, Pending, Sampling, ce_by_task, check_buffer};
use super::{Batch, Ctx, State, Strategy, parse_params};
use crate::model::Net;
use crate::scenario::EvalMode;
use crate::{Result, err};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use std::collections::BTreeSet;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Buffer capacity in examples (200, as `er`), reservoir sampling.
    #[serde(default = "super::er::default_buffer")]
    pub buffer: usize,
    /// Examples replayed per step; default: the stream batch's size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_batch: Option<usize>,
    /// `present` (default) or `present-and-unseen`: see the module comment.
    #[serde(default)]
    pub mask: Mask,
}

/// The logits the incoming batch's cross-entropy keeps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mask {
    /// The classes present in the incoming batch (the paper).
    #[default]
    Present,
    /// Those and every class not yet seen in the stream (the authors' code, Mammoth).
    PresentAndUnseen,
}

pub struct ErAce {
    p: Params,
    buf: Buffer,
    /// Classes seen in the stream so far (for `present-and-unseen`).
    seen: BTreeSet<u32>,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("er-ace", v)?;
    check_buffer("er-ace", p.buffer, p.replay_batch)?;
    let buf = Buffer::new(p.buffer, Sampling::Reservoir, 0);
    Ok(Box::new(ErAce {
        p,
        buf,
        seen: BTreeSet::new(),
    }))
}

/// Cross-entropy of the incoming batch over the classes `keep` (and, in Task-IL, each
/// example's own task's classes): the other logits get −1e9 before the softmax.
pub fn masked_ce(cx: &Ctx, batch: &Batch, logits: Tensor<2>, keep: &[bool]) -> Tensor<1> {
    let s = cx.scenario;
    let (n, c) = (batch.len(), s.num_outputs);
    let mut pen = vec![0f32; n * c];
    for (r, &(t, _)) in batch.ids.iter().enumerate() {
        let own: Option<&Vec<u32>> = (s.eval == EvalMode::TaskIl).then(|| &s.tasks[t].classes);
        for (k, v) in pen[r * c..(r + 1) * c].iter_mut().enumerate() {
            let in_task = own.is_none_or(|o| o.contains(&(k as u32)));
            if !(keep.get(k).copied().unwrap_or(false) && in_task) {
                *v = -1e9;
            }
        }
    }
    let pen = Tensor::<2>::from_data(TensorData::new(pen, [n, c]), cx.device);
    CrossEntropyLossConfig::new()
        .init(cx.device)
        .forward(logits + pen, batch.y.clone())
}

impl Strategy for ErAce {
    fn name(&self) -> &'static str {
        "er-ace"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn loss(
        &mut self,
        cx: &Ctx,
        net: &Net,
        batch: &Batch,
        logits: Tensor<2>,
        _loss: Tensor<1>,
    ) -> Tensor<1> {
        let c = cx.scenario.num_outputs;
        let mut keep = vec![false; c];
        for &y in &batch.y_host {
            if let Some(k) = keep.get_mut(y as usize) {
                *k = true;
            }
        }
        self.seen.extend(batch.y_host.iter().copied());
        if self.p.mask == Mask::PresentAndUnseen {
            for (k, v) in keep.iter_mut().enumerate() {
                *v |= !self.seen.contains(&(k as u32));
            }
        }
        let loss = masked_ce(cx, batch, logits, &keep);
        self.buf.hold(Pending::of(batch, Vec::new()));
        if self.buf.is_empty() {
            return loss;
        }
        let k = self.p.replay_batch.unwrap_or(batch.len());
        let slots = self.buf.sample(cx.seed, "er-ace-replay", k);
        let (ids, x, y) = self.buf.batch(cx, &slots);
        loss + ce_by_task(cx, &ids, net.forward(x), y)
    }

    fn after_step(&mut self, cx: &Ctx, net: Net) -> Net {
        self.buf.flush(cx.seed);
        net
    }

    fn state_bytes(&self) -> u64 {
        self.buf.bytes()
    }

    fn state(&self) -> State {
        let mut s = self.buf.state();
        if let serde_json::Value::Object(m) = &mut s.json {
            m.insert("seen-classes".into(), serde_json::json!(self.seen));
        }
        s
    }

    fn load_state(&mut self, state: State) -> Result<()> {
        self.buf.load("buffer", &state)?;
        self.seen = match state.json.get("seen-classes") {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| err!("strategy er-ace: state, seen-classes: {e}"))?,
            None => BTreeSet::new(),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::parts::testutil::{batch_at, blobs, ctx, device, mlp};
    use serde_json::json;

    fn host(t: Tensor<2>) -> Vec<f32> {
        t.into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .expect("host")
    }

    /// Three examples from each end of a task's training list (blobs lists them by class).
    fn mixed(s: &crate::scenario::Scenario, task: usize, dev: &Device) -> Batch {
        let n = s.tasks[task].train.len();
        let (a, z) = (
            batch_at(s, task, 0..3, dev),
            batch_at(s, task, n - 3..n, dev),
        );
        let y_host: Vec<u32> = a.y_host.iter().chain(&z.y_host).copied().collect();
        Batch {
            x: Tensor::cat(vec![a.x, z.x], 0),
            y: Tensor::cat(vec![a.y, z.y], 0),
            ids: a.ids.iter().chain(&z.ids).copied().collect(),
            x_host: a.x_host.iter().chain(&z.x_host).copied().collect(),
            y_host,
        }
    }

    /// A batch of two classes: the incoming loss equals the masked CE by hand
    /// (log-sum-exp over the kept classes only), and the logits of the masked classes
    /// get exactly zero gradient. `present-and-unseen` keeps unseen classes in the softmax.
    #[test]
    fn incoming_loss_is_the_hand_masked_ce() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let net = mlp(&s, 8, &dev);
        let cx = ctx(&s, 1, &dev);
        let c = s.num_outputs;
        let b = mixed(&s, 1, &dev);
        let present: BTreeSet<u32> = b.y_host.iter().copied().collect();
        assert_eq!(present.len(), 2, "{:?}", b.y_host);
        let z: Vec<f32> = (0..6 * c).map(|i| (i as f32 * 0.71).sin() * 2.0).collect();
        let hand = |keep: &dyn Fn(usize) -> bool| -> f64 {
            (0..6)
                .map(|r| {
                    let row = &z[r * c..(r + 1) * c];
                    let lse = (0..c)
                        .filter(|&k| keep(k))
                        .map(|k| (row[k] as f64).exp())
                        .sum::<f64>()
                        .ln();
                    lse - row[b.y_host[r] as usize] as f64
                })
                .sum::<f64>()
                / 6.0
        };
        // After a batch of task 0: `present` keeps task 1's classes, `present-and-unseen` also
        // the classes of neither task (task 0's are seen and absent).
        let first = mixed(&s, 0, &dev);
        let seen: BTreeSet<u32> = present.iter().chain(&first.y_host).copied().collect();
        let modes: [(&str, &dyn Fn(usize) -> bool); 2] = [
            ("present", &|k| present.contains(&(k as u32))),
            ("present-and-unseen", &|k| {
                present.contains(&(k as u32)) || !seen.contains(&(k as u32))
            }),
        ];
        for (mode, keep) in modes {
            let want = hand(keep);
            let mut st = build(&json!({"mask": mode})).expect("er-ace");
            let cx0 = ctx(&s, 0, &dev);
            drop(st.loss(
                &cx0,
                &net,
                &first,
                net.forward(first.x.clone()),
                Tensor::zeros([1], &dev),
            ));
            // Unflushed, the buffer is still empty: the loss is the incoming term alone.
            let logits =
                Tensor::<2>::from_data(TensorData::new(z.clone(), [6, c]), &dev).require_grad();
            let loss = st.loss(&cx, &net, &b, logits.clone(), Tensor::zeros([1], &dev));
            let got = loss.clone().into_scalar::<f32>() as f64;
            assert!((got - want).abs() < 1e-5, "{mode}: {got} vs {want}");
            let g = host(logits.grad(&loss.backward()).expect("logit gradient"));
            for r in 0..6 {
                for k in 0..c {
                    let gk = g[r * c + k];
                    if !keep(k) {
                        assert_eq!(gk, 0.0, "{mode}: masked class {k} gets no gradient");
                    } else {
                        assert!(gk != 0.0, "{mode}: class {k}");
                    }
                }
            }
        }
        // Unseen means never in the stream: a fresh strategy with `present-and-unseen` keeps
        // task 0's classes too (unseen), so no logit is masked.
        let mut st = build(&json!({"mask": "present-and-unseen"})).expect("er-ace");
        let l = st.loss(
            &cx,
            &net,
            &b,
            Tensor::<2>::from_data(TensorData::new(z.clone(), [6, c]), &dev),
            Tensor::zeros([1], &dev),
        );
        assert!((l.into_scalar::<f32>() as f64 - hand(&|_| true)).abs() < 1e-5);
    }

    /// After a flushed step, the loss adds the unmasked CE of a replay batch (the whole
    /// buffer here) to the incoming term.
    #[test]
    fn replay_term_is_the_unmasked_ce_of_the_buffer() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let net = mlp(&s, 8, &dev);
        let mut st = build(&json!({"buffer": 6, "replay-batch": 6})).expect("er-ace");
        let cx0 = ctx(&s, 0, &dev);
        let first = batch_at(&s, 0, 0..6, &dev);
        drop(st.loss(
            &cx0,
            &net,
            &first,
            net.forward(first.x.clone()),
            Tensor::zeros([1], &dev),
        ));
        let net = st.after_step(&cx0, net);
        let cx = ctx(&s, 1, &dev);
        let b = batch_at(&s, 1, 0..5, &dev);
        let got = st
            .loss(
                &cx,
                &net,
                &b,
                net.forward(b.x.clone()),
                Tensor::zeros([1], &dev),
            )
            .into_scalar::<f32>();
        let ce = |b: &Batch| {
            CrossEntropyLossConfig::new()
                .init(&dev)
                .forward(net.forward(b.x.clone()), b.y.clone())
                .into_scalar::<f32>()
        };
        let mut keep = vec![false; s.num_outputs];
        for &y in &b.y_host {
            keep[y as usize] = true;
        }
        let inc = masked_ce(&cx, &b, net.forward(b.x.clone()), &keep).into_scalar::<f32>();
        assert!((got - (inc + ce(&first))).abs() < 1e-5, "{got}");
        assert!((inc - ce(&b)).abs() > 1e-4, "the mask matters here");
    }

    #[test]
    fn invalid_er_ace_params_are_errors() {
        for (v, key) in [
            (json!({"buffer": 0}), "buffer"),
            (json!({"replay-batch": 0}), "replay-batch"),
            (json!({"mask": "seen"}), "mask"),
            (json!({"sampling": "class-balanced"}), "sampling"),
        ] {
            let e = build(&v).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(key), "{v}: {e}");
        }
        let p = build(&serde_json::Value::Null).expect("defaults").params();
        assert_eq!(p, json!({"buffer": 200, "mask": "present"}));
    }

    /// Buffer, draw counter and seen classes come back from the state: a resumed run draws
    /// the same replay batches and masks the same logits.
    #[test]
    fn a_resumed_er_ace_continues_exactly() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let net = mlp(&s, 8, &dev);
        let v = json!({"buffer": 10, "replay-batch": 3, "mask": "present-and-unseen"});
        let mut a = build(&v).expect("er-ace");
        let cx0 = ctx(&s, 0, &dev);
        for lo in (0..40).step_by(8) {
            let b = batch_at(&s, 0, lo..lo + 8, &dev);
            drop(a.loss(
                &cx0,
                &net,
                &b,
                net.forward(b.x.clone()),
                Tensor::zeros([1], &dev),
            ));
            a.after_step(&cx0, net.clone());
        }
        let mut b = build(&v).expect("er-ace");
        b.load_state(a.state()).expect("load");
        assert_eq!(a.state_bytes(), 10 * (s.train.dim as u64 * 4 + 4));
        assert_eq!(b.state_bytes(), a.state_bytes());
        let cx = ctx(&s, 1, &dev);
        let run = |st: &mut Box<dyn Strategy>| {
            (0..3)
                .map(|k| {
                    let bt = batch_at(&s, 1, 8 * k..8 * k + 8, &dev);
                    let l = st.loss(
                        &cx,
                        &net,
                        &bt,
                        net.forward(bt.x.clone()),
                        Tensor::zeros([1], &dev),
                    );
                    st.after_step(&cx, net.clone());
                    l.into_scalar::<f32>()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(&mut a), run(&mut b));
        assert_eq!(a.state().json, b.state().json);
    }
}
