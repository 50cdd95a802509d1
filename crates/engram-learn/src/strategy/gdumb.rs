//! GDumb: A Simple Approach that Questions Our Progress in Continual Learning (Prabhu, Torr & Dokania, ECCV 2020).
//! Card: shared/methods/replay_distillation.md (replay family: a class-balanced memory of raw examples, as in "Experience Replay").
//!
//! GDumb takes no gradient step on the stream (`trains_on_stream` is false). Its greedy
//! sampler fills a class-balanced memory of `memory` examples: each example of the task, in a
//! seeded order, is stored while the memory has room; once full, an example whose class holds
//! fewer than ⌊memory / classes seen so far⌋ evicts a uniformly random example of the largest
//! class (ties: the lowest class id) and takes its slot; any other is skipped. The classes
//! seen so far are those in the memory and the example's own (a stored class never leaves).
//!
//! After each task the network is reset to its initial weights (those handed to the first
//! `before_task`, kept in the state so that a resumed run resets to the same) and trained from
//! scratch on the memory alone: `epochs` passes (default 30) in batches of `batch-size`
//! (default 16, the paper's), seeded shuffles, the run's optimizer settings (`train.optimizer`,
//! schedule included), cross-entropy (Task-IL: each example over its own task's classes, as
//! replay does). The memory is sorted before training, so the network depends on the set of
//! stored examples, not on the order the stream brought them in. The paper trains with SGD at
//! lr 0.05 under SGDR warm restarts, with cutmix, for 256 epochs (its ResNet-18 at CIFAR
//! scale); engram leaves those out at this scale and uses the run's own optimizer.
//!
//! `state_bytes` counts the memory as the inputs it stands for (input width·4 + 4 bytes an
//! example, as the replay buffer does); the copy of the initial weights is not counted (a
//! reference implementation rebuilds them from the seed).

use super::parts::fit::{Fit, fit};
use super::{Ctx, Setup, State, Strategy, check_per_class, in_range, parse_params, tensors_to_map};
use crate::model::Net;
use crate::model::params::{host_params, load_params};
use crate::train::trainer::MAX_EPOCHS;
use crate::{Result, err};
use engram_weights::rng::Rng;
use std::collections::BTreeMap;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Params {
    /// Memory capacity in examples (DER protocol and Avalanche: 200).
    #[serde(default = "default_memory")]
    pub memory: usize,
    /// Epochs of training on the memory after each task (paper: 256).
    #[serde(default = "default_epochs")]
    pub epochs: usize,
    /// Batch size of that training (paper: 16).
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_memory() -> usize {
    200
}
fn default_epochs() -> usize {
    30
}
fn default_batch() -> usize {
    16
}

/// Parameters by name, with their shapes and values.
type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

pub struct Gdumb {
    p: Params,
    /// (task, train index) and label of each stored example.
    ids: Vec<(usize, usize)>,
    labels: Vec<u32>,
    /// The network's initial parameters (name, shape, values); `None` before the first task.
    init: Option<Named>,
    /// Input width, for `state_bytes`.
    dim: usize,
}

pub fn build(v: &serde_json::Value) -> Result<Box<dyn Strategy>> {
    Ok(Box::new(Gdumb::new(parse_params("gdumb", v)?)?))
}

impl Gdumb {
    fn new(p: Params) -> Result<Gdumb> {
        in_range("gdumb", "memory", p.memory, 1, usize::MAX, "")?;
        in_range("gdumb", "epochs", p.epochs, 1, MAX_EPOCHS, "")?;
        in_range("gdumb", "batch-size", p.batch_size, 1, usize::MAX, "")?;
        Ok(Gdumb {
            p,
            ids: Vec::new(),
            labels: Vec::new(),
            init: None,
            dim: 0,
        })
    }

    fn counts(&self) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for &l in &self.labels {
            *m.entry(l).or_insert(0) += 1;
        }
        m
    }

    /// The greedy class-balancing sampler for one stream example (see the module comment).
    fn offer(&mut self, id: (usize, usize), label: u32, rng: &mut Rng) {
        if self.ids.len() < self.p.memory {
            self.ids.push(id);
            self.labels.push(label);
            return;
        }
        let counts = self.counts();
        let classes = counts.len() + usize::from(!counts.contains_key(&label));
        let own = counts.get(&label).copied().unwrap_or(0);
        if own >= self.p.memory / classes {
            return;
        }
        // The first maximum in ascending class order: ties go to the lowest class id.
        let top = counts.values().copied().max().unwrap_or(0);
        let Some((&largest, _)) = counts.iter().find(|(_, n)| **n == top) else {
            return;
        };
        let slots: Vec<usize> = (0..self.labels.len())
            .filter(|&i| self.labels[i] == largest)
            .collect();
        let j = slots[rng.below(slots.len())];
        self.ids[j] = id;
        self.labels[j] = label;
    }

    /// Offers the task's examples to the memory in a seeded order.
    fn fill(&mut self, cx: &Ctx) {
        let s = cx.scenario;
        self.dim = s.train.dim;
        let mut order = s.tasks[cx.task].train.clone();
        Rng::keyed(cx.seed, "gdumb-stream", cx.task as u64).shuffle(&mut order);
        let mut rng = Rng::keyed(cx.seed, "gdumb-evict", cx.task as u64);
        for i in order {
            self.offer((cx.task, i), s.train.y[i], &mut rng);
        }
    }

    /// `net` reset to the initial weights and trained on the memory alone.
    fn retrain(&self, cx: &Ctx, net: &Net) -> Result<Net> {
        let init = self
            .init
            .as_ref()
            .ok_or_else(|| err!("strategy gdumb: no initial weights (before_task not called)"))?;
        // A copy of its own (BatchNorm running statistics included, which are reset too).
        let fresh = load_params(net.detached(), &tensors_to_map(init))?;
        let mut ids = self.ids.clone();
        ids.sort_unstable();
        let how = Fit {
            epochs: self.p.epochs,
            batch_size: self.p.batch_size,
            key: "gdumb-fit",
        };
        fit(cx, fresh, &ids, how)
    }
}

