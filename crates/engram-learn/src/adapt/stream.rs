//! The test stream of test-time adaptation and its error (`shared/methods/test_time.md`):
//! each domain of a scenario (a corruption of one round, `scenario::corruption`) is met once,
//! in order, as consecutive batches of unlabeled test images; the adapter is reset only at the
//! start (one severity, so the reference's reset at the first corruption of each severity
//! happens once). The error of a domain is the share of its images whose prediction (the
//! adapter's output for the batch they came in) is wrong.
//!
//! Image order within a domain:
//! - `iid`: a seeded shuffle of the domain's images, the same in every round (the reference's
//!   rounds replay the same data);
//! - `class-sorted`: the non-i.i.d. control, RoTTA's `LabelDirichletDomainSequence` (arXiv
//!   2303.13899; the "correlated" setting of mariodoebler/test-time-adaptation): K slots
//!   (K = the number of classes, at most 100); each class draws proportions over the slots
//!   from a symmetric Dirichlet(δ) (δ = 0.1: most of a class lands in one or two slots) and
//!   its images, in order, are cut into K consecutive chunks at the cumulative proportions;
//!   within each slot the class chunks come in a random order, each chunk kept whole; slots in
//!   order. Drawn per (seed, domain), so rounds differ.

use super::{Adapter, Source};
use crate::data::rand_source::RandSource;
use crate::metrics::{ClassMask, masked_predictions};
use crate::scenario::{Part, Scenario};
use crate::{Result, err};
use engram_weights::rng::Rng;
use rand_distr::Distribution;

/// How a domain's images are ordered.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    #[default]
    Iid,
    ClassSorted,
}

impl Order {
    /// `iid` or `class-sorted`, as in run files.
    pub fn name(self) -> &'static str {
        match self {
            Order::Iid => "iid",
            Order::ClassSorted => "class-sorted",
        }
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct StreamConfig {
    /// Test batch size (reference: 200).
    #[serde(default = "default_batch")]
    pub batch: usize,
    #[serde(default)]
    pub order: Order,
    /// Dirichlet concentration δ of the class-sorted order.
    #[serde(default = "default_dirichlet")]
    pub dirichlet: f64,
    /// Seeds the image order.
    #[serde(default)]
    pub seed: u64,
}

fn default_batch() -> usize {
    200
}
fn default_dirichlet() -> f64 {
    0.1
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            batch: default_batch(),
            order: Order::Iid,
            dirichlet: default_dirichlet(),
            seed: 0,
        }
    }
}

impl StreamConfig {
    pub fn validate(&self) -> Result<()> {
        if self.batch == 0 {
            return Err(err!("stream batch must be at least 1"));
        }
        if !(self.dirichlet.is_finite() && self.dirichlet > 0.0) {
            return Err(err!(
                "stream dirichlet = {} must be a positive number",
                self.dirichlet
            ));
        }
        if self.order == Order::Iid && self.dirichlet != default_dirichlet() {
            return Err(err!(
                "stream dirichlet has no effect with order = \"iid\" (it shapes the \
                 class-sorted order)"
            ));
        }
        Ok(())
    }
}

/// Gamma(α, 1) draws (rand_distr) from `rng`.
fn gamma(alpha: f64, n: usize, rng: &mut Rng) -> Result<Vec<f64>> {
    let g = rand_distr::Gamma::new(alpha, 1.0).map_err(|e| err!("dirichlet = {alpha}: {e}"))?;
    Ok((0..n).map(|_| g.sample(&mut RandSource(rng))).collect())
}

/// A stream's domains with their test images rendered once: tasks with the same transform
/// and test examples (the rounds of a corruption stream) share one block.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// Each task's (domain's) name, in stream order.
    pub names: Vec<String>,
    /// Each task's block.
    pub block: Vec<usize>,
    /// Each block's images (its examples × `dim`) and labels, in the task's test order.
    pub x: Vec<Vec<f32>>,
    pub y: Vec<Vec<u32>>,
    pub dim: usize,
    pub classes: usize,
}

