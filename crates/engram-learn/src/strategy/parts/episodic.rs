//! Episodic memory of `gem` and `a-gem`: examples of earlier tasks kept per task, and the flat
//! gradients over the network's parameters that both methods compare and project.
//! Card: shared/methods/replay_distillation.md (replay family); GEM arXiv 1706.08840, A-GEM
//! arXiv 1812.00420.
//!
//! Memory policy (engram choice, so that GEM and A-GEM compare with `er` at equal memory):
//! `buffer` = M examples in all, split equally among the tasks seen so far. When the n-th task
//! starts, every earlier task keeps a uniformly random subset of its share (⌊M/n⌋, one more for
//! the first M mod n tasks) and the new task's share is filled by a reservoir over its first
//! pass through its training data (one epoch: every example once, so several epochs never
//! store an example twice); the reservoir is committed when the task ends. While a task
//! trains, the committed memory holds earlier tasks only, as GEM's constraints and A-GEM's
//! reference gradient require, and memory plus reservoir never exceed M. The references grow
//! with the task count instead: GEM keeps `n_memories` per task (a ring buffer of each task's
//! latest examples), Avalanche's A-GEM `patterns_per_exp` per experience, drawn at its end.
//!
//! Examples are stored as (task, train index), fetched through the scenario when used (as
//! [`super::buffer::Buffer`]), and counted as the inputs and labels they stand for.

use super::buffer::{Buffer, Pending, Sampling, ce_by_task};
use crate::model::Net;
use crate::model::params::{grad_flat, param_infos, set_grad_flat};
use crate::scenario::Part;
use crate::strategy::{Batch, Ctx, State};
use crate::{Result, err};
use burn::optim::GradientsParams;
use burn::prelude::*;
use engram_weights::rng::Rng;

/// The stored examples of one task.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskMemory {
    pub task: usize,
    /// (task, train index) of each stored example.
    pub ids: Vec<(usize, usize)>,
}

#[derive(Clone, Debug)]
pub struct Episodic {
    /// M: examples in all, over every task.
    pub capacity: usize,
    /// Committed memories of the tasks trained so far, in training order.
    pub tasks: Vec<TaskMemory>,
    /// The training task and its reservoir, committed by [`Episodic::commit`].
    current: Option<(usize, Buffer)>,
    /// Samples drawn so far (the key of the next draw's stream).
    pub draws: u64,
    /// Input width, for [`Episodic::bytes`].
    pub dim: usize,
}

/// Share of task `i` (0-based, training order) of `m` examples among `n` tasks.
pub fn share(m: usize, n: usize, i: usize) -> usize {
    m / n + usize::from(i < m % n)
}

impl Episodic {
    pub fn new(capacity: usize) -> Episodic {
        Episodic {
            capacity,
            tasks: Vec::new(),
            current: None,
            draws: 0,
            dim: 0,
        }
    }

