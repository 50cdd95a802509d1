//! A-GEM: Averaged Gradient Episodic Memory (Chaudhry et al., ICLR 2019, arXiv 1812.00420).
//! Card: shared/methods/replay_distillation.md (replay family); reference Avalanche
//! `training/plugins/agem.py`.
//!
//! GEM with one constraint: after the backward pass, the reference gradient g_ref is the
//! gradient of the cross-entropy on `sample-size` examples drawn uniformly from the memory of
//! earlier tasks (a forward and backward pass of its own), and if g·g_ref < 0 the step's
//! gradient g becomes g − (g·g_ref / g_ref·g_ref)·g_ref, so that g̃·g_ref = 0. g and g_ref are
//! the concatenation of every parameter's gradient in the same order, zeros where a parameter
//! has none; the result is written to the parameters that have one (as Avalanche).
//!
//! Memory (engram choice): the memory of `gem` (parts/episodic.rs), `buffer` = M examples in
//! all split equally among the tasks seen, the training task's share filled by a reservoir and
//! committed at the task's end, so that g_ref comes from earlier tasks only (the paper's
//! episodic memory). Avalanche stores `patterns_per_exp` per experience instead, a memory that
//! grows with the task count; engram keeps the total fixed for comparisons with `er` at equal
//! memory. `sample-size` is Avalanche's `sample_size` (64); the paper draws 256 for its
//! larger benchmarks. `state_bytes` counts the stored examples; g_ref lives within a step.

use super::parts::buffer::check_buffer;
use super::parts::episodic::{Episodic, dot, flat_grad, memory_grad, set_flat_grad};
use super::parts::episodic_hooks;
use super::{Ctx, Strategy, in_range, parse_params};
use crate::Result;
use crate::model::Net;
use burn::optim::GradientsParams;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Examples in memory over all tasks, split equally among the tasks seen (200, as `er`).
    #[serde(default = "super::er::default_buffer")]
    pub buffer: usize,
    /// Memory examples per reference gradient (Avalanche's `sample_size`: 64).
    #[serde(default = "default_sample_size")]
    pub sample_size: usize,
}

fn default_sample_size() -> usize {
    64
}

pub struct Agem {
    p: Params,
    mem: Episodic,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    let p: Params = parse_params("a-gem", v)?;
    check_buffer("a-gem", p.buffer, None)?;
    in_range("a-gem", "sample-size", p.sample_size, 1, usize::MAX, "")?;
    let mem = Episodic::new(p.buffer);
    Ok(Box::new(Agem { p, mem }))
}

/// A-GEM's projection in place: when g·r < 0, g ← g − (g·r / r·r)·r. Returns whether g
/// changed.
pub fn project(g: &mut [f32], r: &[f32]) -> bool {
    let (gr, rr) = (dot(g, r), dot(r, r));
    if gr >= 0.0 || rr == 0.0 {
        return false;
    }
    let a = gr / rr;
    for (x, y) in g.iter_mut().zip(r) {
        *x = (*x as f64 - a * *y as f64) as f32;
    }
    true
}

impl Strategy for Agem {
    fn name(&self) -> &'static str {
        "a-gem"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    episodic_hooks!(mem, "a-gem");