impl Strategy for Gdumb {
    fn name(&self) -> &'static str {
        "gdumb"
    }

    fn params(&self) -> serde_json::Value {
        serde_json::to_value(&self.p).unwrap_or_default()
    }

    fn check(&self, s: &Setup) -> Result<()> {
        check_per_class("gdumb", "memory", self.p.memory, s, "example ")
    }

    fn trains_on_stream(&self) -> bool {
        false
    }

    fn before_task(&mut self, _cx: &Ctx, net: Net) -> Result<Net> {
        if self.init.is_none() {
            let values = host_params(&net)
                .into_iter()
                .map(|(i, v)| (i.name, i.shape, v))
                .collect();
            self.init = Some(values);
        }
        Ok(net)
    }

    fn after_task(&mut self, cx: &Ctx, net: Net) -> Result<Net> {
        self.fill(cx);
        self.retrain(cx, &net)
    }

    fn state_bytes(&self) -> u64 {
        (self.ids.len() * (self.dim * 4 + 4)) as u64
    }

    fn state(&self) -> State {
        let tensors = self
            .init
            .iter()
            .flatten()
            .map(|(n, shape, v)| (format!("init.{n}"), shape.clone(), v.clone()))
            .collect();
        State {
            tensors,
            json: serde_json::json!({
                "ids": self.ids,
                "labels": self.labels,
                "dim": self.dim,
                "init": self.init.is_some(),
            }),
        }
    }

    fn load_state(&mut self, state: State) -> Result<()> {
        #[derive(serde::Deserialize)]
        struct Saved {
            ids: Vec<(usize, usize)>,
            labels: Vec<u32>,
            dim: usize,
            init: bool,
        }
        let s: Saved = serde_json::from_value(state.json)
            .map_err(|e| err!("strategy gdumb: bad saved state: {e}"))?;
        if s.ids.len() != s.labels.len() || s.ids.len() > self.p.memory {
            return Err(err!(
                "strategy gdumb: saved state holds {} examples and {} labels, memory is {}",
                s.ids.len(),
                s.labels.len(),
                self.p.memory
            ));
        }
        let mut init = Vec::new();
        for (name, shape, v) in state.tensors {
            let Some(n) = name.strip_prefix("init.") else {
                return Err(err!("strategy gdumb: unexpected saved tensor '{name}'"));
            };
            if shape.iter().product::<usize>() != v.len() {
                return Err(err!(
                    "strategy gdumb: saved tensor '{name}' does not fill its shape"
                ));
            }
            init.push((n.to_string(), shape, v));
        }
        if s.init == init.is_empty() {
            return Err(err!(
                "strategy gdumb: saved state {} initial weights",
                if s.init {
                    "lacks its"
                } else {
                    "has unexpected"
                }
            ));
        }
        self.ids = s.ids;
        self.labels = s.labels;
        self.dim = s.dim;
        self.init = s.init.then_some(init);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::params::named_values;
    use crate::strategy::parts::testutil::{blobs, ctx, device, mlp};

    fn gdumb(memory: usize, epochs: usize) -> Gdumb {
        Gdumb::new(Params {
            memory,
            epochs,
            batch_size: 16,
        })
        .expect("gdumb")
    }

    fn spread(g: &Gdumb) -> (usize, usize) {
        let c = g.counts();
        let lo = c.values().min().copied().unwrap_or(0);
        let hi = c.values().max().copied().unwrap_or(0);
        (lo, hi)
    }

    /// A stream with one class ten times as frequent, then three new classes: the memory
    /// never exceeds its capacity and ends balanced (counts differ by at most one).
    #[test]
    fn the_memory_is_class_balanced_and_bounded() {
        let mut g = gdumb(30, 1);
        let mut rng = Rng::keyed(1, "t", 0);
        for i in 0..660usize {
            g.offer((0, i), u32::from(i % 11 == 0), &mut rng);
            assert!(g.ids.len() <= 30);
        }
        assert_eq!(g.counts().values().copied().collect::<Vec<_>>(), [15, 15]);
        for i in 0..900usize {
            g.offer((1, i), 2 + (i % 3) as u32, &mut rng);
            assert!(g.ids.len() <= 30);
        }
        let (lo, hi) = spread(&g);
        assert_eq!((g.ids.len(), g.counts().len()), (30, 5));
        assert!(hi - lo <= 1, "{:?}", g.counts());
        assert!(g.ids.iter().zip(&g.labels).all(|(&(t, i), &l)| match t {
            0 => l == u32::from(i % 11 == 0),
            _ => l == 2 + (i % 3) as u32,
        }));
        // Through the scenario's tasks as well.
        let s = blobs("class-incremental", 3);
        let (dev, _g) = device();
        let mut g = gdumb(30, 1);
        for task in 0..3 {
            g.fill(&ctx(&s, task, &dev));
            let (lo, hi) = spread(&g);
            assert_eq!(g.counts().len(), 2 * (task + 1));
            assert!(g.ids.len() == 30 && hi - lo <= 1, "{:?}", g.counts());
            for (&(_, i), &l) in g.ids.iter().zip(&g.labels) {
                assert_eq!(s.train.y[i], l);
            }
        }
    }

    /// The network after a task depends on the memory alone: whatever network the trainer
    /// hands over, and whatever order the memory is in, the result is the same bytes; and it
    /// is the initial network trained (not the one handed over).
    #[test]
    fn retraining_starts_from_the_initial_weights() {
        let s = blobs("class-incremental", 2);
        let (dev, _g) = device();
        let init = mlp(&s, 8, &dev);
        let other = mlp(&s, 8, &dev);
        let cx = ctx(&s, 0, &dev);
        let mut g = gdumb(20, 3);
        let _ = g.before_task(&cx, init.clone()).expect("before");
        // A later before_task does not replace the initial weights.
        let _ = g
            .before_task(&ctx(&s, 1, &dev), other.clone())
            .expect("before");
        g.fill(&cx);
        let a = named_values(&g.retrain(&cx, &init).expect("a"));
        let b = named_values(&g.retrain(&cx, &other).expect("b"));
        assert_eq!(a, b);
        let mut h = gdumb(20, 3);
        let _ = h.before_task(&cx, init.clone()).expect("before");
        h.ids = g.ids.iter().rev().copied().collect();
        h.labels = g.labels.iter().rev().copied().collect();
        assert_eq!(named_values(&h.retrain(&cx, &other).expect("c")), a);
        assert_ne!(a, named_values(&init));
        // The network handed over is untouched.
        assert_ne!(named_values(&other), named_values(&init));
    }

    /// Through the trainer on two Class-IL tasks: no stream steps, the memory model beats
    /// chance, and a run stopped after one task and resumed ends with the same numbers.
    #[test]
    fn a_run_trains_only_on_the_memory_and_resumes_exactly() {
        use crate::optim::{OptimConfig, OptimKind};
        use crate::train::{Event, RunOutput, TrainConfig, Trainer};
        let s = blobs("class-incremental", 2);
        let mut steps = 0;
        let mut run = |dir: Option<&std::path::Path>, stop| -> RunOutput {
            let p = serde_json::json!({"memory": 40});
            let strategy = crate::strategy::build("gdumb", &p).expect("gdumb");
            assert!(!strategy.trains_on_stream());
            let train = TrainConfig {
                epochs: 3,
                batch_size: 16,
                optimizer: OptimConfig::new(OptimKind::Adam, 0.01),
                ..Default::default()
            };
            let model = crate::model::ModelConfig::Mlp { hidden: vec![32] };
            let mut t = Trainer {
                checkpoint_dir: dir.map(std::path::Path::to_path_buf),
                stop_after: stop,
                ..Trainer::new(&s, model, train, 3, strategy)
            };
            t.run(&mut |e| {
                if let Event::Step { .. } = e {
                    steps += 1;
                }
            })
            .expect("run")
        };
        let whole = run(None, None);
        let dir = tempfile::tempdir().expect("tmp");
        let _ = run(Some(dir.path()), Some(1));
        let resumed = run(Some(dir.path()), None);
        assert_eq!(steps, 0, "no gradient step on the stream");
        assert_eq!(resumed.accuracy, whole.accuracy);
        assert_eq!(resumed.ece, whole.ece);
        eprintln!("gdumb {:?}", whole.accuracy);
        let last = whole.accuracy[1].iter().sum::<f64>() / 2.0;
        // Four classes seen: chance is 25 % (10 epochs instead of 30 left it near 60 %).
        assert!(last > 80.0, "{:?}", whole.accuracy);
        assert_eq!(
            whole.strategy_state_bytes,
            (40 * (s.train.dim * 4 + 4)) as u64
        );
    }

    #[test]
    fn state_round_trips_the_memory_and_the_initial_weights() {
        let s = blobs("class-incremental", 2);
        let (dev, _g) = device();
        let init = mlp(&s, 8, &dev);
        let cx = ctx(&s, 0, &dev);
        let mut g = gdumb(20, 2);
        assert!(g.state().tensors.is_empty());
        let _ = g.before_task(&cx, init.clone()).expect("before");
        g.fill(&cx);
        let mut back = gdumb(20, 2);
        back.load_state(g.state()).expect("load");
        assert_eq!(
            (&back.ids, &back.labels, back.dim),
            (&g.ids, &g.labels, g.dim)
        );
        assert_eq!(back.state_bytes(), g.state_bytes());
        let other = mlp(&s, 8, &dev);
        assert_eq!(
            named_values(&back.retrain(&cx, &other).expect("back")),
            named_values(&g.retrain(&cx, &init).expect("g"))
        );
        assert!(gdumb(10, 2).load_state(g.state()).is_err());
        let mut broken = g.state();
        broken.tensors.clear();
        assert!(gdumb(20, 2).load_state(broken).is_err());
        let mut broken = g.state();
        broken.tensors[0].2.pop();
        assert!(gdumb(20, 2).load_state(broken).is_err());
    }

    #[test]
    fn invalid_gdumb_params_are_errors() {
        for (v, key) in [
            (serde_json::json!({"memory": 0}), "memory"),
            (serde_json::json!({"epochs": 0}), "epochs"),
            (serde_json::json!({"batch-size": 0}), "batch-size"),
            (serde_json::json!({"epochs": 20000}), "epochs"),
        ] {
            let e = build(&v).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(key), "{v}: {e}");
        }
        assert!(build(&serde_json::json!({"buffer": 10})).is_err());
        assert_eq!(
            build(&serde_json::Value::Null).expect("defaults").params(),
            serde_json::json!({"memory": 200, "epochs": 30, "batch-size": 16})
        );
    }
}
