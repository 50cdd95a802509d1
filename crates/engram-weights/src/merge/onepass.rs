//! TIES' magnitude trim with its thresholds finished during the merge pass, so the inputs
//! are read twice (one histogram pass, the merge) instead of three times: per tensor
//! ([`merge_trimmed`]), and over the whole model with `trim_scope: model` (the engine holds
//! one [`Selection`] for every merged tensor and fixes their deferred positions at the end).
//! Card: shared/methods/merging.md ("Model scope in practice"); the plan of issue #25.
//!
//! The first pass ([`top_buckets`]) fixes, per model, the 1/128-octave bucket holding its
//! k-th largest |τ|. Every entry above its model's bucket is kept and every one below is
//! dropped whatever the exact threshold, so the merge pass can run at once: it merges with
//! the bucket's floor as a provisional threshold, and for the positions where some model's
//! entry lies in its bucket (about 0.2 % per model on Gaussian deltas) it keeps the inputs
//! and the low bits of those entries. Once the pass is over the low bits give the exact
//! thresholds ([`Bucket::resolve`]), and the kept positions are merged again with them and
//! patched into the output. The merge is position-wise, so the output has the same bits as
//! with the thresholds known beforehand (a test compares whole files).
//!
//! Deferring is worth it only while few positions are deferred: each costs a gather, a
//! second merge and a patch, where the second histogram pass it saves is cheap per position
//! (inputs in the page cache, vectorized decoding). The first pass counts the entries in
//! each bucket, an upper bound on the deferred positions; above [`Limits`] (a share of the
//! tensor, and the bytes of kept inputs, (N + 2)·4 per position) the thresholds are finished
//! by a second histogram pass instead. Deltas that tie at the threshold do that: bf16
//! fine-tunes whose deltas are few multiples of the base's rounding step. A sparse delta
//! whose threshold is 0 (a density past its share of non-zero entries; every zero entry lies
//! in the bucket) needs neither: the histogram pass counts exact zeros apart, and a rank among
//! them fixes the threshold at 0 ([`Bucket::known`]). On the synthetic bf16 family at density
//! 0.2 (many tensors' deltas mostly 0) that took TIES at N = 2 from 1.11–1.13 s to 1.00–1.03 s
//! (`engram merge`, 3 interleaved runs, same bytes out). Measured (`engram bench merge`, rows
//! `ties` and `ties_select_first`; README "Speed"): with warm caches about as fast as two
//! selection passes or a few per cent faster, with inputs partly evicted 25–30 % faster.

use super::{ChunkKernel, TensorJob};
use crate::select::{Bucket, Pieces, Repeated, resolve_buckets, top_buckets};
use crate::stream::Chunk;
use engram_ckpt::{Error, Result};
use rayon::prelude::*;

/// When the merge pass may defer positions rather than run a second histogram pass.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most bytes of kept inputs per selection (a tensor, or a whole model).
    pub bytes: u64,
    /// Most in-bucket entries (summed over the selections) as a share of the positions.
    pub share: f64,
}

/// The engine's limits: 256 MiB, and 4 % of the positions (measured: `engram bench merge`
/// on the synthetic and the torch-made families; see the README's speed section).
pub const LIMITS: Limits = Limits {
    bytes: 256 << 20,
    share: 0.04,
};

/// A chunk's deferred positions and their inputs, as a compact chunk.
pub struct Deferred {
    index: usize,
    start: usize,
    /// Positions within the chunk, ascending.
    positions: Vec<u32>,
    base: Vec<f32>,
    models: Vec<Vec<f32>>,
    /// Per selection, the low 16 bits of its model's |τ| entries that lie in its bucket.
    lows: Vec<Vec<u16>>,
}

impl Deferred {
    /// Positions within the chunk, ascending.
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    /// The chunk's first element within the tensor.
    pub fn start(&self) -> usize {
        self.start
    }