    fn after_backward(&mut self, cx: &Ctx, net: &Net, grads: &mut GradientsParams) {
        if self.mem.is_empty() {
            return;
        }
        let ids = self
            .mem
            .sample(cx.seed, "a-gem-reference", self.p.sample_size);
        let r = memory_grad(cx, net, &ids);
        let mut g = flat_grad(net, grads);
        if project(&mut g, &r) {
            set_flat_grad(net, grads, &g);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::Batch;
    use crate::strategy::parts::episodic::examples;
    use crate::strategy::parts::testutil::{assert_close, batch_at, blobs, ctx, device, mlp};
    use burn::nn::loss::CrossEntropyLossConfig;
    use burn::prelude::*;
    use serde_json::json;

    fn ce(net: &Net, b: &Batch, dev: &Device) -> Tensor<1> {
        CrossEntropyLossConfig::new()
            .init(dev)
            .forward(net.forward(b.x.clone()), b.y.clone())
    }

    /// Fills the memory with task 0's first 40 examples (buffer 6; sample-size 64 draws it all).
    fn after_task_0(s: &crate::scenario::Scenario, net: &Net, dev: &Device) -> Box<dyn Strategy> {
        let mut st = build(&json!({"buffer": 6})).expect("a-gem");
        let cx = ctx(s, 0, dev);
        st.before_task(&cx, net.clone()).expect("before");
        let b = batch_at(s, 0, 0..40, dev);
        // No memory yet within the first task: the gradient is left alone.
        let mut grads = GradientsParams::from_grads(ce(net, &b, dev).backward(), net);
        let g = flat_grad(net, &grads);
        drop(st.loss(&cx, net, &b, net.forward(b.x.clone()), ce(net, &b, dev)));
        st.after_backward(&cx, net, &mut grads);
        assert_eq!(flat_grad(net, &grads), g);
        st.after_task(&cx, net.clone()).expect("after");
        assert_eq!(memory_ids(st.as_ref()).len(), 6);
        st
    }

    fn memory_ids(st: &dyn Strategy) -> Vec<(usize, usize)> {
        serde_json::from_value(st.state().json["episodic"]["tasks"][0]["ids"].clone()).expect("ids")
    }

    /// On a real MLP: a step of task 0's examples with swapped labels conflicts with the
    /// memory gradient; A-GEM's output is the hand projection and has g̃·g_ref ≥ 0 (0 up to
    /// rounding). A step of the memory's own examples (g = g_ref) is left unchanged.
    #[test]
    fn projected_gradient_does_not_oppose_the_memory_gradient() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let net = mlp(&s, 16, &dev);
        let mut st = after_task_0(&s, &net, &dev);
        let cx = ctx(&s, 1, &dev);
        st.before_task(&cx, net.clone()).expect("before");
        // Task 0 keeps its share of two tasks: 3 of the 6.
        let ids = memory_ids(st.as_ref());
        assert_eq!(ids.len(), 3);
        let r = memory_grad(&cx, &net, &ids);

        let mut b = batch_at(&s, 0, 0..40, &dev);
        let c0 = &s.tasks[0].classes;
        b.y_host = b
            .y_host
            .iter()
            .map(|&y| if y == c0[0] { c0[1] } else { c0[0] })
            .collect();
        b.y = Tensor::<1, Int>::from_data(
            TensorData::new(b.y_host.iter().map(|&v| v as i64).collect::<Vec<_>>(), [40]),
            &dev,
        );
        let mut grads = GradientsParams::from_grads(ce(&net, &b, &dev).backward(), &net);
        let g = flat_grad(&net, &grads);
        let before = dot(&g, &r);
        assert!(before < 0.0, "the case conflicts: {before}");
        st.after_backward(&cx, &net, &mut grads);
        let out = flat_grad(&net, &grads);
        let a = before / dot(&r, &r);
        let hand: Vec<f32> = g
            .iter()
            .zip(&r)
            .map(|(x, y)| (*x as f64 - a * *y as f64) as f32)
            .collect();
        assert_close(&out, &hand, 1e-6, "hand projection");
        let after = dot(&out, &r);
        let scale = dot(&g, &g).sqrt() * dot(&r, &r).sqrt();
        assert!(after >= -1e-6 * scale, "g̃·g_ref = {after}");
        assert!(after.abs() <= 1e-5 * scale, "on the plane: {after}");

        let (x, y) = examples(&cx, &ids);
        let loss = CrossEntropyLossConfig::new()
            .init(&dev)
            .forward(net.forward(x), y);
        let mut grads = GradientsParams::from_grads(loss.backward(), &net);
        let g = flat_grad(&net, &grads);
        assert!(dot(&g, &r) > 0.0);
        st.after_backward(&cx, &net, &mut grads);
        assert_eq!(flat_grad(&net, &grads), g, "no conflict, no change");
    }

    #[test]
    fn the_projection_is_the_hand_formula() {
        let mut g = vec![1.0f32, -2.0, 0.5];
        let r = vec![0.0f32, 1.0, 1.0];
        // g·r = −1.5, r·r = 2: g − (−0.75)·r.
        assert!(project(&mut g, &r));
        assert_eq!(g, vec![1.0, -1.25, 1.25]);
        let mut h = vec![1.0f32, 1.0, 0.0];
        assert!(!project(&mut h, &r));
        assert!(!project(&mut h, &[0.0, 0.0, 0.0]));
        assert_eq!(h, vec![1.0, 1.0, 0.0]);
    }

    #[test]
    fn invalid_agem_params_are_errors() {
        for (v, key) in [
            (json!({"buffer": 0}), "buffer"),
            (json!({"sample-size": 0}), "sample-size"),
            (json!({"sample_size": 8}), "sample_size"),
            (json!({"buffer": 10, "sample-size": -1}), "sample-size"),
        ] {
            let e = build(&v).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(key), "{v}: {e}");
        }
        let p = build(&serde_json::Value::Null).expect("defaults").params();
        assert_eq!(p, json!({"buffer": 200, "sample-size": 64}));
    }

    /// The state saved after a task (memory and the draw counter) makes a fresh strategy draw
    /// the same reference batches and project the same way as the one that kept running.
    #[test]
    fn a_resumed_agem_continues_exactly() {
        let s = blobs("class-incremental", 2);
        let (dev, _rng) = device();
        let net = mlp(&s, 8, &dev);
        let mut a = build(&json!({"buffer": 30, "sample-size": 5})).expect("a-gem");
        let cx = ctx(&s, 0, &dev);
        a.before_task(&cx, net.clone()).expect("before");
        for lo in (0..100).step_by(20) {
            let b = batch_at(&s, 0, lo..lo + 20, &dev);
            drop(a.loss(&cx, &net, &b, net.forward(b.x.clone()), ce(&net, &b, &dev)));
        }
        a.after_task(&cx, net.clone()).expect("after");
        let mut b = build(&json!({"buffer": 30, "sample-size": 5})).expect("a-gem");
        b.load_state(a.state()).expect("load");
        assert_eq!(b.state_bytes(), 30 * (s.train.dim as u64 * 4 + 4));
        let cx = ctx(&s, 1, &dev);
        let run = |st: &mut Box<dyn Strategy>| {
            st.before_task(&cx, net.clone()).expect("before");
            (0..3)
                .map(|k| {
                    let bt = batch_at(&s, 1, 20 * k..20 * k + 20, &dev);
                    drop(st.loss(
                        &cx,
                        &net,
                        &bt,
                        net.forward(bt.x.clone()),
                        ce(&net, &bt, &dev),
                    ));
                    let mut grads =
                        GradientsParams::from_grads(ce(&net, &bt, &dev).backward(), &net);
                    st.after_backward(&cx, &net, &mut grads);
                    flat_grad(&net, &grads)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(&mut a), run(&mut b));
        assert_eq!(a.state().json, b.state().json);
        assert!(
            build(&json!({"buffer": 31}))
                .expect("a-gem")
                .load_state(b.state())
                .is_err()
        );
    }
}