    /// Committed examples (earlier tasks while a task trains).
    pub fn len(&self) -> usize {
        self.tasks.iter().map(|t| t.ids.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Examples held in the current task's reservoir.
    pub fn pending(&self) -> usize {
        self.current.as_ref().map_or(0, |(_, b)| b.len())
    }

    /// The memory the stored examples stand for: inputs (f32) and labels, committed and in
    /// the current reservoir (as [`Buffer::bytes`]).
    pub fn bytes(&self) -> u64 {
        ((self.len() + self.pending()) * (self.dim * 4 + 4)) as u64
    }

    /// Before task `task`: shrinks the earlier tasks to their shares among the tasks seen
    /// including this one and opens this task's reservoir.
    pub fn begin(&mut self, seed: u64, task: usize) {
        if matches!(self.current, Some((t, _)) if t == task) {
            // Resumed within the task: the reservoir is the saved one.
            return;
        }
        // A task trained a second time starts its memory afresh.
        self.tasks.retain(|m| m.task != task);
        let n = self.tasks.len() + 1;
        for (i, m) in self.tasks.iter_mut().enumerate() {
            let keep = share(self.capacity, n, i);
            if m.ids.len() > keep {
                let key = ((m.task as u64) << 32) | n as u64;
                let all: Vec<usize> = (0..m.ids.len()).collect();
                let slots = Rng::keyed(seed, "episodic-shrink", key).choose_sorted(&all, keep);
                m.ids = slots.into_iter().map(|s| m.ids[s]).collect();
            }
        }
        let cap = share(self.capacity, n, n - 1);
        self.current = Some((task, Buffer::new(cap, Sampling::Reservoir, 0)));
    }

    /// Offers a batch of the training task to its reservoir, as long as the task's first pass
    /// (`cx.scenario.tasks[cx.task].train`, one epoch) lasts.
    pub fn offer(&mut self, cx: &Ctx, batch: &Batch) {
        let epoch = cx.scenario.tasks[cx.task].train.len() as u64;
        let Some((task, buf)) = &mut self.current else {
            return;
        };
        let left = epoch.saturating_sub(buf.seen) as usize;
        if left == 0 {
            return;
        }
        // Each task's reservoir draws from its own stream.
        let seed = Rng::keyed(cx.seed, "episodic-reservoir", *task as u64).next_u64();
        let mut p = Pending::of(batch, Vec::new());
        p.ids.truncate(left);
        p.labels.truncate(left);
        self.dim = p.dim;
        buf.offer_all(seed, p);
    }

    /// After the task: its reservoir becomes its memory.
    pub fn commit(&mut self) {
        if let Some((task, buf)) = self.current.take() {
            self.dim = self.dim.max(buf.dim);
            self.tasks.push(TaskMemory { task, ids: buf.ids });
        }
    }

    /// `k` distinct committed examples drawn uniformly over all tasks (all when k ≥ len).
    pub fn sample(&mut self, seed: u64, key: &str, k: usize) -> Vec<(usize, usize)> {
        let all: Vec<(usize, usize)> = self.tasks.iter().flat_map(|t| t.ids.clone()).collect();
        let idx: Vec<usize> = (0..all.len()).collect();
        let mut rng = Rng::keyed(seed, key, self.draws);
        self.draws += 1;
        rng.choose_sorted(&idx, k)
            .into_iter()
            .map(|i| all[i])
            .collect()
    }

    /// Saves the memory under "episodic" (and a reservoir in progress under "current").
    pub fn state(&self) -> State {
        let mut s = State {
            tensors: Vec::new(),
            json: serde_json::json!({
                "episodic": {
                    "capacity": self.capacity,
                    "tasks": self.tasks,
                    "draws": self.draws,
                    "dim": self.dim,
                    "current": self.current.as_ref().map(|(t, _)| *t),
                }
            }),
        };
        if let Some((_, buf)) = &self.current {
            buf.save("current", &mut s);
        }
        s
    }

    /// Restores a memory saved by [`Episodic::state`]; `name` is the strategy's, for messages.
    pub fn load(&mut self, name: &str, state: &State) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Saved {
            capacity: usize,
            tasks: Vec<TaskMemory>,
            draws: u64,
            dim: usize,
            current: Option<usize>,
        }
        let v = state
            .json
            .get("episodic")
            .ok_or_else(|| err!("strategy {name}: the state has no episodic memory"))?;
        let s: Saved = serde_json::from_value(v.clone())
            .map_err(|e| err!("strategy {name}: state, episodic memory: {e}"))?;
        let held: usize = s.tasks.iter().map(|t| t.ids.len()).sum();
        if s.capacity != self.capacity || held > s.capacity {
            return Err(err!(
                "strategy {name}: state, episodic memory: saved with buffer {} ({held} held), \
                 configured {}",
                s.capacity,
                self.capacity
            ));
        }
        let current = match s.current {
            Some(task) => {
                let cap = state
                    .json
                    .get("current")
                    .and_then(|c| c.get("capacity"))
                    .and_then(|c| c.as_u64())
                    .ok_or_else(|| err!("strategy {name}: state has no 'current' reservoir"))?;
                let mut buf = Buffer::new(cap as usize, Sampling::Reservoir, 0);
                buf.load("current", state)?;
                Some((task, buf))
            }
            None => None,
        };
        self.tasks = s.tasks;
        self.draws = s.draws;
        self.dim = s.dim;
        self.current = current;
        Ok(())
    }
}

/// The stored examples `ids` as a training batch (inputs, labels) on `cx.device`.
pub fn examples(cx: &Ctx, ids: &[(usize, usize)]) -> (Tensor<2>, Tensor<1, Int>) {
    let (x, y) = cx.scenario.gather(Part::Train, ids);
    let n = ids.len();
    let x = Tensor::<2>::from_data(TensorData::new(x, [n, cx.scenario.train.dim]), cx.device);
    let y = Tensor::<1, Int>::from_data(
        TensorData::new(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), [n]),
        cx.device,
    );
    (x, y)
}