    /// The deferred inputs as a chunk: entry j is element `start + positions[j]` of the
    /// tensor.
    pub fn chunk(&self) -> Chunk<'_> {
        Chunk {
            index: self.index,
            start: self.start,
            len: self.positions.len(),
            base: &self.base,
            models: &self.models,
        }
    }
}

/// Where values found late go: `fix(compact, start, positions, values)` with the deferred
/// inputs as a compact chunk (entry j at element `start + positions[j]` of the tensor).
pub type Fix<'f> = dyn Fn(&Chunk, usize, &[u32], &[f32]) -> Result<()> + Sync + 'f;

/// How a trimmed merge found its thresholds (for tests and benchmarks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Passes {
    /// Nothing to select (every density ≥ 1, or nothing kept), or every threshold known
    /// after the histogram pass (0, of sparse deltas): no deferred positions.
    MergeOnly,
    /// One histogram pass, then the merge with deferred positions.
    Deferred,
    /// Two histogram passes, then the merge (over the budget, or one pass not allowed).
    Exact,
}

/// Magnitude selections (the k-th largest |τ_i| of a set of values: one tensor, or every
/// merged tensor of a model) after their histogram pass: the thresholds known now or
/// provisional (the bucket's floor), and the buckets still to finish. Selection j cuts model
/// j mod N (N models): TIES has one per model, breadcrumbs two (the band's lower cuts, then
/// its upper ones).
#[derive(Clone, Debug)]
pub struct Selection {
    provisional: Vec<Option<f32>>,
    /// `None` where the threshold is known (keep all, nothing kept, 0 of a sparse delta).
    buckets: Vec<Option<Bucket>>,
    /// Values per model.
    total: u64,
}

impl Selection {
    /// The histogram pass over `s` (`total` values per set; set j of `s` is selection j):
    /// selection j finds the `ks[j]`-th largest |τ| (`None`: keep all).
    pub fn first_pass(s: &dyn Pieces, ks: &[Option<u64>], total: u64) -> Result<Self> {
        let mut buckets = top_buckets(s, ks)?;
        // Thresholds known now: None (keep all), +inf (nothing kept), 0 (a sparse delta's,
        // [`Bucket::known`]); the others provisional.
        let provisional = ks
            .iter()
            .zip(&buckets)
            .map(|(k, b)| k.map(|_| b.map_or(f32::INFINITY, |b| b.known().unwrap_or(b.floor()))))
            .collect();
        // Known thresholds leave nothing to resolve or defer.
        for b in &mut buckets {
            if b.is_some_and(|b| b.known().is_some()) {
                *b = None;
            }
        }
        Ok(Selection {
            provisional,
            buckets,
            total,
        })
    }

    /// How the thresholds are best finished within `limits`: nothing left to finish, during
    /// the merge pass, or by a second histogram pass (many entries in the buckets, an upper
    /// bound on the positions that would be deferred).
    pub fn passes(&self, models: usize, limits: Limits) -> Passes {
        let n = models as u64;
        let kept: u64 = self.buckets.iter().flatten().map(|b| b.count).sum();
        if kept == 0 {
            Passes::MergeOnly
        } else if kept * (n + 2) * 4 > limits.bytes
            || kept as f64 > limits.share * self.total as f64
        {
            Passes::Exact
        } else {
            Passes::Deferred
        }
    }

    /// The histogram pass, then as [`Self::passes`] decides: the exact thresholds (by the
    /// second pass now, if needed) and no selection pending, or the provisional thresholds
    /// and the selection that a pass over the values will finish ([`Self::resolve`]).
    pub fn start(
        s: &dyn Pieces,
        ks: &[Option<u64>],
        total: u64,
        models: usize,
        limits: Limits,
    ) -> Result<(Vec<Option<f32>>, Option<Selection>)> {
        let sel = Selection::first_pass(s, ks, total)?;
        Ok(match sel.passes(models, limits) {
            Passes::MergeOnly => (sel.provisional(), None),
            Passes::Exact => (sel.second_pass(s)?, None),
            Passes::Deferred => (sel.provisional(), Some(sel)),
        })
    }

