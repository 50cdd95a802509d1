//! Replay memory of `er`, `der`, `der++`, `ider`: reservoir and CBRS (Chrysakis & Moens, 2020).
//! Card: shared/methods/replay_distillation.md ("Experience Replay", "DER and DER++").
//!
//! The buffer stores examples as (task, train index) pairs and fetches them through the
//! scenario when replayed: the scenario is a deterministic function of its seed, so this is the
//! raw (never augmented) input with its task's transform, as the card asks, at the cost of 16
//! bytes an example. DER's logits are stored as values. Every random draw comes from a stream
//! keyed by (run seed, purpose, counter) and the counters are part of the state, so a resumed
//! run draws exactly what an uninterrupted one would.

use crate::scenario::{EvalMode, Part};
use crate::strategy::{Ctx, State};
use crate::{Result, err};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use engram_weights::rng::Rng;
use std::collections::BTreeMap;

/// How examples enter a full buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sampling {
    /// Reservoir sampling: every example of the stream is kept with the same probability.
    Reservoir,
    /// Class-balanced reservoir (CBRS): the largest classes give way to the others.
    ClassBalanced,
    /// IDER's `reservoir_balanced` (Idempotent-Continual-Learning `ASCEND/utils/buffer.py`):
    /// reservoir admission (the (n+1)-th example enters with probability M/(n+1)), and an
    /// admitted example evicts a uniformly random stored example of the largest class(es),
    /// the class counts being those of the buffer before the current batch was written.
    /// Not CBRS: admission does not depend on the example's class.
    ReservoirBalanced,
}

/// A training batch waiting to be offered to a buffer after the optimizer step.
#[derive(Clone, Debug, Default)]
pub struct Pending {
    pub ids: Vec<(usize, usize)>,
    pub labels: Vec<u32>,
    /// Logits `[len, width]` (empty when the buffer keeps none).
    pub logits: Vec<f32>,
    /// Input width.
    pub dim: usize,
}