impl Rendered {
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Renders the test examples of every domain of `s` (each distinct one once).
pub fn render(s: &Scenario) -> Rendered {
    let mut first: Vec<usize> = Vec::new();
    let mut block = Vec::with_capacity(s.num_tasks());
    for (t, task) in s.tasks.iter().enumerate() {
        let same = first
            .iter()
            .position(|&f| s.tasks[f].transform == task.transform && s.tasks[f].test == task.test);
        block.push(same.unwrap_or_else(|| {
            first.push(t);
            first.len() - 1
        }));
    }
    let (x, y) = first
        .iter()
        .map(|&t| s.batch(t, Part::Test, &s.tasks[t].test))
        .unzip();
    Rendered {
        names: s.tasks.iter().map(|t| t.name.clone()).collect(),
        block,
        x,
        y,
        dim: s.input_dim(),
        classes: s.num_outputs,
    }
}

/// The order (positions in its block) in which the stream meets domain `task`'s images.
pub fn domain_order(r: &Rendered, task: usize, cfg: &StreamConfig) -> Result<Vec<usize>> {
    cfg.validate()?;
    let labels = &r.y[r.block[task]];
    let n = labels.len();
    match cfg.order {
        Order::Iid => {
            // One shuffle for every domain of this length: each corruption and each round
            // replays the same image sequence, as the reference's (unshuffled) stream does.
            let mut ids: Vec<usize> = (0..n).collect();
            Rng::keyed(cfg.seed, "tta-order", n as u64).shuffle(&mut ids);
            Ok(ids)
        }
        Order::ClassSorted => {
            let mut rng = Rng::keyed(cfg.seed, "tta-class-sorted", task as u64);
            let slots = r.classes.clamp(1, 100);
            let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); r.classes];
            for (i, &y) in labels.iter().enumerate() {
                if let Some(v) = by_class.get_mut(y as usize) {
                    v.push(i);
                }
            }
            // slot_chunks[s] = the chunks (one per class) that slot s holds.
            let mut slot_chunks: Vec<Vec<Vec<usize>>> = vec![Vec::new(); slots];
            for members in &by_class {
                let mut w = gamma(cfg.dirichlet, slots, &mut rng)?;
                let mut total: f64 = w.iter().sum();
                if !(total > 0.0 && total.is_finite()) {
                    // Every draw underflowed (δ far below 0.01): the limit of the Dirichlet,
                    // all mass on one slot.
                    w = vec![0.0; slots];
                    w[rng.below(slots)] = 1.0;
                    total = 1.0;
                }
                let mut start = 0usize;
                let mut cum = 0.0;
                for (s, chunks) in slot_chunks.iter_mut().enumerate() {
                    cum += w[s] / total;
                    // numpy: np.split at (cumsum(p)[:-1] · len).astype(int); the last chunk
                    // takes the rest.
                    let end = if s + 1 == slots {
                        members.len()
                    } else {
                        ((cum * members.len() as f64) as usize).clamp(start, members.len())
                    };
                    chunks.push(members[start..end].to_vec());
                    start = end;
                }
            }
            let mut out = Vec::with_capacity(n);
            for mut chunks in slot_chunks {
                rng.shuffle(&mut chunks);
                out.extend(chunks.into_iter().flatten());
            }
            Ok(out)
        }
    }
}

/// Progress of a stream: domain, batch within it, batches in it.
pub type Progress<'a> = &'a mut dyn FnMut(usize, usize, usize);