    /// The thresholds to merge with before the exact ones are known.
    pub fn provisional(&self) -> Vec<Option<f32>> {
        self.provisional.clone()
    }

    /// The exact thresholds by a second histogram pass over `s`.
    pub fn second_pass(&self, s: &dyn Pieces) -> Result<Vec<Option<f32>>> {
        Ok(self.finish(&resolve_buckets(s, &self.buckets)?))
    }

    /// The positions of chunk `c` (of the values the first pass saw) that must wait for the
    /// exact thresholds: where some model's |τ| lies in its bucket.
    pub fn defer(&self, c: &Chunk) -> Deferred {
        defer(c, &self.buckets)
    }

    /// The exact thresholds from the low bits kept in `parts` (every deferred chunk of the
    /// values the first pass saw). `what` names those values in the error.
    pub fn resolve<'d>(
        &self,
        parts: impl Iterator<Item = &'d Deferred> + Clone,
        what: &str,
    ) -> Result<Vec<Option<f32>>> {
        let exact: Vec<Option<f32>> = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let Some(b) = b else { return Ok(None) };
                let mut lows: Vec<u16> =
                    parts.clone().flat_map(|d| &d.lows[i]).copied().collect();
                b.resolve(&mut lows).map(Some).ok_or_else(|| {
                    Error::Invalid(format!(
                        "{what}: selection {i}'s trim bucket held {} values in the merge pass, {} in the first",
                        lows.len(),
                        b.count
                    ))
                })
            })
            .collect::<Result<_>>()?;
        Ok(self.finish(&exact))
    }

    /// The provisional thresholds with the exact ones put in where a bucket was resolved.
    fn finish(&self, exact: &[Option<f32>]) -> Vec<Option<f32>> {
        self.provisional
            .iter()
            .zip(exact)
            .map(|(p, e)| e.or(*p))
            .collect()
    }
}

/// Merges the deferred positions of `parts` with `kernel` (built with the exact thresholds)
/// and hands them to `fix`, in parallel.
pub fn fix_deferred(parts: &[Deferred], kernel: &dyn ChunkKernel, fix: &Fix) -> Result<()> {
    parts.par_iter().try_for_each(|d| {
        if d.positions.is_empty() {
            return Ok(());
        }
        let c = d.chunk();
        let mut out = vec![0f32; c.len];
        kernel.merge(&c, &mut out);
        fix(&c, d.start, &d.positions, &out)
    })
}

/// The merge pass with provisional thresholds: each chunk's result goes to `sink` with a
/// placeholder at its deferred positions (the base's value, finite where the base is), and
/// the deferred positions come back, in chunk order.
pub fn merge_deferring(
    job: &TensorJob,
    rows: bool,
    sel: &Selection,
    first: &dyn ChunkKernel,
    sink: &(dyn Fn(&Chunk, &[f32]) -> Result<()> + Sync),
) -> Result<Vec<Deferred>> {
    job.chunks(rows).map(&|c: &Chunk| {
        let mut out = vec![0f32; c.len];
        first.merge(c, &mut out);
        let d = sel.defer(c);
        for &p in &d.positions {
            out[p as usize] = c.base.get(p as usize).copied().unwrap_or(0.0);
        }
        sink(c, &out)?;
        Ok(d)
    })
}