impl Pending {
    pub fn of(batch: &crate::strategy::Batch, logits: Vec<f32>) -> Pending {
        Pending {
            ids: batch.ids.clone(),
            labels: batch.y_host.clone(),
            logits,
            dim: batch.x_host.len() / batch.len().max(1),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Buffer {
    pub capacity: usize,
    pub sampling: Sampling,
    /// (task, train index) of each stored example.
    pub ids: Vec<(usize, usize)>,
    pub labels: Vec<u32>,
    /// Logits stored at insertion, `[len, width]` row-major (width 0: none stored).
    pub logits: Vec<f32>,
    pub width: usize,
    /// Stream examples offered so far (n in the card).
    pub seen: u64,
    /// Stream examples offered so far per class (n_c, for CBRS).
    pub seen_per_class: BTreeMap<u32, u64>,
    /// Replay batches drawn so far (the key of the next draw's stream).
    pub draws: u64,
    /// Input width, for [`Buffer::bytes`].
    pub dim: usize,
    /// This step's batch, offered by [`Buffer::flush`] after the optimizer step (not saved:
    /// it never outlives a step).
    pending: Option<Pending>,
    /// Class counts of the buffer before the batch being offered (`ReservoirBalanced`; not
    /// saved: it never outlives [`Buffer::offer_all`]).
    batch_counts: Option<BTreeMap<u32, usize>>,
}

impl Buffer {
    pub fn new(capacity: usize, sampling: Sampling, width: usize) -> Buffer {
        Buffer {
            capacity,
            sampling,
            ids: Vec::new(),
            labels: Vec::new(),
            logits: Vec::new(),
            width,
            seen: 0,
            seen_per_class: BTreeMap::new(),
            draws: 0,
            dim: 0,
            pending: None,
            batch_counts: None,
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The memory the stored examples stand for: inputs (f32), labels and logits, as a buffer
    /// holding the samples themselves would need (the card counts the buffer in samples).
    pub fn bytes(&self) -> u64 {
        (self.len() * (self.dim * 4 + 4 + self.width * 4)) as u64
    }

    /// Offers one stream example; `logits` must have `width` values when the buffer keeps
    /// logits. `seed` is the run's seed.
    pub fn offer(&mut self, seed: u64, id: (usize, usize), label: u32, logits: &[f32]) {
        let n = self.seen;
        self.seen += 1;
        let nc = {
            let e = self.seen_per_class.entry(label).or_insert(0);
            *e += 1;
            *e
        };
        if self.capacity == 0 {
            return;
        }
        // Exactly `width` values (zeros for any missing), so rows stay aligned.
        let z = (0..self.width).map(|k| logits.get(k).copied().unwrap_or(0.0));
        if self.len() < self.capacity {
            self.ids.push(id);
            self.labels.push(label);
            self.logits.extend(z);
            return;
        }
        let slot = match self.sampling {
            Sampling::Reservoir => {
                // Algorithm R: keep the (n+1)-th example with probability M/(n+1).
                let j = Rng::keyed(seed, "buffer-reservoir", n).below(n as usize + 1);
                (j < self.capacity).then_some(j)
            }
            Sampling::ClassBalanced => self.cbrs_slot(seed, n, label, nc),
            Sampling::ReservoirBalanced => self.balanced_slot(seed, n),
        };
        if let Some(j) = slot {
            self.ids[j] = id;
            self.labels[j] = label;
            for (dst, v) in self.logits[j * self.width..(j + 1) * self.width]
                .iter_mut()
                .zip(z)
            {
                *dst = v;
            }
        }
    }

    /// Holds this step's batch until [`Buffer::flush`]: offered after the step, the batch is
    /// not replayed against itself and DER keeps the logits it was trained on.
    pub fn hold(&mut self, p: Pending) {
        self.pending = Some(p);
    }

    /// Offers the held batch, if any (the strategies' `after_step`).
    pub fn flush(&mut self, seed: u64) {
        if let Some(p) = self.pending.take() {
            self.offer_all(seed, p);
        }
    }

    /// A strategy state holding this buffer under "buffer".
    pub fn state(&self) -> State {
        let mut s = State::default();
        self.save("buffer", &mut s);
        s
    }

    /// Offers a pending batch, example by example in batch order.
    pub fn offer_all(&mut self, seed: u64, p: Pending) {
        self.dim = p.dim;
        let w = self.width;
        if self.sampling == Sampling::ReservoirBalanced {
            self.batch_counts = Some(self.class_counts());
        }
        for (r, (id, y)) in p.ids.into_iter().zip(p.labels).enumerate() {
            let z = p.logits.get(r * w..(r + 1) * w).unwrap_or(&[]);
            self.offer(seed, id, y, z);
        }
        self.batch_counts = None;
    }

    /// `ReservoirBalanced` for a full buffer: the slot to overwrite, if any.
    fn balanced_slot(&self, seed: u64, n: u64) -> Option<usize> {
        let mut rng = Rng::keyed(seed, "buffer-reservoir-balanced", n);
        if rng.below(n as usize + 1) >= self.capacity {
            return None;
        }
        // The largest class(es) by the counts before this batch; a class emptied within the
        // batch gives way to the largest by the current counts.
        let largest_of = |counts: &BTreeMap<u32, usize>| -> Vec<u32> {
            let top = counts.values().copied().max().unwrap_or(0);
            counts
                .iter()
                .filter(|(_, c)| **c == top && top > 0)
                .map(|(l, _)| *l)
                .collect()
        };
        let now = self.class_counts();
        let mut classes = self
            .batch_counts
            .as_ref()
            .map(&largest_of)
            .unwrap_or_default();
        classes.retain(|l| now.contains_key(l));
        if classes.is_empty() {
            classes = largest_of(&now);
        }
        let victim = classes[rng.below(classes.len())];
        let slots: Vec<usize> = (0..self.len())
            .filter(|&i| self.labels[i] == victim)
            .collect();
        Some(slots[rng.below(slots.len())])
    }

    /// CBRS for a full buffer: the slot to overwrite, if any.
    fn cbrs_slot(&self, seed: u64, n: u64, label: u32, nc: u64) -> Option<usize> {
        let mut rng = Rng::keyed(seed, "buffer-cbrs", n);
        let mut counts: BTreeMap<u32, usize> = BTreeMap::new();
        for &l in &self.labels {
            *counts.entry(l).or_insert(0) += 1;
        }
        let largest = counts.values().copied().max().unwrap_or(0);
        let full: Vec<u32> = counts
            .iter()
            .filter(|(_, c)| **c == largest)
            .map(|(l, _)| *l)
            .collect();
        let victim_class = if !full.contains(&label) {
            // Replace a random instance of a (random) largest class.
            full[rng.below(full.len())]
        } else {
            // Replace a random instance of its own class with probability m_c / n_c.
            let mc = counts.get(&label).copied().unwrap_or(0) as f64;
            if rng.uniform_f64() >= mc / nc as f64 {
                return None;
            }
            label
        };
        let slots: Vec<usize> = (0..self.len())
            .filter(|&i| self.labels[i] == victim_class)
            .collect();
        Some(slots[rng.below(slots.len())])
    }

    /// Draws `k` distinct stored examples uniformly (all of them when `k >= len`); `key`
    /// names the purpose (independent draws use different keys or successive calls).
    pub fn sample(&mut self, seed: u64, key: &str, k: usize) -> Vec<usize> {
        let all: Vec<usize> = (0..self.len()).collect();
        let mut rng = Rng::keyed(seed, key, self.draws);
        self.draws += 1;
        rng.choose_sorted(&all, k)
    }

    /// Count of stored examples per class.
    pub fn class_counts(&self) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for &l in &self.labels {
            *m.entry(l).or_insert(0) += 1;
        }
        m
    }

    /// The stored examples `slots` as a training batch (inputs, labels) on `cx.device`.
    pub fn batch(
        &self,
        cx: &Ctx,
        slots: &[usize],
    ) -> (Vec<(usize, usize)>, Tensor<2>, Tensor<1, Int>) {
        let ids: Vec<(usize, usize)> = slots.iter().map(|&i| self.ids[i]).collect();
        let (x, y) = cx.scenario.gather(Part::Train, &ids);
        let n = ids.len();
        let x = Tensor::<2>::from_data(TensorData::new(x, [n, cx.scenario.train.dim]), cx.device);
        let y = Tensor::<1, Int>::from_data(
            TensorData::new(y.iter().map(|&v| v as i64).collect::<Vec<_>>(), [n]),
            cx.device,
        );
        (ids, x, y)
    }

    /// The stored logits of `slots` as a `[len, width]` tensor.
    pub fn logits_of(&self, slots: &[usize], device: &Device) -> Tensor<2> {
        let w = self.width;
        let v: Vec<f32> = slots
            .iter()
            .flat_map(|&i| self.logits[i * w..(i + 1) * w].iter().copied())
            .collect();
        Tensor::<2>::from_data(TensorData::new(v, [slots.len(), w]), device)
    }

    /// Saves the buffer under `prefix` (json fields and, for logits, one tensor).
    pub fn save(&self, prefix: &str, state: &mut State) {
        let obj = serde_json::json!({
            "capacity": self.capacity,
            "ids": self.ids,
            "labels": self.labels,
            "seen": self.seen,
            "seen_per_class": self.seen_per_class.iter().map(|(c, n)| (*c, *n)).collect::<Vec<_>>(),
            "draws": self.draws,
            "dim": self.dim,
            "width": self.width,
        });
        if let serde_json::Value::Object(m) = &mut state.json {
            m.insert(prefix.to_string(), obj);
        } else {
            state.json = serde_json::json!({ prefix: obj });
        }
        if self.width > 0 && !self.is_empty() {
            state.tensors.push((
                format!("{prefix}.logits"),
                vec![self.len(), self.width],
                self.logits.clone(),
            ));
        }
    }

    /// Restores a buffer saved by [`Buffer::save`]; checks it against this buffer's
    /// configuration.
    pub fn load(&mut self, prefix: &str, state: &State) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Saved {
            capacity: usize,
            ids: Vec<(usize, usize)>,
            labels: Vec<u32>,
            seen: u64,
            seen_per_class: Vec<(u32, u64)>,
            draws: u64,
            dim: usize,
            width: usize,
        }
        let v = state
            .json
            .get(prefix)
            .ok_or_else(|| err!("strategy state has no '{prefix}' buffer"))?;
        let s: Saved = serde_json::from_value(v.clone())
            .map_err(|e| err!("strategy state, buffer '{prefix}': {e}"))?;
        if s.capacity != self.capacity || s.width != self.width {
            return Err(err!(
                "strategy state, buffer '{prefix}': saved with capacity {} and {} logits, \
                 configured {} and {}",
                s.capacity,
                s.width,
                self.capacity,
                self.width
            ));
        }
        if s.ids.len() != s.labels.len() || s.ids.len() > s.capacity {
            return Err(err!(
                "strategy state, buffer '{prefix}': {} ids, {} labels, capacity {}",
                s.ids.len(),
                s.labels.len(),
                s.capacity
            ));
        }
        let logits = if s.width > 0 && !s.ids.is_empty() {
            let name = format!("{prefix}.logits");
            let (_, _, v) = state
                .tensors
                .iter()
                .find(|(n, _, _)| *n == name)
                .ok_or_else(|| err!("strategy state has no tensor '{name}'"))?;
            if v.len() != s.ids.len() * s.width {
                return Err(err!(
                    "strategy state, '{name}': {} values for {} examples of {} logits",
                    v.len(),
                    s.ids.len(),
                    s.width
                ));
            }
            v.clone()
        } else {
            Vec::new()
        };
        self.ids = s.ids;
        self.labels = s.labels;
        self.logits = logits;
        self.seen = s.seen;
        self.seen_per_class = s.seen_per_class.into_iter().collect();
        self.draws = s.draws;
        self.dim = s.dim;
        Ok(())
    }
}

/// Cross-entropy of examples from any tasks: in Task-IL each row is restricted to its own
/// task's classes (the trainer's loss restricts rows to the current task only).
pub fn ce_by_task(
    cx: &Ctx,
    ids: &[(usize, usize)],
    logits: Tensor<2>,
    y: Tensor<1, Int>,
) -> Tensor<1> {
    let s = cx.scenario;
    let logits = if s.eval == EvalMode::TaskIl {
        let c = s.num_outputs;
        let mut pen = vec![-1e9f32; ids.len() * c];
        for (r, &(t, _)) in ids.iter().enumerate() {
            for &k in &s.tasks[t].classes {
                if (k as usize) < c {
                    pen[r * c + k as usize] = 0.0;
                }
            }
        }
        logits + Tensor::<2>::from_data(TensorData::new(pen, [ids.len(), c]), cx.device)
    } else {
        logits
    };
    CrossEntropyLossConfig::new()
        .init(cx.device)
        .forward(logits, y)
}

/// A tensor's values on the host (f32).
pub fn host2(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

/// Common buffer parameters' checks.
pub fn check_buffer(name: &str, size: usize, batch: Option<usize>) -> Result<()> {
    if size == 0 {
        return Err(err!("strategy {name}: buffer must be at least 1"));
    }
    if batch == Some(0) {
        return Err(err!(
            "strategy {name}: replay-batch must be at least 1 (leave it out for the stream batch size)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over many streams, each of the N stream examples ends in a reservoir buffer of M with
    /// probability M/N: a chi-square statistic over the N inclusion counts stays near its N−1
    /// degrees of freedom.
    #[test]
    fn reservoir_keeps_each_example_with_equal_probability() {
        let (n, m, streams) = (20usize, 4usize, 20_000u64);
        let mut counts = vec![0f64; n];
        for s in 0..streams {
            let mut b = Buffer::new(m, Sampling::Reservoir, 0);
            for i in 0..n {
                b.offer(1000 + s, (0, i), (i % 3) as u32, &[]);
            }
            assert_eq!(b.len(), m);
            for &(_, i) in &b.ids {
                counts[i] += 1.0;
            }
        }
        let expect = streams as f64 * m as f64 / n as f64;
        let chi2: f64 = counts.iter().map(|c| (c - expect).powi(2) / expect).sum();
        // df = 19: mean 19, sd ≈ 6.2; 50 is beyond the 99.99th percentile. Drawing j in
        // 0..n instead of 0..=n (keeping the first M with probability (M−1)/(N−1), the
        // others M/(N−1)) gives about 1000.
        assert!(chi2 < 50.0, "chi2 {chi2}, counts {counts:?}");
        // The first and the last examples are kept equally often.
        let first: f64 = counts[..m].iter().sum::<f64>() / m as f64;
        let last: f64 = counts[n - m..].iter().sum::<f64>() / m as f64;
        assert!((first - last).abs() < 0.05 * expect, "{first} {last}");
    }

    #[test]
    fn class_balanced_buffer_holds_equal_counts_per_seen_class() {
        let mut b = Buffer::new(30, Sampling::ClassBalanced, 0);
        let mut k = 0;
        // Task 1: classes 0 and 1 (class 0 five times as frequent); task 2: classes 2, 3, 4.
        for i in 0..600usize {
            let c = if i % 6 == 0 { 1 } else { 0 };
            b.offer(7, (0, k), c, &[]);
            k += 1;
        }
        let counts = b.class_counts();
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![15, 15]);
        for i in 0..900usize {
            b.offer(7, (1, k), 2 + (i % 3) as u32, &[]);
            k += 1;
        }
        let counts = b.class_counts();
        assert_eq!(counts.len(), 5, "{counts:?}");
        let (lo, hi) = (
            counts.values().min().copied().unwrap_or(0),
            counts.values().max().copied().unwrap_or(0),
        );
        assert!(hi - lo <= 1, "{counts:?}");
        assert_eq!(b.len(), 30);
        // The plain reservoir is not balanced on the same stream.
        let mut r = Buffer::new(30, Sampling::Reservoir, 0);
        for i in 0..600usize {
            r.offer(7, (0, i), if i % 6 == 0 { 1 } else { 0 }, &[]);
        }
        let rc = r.class_counts();
        assert!(rc.get(&0).copied().unwrap_or(0) > 20, "{rc:?}");
    }

    /// IDER's reservoir-balanced buffer: reservoir admission, eviction from the largest
    /// class, so a rare class keeps what it gets while plain reservoir holds it at its
    /// share of the stream.
    #[test]
    fn reservoir_balanced_evicts_from_the_largest_class() {
        let stream = |b: &mut Buffer| {
            for chunk in (0..4000u64).collect::<Vec<_>>().chunks(32) {
                let p = Pending {
                    ids: chunk.iter().map(|&i| (0, i as usize)).collect(),
                    labels: chunk.iter().map(|&i| u32::from(i % 10 == 0)).collect(),
                    logits: Vec::new(),
                    dim: 1,
                };
                b.offer_all(7, p);
            }
        };
        let mut bal = Buffer::new(20, Sampling::ReservoirBalanced, 0);
        let mut res = Buffer::new(20, Sampling::Reservoir, 0);
        stream(&mut bal);
        stream(&mut res);
        let rare = |b: &Buffer| b.class_counts().get(&1).copied().unwrap_or(0);
        assert_eq!(bal.len(), 20);
        assert!(rare(&bal) >= 7, "{:?}", bal.class_counts());
        assert!(rare(&res) <= 5, "{:?}", res.class_counts());
        // Admission is the reservoir's: the same number of examples entered.
        assert_eq!(bal.seen, 4000);
    }

    #[test]
    fn a_saved_buffer_loads_back_identically() {
        let mut b = Buffer::new(5, Sampling::Reservoir, 2);
        b.dim = 3;
        for i in 0..9usize {
            b.offer(3, (i / 4, i), (i % 2) as u32, &[i as f32, -(i as f32)]);
        }
        let _ = b.sample(3, "k", 2);
        let mut st = State::default();
        b.save("buf", &mut st);
        let mut c = Buffer::new(5, Sampling::Reservoir, 2);
        c.load("buf", &st).expect("load");
        assert_eq!(
            (
                &c.ids,
                &c.labels,
                &c.logits,
                c.seen,
                &c.seen_per_class,
                c.draws,
                c.dim
            ),
            (
                &b.ids,
                &b.labels,
                &b.logits,
                b.seen,
                &b.seen_per_class,
                b.draws,
                b.dim
            )
        );
        assert_eq!(b.bytes(), 5 * (3 * 4 + 4 + 2 * 4));
        // Both continue with the same draws.
        assert_eq!(b.sample(3, "k", 3), c.sample(3, "k", 3));
        // A buffer of another size refuses the state.
        let mut d = Buffer::new(6, Sampling::Reservoir, 2);
        assert!(d.load("buf", &st).is_err());
        assert!(d.load("other", &st).is_err());
    }
}