/// Runs `adapter` from `source` over every domain of `r` in order; returns each domain's
/// error in percent.
pub fn run(
    r: &Rendered,
    source: &Source,
    adapter: &mut dyn Adapter,
    cfg: &StreamConfig,
    on: Progress,
) -> Result<Vec<f64>> {
    cfg.validate()?;
    if source.dim != r.dim || source.classes != r.classes {
        return Err(err!(
            "the source model takes {} values and predicts {} classes; the stream has {} and {}",
            source.dim,
            source.classes,
            r.dim,
            r.classes
        ));
    }
    adapter.reset(source)?;
    let (c, d) = (r.classes, r.dim);
    let mut errors = Vec::with_capacity(r.len());
    let mut x = Vec::new();
    for t in 0..r.len() {
        let (bx, by) = (&r.x[r.block[t]], &r.y[r.block[t]]);
        let order = domain_order(r, t, cfg)?;
        let batches = order.len().div_ceil(cfg.batch);
        let mut wrong = 0usize;
        for (b, chunk) in order.chunks(cfg.batch).enumerate() {
            x.clear();
            for &i in chunk {
                x.extend_from_slice(&bx[i * d..(i + 1) * d]);
            }
            let logits = adapter.step(&x, chunk.len())?;
            if logits.len() != chunk.len() * c {
                return Err(err!(
                    "adapter {} returned {} values for {} examples of {c} classes",
                    adapter.name(),
                    logits.len(),
                    chunk.len()
                ));
            }
            let pred = masked_predictions(&logits, c, &ClassMask::all(c))
                .map_err(|e| err!("adapter {}: {e}", adapter.name()))?;
            wrong += pred
                .iter()
                .zip(chunk)
                .filter(|(p, i)| p.0 != by[**i] as usize)
                .count();
            on(t, b + 1, batches);
        }
        errors.push(100.0 * wrong as f64 / order.len().max(1) as f64);
    }
    Ok(errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::corrupt::Corruption;
    use crate::scenario::Common;
    use crate::scenario::corruption::corruption_stream;

    fn scenario(rounds: usize) -> Scenario {
        let b = crate::data::BlobsConfig {
            dim: 144,
            classes: 3,
            train_per_class: 4,
            test_per_class: 40,
            ..Default::default()
        };
        let d = crate::data::blobs::generate(&b).unwrap_or_else(|e| panic!("{e}"));
        let common = Common {
            seed: 0,
            train_per_task: None,
            test_per_class: None,
        };
        let list = [Corruption::GaussianNoise, Corruption::Contrast];
        corruption_stream(d, &list, 5, rounds, &common).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn iid_order_is_a_permutation_repeated_by_round() {
        let s = scenario(2);
        let r = render(&s);
        // Rounds share their blocks; the two corruptions differ.
        assert_eq!(r.block, vec![0, 1, 0, 1]);
        assert_eq!(r.x.len(), 2);
        assert_ne!(r.x[0], r.x[1]);
        assert_eq!(r.x[0], s.batch(2, Part::Test, &s.tasks[2].test).0);
        let cfg = StreamConfig::default();
        let o = domain_order(&r, 0, &cfg).unwrap_or_else(|e| panic!("{e}"));
        let mut sorted = o.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..120).collect::<Vec<_>>());
        assert_ne!(o, sorted);
        assert_eq!(
            o,
            domain_order(&r, 3, &cfg).unwrap_or_else(|e| panic!("{e}"))
        );
        let other = StreamConfig {
            seed: 1,
            ..StreamConfig::default()
        };
        assert_ne!(
            o,
            domain_order(&r, 0, &other).unwrap_or_else(|e| panic!("{e}"))
        );
    }

    #[test]
    fn class_sorted_batches_hold_few_classes() {
        let s = scenario(1);
        let r = render(&s);
        let cfg = StreamConfig {
            batch: 10,
            order: Order::ClassSorted,
            ..StreamConfig::default()
        };
        let o = domain_order(&r, 0, &cfg).unwrap_or_else(|e| panic!("{e}"));
        let mut sorted = o.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..120).collect::<Vec<_>>());
        // Mean number of distinct classes per batch: near 1 class-sorted, near 3 shuffled.
        let distinct = |o: &[usize]| -> f64 {
            let chunks: Vec<&[usize]> = o.chunks(10).collect();
            chunks
                .iter()
                .map(|c| {
                    let mut ys: Vec<u32> = c.iter().map(|&i| r.y[0][i]).collect();
                    ys.sort_unstable();
                    ys.dedup();
                    ys.len() as f64
                })
                .sum::<f64>()
                / chunks.len() as f64
        };
        let iid = domain_order(&r, 0, &StreamConfig::default()).unwrap_or_else(|e| panic!("{e}"));
        assert!(distinct(&o) < 1.5, "{}", distinct(&o));
        assert!(distinct(&iid) > 2.5, "{}", distinct(&iid));
        // Each class's images keep their order and are cut into contiguous chunks: with a tiny
        // δ every class is one chunk, so the labels change exactly twice.
        for delta in [1e-3, 1e-300] {
            let tiny = StreamConfig {
                dirichlet: delta,
                ..cfg.clone()
            };
            let o = domain_order(&r, 0, &tiny).unwrap_or_else(|e| panic!("{e}"));
            let ys: Vec<u32> = o.iter().map(|&i| r.y[0][i]).collect();
            assert_eq!(ys.windows(2).filter(|w| w[0] != w[1]).count(), 2, "{delta}");
            assert_eq!(o.len(), 120);
        }
    }

    #[test]
    fn dirichlet_weights_have_the_right_mean() {
        let mut r = Rng::new(5);
        for a in [0.1, 0.5, 2.0] {
            let v = gamma(a, 20_000, &mut r).unwrap_or_else(|e| panic!("{e}"));
            let m = v.iter().sum::<f64>() / 20_000.0;
            assert!((m - a).abs() < 0.05 * a.max(1.0), "alpha {a}: mean {m}");
        }
        assert!(gamma(0.0, 1, &mut r).is_err());
    }

    #[test]
    fn source_error_on_the_stream_and_checks() {
        let r = render(&scenario(1));
        let src = super::super::testutil::source(1);
        let mut a = super::super::build("source", &serde_json::Value::Null)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut steps = 0;
        let e = run(
            &r,
            &src,
            a.as_mut(),
            &StreamConfig {
                batch: 50,
                ..Default::default()
            },
            &mut |_, _, _| steps += 1,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.len(), 2);
        assert_eq!(steps, 2 * 3);
        assert!(e.iter().all(|v| (0.0..=100.0).contains(v)));
        let bad = StreamConfig {
            batch: 0,
            ..Default::default()
        };
        assert!(run(&r, &src, a.as_mut(), &bad, &mut |_, _, _| {}).is_err());
    }
}