/// Merges one tensor whose only whole-tensor statistics are magnitude thresholds: selection j
/// is the `ks[j]`-th largest |τ| of model j mod N ([`Selection`]; `None` keeps all).
/// `kernel` builds the method's kernel for given thresholds, one per selection;
/// it must merge position by position (its result at a position depends only on that
/// position's inputs) and must not use chunk numbers. Each chunk's result goes to `sink` as
/// the merge pass makes it; values found later go to `fix`, overwriting what `sink` got there.
#[allow(clippy::too_many_arguments)]
pub fn merge_trimmed<'j>(
    job: &'j TensorJob<'j>,
    ks: &[Option<u64>],
    rows: bool,
    limits: Limits,
    kernel: &dyn Fn(Vec<Option<f32>>) -> Result<Box<dyn ChunkKernel + 'j>>,
    sink: &(dyn Fn(&Chunk, &[f32]) -> Result<()> + Sync),
    fix: &Fix,
) -> Result<Passes> {
    let n = job.models.len();
    let repeated = Repeated {
        inner: job,
        sets: n,
    };
    let sets: &dyn Pieces = if ks.len() > n { &repeated } else { job };
    let sel = Selection::first_pass(sets, ks, job.numel() as u64)?;
    let passes = sel.passes(n, limits);
    match passes {
        Passes::MergeOnly => {
            let k = kernel(sel.provisional())?;
            job.apply(k.as_ref(), rows, sink)?;
        }
        Passes::Exact => {
            let k = kernel(sel.second_pass(sets)?)?;
            job.apply(k.as_ref(), rows, sink)?;
        }
        Passes::Deferred => {
            let first = kernel(sel.provisional())?;
            let parts = merge_deferring(job, rows, &sel, first.as_ref(), sink)?;
            let exact = sel.resolve(parts.iter(), &format!("tensor '{}'", job.name))?;
            fix_deferred(&parts, kernel(exact)?.as_ref(), fix)?;
        }
    }
    Ok(passes)
}