/// Every parameter's gradient, flattened and concatenated in visiting order; a parameter
/// without a gradient contributes zeros (as GEM's `store_grad`).
pub fn flat_grad(net: &Net, grads: &GradientsParams) -> Vec<f32> {
    let mut out = Vec::new();
    for p in param_infos(net) {
        let g = grad_flat(grads, &p)
            .and_then(|t| t.into_data().convert::<f32>().try_into_vec::<f32>().ok());
        match g {
            Some(g) if g.len() == p.numel() => out.extend(g),
            _ => out.extend(std::iter::repeat_n(0.0, p.numel())),
        }
    }
    out
}

/// The flat gradient of the cross-entropy on the stored examples `ids` (one forward and one
/// backward pass of its own; the step's gradients are left as they are).
pub fn memory_grad(cx: &Ctx, net: &Net, ids: &[(usize, usize)]) -> Vec<f32> {
    let (x, y) = examples(cx, ids);
    let loss = ce_by_task(cx, ids, net.forward(x), y);
    flat_grad(net, &GradientsParams::from_grads(loss.backward(), net))
}

/// Writes a flat gradient (the layout of [`flat_grad`]) back into `grads`. Only parameters
/// that have a gradient are written (as GEM's `overwrite_grad` and Avalanche's A-GEM), so a
/// parameter the step leaves alone stays alone.
pub fn set_flat_grad(net: &Net, grads: &mut GradientsParams, flat: &[f32]) {
    let mut at = 0;
    for p in param_infos(net) {
        let n = p.numel();
        if let Some(old) = grad_flat(grads, &p)
            && at + n <= flat.len()
        {
            let v = flat[at..at + n].to_vec();
            let t = Tensor::<1>::from_data(TensorData::new(v, [n]), &old.device());
            set_grad_flat(grads, &p, t);
        }
        at += n;
    }
}

/// a·b accumulated in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strategy::parts::testutil::{batch_at, blobs, ctx, device};

    #[test]
    fn shares_split_the_buffer_equally_and_add_up() {
        for (m, n) in [(200, 3), (10, 4), (7, 7), (5, 1)] {
            let s: Vec<usize> = (0..n).map(|i| share(m, n, i)).collect();
            assert_eq!(s.iter().sum::<usize>(), m, "{m} {n}");
            assert!(s.iter().max().unwrap() - s.iter().min().unwrap() <= 1);
        }
    }

    /// Earlier tasks shrink to their shares when a task starts, the training task's reservoir
    /// sees only its first pass, the memory never exceeds M, and a saved memory loads back.
    #[test]
    fn memory_holds_earlier_tasks_within_the_buffer() {
        let s = blobs("class-incremental", 3);
        let (dev, _rng) = device();
        let mut m = Episodic::new(10);
        for task in 0..3 {
            let cx = ctx(&s, task, &dev);
            m.begin(cx.seed, task);
            assert!(m.tasks.iter().all(|t| t.task < task));
            let n = s.tasks[task].train.len();
            // Two epochs: the second pass is not offered.
            for _ in 0..2 {
                for lo in (0..n).step_by(16) {
                    m.offer(&cx, &batch_at(&s, task, lo..(lo + 16).min(n), &dev));
                }
            }
            assert_eq!(m.current.as_ref().map(|(_, b)| b.seen), Some(n as u64));
            assert!(m.len() + m.pending() <= 10);
            if task == 1 {
                // Saved mid-task, the reservoir in progress comes back too.
                let mut again = Episodic::new(10);
                again.load("gem", &m.state()).expect("load");
                assert_eq!(again.tasks, m.tasks);
                assert_eq!(again.pending(), m.pending());
                assert!(Episodic::new(11).load("gem", &m.state()).is_err());
            }
            m.commit();
        }
        let sizes: Vec<usize> = m.tasks.iter().map(|t| t.ids.len()).collect();
        // Three tasks of 10: 4, 3, 3 after the third started, none stored twice.
        assert_eq!(sizes, vec![4, 3, 3]);
        for t in &m.tasks {
            let mut ids = t.ids.clone();
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), t.ids.len());
            assert!(ids.iter().all(|&(k, _)| k == t.task));
        }
        assert_eq!(m.bytes(), 10 * (s.train.dim as u64 * 4 + 4));
        let drawn = m.sample(1, "k", 4);
        assert_eq!(drawn.len(), 4);
    }
}