/// The positions of chunk `c` where some model's |τ| lies in its bucket, their inputs, and
/// the low bits of the in-bucket entries.
fn defer(c: &Chunk, buckets: &[Option<Bucket>]) -> Deferred {
    // The same subtraction as the kernel's (τ = θ_i − θ₀; no base: θ_i).
    let tau = |m: &[f32], k: usize| m[k] - c.base.get(k).copied().unwrap_or(0.0);
    // First a mark per position, in straight loops that vectorize (most positions are in no
    // bucket), then the few marked positions one by one. A NaN's high bits (0x7fc0 and up)
    // are in no bucket: top_buckets skips NaNs.
    let n = c.models.len();
    let model = |j: usize| &c.models[j % n];
    let mut marked = vec![0u8; c.len];
    for (j, b) in buckets.iter().enumerate() {
        let Some(b) = b else { continue };
        let m = model(j);
        if c.base.is_empty() {
            for (f, &x) in marked.iter_mut().zip(m) {
                *f |= u8::from(x.abs().to_bits() >> 16 == b.high);
            }
        } else {
            for ((f, &x), &y) in marked.iter_mut().zip(m).zip(c.base) {
                *f |= u8::from((x - y).abs().to_bits() >> 16 == b.high);
            }
        }
    }
    let mut positions = Vec::new();
    for (w, word) in marked.chunks(8).enumerate() {
        if word.iter().any(|&f| f != 0) {
            for (j, &f) in word.iter().enumerate() {
                if f != 0 {
                    positions.push((w * 8 + j) as u32);
                }
            }
        }
    }
    let lows = buckets
        .iter()
        .enumerate()
        .map(|(j, b)| {
            let Some(b) = b else { return Vec::new() };
            let m = model(j);
            positions
                .iter()
                .map(|&k| tau(m, k as usize).abs().to_bits())
                .filter(|&bits| b.holds(bits))
                .map(|bits| (bits & 0xffff) as u16)
                .collect()
        })
        .collect();
    let gather = |v: &[f32]| -> Vec<f32> {
        if v.is_empty() {
            Vec::new()
        } else {
            positions.iter().map(|&k| v[k as usize]).collect()
        }
    };
    Deferred {
        index: c.index,
        start: c.start,
        base: gather(c.base),
        models: c.models.iter().map(|m| gather(m)).collect(),
        positions,
        lows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::engine::{MergeRequest, run_merge};
    use crate::merge::plan::{MergePlan, Step};
    use crate::merge::testutil::{SHAPES, params};
    use crate::rng::Rng;
    use crate::testutil::{random_family, write_model};
    use engram_ckpt::{DType, Model};
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// A bf16 family whose deltas are few distinct values (as a quantized or short
    /// fine-tune's): many entries tie at every threshold.
    fn tied_family(dir: &std::path::Path, n: usize) -> (Model, Vec<Model>) {
        let base_of = |name: &str, i: usize| Rng::keyed(7, name, i as u64).normal() * 0.02;
        let base = write_model(&dir.join("base"), DType::BF16, SHAPES, &|name, i| {
            base_of(name, i)
        });
        let models = (1..=n)
            .map(|t| {
                write_model(
                    &dir.join(format!("m{t}")),
                    DType::BF16,
                    SHAPES,
                    &|name, i| {
                        let mut r = Rng::keyed(100 + t as u64, name, i as u64);
                        let steps = (r.normal() * 2.0).round();
                        base_of(name, i) + steps * 2f32.powi(-12)
                    },
                )
            })
            .collect();
        (base, models)
    }

    fn ties(base: &Model, models: &[Model], p: &ParamSource, one_pass: bool) -> Vec<u8> {
        merged("ties", base, models, p, one_pass, TrimScope::Tensor).0
    }

    /// The merged file's bytes and the report's model-scope thresholds.
    fn merged(
        method: &str,
        base: &Model,
        models: &[Model],
        p: &ParamSource,
        one_pass: bool,
        scope: TrimScope,
    ) -> (Vec<u8>, Option<Vec<Option<f32>>>) {
        let dir = tempfile::tempdir().unwrap();
        let req = MergeRequest::new(
            crate::merge::get(method).unwrap(),
            Some(base),
            models.iter().collect(),
        )
        .with_params(p.clone())
        .with_scope(scope)
        .with_out_dtype(Some(DType::F32))
        .with_one_pass(one_pass);
        let rep = run_merge(&req, &dir.path().join("o"), &BTreeMap::new(), &|_| {}).unwrap();
        let bytes = std::fs::read(dir.path().join("o").join("model.safetensors")).unwrap();
        (bytes, rep.model_thresholds)
    }

    /// With `trim_scope: model`, the thresholds over the whole model finished during the
    /// merge pass (deferred positions of every tensor fixed at the end) give the same bytes
    /// and the same thresholds as two histogram passes first; the Gaussian family takes the
    /// deferred path, the tied one (too many entries in its buckets) the second pass.
    #[test]
    fn model_scope_in_one_pass_writes_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (b1, m1) = random_family(&dir.path().join("a"), SHAPES, 3, 23);
        let (b2, m2) = tied_family(&dir.path().join("b"), 3);
        for (f, (base, models)) in [(&b1, &m1), (&b2, &m2)].into_iter().enumerate() {
            for (normalize, d) in [(1.0, [0.2, 0.55, 1.0]), (0.0, [0.1, 0.3, 0.9])] {
                let p = params(
                    &[("normalize", normalize), ("lambda", 0.9)],
                    &[
                        &[("density", d[0]), ("weight", 1.0)],
                        &[("density", d[1]), ("weight", 0.7)],
                        &[("density", d[2]), ("weight", 1.3)],
                    ],
                );
                let req = MergeRequest::new(
                    crate::merge::get("ties").unwrap(),
                    Some(base),
                    models.iter().collect(),
                )
                .with_params(p.clone())
                .with_scope(TrimScope::Model);
                let deferred = MergePlan::new(&req).unwrap().model_selection.is_some();
                assert_eq!(deferred, f == 0, "family {f}, normalize {normalize}");
                let want = merged("ties", base, models, &p, false, TrimScope::Model);
                assert!(want.1.as_ref().is_some_and(|t| t[0].is_some()));
                for threads in [1, 4] {
                    let got = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap()
                        .install(|| merged("ties", base, models, &p, true, TrimScope::Model));
                    assert!(
                        got.0 == want.0,
                        "family {f}, normalize {normalize}, {threads} threads"
                    );
                    assert_eq!(got.1, want.1);
                }
                // Model scope differs from per tensor (the test sees the scope at all).
                assert!(ties(base, models, &p, true) != want.0);
            }
        }
    }

    use crate::merge::TrimScope;
    use crate::merge::params::ParamSource;
    use crate::select::keep_count;

    /// The engine's one-pass TIES writes the same bytes as with the thresholds found first,
    /// on Gaussian deltas (a third exactly zero) and on tied bf16 deltas, with per-model
    /// densities (some past the non-zero share) and weights, dis-mean and dis-sum, on one
    /// thread and on four.
    #[test]
    fn same_bytes_as_with_the_thresholds_found_first() {
        let dir = tempfile::tempdir().unwrap();
        let (b1, m1) = random_family(&dir.path().join("a"), SHAPES, 3, 21);
        let (b2, m2) = tied_family(&dir.path().join("b"), 3);
        // Densities 0.8 and 0.9 pass the deltas' share of non-zero entries (about 2/3 and
        // 4/5): thresholds of 0, known after the histogram pass.
        let densities = [[0.2, 0.55, 1.0], [0.2, 0.8, 0.9]];
        for (base, models) in [(&b1, &m1), (&b2, &m2)] {
            for (normalize, d) in [
                (1.0, densities[0]),
                (0.0, densities[0]),
                (1.0, densities[1]),
            ] {
                let p = params(
                    &[("normalize", normalize), ("lambda", 0.9)],
                    &[
                        &[("density", d[0]), ("weight", 1.0)],
                        &[("density", d[1]), ("weight", 0.7)],
                        &[("density", d[2]), ("weight", 1.3)],
                    ],
                );
                let want = ties(base, models, &p, false);
                for threads in [1, 4] {
                    let got = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap()
                        .install(|| ties(base, models, &p, true));
                    assert!(got == want, "normalize {normalize}, {threads} threads");
                }
            }
        }
    }

    /// Breadcrumbs (both cuts of every model's band finished during the merge pass) writes
    /// the same bytes as with the cuts found first, with and without the TIES election, on
    /// Gaussian and tied deltas, with per-model densities and gammas.
    #[test]
    fn breadcrumbs_in_one_pass_writes_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let (b1, m1) = random_family(&dir.path().join("a"), SHAPES, 3, 29);
        let (b2, m2) = tied_family(&dir.path().join("b"), 3);
        for (f, (base, models)) in [(&b1, &m1), (&b2, &m2)].into_iter().enumerate() {
            for method in ["breadcrumbs", "breadcrumbs_ties"] {
                let p = params(
                    &[("lambda", 0.9)],
                    &[
                        &[("density", 0.3), ("gamma", 0.01), ("weight", 1.0)],
                        &[("density", 0.6), ("gamma", 0.1), ("weight", 0.7)],
                        &[("density", 1.0), ("gamma", 0.2), ("weight", 1.3)],
                    ],
                );
                let want = merged(method, base, models, &p, false, TrimScope::Tensor).0;
                for threads in [1, 4] {
                    let got = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .unwrap()
                        .install(|| merged(method, base, models, &p, true, TrimScope::Tensor).0);
                    assert!(got == want, "{method}, family {f}, {threads} threads");
                }
            }
        }
    }

    /// The merge itself, outside the engine: the deferred path is taken on the tensor of
    /// several chunks (with no limit on the share deferred), a zero budget takes the exact
    /// path, and both give, position by position, what the kernel gives with the exact
    /// thresholds.
    #[test]
    fn deferred_positions_are_fixed_to_the_exact_merge() {
        let dir = tempfile::tempdir().unwrap();
        for (f, (base, models)) in [
            random_family(&dir.path().join("a"), SHAPES, 4, 33),
            tied_family(&dir.path().join("b"), 4),
        ]
        .into_iter()
        .enumerate()
        {
            for name in ["ties", "breadcrumbs_ties"] {
                let method = crate::merge::get(name).unwrap();
                let gamma: &[(&str, f64)] = if name == "ties" {
                    &[]
                } else {
                    &[("gamma", 0.05)]
                };
                let p = params(
                    &[&[("density", 0.2)], gamma].concat(),
                    &[&[("density", 0.1)], &[("density", 0.3)], &[], &[]],
                );
                let req =
                    MergeRequest::new(method, Some(&base), models.iter().collect()).with_params(p);
                let plan = MergePlan::new(&req).unwrap();
                let t = plan
                    .tensors
                    .iter()
                    .find(|t| t.view.name() == "model.layers.0.w" && t.step == Step::Merge)
                    .unwrap();
                let job = plan.job(&req, t).unwrap();
                let n = job.numel() as u64;
                let dens = method.trim_ranks(&job, n).unwrap();
                let k = |d: f64| Some(keep_count(d, n));
                if name == "ties" {
                    assert_eq!(dens, vec![k(0.1), k(0.3), k(0.2), k(0.2)]);
                } else {
                    // Lower cuts (n_top + target), then upper ones (n_top + 1).
                    let (g, lo) = (keep_count(0.05, n), |d: f64| {
                        Some(keep_count(0.05, n) + keep_count(d, n))
                    });
                    assert_eq!(
                        dens,
                        vec![
                            lo(0.1),
                            lo(0.3),
                            lo(0.2),
                            lo(0.2),
                            Some(g + 1),
                            Some(g + 1),
                            Some(g + 1),
                            Some(g + 1)
                        ]
                    );
                }
                let exact = method.prepare(&job).unwrap();
                let mut want = vec![0f32; job.numel()];
                let w = Mutex::new(&mut want);
                job.apply(exact.as_ref(), false, &|c, v| {
                    w.lock().unwrap()[c.start..c.start + c.len].copy_from_slice(v);
                    Ok(())
                })
                .unwrap();
                let any = Limits {
                    bytes: LIMITS.bytes,
                    share: f64::INFINITY,
                };
                let none = Limits {
                    bytes: 0,
                    share: 1.0,
                };
                for (limits, passes) in [(any, Passes::Deferred), (none, Passes::Exact)] {
                    let got = Mutex::new(vec![f32::NAN; job.numel()]);
                    let fixed = Mutex::new(0usize);
                    let took = merge_trimmed(
                        &job,
                        &dens,
                        false,
                        limits,
                        &|t| method.trimmed_kernel(&job, t),
                        &|c, v| {
                            got.lock().unwrap()[c.start..c.start + c.len].copy_from_slice(v);
                            Ok(())
                        },
                        &|c, start, at, v| {
                            assert_eq!(c.len, at.len());
                            *fixed.lock().unwrap() += at.len();
                            let mut g = got.lock().unwrap();
                            for (&p, &v) in at.iter().zip(v) {
                                g[start + p as usize] = v;
                            }
                            Ok(())
                        },
                    )
                    .unwrap();
                    assert_eq!(took, passes, "{name}, family {f}");
                    let got = got.into_inner().unwrap();
                    let same = got
                        .iter()
                        .zip(&want)
                        .all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{name}, family {f}, {passes:?}");
                    let fixed = fixed.into_inner().unwrap();
                    if passes == Passes::Deferred {
                        // Some positions were deferred; of the Gaussian deltas far fewer than
                        // all (tied ones defer most: what the limits are for).
                        assert!(fixed > 0, "{name}, family {f}");
                        assert!(f == 1 || fixed < job.numel() / 20, "{name}: {fixed}");
                    } else {
                        assert_eq!(fixed, 0);
                    }
                }
            }
        }
    }
}
